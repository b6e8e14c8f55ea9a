"""What happens to one dropped image, off the GUI thread. No Qt here: plain functions over core.

``assess_source`` = decode (core.preprocess.load_image) -> model input (core.preprocess.preprocess) ->
quality warnings -> skin-tone estimate (core.skintone) -> Engine.predict_preprocessed with Grad-CAM.
The same function serves dropped files, opened files, pasted images and the ``--selftest``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mendicant_desktop.core.errors import ImageLoadError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import load_image, preprocess
from mendicant_desktop.core.results import Prediction, SkinToneEstimate, risk_band
from mendicant_desktop.core.skintone import estimate_skin_tone

from .quality import domain_warnings, image_warnings

#: Longest side of the copy kept for display (zoom goes this far; the model never sees it).
DISPLAY_SIDE = 2048
THUMB_SIDE = 72

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jpe", ".jfif"})


@dataclass
class Assessment:
    """Everything the GUI keeps about a scored image."""

    x: np.ndarray  # model input (H, W, 3) float32, kept for instant re-scoring on metadata change
    display: np.ndarray  # RGB uint8, longest side <= DISPLAY_SIDE
    thumb: np.ndarray  # RGB uint8, longest side <= THUMB_SIDE
    width: int
    height: int
    sha256: str
    skin: SkinToneEstimate | None
    image_warnings: list[str] = field(default_factory=list)
    domain_warnings: list[str] = field(default_factory=list)
    prediction: Prediction | None = None


def downscale(rgb: np.ndarray, side: int) -> np.ndarray:
    """Display/thumbnail copy with the longest side <= ``side``.

    Pillow's integer box ``reduce`` does the bulk (fast, releases the GIL); a bilinear resize finishes
    only when the reduced copy is still larger than ``side`` (i.e. for small reductions).
    """
    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb
    im = Image.fromarray(rgb)
    k = -(-max(h, w) // side)  # ceil
    if k >= 2:
        im = im.reduce(k)
    if max(im.size) > side:
        s = side / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.Resampling.BILINEAR)
    return np.asarray(im)


def _sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def decode(source: str | os.PathLike | bytes | Image.Image) -> tuple[np.ndarray, str]:
    """(RGB uint8, sha256 of the file bytes -- or of the pixels for in-memory images).

    For files the hash runs on a helper thread while Pillow decodes (both release the GIL).
    """
    if isinstance(source, (str, os.PathLike)):
        digest_job = _side_pool().submit(_sha256_file, source)
        try:
            rgb = load_image(source)
        finally:
            exc = digest_job.exception()  # waits for the hash
        if exc is not None:  # vanished or unreadable right after decoding
            raise ImageLoadError(f"cannot read file: {getattr(exc, 'strerror', None) or exc}", str(source))
        return rgb, digest_job.result()
    rgb = load_image(source)
    digest = hashlib.sha256(source if isinstance(source, bytes) else rgb.tobytes()).hexdigest()
    return rgb, digest


def assess_source(
    engine: Engine,
    source: str | os.PathLike | bytes | Image.Image,
    metadata: Metadata | None = None,
    *,
    threshold: float | None = None,
    estimate_fst: bool = True,
) -> Assessment:
    """Decode, check and score one image. Raises ImageLoadError (bad input) -- never a partial result."""
    rgb, digest = decode(source)
    # The display copy, quality checks and skin-tone estimate run beside preprocessing + inference
    # (numpy, Pillow and ONNX Runtime release the GIL), so a 12 MP photo costs little more than its decode.
    side_job = _side_pool().submit(_side_work, rgb, estimate_fst)
    try:
        x = preprocess(rgb, engine.input_size)
        pred = engine.predict_preprocessed(x[None], [metadata], cam=True, threshold=threshold)[0]
    finally:
        display, thumb, img_warn, skin = side_job.result()
    dom_warn = domain_warnings(engine.card.raw, pred.probabilities)
    return Assessment(
        x=x, display=display, thumb=thumb, width=rgb.shape[1], height=rgb.shape[0],
        sha256=digest, skin=skin, image_warnings=img_warn, domain_warnings=dom_warn, prediction=pred,
    )


_SIDE_POOL: ThreadPoolExecutor | None = None


def _side_pool() -> ThreadPoolExecutor:
    global _SIDE_POOL
    if _SIDE_POOL is None:
        _SIDE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mendicant-side")
    return _SIDE_POOL


def _side_work(rgb: np.ndarray, estimate_fst: bool):
    display = np.ascontiguousarray(downscale(rgb, DISPLAY_SIDE))
    # quality checks work at ~512 px (the model's scale x2): from a copy of the display copy
    small = downscale(display, 512)
    thumb = np.ascontiguousarray(downscale(small, THUMB_SIDE))
    img_warn = image_warnings(small, original_size=(rgb.shape[0], rgb.shape[1]))
    skin = estimate_skin_tone(rgb) if estimate_fst else None
    return display, thumb, img_warn, skin


def rescore(engine: Engine, x: np.ndarray, metadata: Metadata | None, threshold: float | None) -> Prediction:
    """Re-run the model on a kept model input (metadata changed). ~one forward pass."""
    return engine.predict_preprocessed(x[None], [metadata], cam=True, threshold=threshold)[0]


def with_threshold(pred: Prediction, threshold: float) -> Prediction:
    """The same prediction judged at another operating threshold (no re-scoring needed)."""
    return dataclasses.replace(pred, threshold=float(threshold), risk=risk_band(pred.malignancy, threshold))


def expand_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Files as given, folders walked recursively (sorted, images by extension only, no loops)."""
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        path = Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path, followlinks=False):
                dirs.sort()
                for f in sorted(files):
                    fp = Path(root) / f
                    if fp.suffix.lower() in IMAGE_SUFFIXES and not f.startswith("."):
                        key = fp.resolve()
                        if key not in seen:
                            seen.add(key)
                            out.append(fp)
        else:
            key = path.resolve() if path.exists() else path
            if key not in seen:
                seen.add(key)
                out.append(path)
    return out


