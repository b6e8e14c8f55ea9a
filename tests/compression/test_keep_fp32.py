"""compression.quantize: which nodes each ``keep_fp32`` alias leaves in FP32, and the image_quantile ranges, on hand-made graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compression.quantize import STEM_CONVS, _keep_fp32_nodes


def _graph(stem: bool = True) -> onnx.ModelProto:
    """image -> conv1 -> conv2 -> depthwise -> Add(residual) -> a head Add (outside /backbone/)."""
    init = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w1"),
            numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w2"),
            numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "wd")]  # fmt: skip
    names = list(STEM_CONVS) if stem else ["/other/a/Conv", "/other/b/Conv"]
    nodes = [helper.make_node("Conv", ["image", "w1"], ["c1"], name=names[0]),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], name=names[1]),
             helper.make_node("Conv", ["c2", "wd"], ["dw"], name="/backbone/block/dw/Conv", group=4),
             helper.make_node("Add", ["dw", "dw"], ["s"], name="/backbone/block/Add"),
             helper.make_node("Add", ["s", "s"], ["out"], name="/head/Add")]  # fmt: skip
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], init)  # fmt: skip
    return helper.make_model(g)


def test_each_alias_names_exactly_its_nodes() -> None:
    m = _graph()
    assert _keep_fp32_nodes(m, ["stem"]) == list(STEM_CONVS)
    assert _keep_fp32_nodes(m, ["adds"]) == ["/backbone/block/Add"]  # the head's Add is the head's business
    assert _keep_fp32_nodes(m, ["depthwise"]) == ["/backbone/block/dw/Conv"]
    assert _keep_fp32_nodes(m, ["/backbone/block/Add"]) == ["/backbone/block/Add"]


def test_stem_refuses_a_graph_without_the_reference_stem() -> None:
    with pytest.raises(ValueError, match="stem"):
        _keep_fp32_nodes(_graph(stem=False), ["stem"])


def test_image_quantile_ranges_count_each_image_once(tmp_path) -> None:
    """Eight constant images of value 1..8: the 0.75 quantile of the per-image maxima is 6.25 (linear
    interpolation between the 6th and 7th of eight), whatever the images' sizes; ranges always hold 0."""
    from compression.quantize import image_quantile_ranges

    g = helper.make_graph([helper.make_node("Neg", ["image"], ["neg"], name="/backbone/Neg")], "g",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("meta", TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info("neg", TensorProto.FLOAT, None)])  # fmt: skip
    path = tmp_path / "neg.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    images = [np.full((4, 4, 3), k, np.float32) for k in range(1, 9)]
    meta = [np.zeros(10, np.float32)] * 8
    r = image_quantile_ranges(path, images, meta, range(8), quantile=0.75)
    assert r["image"] == pytest.approx((0.0, 6.25))
    assert r["neg"] == pytest.approx((-6.25, 0.0))
    with pytest.raises(ValueError, match="quantile"):
        image_quantile_ranges(path, images, meta, range(8), quantile=0.2)
