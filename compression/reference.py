"""The reference network (``sklesion==0.2.2``, MIT) re-implemented as a plain PyTorch module.

The reference model is a Keras 3 functional model: HAM10000 Xception at 254x254 with a metadata branch::

    image (N,254,254,3) 0..255 -> Normalization -> Xception(include_top=False, pooling="avg") -> 2048
        -> dropout(0.3) -> dense(264, relu) -> BN4
    meta (N,10) -> dense_1(224, relu) -> BN5 -> dense_2(64, relu) -> BN6
    concat[BN4, BN6] -> dropout(0.2) -> dense_3(32, relu) -> BN7 -> dense_4(7, softmax)

Classes, in output order: akiec, bcc, bkl, df, mel, nv, vasc.

Keras details reproduced here: SeparableConv2D = depthwise 3x3 then pointwise 1x1 (no bias);
BatchNormalization eps = 1e-3; Keras/TF ``"same"`` padding before the stride-2 3x3 max-pools is uneven
(0 before, 1 after for even sizes), which is done exactly by ``padding=before`` + ``ceil_mode=True``; the
stride-2 1x1 shortcut convs need no padding. The Normalization layer computes
``(x - mean) / max(sqrt(var), 1e-7)``.

The backbone is parameterised by channel widths (:class:`XceptionWidths`) so tests and the pruning work can
build small Xception-shaped models with the same class; the default is the real Xception.

Weights are read from the ``model.weights.h5`` inside the wheel's ``model.keras`` with h5py only. Keras 3
names the weight groups by class and creation order (``conv2d_3``, ``separable_conv2d_17``), not by the
config names, so the mapping is rebuilt from ``config.json`` in layer order and every shape is checked.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mendicant_desktop.core.bundle import sha256_file
from mendicant_desktop.core.results import CLASS_NAMES

__all__ = [
    "CLASSES",
    "IMAGE_SIZE",
    "META_DIM",
    "BN_EPS",
    "SKLESION_VERSION",
    "SKLESION_WHEEL",
    "SKLESION_WHEEL_SHA256",
    "CACHE_ENV",
    "HEAD_KEYS",
    "XceptionWidths",
    "HeadDims",
    "SeparableConv2d",
    "ConvBN",
    "SepConvBN",
    "SamePadMaxPool",
    "same_pads",
    "InputNormalization",
    "EntryBlock",
    "MiddleBlock",
    "ExitBlock",
    "Xception",
    "ReferenceHead",
    "ReferenceNet",
    "default_cache_dir",
    "find_sklesion_wheel",
    "extract_model_keras",
    "read_keras_weights",
    "load_weights_from_keras",
    "load_reference",
    "fold_batchnorm",
    "head_arrays",
    "head_forward_numpy",
]

CLASSES: tuple[str, ...] = CLASS_NAMES  # the app's one class list (core.results)
IMAGE_SIZE: tuple[int, int] = (254, 254)
META_DIM = 10
BN_EPS = 1e-3
NORM_EPS = 1e-7  # keras.backend.epsilon(), the floor of sqrt(variance) in the Normalization layer

SKLESION_VERSION = "0.2.2"
SKLESION_WHEEL = f"sklesion-{SKLESION_VERSION}-py3-none-any.whl"
#: SHA-256 of the PyPI wheel, pinned so a tampered or different download is refused.
SKLESION_WHEEL_SHA256 = "a4ef0ebc99c6b0a7e1e55b1a0c3ba418f0d6d6cfdffd18a7dd414460a0f671b0"
CACHE_ENV = "MENDICANT_SKLESION_CACHE"


# --------------------------------------------------------------------------------------------------
# Architecture description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class XceptionWidths:
    """Every independently sized channel count of the Keras Xception backbone.

    - ``stem``: out channels of block1_conv1 and block1_conv2.
    - ``entry``: per entry block (block2..block4), ``(sepconv1 out, block out)``; the block out is the
      sepconv2 out, the 1x1 shortcut out and the residual sum.
    - ``middle``: per middle block (block5..block12), ``(sepconv1 out, sepconv2 out)``; sepconv3 out is
      the trunk width, i.e. the last entry block's out, because of the identity shortcut.
    - ``block13``: ``(sepconv1 out, block out)`` of the last strided residual block.
    - ``block14``: ``(sepconv1 out, sepconv2 out)``; the latter is the feature-map channel count C.
    """

    stem: tuple[int, int] = (32, 64)
    entry: tuple[tuple[int, int], ...] = ((128, 128), (256, 256), (728, 728))
    middle: tuple[tuple[int, int], ...] = ((728, 728),) * 8
    block13: tuple[int, int] = (728, 1024)
    block14: tuple[int, int] = (1536, 2048)

    def __post_init__(self) -> None:
        if len(self.entry) < 1:
            raise ValueError("Xception needs at least one entry block")
        for name, value in (("stem", self.stem), ("block13", self.block13), ("block14", self.block14)):
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"{name} must be two positive ints, got {value!r}")
        for name, blocks in (("entry", self.entry), ("middle", self.middle)):
            for pair in blocks:
                if len(pair) != 2 or min(pair) < 1:
                    raise ValueError(f"{name} entries must be two positive ints, got {pair!r}")

    @property
    def trunk(self) -> int:
        """Channel width of the middle flow (the last entry block's output)."""
        return self.entry[-1][1]

    @property
    def out_channels(self) -> int:
        """C of the feature map (block14_sepconv2_act)."""
        return self.block14[1]

    @classmethod
    def default(cls) -> XceptionWidths:
        return cls()

    def scaled(self, mult: float, *, n_middle: int | None = None, minimum: int = 1) -> XceptionWidths:
        """All widths multiplied by ``mult`` (rounded, at least ``minimum``); optionally fewer middle blocks.

        ``XceptionWidths().scaled(1 / 32, n_middle=1)`` gives a tiny random model for fast tests.
        """

        def s(c: int) -> int:
            return max(minimum, int(round(c * mult)))

        middle = self.middle
        if n_middle is not None:
            middle = (self.middle[0] if self.middle else (self.trunk, self.trunk),) * n_middle
        return XceptionWidths(
            stem=(s(self.stem[0]), s(self.stem[1])),
            entry=tuple((s(a), s(b)) for a, b in self.entry),
            middle=tuple((s(a), s(b)) for a, b in middle),
            block13=(s(self.block13[0]), s(self.block13[1])),
            block14=(s(self.block14[0]), s(self.block14[1])),
        )


@dataclass(frozen=True)
class HeadDims:
    """Sizes of the classification head; defaults are the reference model's."""

    img_fc: int = 264
    meta_fc1: int = 224
    meta_fc2: int = 64
    fc: int = 32
    n_classes: int = len(CLASSES)
    meta_dim: int = META_DIM
    img_dropout: float = 0.3
    fc_dropout: float = 0.2


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=BN_EPS)


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth_multiplier 1, 3x3 "same", stride 1): depthwise then pointwise."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel_size, padding=kernel_size // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ConvBN(nn.Module):
    """A convolution followed by its BatchNorm (``bn`` becomes Identity after :func:`fold_batchnorm`)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self.bn: nn.Module = _bn2d(conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SepConvBN(nn.Module):
    """SeparableConv2D + BatchNorm; folding puts the BN into ``sep.pointwise``."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.sep = SeparableConv2d(cin, cout)
        self.bn: nn.Module = _bn2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.sep(x))


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/Keras "same" padding (before, after) along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SamePadMaxPool(nn.Module):
    """Keras ``MaxPooling2D(3, 2, padding="same")``.

    TF pads ``(before, after)`` with after - before in {0, 1}; ``padding=before`` with ``ceil_mode=True``
    gives exactly the same windows (the extra right/bottom window positions see only real pixels), and
    exports to a single ONNX MaxPool without a Pad of -inf.
    """

    def __init__(self, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        ph = same_pads(h, self.kernel_size, self.stride)
        pw = same_pads(w, self.kernel_size, self.stride)
        if ph[1] - ph[0] >= self.stride or pw[1] - pw[0] >= self.stride:  # pragma: no cover - k=3, s=2
            x = F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=float("-inf"))
            return F.max_pool2d(x, self.kernel_size, self.stride)
        return F.max_pool2d(x, self.kernel_size, self.stride, padding=(ph[0], pw[0]), ceil_mode=True)


class InputNormalization(nn.Module):
    """Keras ``Normalization(axis=-1)``: ``(x - mean) / max(sqrt(variance), 1e-7)`` on NCHW input."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("variance", torch.ones(channels))

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) such that the layer is ``x * scale + shift`` per channel."""
        std = torch.clamp(torch.sqrt(self.variance), min=NORM_EPS)
        return 1.0 / std, -self.mean / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = torch.clamp(torch.sqrt(self.variance), min=NORM_EPS)
        return (x - self.mean[None, :, None, None]) / std[None, :, None, None]


class EntryBlock(nn.Module):
    """Strided residual block (Keras block2..block4 and block13).

    main: [relu] sepconv1-bn relu sepconv2-bn maxpool(same);  shortcut: conv1x1/2-bn;  out = main + shortcut.
    """

    def __init__(self, cin: int, mid: int, cout: int, *, pre_relu: bool) -> None:
        super().__init__()
        self.pre_relu = pre_relu
        self.shortcut = ConvBN(nn.Conv2d(cin, cout, 1, stride=2, bias=False))
        self.sepconv1 = SepConvBN(cin, mid)
        self.sepconv2 = SepConvBN(mid, cout)
        self.pool = SamePadMaxPool(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.shortcut(x)
        y = F.relu(x) if self.pre_relu else x
        y = F.relu(self.sepconv1(y))
        y = self.pool(self.sepconv2(y))
        return y + residual


class MiddleBlock(nn.Module):
    """Identity residual block (Keras block5..block12): 3x (relu sepconv-bn) + x."""

    def __init__(self, channels: int, mid1: int, mid2: int) -> None:
        super().__init__()
        self.sepconv1 = SepConvBN(channels, mid1)
        self.sepconv2 = SepConvBN(mid1, mid2)
        self.sepconv3 = SepConvBN(mid2, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.sepconv1(F.relu(x))
        y = self.sepconv2(F.relu(y))
        y = self.sepconv3(F.relu(y))
        return y + x


class ExitBlock(nn.Module):
    """Keras block14: sepconv1-bn relu sepconv2-bn relu (no shortcut)."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.sepconv1 = SepConvBN(cin, mid)
        self.sepconv2 = SepConvBN(mid, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.sepconv2(F.relu(self.sepconv1(x))))


class Xception(nn.Module):
    """Keras ``applications.Xception(include_top=False)`` up to block14_sepconv2_act, NCHW in and out."""

    def __init__(self, widths: XceptionWidths | None = None, in_channels: int = 3) -> None:
        super().__init__()
        w = widths or XceptionWidths()
        self.widths = w
        self.conv1 = ConvBN(nn.Conv2d(in_channels, w.stem[0], 3, stride=2, bias=False))
        self.conv2 = ConvBN(nn.Conv2d(w.stem[0], w.stem[1], 3, bias=False))
        entry = []
        cin = w.stem[1]
        for i, (mid, cout) in enumerate(w.entry):
            entry.append(EntryBlock(cin, mid, cout, pre_relu=i > 0))
            cin = cout
        self.entry = nn.ModuleList(entry)
        self.middle = nn.ModuleList(MiddleBlock(cin, a, b) for a, b in w.middle)
        self.block13 = EntryBlock(cin, w.block13[0], w.block13[1], pre_relu=True)
        self.block14 = ExitBlock(w.block13[1], w.block14[0], w.block14[1])

    @property
    def out_channels(self) -> int:
        return self.widths.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        for block in self.entry:
            x = block(x)
        for block in self.middle:
            x = block(x)
        x = self.block13(x)
        return self.block14(x)


class ReferenceHead(nn.Module):
    """Pooled image features (N,C) + metadata (N,10) -> logits (N,7).

    BatchNorms sit after the ReLUs, as in the Keras graph; dropouts are identity in eval mode.
    """

    def __init__(self, in_features: int = 2048, dims: HeadDims | None = None) -> None:
        super().__init__()
        d = dims or HeadDims()
        self.dims = d
        self.img_dropout = nn.Dropout(d.img_dropout)
        self.img_fc = nn.Linear(in_features, d.img_fc)
        self.img_bn: nn.Module = _bn1d(d.img_fc)
        self.meta_fc1 = nn.Linear(d.meta_dim, d.meta_fc1)
        self.meta_bn1: nn.Module = _bn1d(d.meta_fc1)
        self.meta_fc2 = nn.Linear(d.meta_fc1, d.meta_fc2)
        self.meta_bn2: nn.Module = _bn1d(d.meta_fc2)
        self.fc_dropout = nn.Dropout(d.fc_dropout)
        self.fc = nn.Linear(d.img_fc + d.meta_fc2, d.fc)
        self.fc_bn: nn.Module = _bn1d(d.fc)
        self.out = nn.Linear(d.fc, d.n_classes)

    def forward(self, pooled: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        img = self.img_bn(F.relu(self.img_fc(self.img_dropout(pooled))))
        m = self.meta_bn1(F.relu(self.meta_fc1(meta)))
        m = self.meta_bn2(F.relu(self.meta_fc2(m)))
        z = self.fc_dropout(torch.cat([img, m], dim=1))
        z = self.fc_bn(F.relu(self.fc(z)))
        return self.out(z)


class ReferenceNet(nn.Module):
    """The full reference model.

    ``forward(image, meta) -> (probs (N,7), features (N,C,h,w))`` with ``image`` float32 NHWC (N,254,254,3)
    in 0..255 and ``meta`` float32 (N,10). ``features`` is block14_sepconv2_act (the map the global average
    pool reads); ``logits(image, meta)`` gives the pre-softmax scores (use it as Captum's forward_func).
    With ``output="logits"`` the forward returns logits instead of probabilities (same tuple layout).
    """

    def __init__(
        self,
        widths: XceptionWidths | None = None,
        head_dims: HeadDims | None = None,
        *,
        output: str = "probs",
    ) -> None:
        super().__init__()
        if output not in ("probs", "logits"):
            raise ValueError(f"output must be 'probs' or 'logits', got {output!r}")
        self.output = output
        self.normalization = InputNormalization(3)
        self.backbone = Xception(widths)
        self.head = ReferenceHead(self.backbone.out_channels, head_dims)

    @property
    def widths(self) -> XceptionWidths:
        return self.backbone.widths

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """NHWC 0..255 image -> block14_sepconv2_act feature map (N,C,h,w)."""
        x = image.permute(0, 3, 1, 2)
        return self.backbone(self.normalization(x))

    def logits_and_features(
        self, image: torch.Tensor, meta: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(image)
        pooled = feats.mean(dim=(2, 3))
        return self.head(pooled, meta), feats

    def logits(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        """Pre-softmax class scores (N,7)."""
        return self.logits_and_features(image, meta)[0]

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = self.logits_and_features(image, meta)
        if self.output == "logits":
            return logits, feats
        return torch.softmax(logits, dim=1), feats


# --------------------------------------------------------------------------------------------------
# Loading the Keras weights
# --------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mendicant" / "wheels"


def find_sklesion_wheel(cache_dir: str | os.PathLike | None = None, *, download: bool = True) -> Path:
    """Path of the verified ``sklesion==0.2.2`` wheel, downloading it with pip into the cache if needed.

    ``cache_dir`` defaults to ``$MENDICANT_SKLESION_CACHE`` or ``~/.cache/mendicant/wheels``. Raises
    FileNotFoundError when it is absent and ``download`` is False or pip fails, and ValueError when the
    file's SHA-256 differs from the pinned one.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    wheel = cache / SKLESION_WHEEL
    if not wheel.is_file():
        if not download:
            raise FileNotFoundError(f"{SKLESION_WHEEL} not found in {cache}")
        cache.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            f"sklesion=={SKLESION_VERSION}", "-d", str(cache),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not wheel.is_file():
            raise FileNotFoundError(
                f"could not download sklesion=={SKLESION_VERSION} into {cache}: "
                f"{(proc.stderr or proc.stdout).strip()[-500:]}"
            )
    digest = sha256_file(wheel)
    if digest != SKLESION_WHEEL_SHA256:
        raise ValueError(
            f"{wheel} has SHA-256 {digest}, expected {SKLESION_WHEEL_SHA256} (corrupt or not the PyPI wheel)"
        )
    return wheel


def extract_model_keras(wheel: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Write ``sklesion/model.keras`` from the wheel into ``dest``; returns its path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "model.keras"
    with zipfile.ZipFile(wheel) as zf, zf.open("sklesion/model.keras") as src, open(out, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return out


def _to_snake_case(name: str) -> str:
    """keras.src.utils.naming.to_snake_case (the names Keras 3 gives the weight groups)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


def _walk_config(layers: Sequence[dict], prefix: str, out: dict[str, tuple[str, str]]) -> None:
    """Map config layer name -> (h5 group path, class name), numbering per class in layer order."""
    used: dict[str, int] = {}
    for layer in layers:
        cls = layer["class_name"]
        base = _to_snake_case(cls)
        if base in used:
            used[base] += 1
            key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            key = base
        path = f"{prefix}/{key}"
        name = layer["config"]["name"]
        if name in out:
            raise ValueError(f"duplicate layer name {name!r} in config.json")
        out[name] = (path, cls)
        if "layers" in layer.get("config", {}):
            _walk_config(layer["config"]["layers"], f"{path}/layers", out)


def read_keras_weights(model_keras: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Read a Keras 3 ``.keras`` archive into ``{config layer name: [vars in order]}`` with h5py."""
    import h5py

    with zipfile.ZipFile(model_keras) as zf:
        config = json.loads(zf.read("config.json"))
        with tempfile.TemporaryDirectory(prefix="mendicant-keras-") as tmp:
            h5_path = zf.extract("model.weights.h5", tmp)
            mapping: dict[str, tuple[str, str]] = {}
            _walk_config(config["config"]["layers"], "layers", mapping)
            weights: dict[str, list[np.ndarray]] = {}
            with h5py.File(h5_path, "r") as f:
                for name, (path, _cls) in mapping.items():
                    grp = f.get(f"{path}/vars")
                    if grp is None or len(grp) == 0:
                        continue
                    weights[name] = [np.asarray(grp[str(i)]) for i in range(len(grp))]
    return weights


def _keras_names(widths: XceptionWidths) -> Iterator[tuple[str, str, str]]:
    """(kind, keras config name, torch module path) for every weighted layer of the reference model.

    Keras auto-names the shortcut convs/BNs ``conv2d``, ``conv2d_1``, ... and ``batch_normalization``,
    ``batch_normalization_1``, ... in creation order inside the Xception functional.
    """
    yield "norm", "normalization", "normalization"
    yield "conv", "block1_conv1", "backbone.conv1.conv"
    yield "bn", "block1_conv1_bn", "backbone.conv1.bn"
    yield "conv", "block1_conv2", "backbone.conv2.conv"
    yield "bn", "block1_conv2_bn", "backbone.conv2.bn"
    n_entry, n_middle = len(widths.entry), len(widths.middle)

    def sfx(j: int) -> str:
        return "" if j == 0 else f"_{j}"

    def strided(path: str, b: int, j: int) -> Iterator[tuple[str, str, str]]:
        for k in (1, 2):
            yield "sep", f"block{b}_sepconv{k}", f"{path}.sepconv{k}.sep"
            yield "bn", f"block{b}_sepconv{k}_bn", f"{path}.sepconv{k}.bn"
        yield "conv", f"conv2d{sfx(j)}", f"{path}.shortcut.conv"
        yield "bn", f"batch_normalization{sfx(j)}", f"{path}.shortcut.bn"

    for i in range(n_entry):
        yield from strided(f"backbone.entry.{i}", 2 + i, i)
    for m in range(n_middle):
        b = 2 + n_entry + m
        for k in (1, 2, 3):
            yield "sep", f"block{b}_sepconv{k}", f"backbone.middle.{m}.sepconv{k}.sep"
            yield "bn", f"block{b}_sepconv{k}_bn", f"backbone.middle.{m}.sepconv{k}.bn"
    yield from strided("backbone.block13", 2 + n_entry + n_middle, n_entry)
    b14 = 3 + n_entry + n_middle
    for k in (1, 2):
        yield "sep", f"block{b14}_sepconv{k}", f"backbone.block14.sepconv{k}.sep"
        yield "bn", f"block{b14}_sepconv{k}_bn", f"backbone.block14.sepconv{k}.bn"
    # Head (top-level config names).
    yield "dense", "dense", "head.img_fc"
    yield "bn", "batch_normalization_4", "head.img_bn"
    yield "dense", "dense_1", "head.meta_fc1"
    yield "bn", "batch_normalization_5", "head.meta_bn1"
    yield "dense", "dense_2", "head.meta_fc2"
    yield "bn", "batch_normalization_6", "head.meta_bn2"
    yield "dense", "dense_3", "head.fc"
    yield "bn", "batch_normalization_7", "head.fc_bn"
    yield "dense", "dense_4", "head.out"


def _copy(dst: torch.Tensor, src: np.ndarray, what: str) -> None:
    t = torch.from_numpy(np.ascontiguousarray(src, dtype=np.float32))
    if tuple(dst.shape) != tuple(t.shape):
        raise ValueError(f"{what}: shape {tuple(t.shape)} from Keras does not fit {tuple(dst.shape)}")
    with torch.no_grad():
        dst.copy_(t)


def load_weights_from_keras(model: ReferenceNet, weights: dict[str, list[np.ndarray]]) -> ReferenceNet:
    """Copy Keras weights (from :func:`read_keras_weights`) into ``model`` in place, checking every shape.

    The head's Keras names are top-level and the Xception's are inside the nested functional; both live in
    one flat dict because all config names in the reference model are unique.
    """
    used = set()
    for kind, kname, tpath in _keras_names(model.widths):
        if kname not in weights:
            raise KeyError(f"Keras layer {kname!r} (for {tpath}) not found in the weights file")
        v = weights[kname]
        used.add(kname)
        mod = model.get_submodule(tpath)
        what = f"{kname} -> {tpath}"
        if kind == "norm":
            _copy(mod.mean, v[0], what + ".mean")
            _copy(mod.variance, v[1], what + ".variance")
        elif kind == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
            _copy(mod.weight, v[0].transpose(3, 2, 0, 1), what)
        elif kind == "sep":  # depthwise (kh, kw, in, 1) -> (in, 1, kh, kw); pointwise (1, 1, in, out)
            _copy(mod.depthwise.weight, v[0].transpose(2, 3, 0, 1), what + ".depthwise")
            _copy(mod.pointwise.weight, v[1].transpose(3, 2, 0, 1), what + ".pointwise")
        elif kind == "bn":  # gamma, beta, moving_mean, moving_variance
            _copy(mod.weight, v[0], what + ".gamma")
            _copy(mod.bias, v[1], what + ".beta")
            _copy(mod.running_mean, v[2], what + ".moving_mean")
            _copy(mod.running_var, v[3], what + ".moving_variance")
        elif kind == "dense":  # (in, out) -> (out, in)
            _copy(mod.weight, v[0].T, what + ".kernel")
            _copy(mod.bias, v[1], what + ".bias")
        else:  # pragma: no cover
            raise AssertionError(kind)
    unused = sorted(set(weights) - used)
    if unused:
        raise ValueError(f"Keras weights left unused (mapping is wrong): {unused[:10]}")
    return model


def load_reference(cache_dir: str | os.PathLike | None = None, *, download: bool = True) -> ReferenceNet:
    """The reference network with the sklesion 0.2.2 weights, in eval mode (BatchNorms not folded)."""
    wheel = find_sklesion_wheel(cache_dir, download=download)
    with tempfile.TemporaryDirectory(prefix="mendicant-sklesion-") as tmp:
        weights = read_keras_weights(extract_model_keras(wheel, tmp))
    model = ReferenceNet()
    load_weights_from_keras(model, weights)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as ``y = x * scale + shift`` (float64 for exact folding)."""
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)
    var = bn.running_var.detach().double()
    mean = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - mean * scale


def _fold_into_conv(conv: nn.Conv2d, bn: nn.Module) -> None:
    scale, shift = _bn_affine(bn)
    w = conv.weight.detach().double() * scale.view(-1, 1, 1, 1)
    b = conv.bias.detach().double() * scale + shift if conv.bias is not None else shift
    conv.weight = nn.Parameter(w.float())
    conv.bias = nn.Parameter(b.float())


def _fold_affine_into_next_linear(
    linear: nn.Linear, scale: torch.Tensor, shift: torch.Tensor, cols: slice
) -> None:
    """``linear(concat(..., x*scale+shift, ...))`` with the affine on input columns ``cols`` folded in."""
    w = linear.weight.detach().double()
    b = (
        linear.bias.detach().double()
        if linear.bias is not None
        else torch.zeros(w.shape[0], dtype=torch.float64)
    )
    b = b + w[:, cols] @ shift
    w = w.clone()
    w[:, cols] = w[:, cols] * scale[None, :]
    linear.weight = nn.Parameter(w.float())
    linear.bias = nn.Parameter(b.float())


def fold_batchnorm(
    model: ReferenceNet, *, fold_input_norm: bool = True, fold_head: bool = True
) -> ReferenceNet:
    """An equivalent copy of ``model`` (eval) with every BatchNorm folded away.

    - backbone BNs go into the preceding conv (the pointwise conv of a separable conv), which gains a bias;
    - with ``fold_input_norm`` the Normalization layer goes into block1_conv1 (exact: that conv has
      "valid" padding, so no zero padding sees un-normalised pixels);
    - with ``fold_head`` the head BNs (after ReLU) go into the *next* Linear: img_bn and meta_bn2 into
      ``fc`` (by concat column), meta_bn1 into meta_fc2, fc_bn into ``out``.

    The original model is not modified. Folded BNs are replaced by ``nn.Identity``.
    """
    m = copy.deepcopy(model).eval()
    for mod in m.modules():
        if isinstance(mod, ConvBN) and isinstance(mod.bn, nn.BatchNorm2d):
            _fold_into_conv(mod.conv, mod.bn)
            mod.bn = nn.Identity()
        elif isinstance(mod, SepConvBN) and isinstance(mod.bn, nn.BatchNorm2d):
            _fold_into_conv(mod.sep.pointwise, mod.bn)
            mod.bn = nn.Identity()
    if fold_input_norm and isinstance(m.normalization, InputNormalization):
        conv = m.backbone.conv1.conv
        if conv.padding not in ((0, 0), "valid"):
            raise ValueError("input normalization can only be folded into an unpadded first conv")
        scale, shift = (t.detach().double() for t in m.normalization.scale_shift())
        w = conv.weight.detach().double()
        b = (
            conv.bias.detach().double()
            if conv.bias is not None
            else torch.zeros(w.shape[0], dtype=torch.float64)
        )
        b = b + (w * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        conv.weight = nn.Parameter((w * scale.view(1, -1, 1, 1)).float())
        conv.bias = nn.Parameter(b.float())
        m.normalization = nn.Identity()
    if fold_head:
        h = m.head
        n_img = h.img_fc.out_features
        n_meta = h.meta_fc2.out_features
        if isinstance(h.img_bn, nn.BatchNorm1d):
            _fold_affine_into_next_linear(h.fc, *_bn_affine(h.img_bn), slice(0, n_img))
            h.img_bn = nn.Identity()
        if isinstance(h.meta_bn2, nn.BatchNorm1d):
            _fold_affine_into_next_linear(h.fc, *_bn_affine(h.meta_bn2), slice(n_img, n_img + n_meta))
            h.meta_bn2 = nn.Identity()
        if isinstance(h.meta_bn1, nn.BatchNorm1d):
            _fold_affine_into_next_linear(h.meta_fc2, *_bn_affine(h.meta_bn1), slice(None))
            h.meta_bn1 = nn.Identity()
        if isinstance(h.fc_bn, nn.BatchNorm1d):
            _fold_affine_into_next_linear(h.out, *_bn_affine(h.fc_bn), slice(None))
            h.fc_bn = nn.Identity()
    return m


# --------------------------------------------------------------------------------------------------
# The head as plain arrays (the app's numpy Grad-CAM and logit check)
# --------------------------------------------------------------------------------------------------

HEAD_KEYS: tuple[str, ...] = (
    "img_fc_w", "img_fc_b", "img_bn_scale", "img_bn_shift",
    "meta_fc1_w", "meta_fc1_b", "meta_bn1_scale", "meta_bn1_shift",
    "meta_fc2_w", "meta_fc2_b", "meta_bn2_scale", "meta_bn2_shift",
    "fc_w", "fc_b", "fc_bn_scale", "fc_bn_shift",
    "out_w", "out_b",
)  # fmt: skip


def head_arrays(head: ReferenceHead) -> dict[str, np.ndarray]:
    """The head as float32 arrays: weights (in, out), BN as the affine applied after each ReLU.

    A folded BN (Identity) is written as scale 1, shift 0, so the arrays always describe ``head`` exactly.
    """

    def lin(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
        w = layer.weight.detach().double().numpy().T
        b = layer.bias.detach().double().numpy()
        return w.astype(np.float32), b.astype(np.float32)

    def bn(mod: nn.Module, n: int) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(mod, nn.Identity):
            return np.ones(n, np.float32), np.zeros(n, np.float32)
        s, t = _bn_affine(mod)
        return s.numpy().astype(np.float32), t.numpy().astype(np.float32)

    out: dict[str, np.ndarray] = {}
    for prefix, layer, norm in (
        ("img_fc", head.img_fc, head.img_bn),
        ("meta_fc1", head.meta_fc1, head.meta_bn1),
        ("meta_fc2", head.meta_fc2, head.meta_bn2),
        ("fc", head.fc, head.fc_bn),
    ):
        w, b = lin(layer)
        out[f"{prefix}_w"], out[f"{prefix}_b"] = w, b
        bn_prefix = {"img_fc": "img_bn", "meta_fc1": "meta_bn1", "meta_fc2": "meta_bn2", "fc": "fc_bn"}[
            prefix
        ]
        out[f"{bn_prefix}_scale"], out[f"{bn_prefix}_shift"] = bn(norm, w.shape[1])
    out["out_w"], out["out_b"] = lin(head.out)
    return {k: np.ascontiguousarray(out[k]) for k in HEAD_KEYS}


def head_forward_numpy(arrays: dict[str, np.ndarray], pooled: np.ndarray, meta: np.ndarray) -> np.ndarray:
    """Logits from pooled features (N,C) and metadata (N,10) with the :func:`head_arrays` layout."""
    a = arrays
    img = np.maximum(pooled @ a["img_fc_w"] + a["img_fc_b"], 0) * a["img_bn_scale"] + a["img_bn_shift"]
    m = np.maximum(meta @ a["meta_fc1_w"] + a["meta_fc1_b"], 0) * a["meta_bn1_scale"] + a["meta_bn1_shift"]
    m = np.maximum(m @ a["meta_fc2_w"] + a["meta_fc2_b"], 0) * a["meta_bn2_scale"] + a["meta_bn2_shift"]
    z = np.concatenate([img, m], axis=1)
    z = np.maximum(z @ a["fc_w"] + a["fc_b"], 0) * a["fc_bn_scale"] + a["fc_bn_shift"]
    return z @ a["out_w"] + a["out_b"]
