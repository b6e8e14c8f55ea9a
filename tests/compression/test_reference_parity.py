"""The PyTorch reference network against the original Keras model, its BN-folded copy and its ONNX export.

Real-model tests need the sklesion 0.2.2 wheel in the cache (``~/.cache/mendicant/wheels`` or
``$MENDICANT_SKLESION_CACHE``) and ``../shared/data``; they skip with a reason otherwise. The unit tests
at the bottom use tiny random Xception-shaped models and always run.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from compression import reference as ref  # noqa: E402
from compression.export import (  # noqa: E402
    INPUT_NAMES,
    OUTPUT_NAMES,
    export_onnx,
    head_npz_path,
    load_head_npz,
)
from compression.reference import (  # noqa: E402
    HEAD_KEYS,
    ReferenceNet,
    SamePadMaxPool,
    XceptionWidths,
    fold_batchnorm,
    head_arrays,
    head_forward_numpy,
)
from mendicant_desktop.core.metadata import Metadata, encode_metadata  # noqa: E402
from mendicant_desktop.core.preprocess import load_image, preprocess  # noqa: E402
from tests.conftest import read_labels  # noqa: E402

N_PER_POOL = {"external": 15, "ham10000": 15}  # ISIC, by pool
N_PAD = 30
P_TOL = 1e-5  # max |delta p| required everywhere
# Features: relative to the batch's largest activation (~12). Plain float32 rounding already gives
# ~3e-6 relative (torch fp32 vs fp64), so 2e-5 is tight but not flaky.
FEAT_RTOL = 2e-5

ISIC_META = [
    Metadata(),
    Metadata(age=30, sex="female", site="trunk"),
    Metadata(age=75, sex="male", site="head-or-neck"),
    Metadata(age=50, sex="male", site="leg-or-genital"),
    Metadata(sex="female", site="arm"),
    Metadata(age=5),
    Metadata(age=90, sex="male", site="arm"),
]


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sklesion_wheel():
    try:
        return ref.find_sklesion_wheel(download=False)
    except FileNotFoundError as exc:
        pytest.skip(f"sklesion {ref.SKLESION_VERSION} wheel not cached ({exc}); set {ref.CACHE_ENV}")


@pytest.fixture(scope="module")
def reference(sklesion_wheel) -> ReferenceNet:
    return ref.load_reference(sklesion_wheel.parent, download=False)


@pytest.fixture(scope="module")
def real_batch(shared_data):
    """>= 50 real images (ISIC external + HAM pool, PAD clinical) with varied metadata vectors."""
    rng = np.random.default_rng(20240601)
    items: list[tuple[str, object, Metadata]] = []
    isic = read_labels(shared_data, "isic_dermoscopy")
    for pool, n in N_PER_POOL.items():
        rows = sorted((r for r in isic if r["pool"] == pool), key=lambda r: r["image"])
        for k, i in enumerate(sorted(rng.choice(len(rows), n, replace=False))):
            path = shared_data / "isic_dermoscopy" / "images" / rows[i]["image"]
            items.append(("isic-" + pool, path, ISIC_META[(k + len(items)) % len(ISIC_META)]))
    pad = sorted(read_labels(shared_data, "pad_ufes20_clinical"), key=lambda r: r["image"])
    for i in sorted(rng.choice(len(pad), N_PAD, replace=False)):
        r = pad[i]
        meta = Metadata(age=r["age"] or None, sex=r["gender"] or "unknown", site=r["region"] or "unknown")
        items.append(("pad", shared_data / "pad_ufes20_clinical" / "images" / r["image"], meta))
    images = np.stack([preprocess(load_image(p)) for _, p, _ in items]).astype(np.float32)
    meta = np.stack([encode_metadata(m) for _, _, m in items]).astype(np.float32)
    sources = [s for s, _, _ in items]
    return images, meta, sources


@pytest.fixture(scope="module")
def torch_out(reference, real_batch):
    images, meta, _ = real_batch
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, len(images), 16):
            lg, ft = reference.logits_and_features(
                torch.from_numpy(images[i : i + 16]), torch.from_numpy(meta[i : i + 16])
            )
            logits.append(lg.numpy())
            feats.append(ft.numpy())
    logits = np.concatenate(logits)
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    return probs, logits, np.concatenate(feats)


@pytest.fixture(scope="module")
def keras_probs(sklesion_wheel, real_batch):
    import importlib.util

    pytest.importorskip("h5py")
    # Only look for Keras here: importing it before the oracle sets KERAS_BACKEND=torch would pick TF.
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    from compression.keras_oracle import KerasOracle

    images, meta, _ = real_batch
    oracle = KerasOracle(sklesion_wheel.parent, download=False)
    return oracle.predict(images, meta, batch_size=16)


@pytest.fixture(scope="module")
def onnx_path(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference_onnx") / "reference_fp32.onnx"
    return export_onnx(reference, path, optimize="onnxslim")


def _session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------ real model


def test_real_batch_is_mixed(real_batch):
    images, meta, sources = real_batch
    assert images.shape[1:] == (254, 254, 3) and images.dtype == np.float32 and len(images) >= 50
    assert {"isic-external", "isic-ham10000", "pad"} <= set(sources)
    assert len({tuple(v) for v in meta.round(4)}) >= 10, "metadata vectors should vary"
    assert images.min() >= 0.0 and images.max() <= 255.0


def test_keras_vs_torch_probabilities(keras_probs, torch_out, real_batch):
    probs, _, _ = torch_out
    assert keras_probs.shape == probs.shape == (len(real_batch[0]), 7)
    np.testing.assert_allclose(keras_probs.sum(1), 1.0, atol=1e-5)
    diff = np.abs(keras_probs - probs).max()
    print(f"Keras vs torch: max |dp| = {diff:.3e} on {len(probs)} real images")
    assert diff <= P_TOL
    assert (keras_probs.argmax(1) == probs.argmax(1)).all()
    # The model is not constant: the batch spans several predicted classes.
    assert len(set(probs.argmax(1))) >= 3


def test_features_and_logits_shapes(reference, torch_out):
    probs, logits, feats = torch_out
    assert feats.shape[1:] == (2048, 8, 8)
    assert (feats >= 0).all(), "features are a ReLU output"
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits), 1).numpy(), probs, atol=1e-7)
    assert isinstance(reference.head, ref.ReferenceHead)


def _gradcam_weights_numpy(
    a: dict[str, np.ndarray], pooled: np.ndarray, meta: np.ndarray, c: int
) -> np.ndarray:
    """d logit_c / d pooled by hand from the head arrays (what the numpy-only app does)."""
    z1 = pooled @ a["img_fc_w"] + a["img_fc_b"]
    h1 = np.maximum(z1, 0) * a["img_bn_scale"] + a["img_bn_shift"]
    m = np.maximum(meta @ a["meta_fc1_w"] + a["meta_fc1_b"], 0) * a["meta_bn1_scale"] + a["meta_bn1_shift"]
    m = np.maximum(m @ a["meta_fc2_w"] + a["meta_fc2_b"], 0) * a["meta_bn2_scale"] + a["meta_bn2_shift"]
    z3 = np.concatenate([h1, m], axis=1) @ a["fc_w"] + a["fc_b"]
    g3 = a["out_w"][:, c] * a["fc_bn_scale"] * (z3 > 0)  # (N, 32)
    g1 = (g3 @ a["fc_w"][: h1.shape[1]].T) * a["img_bn_scale"] * (z1 > 0)  # (N, 264)
    return g1 @ a["img_fc_w"].T  # (N, C)


def test_logits_and_exact_gradcam_weights(reference, real_batch, torch_out):
    images, meta, _ = real_batch
    x, m = torch.from_numpy(images[:2]), torch.from_numpy(meta[:2])
    with torch.no_grad():
        lg = reference.logits(x, m).numpy()
    np.testing.assert_allclose(lg, torch_out[1][:2], atol=1e-5)
    pooled_np = torch_out[2][:4].mean(axis=(2, 3))
    pooled = torch.from_numpy(pooled_np).requires_grad_(True)
    out = reference.head(pooled, torch.from_numpy(meta[:4]))
    arrays = head_arrays(reference.head)
    for c in range(7):
        (grad,) = torch.autograd.grad(out[:, c].sum(), pooled, retain_graph=True)
        want = grad.numpy()
        got = _gradcam_weights_numpy(arrays, pooled_np, meta[:4], c)
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_fold_batchnorm_is_equivalent(reference, real_batch, torch_out):
    images, meta, _ = real_batch
    folded = fold_batchnorm(reference)
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in folded.modules())
    assert isinstance(folded.normalization, torch.nn.Identity)
    assert any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in reference.modules())
    sel = slice(0, 8)
    with torch.no_grad():
        p, f = folded(torch.from_numpy(images[sel]), torch.from_numpy(meta[sel]))
    assert np.abs(p.numpy() - torch_out[0][sel]).max() <= P_TOL
    assert np.abs(f.numpy() - torch_out[2][sel]).max() <= FEAT_RTOL * np.abs(torch_out[2]).max()


def test_onnx_graph_contract(onnx_path):
    import onnx

    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    shapes = {vi.name: dims(vi) for vi in list(model.graph.input) + list(model.graph.output)}
    batch = shapes["image"][0]
    assert isinstance(batch, str) and batch, "batch axis must be dynamic"
    assert shapes["image"][1:] == [254, 254, 3]
    assert shapes["meta"] == [batch, 10]
    assert shapes["probs"] == [batch, 7]
    assert shapes["features"] == [batch, 2048, 8, 8]
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops
    assert not ops & {"Sub", "Div", "Mul"}, f"unfolded affine ops left: {ops & {'Sub', 'Div', 'Mul'}}"
    assert all(n.op_type != "Pad" for n in model.graph.node), "max-pool padding must be in MaxPool"
    assert onnx_path.stat().st_size > 50e6  # FP32 weights (~85 MB), not quantised
    assert any(n.name.startswith("/head/") for n in model.graph.node)


def test_torch_vs_onnxruntime(onnx_path, real_batch, torch_out):
    images, meta, _ = real_batch
    sess = _session(onnx_path)
    probs, feats = [], []
    for i in range(0, len(images), 16):
        p, f = sess.run(list(OUTPUT_NAMES), {"image": images[i : i + 16], "meta": meta[i : i + 16]})
        probs.append(p)
        feats.append(f)
    probs, feats = np.concatenate(probs), np.concatenate(feats)
    dp = np.abs(probs - torch_out[0]).max()
    df = np.abs(feats - torch_out[2]).max()
    print(f"torch vs ORT: max |dp| = {dp:.3e}, max |dfeatures| = {df:.3e} on {len(probs)} real images")
    assert dp <= P_TOL
    assert df <= FEAT_RTOL * np.abs(torch_out[2]).max()
    # Dynamic batch: a single image gives the same answer as inside the batch.
    p1, f1 = sess.run(None, {"image": images[3:4], "meta": meta[3:4]})
    assert p1.shape == (1, 7) and f1.shape == (1, 2048, 8, 8)
    assert np.abs(p1 - probs[3:4]).max() <= P_TOL


def test_head_npz_reproduces_torch_logits(onnx_path, reference, torch_out, real_batch):
    npz = head_npz_path(onnx_path)
    assert npz.name == "reference_fp32.head.npz" and npz.parent == onnx_path.parent
    arrays = load_head_npz(npz)
    assert set(arrays) == set(HEAD_KEYS)
    assert all(a.dtype == np.float32 for a in arrays.values())
    expected = {
        "img_fc_w": (2048, 264), "img_fc_b": (264,), "img_bn_scale": (264,), "img_bn_shift": (264,),
        "meta_fc1_w": (10, 224), "meta_fc1_b": (224,), "meta_bn1_scale": (224,), "meta_bn1_shift": (224,),
        "meta_fc2_w": (224, 64), "meta_fc2_b": (64,), "meta_bn2_scale": (64,), "meta_bn2_shift": (64,),
        "fc_w": (328, 32), "fc_b": (32,), "fc_bn_scale": (32,), "fc_bn_shift": (32,),
        "out_w": (32, 7), "out_b": (7,),
    }  # fmt: skip
    assert {k: a.shape for k, a in arrays.items()} == expected
    # BN scale/shift are the real (unfolded) BN affines, not identities.
    assert not np.allclose(arrays["img_bn_scale"], 1.0)
    _, meta, _ = real_batch
    _, logits, feats = torch_out
    pooled = feats.astype(np.float64).mean(axis=(2, 3)).astype(np.float32)
    np_logits = head_forward_numpy(arrays, pooled, meta)
    assert np.abs(np_logits - logits).max() <= 1e-4
    p = np.exp(np_logits - np_logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.abs(p - torch_out[0]).max() <= P_TOL
    # The sidecar equals the head's own arrays.
    for k, v in head_arrays(reference.head).items():
        np.testing.assert_array_equal(arrays[k], v)


# ------------------------------------------------------------------ units (tiny random models, always run)


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    model.normalization.mean.copy_(torch.tensor([150.0, 120.0, 110.0]))
    model.normalization.variance.copy_(torch.tensor([2500.0, 2000.0, 2200.0]))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = ReferenceNet(XceptionWidths().scaled(1 / 16, n_middle=2)).eval()
    _randomise_bn(model)
    return model


def _tiny_inputs(n: int = 3):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(n, 254, 254, 3, generator=g) * 255
    meta = torch.zeros(n, 10)
    meta[:, 1], meta[:, 6], meta[:, 8] = 1, 1, torch.rand(n, generator=g)
    return image, meta


def test_widths_default_is_real_xception():
    w = XceptionWidths()
    assert w.stem == (32, 64) and w.trunk == 728 and len(w.middle) == 8 and w.out_channels == 2048
    t = w.scaled(1 / 32, n_middle=1)
    assert len(t.middle) == 1 and t.out_channels == 64 and t.trunk == 23


def test_tiny_model_shapes(tiny):
    image, meta = _tiny_inputs()
    with torch.no_grad():
        probs, feats = tiny(image, meta)
    assert probs.shape == (3, 7) and feats.shape == (3, tiny.widths.out_channels, 8, 8)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, atol=1e-6)
    logits_model = ReferenceNet(tiny.widths, output="logits")
    logits_model.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        lg, _ = logits_model.eval()(image, meta)
    np.testing.assert_allclose(torch.softmax(lg, 1).numpy(), probs.numpy(), atol=1e-6)


def test_captum_gradcam_on_logits(tiny):
    captum_attr = pytest.importorskip("captum.attr")
    image, meta = _tiny_inputs(2)
    cam = captum_attr.LayerGradCam(tiny.logits, tiny.backbone.block14)
    attr = cam.attribute((image, meta), target=4)
    assert attr.shape == (2, 1, 8, 8) and torch.isfinite(attr).all()


@pytest.mark.parametrize("size", [124, 62, 31, 16, 9, 8, 7])
def test_same_pad_maxpool_matches_tf_semantics(size):
    x = torch.randn(2, 3, size, size) - 5.0  # negative values: zero padding would show
    out = SamePadMaxPool(3, 2)(x)
    before, after = ref.same_pads(size, 3, 2)
    expected = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(x, (before, after, before, after), value=float("-inf")), 3, 2
    )
    assert out.shape == expected.shape == (2, 3, -(-size // 2), -(-size // 2))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_fold_batchnorm_tiny(tiny):
    image, meta = _tiny_inputs()
    folded = fold_batchnorm(tiny)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        p0, f0 = tiny(image, meta)
        p1, f1 = folded(image, meta)
    torch.testing.assert_close(p1, p0, rtol=0, atol=1e-5)
    torch.testing.assert_close(f1, f0, rtol=1e-4, atol=1e-4)
    # Folding a second time is a no-op, and the original keeps its BatchNorms.
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny.modules())
    with torch.no_grad():
        p2, _ = fold_batchnorm(folded)(image, meta)
    torch.testing.assert_close(p2, p1, rtol=0, atol=1e-7)


def test_head_arrays_match_torch_head(tiny):
    g = torch.Generator().manual_seed(2)
    pooled = torch.rand(4, tiny.widths.out_channels, generator=g)
    meta = torch.rand(4, 10, generator=g)
    with torch.no_grad():
        want = tiny.head(pooled, meta).numpy()
        want_folded = fold_batchnorm(tiny).head(pooled, meta).numpy()
    got = head_forward_numpy(head_arrays(tiny.head), pooled.numpy(), meta.numpy())
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(want_folded, want, atol=1e-5)
    folded_arrays = head_arrays(fold_batchnorm(tiny).head)
    np.testing.assert_array_equal(folded_arrays["img_bn_scale"], 1.0)
    np.testing.assert_allclose(
        head_forward_numpy(folded_arrays, pooled.numpy(), meta.numpy()), want, atol=1e-5
    )


def test_export_tiny_onnx_roundtrip(tiny, tmp_path):
    path = export_onnx(tiny, tmp_path / "tiny.onnx", optimize="ort")
    assert head_npz_path(path).is_file()
    image, meta = _tiny_inputs(3)
    sess = _session(path)
    assert [i.name for i in sess.get_inputs()] == list(INPUT_NAMES)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    p, f = sess.run(None, {"image": image.numpy(), "meta": meta.numpy()})
    with torch.no_grad():
        p0, f0 = tiny(image, meta)
    assert np.abs(p - p0.numpy()).max() <= P_TOL
    assert np.abs(f - f0.numpy()).max() <= FEAT_RTOL * max(1.0, float(f0.abs().max()))
    p1, _ = sess.run(None, {"image": image.numpy()[:1], "meta": meta.numpy()[:1]})
    assert np.abs(p1 - p[:1]).max() <= P_TOL


def test_keras_weight_group_names():
    assert ref._to_snake_case("SeparableConv2D") == "separable_conv2d"
    assert ref._to_snake_case("BatchNormalization") == "batch_normalization"
    assert ref._to_snake_case("Conv2D") == "conv2d"
    assert ref._to_snake_case("Functional") == "functional"
    layers = [
        {"class_name": "InputLayer", "config": {"name": "in"}},
        {"class_name": "Dense", "config": {"name": "dense_1"}},
        {"class_name": "Dense", "config": {"name": "dense"}},
        {"class_name": "Functional", "config": {"name": "xception", "layers": [
            {"class_name": "Conv2D", "config": {"name": "block1_conv1"}},
            {"class_name": "Conv2D", "config": {"name": "conv2d"}},
        ]}},
    ]  # fmt: skip
    out: dict = {}
    ref._walk_config(layers, "layers", out)
    assert out["dense_1"][0] == "layers/dense"  # h5 groups follow layer order, not config names
    assert out["dense"][0] == "layers/dense_1"
    assert out["block1_conv1"][0] == "layers/functional/layers/conv2d"
    assert out["conv2d"][0] == "layers/functional/layers/conv2d_1"


def test_missing_wheel_without_download_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ref.find_sklesion_wheel(tmp_path, download=False)


def test_corrupt_wheel_is_refused(tmp_path):
    (tmp_path / ref.SKLESION_WHEEL).write_bytes(b"not the wheel")
    with pytest.raises(ValueError, match="SHA-256"):
        ref.find_sklesion_wheel(tmp_path, download=False)
