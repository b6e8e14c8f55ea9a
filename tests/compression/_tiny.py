"""Shared helpers of the compression tests: a tiny random Xception-shaped ReferenceNet and fake data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression.data import CLASSES, DataIndex, Record
from compression.reference import ReferenceNet, XceptionWidths

SIZE = 71  # small input: 71 -> 35 -> 33 -> 17 -> 9 -> 5 -> 3 (the same stage structure as 254)


def tiny_widths() -> XceptionWidths:
    return XceptionWidths(stem=(16, 16), entry=((16, 16), (16, 16), (24, 24)), middle=((24, 24), (24, 24)),
                          block13=(24, 32), block14=(32, 48))  # fmt: skip


def _seeded_model(widths: XceptionWidths, seed: int, *, bias: float, running: bool, std: float) -> ReferenceNet:
    """A ReferenceNet with seeded weights and randomized BatchNorm (``running``: its statistics too), so the
    layers are not identities; torch's global generator is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = ReferenceNet(widths)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-bias, bias, generator=g)
                    if running:
                        m.running_mean.uniform_(-0.1, 0.1, generator=g)
                        m.running_var.uniform_(0.5, 1.5, generator=g)
            model.normalization.mean.fill_(127.5)
            model.normalization.variance.fill_(std**2)
    return model.eval()


def tiny_model(seed: int = 0) -> ReferenceNet:
    return _seeded_model(tiny_widths(), seed, bias=0.2, running=True, std=127.5)


def spread_tiny_model(seed: int) -> ReferenceNet:
    """A 1/32-width ReferenceNet for the full 254x254 input (gate and ship tests): BatchNorm randomized and a
    sharper head, so its probabilities spread (distinct ranks for the AUROCs)."""
    model = _seeded_model(XceptionWidths().scaled(1 / 32, n_middle=1, minimum=4), seed, bias=0.3, running=False,
                          std=60.0)  # fmt: skip
    with torch.no_grad():
        model.head.out.weight.mul_(8.0)
    return model


def inputs(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, SIZE, SIZE, 3, generator=g) * 255
    meta = torch.zeros(n, 10)
    meta[:, 2] = 1
    meta[:, 7] = 1
    meta[:, 8] = 0.5
    y = torch.randint(0, len(CLASSES), (n,), generator=g)
    return x, meta, y


def fake_index(tmp: Path, n_train: int = 24, n_val: int = 12, seed: int = 0) -> DataIndex:
    """A DataIndex of random images with ISIC/PAD-like records (no files needed)."""
    rng = np.random.default_rng(seed)
    recs = []
    fsts = ["I", "II", "III", "IV"]
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        label = i % len(CLASSES)
        mal = int(CLASSES[label] in ("mel", "bcc", "akiec"))
        if i % 3 == 0:
            recs.append(Record(dataset="isic", pool="external", image=f"i{i}.jpg", relpath=f"i{i}.jpg",
                               dx="MEL" if i % 2 else "NV", dx7="mel" if i % 2 else "nv",
                               label=CLASSES.index("mel" if i % 2 else "nv"), malignant=i % 2, split=split))  # fmt: skip
        else:
            recs.append(Record(dataset="pad", pool="pad", image=f"p{i}.jpg", relpath=f"p{i}.jpg", dx="X",
                               dx7=CLASSES[label], label=label, malignant=mal, patient_id=f"P{i}",
                               fst=fsts[i % 4], fst_source="label", split=split))  # fmt: skip
    images = (rng.random((len(recs), SIZE, SIZE, 3)) * 255).astype(np.float32)
    meta = np.zeros((len(recs), 10), np.float32)
    meta[:, 2] = 1
    meta[:, 7] = 1
    meta[:, 8:10] = (0.57, 1)
    return DataIndex(run_dir=tmp, records=recs, images=images, meta=meta)


def fp32_reference_or_skip(*, export: bool):
    """Path of the cached FP32 reference ONNX; skips when it is absent and the sklesion wheel is too.

    With ``export`` the ONNX is exported from the cached wheel when missing.
    """
    import pytest

    from compression.export import default_models_dir

    path = default_models_dir() / "reference_fp32.onnx"
    if not path.is_file():
        from compression.reference import find_sklesion_wheel

        try:
            find_sklesion_wheel(download=False)
        except (FileNotFoundError, RuntimeError, ValueError) as exc:
            pytest.skip(f"sklesion wheel cache absent: {exc}")
        if export:
            from compression.export import export_reference_fp32

            export_reference_fp32(path)
    return path
