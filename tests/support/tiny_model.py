"""A tiny random model bundle with the real model's interface, for fast engine/CLI/GUI tests.

Built with the ``onnx`` helper API (a test dependency): NHWC image -> conv (stride 32) -> ReLU ->
``features`` (N, 16, 8, 8) -> global pooling -> the same MLP head as the real network -> ``probs``.
The head weights are also written to ``head.npz``, exactly as the real export does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mendicant_desktop.core.bundle import make_card, write_card

C = 16


def _head(rng: np.random.Generator, c: int = C) -> dict[str, np.ndarray]:
    def w(*shape: int, s: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * s).astype(np.float32)

    return {
        "img_fc_w": w(c, 264), "img_fc_b": w(264, s=0.05),
        "img_bn_scale": (1 + w(264, s=0.1)), "img_bn_shift": w(264, s=0.05),
        "meta_fc1_w": w(10, 224), "meta_fc1_b": w(224, s=0.05),
        "meta_bn1_scale": (1 + w(224, s=0.1)), "meta_bn1_shift": w(224, s=0.05),
        "meta_fc2_w": w(224, 64, s=0.1), "meta_fc2_b": w(64, s=0.05),
        "meta_bn2_scale": (1 + w(64, s=0.1)), "meta_bn2_shift": w(64, s=0.05),
        "fc_w": w(328, 32, s=0.1), "fc_b": w(32, s=0.05),
        "fc_bn_scale": (1 + w(32, s=0.1)), "fc_bn_shift": w(32, s=0.05),
        "out_w": w(32, 7), "out_b": w(7, s=0.05),
    }


def build_tiny_bundle(folder: str | Path, seed: int = 0, name: str = "tiny-test-model") -> Path:
    """Write ``<name>.onnx``, ``<name>.head.npz`` and ``<name>.json`` into ``folder``; return the card path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    head = _head(rng)
    conv_w = (rng.standard_normal((C, 3, 32, 32)) * 0.02).astype(np.float32)
    conv_b = (rng.standard_normal(C) * 0.1).astype(np.float32)
    inits = {"conv_w": conv_w, "conv_b": conv_b, "inv255": np.array(1 / 255.0, np.float32), **head}
    nodes = [
        helper.make_node("Transpose", ["image"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["x_nchw", "inv255"], ["x01"]),
        helper.make_node("Conv", ["x01", "conv_w", "conv_b"], ["conv"], strides=[32, 32]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["pooled"], axis=1),
    ]

    def dense_relu_bn(inp: str, pre: str, w: str, b: str, scale: str, shift: str) -> str:
        nodes.extend([
            helper.make_node("MatMul", [inp, w], [pre + "_mm"]),
            helper.make_node("Add", [pre + "_mm", b], [pre + "_z"]),
            helper.make_node("Relu", [pre + "_z"], [pre + "_r"]),
            helper.make_node("Mul", [pre + "_r", scale], [pre + "_s"]),
            helper.make_node("Add", [pre + "_s", shift], [pre + "_h"]),
        ])
        return pre + "_h"

    h_img = dense_relu_bn("pooled", "img", "img_fc_w", "img_fc_b", "img_bn_scale", "img_bn_shift")
    h_m1 = dense_relu_bn("meta", "m1", "meta_fc1_w", "meta_fc1_b", "meta_bn1_scale", "meta_bn1_shift")
    h_m2 = dense_relu_bn(h_m1, "m2", "meta_fc2_w", "meta_fc2_b", "meta_bn2_scale", "meta_bn2_shift")
    nodes.append(helper.make_node("Concat", [h_img, h_m2], ["joint"], axis=1))
    h_fc = dense_relu_bn("joint", "fc", "fc_w", "fc_b", "fc_bn_scale", "fc_bn_shift")
    nodes.extend([
        helper.make_node("MatMul", [h_fc, "out_w"], ["out_mm"]),
        helper.make_node("Add", ["out_mm", "out_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 254, 254, 3]),
         helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 7]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", C, "h", "w"])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    mpath = folder / f"{name}.onnx"
    hpath = folder / f"{name}.head.npz"
    mpath.write_bytes(model.SerializeToString())
    np.savez(hpath, **head)
    card = make_card(
        name=name, version="0.0.0-test", model_path=mpath, head_path=hpath, threshold=0.5,
        metrics={"note": "random weights for tests; no clinical meaning"},
        provenance={"source_network": "random tiny network built by tests/support/tiny_model.py"},
    )
    return write_card(card, folder / f"{name}.json")
