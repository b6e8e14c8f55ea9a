"""The one scoring path: one image in, one frozen :class:`Assessment` out.

:func:`assess` = :func:`read_source` (read once, hash) -> :func:`prepare` (decode, model input, skin tone,
image-quality warnings, an optional preview copy) -> ``Engine.predict_preprocessed`` -> :func:`complete`
(domain warnings). :func:`~mendicant_desktop.app.scoring.iter_scored` runs the same three steps over a
stream, batching the middle one; the GUI's Assess and Audit tabs, ``--batch``, ``--audit`` and the server
all score through here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from PIL import Image

from mendicant_desktop.core.errors import ImageLoadError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import DEFAULT_MAX_PIXELS, load_image, preprocess, read_image_file
from mendicant_desktop.core.results import Prediction, SkinToneEstimate, risk_band
from mendicant_desktop.core.skintone import estimate_skin_tone

from .errors import MEMORY_REASON
from .images import downscale
from .quality import QUALITY_SIDE, domain_warnings, fst_caution, image_warnings
from .rows import COLUMNS, error_row, ok_row

#: The largest preview :func:`prepare` makes (the GUI's display copy); smaller previews and the quality checks
#: copy are made from it.
PREVIEW_BASE_SIDE = 2048
#: Images above this many pixels are decoded one at a time (across all threads), bounding peak memory.
LARGE_IMAGE_PIXELS = 8_000_000
_LARGE_DECODE = threading.Lock()

#: What can be assessed: a file path, encoded image bytes, or a Pillow image (e.g. from the clipboard).
Source = Union[str, os.PathLike, bytes, Image.Image]


@dataclass(frozen=True, eq=False)
class RawInput:
    """An input read once: its name, its bytes (None for a Pillow image) and their sha256.

    For a Pillow image the hash is of its decoded pixels and is filled in by :func:`prepare`.
    """

    name: str
    data: bytes | None
    sha256: str | None
    image: Image.Image | None = None


@dataclass(frozen=True, eq=False)
class Prepared:
    """An input decoded and checked, ready for the model (the output of :func:`prepare`)."""

    name: str
    sha256: str
    width: int
    height: int
    x: np.ndarray  # model input (H, W, 3) float32 0..255
    skin: SkinToneEstimate | None  # None when estimation was switched off
    image_warnings: tuple[str, ...]
    metadata: Metadata | None
    preview: np.ndarray | None  # RGB uint8, longest side <= the preview_side asked for


@dataclass(frozen=True, eq=False)
class Assessment:
    """Everything known about one scored image. Frozen: a re-score gives a new one (:func:`rescore`)."""

    name: str  # the path as given, or a label for in-memory images
    sha256: str  # of the file bytes (of the pixels for in-memory images)
    width: int
    height: int
    x: np.ndarray = dataclasses.field(repr=False)  # model input, kept for re-scoring and explanations
    skin: SkinToneEstimate | None
    image_warnings: tuple[str, ...]
    domain_warnings: tuple[str, ...]
    prediction: Prediction
    metadata: Metadata | None
    preview: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def warnings(self) -> tuple[str, ...]:
        """Image, domain and skin-type warnings (the V–VI caution when the skin type is estimated as V or VI)."""
        caution = fst_caution(self.skin.fst if self.skin is not None else None)
        return self.image_warnings + self.domain_warnings + ((caution,) if caution else ())

    def row(self, columns: Sequence[str] = COLUMNS, image: str | None = None) -> dict[str, Any]:
        """The row (see :mod:`~mendicant_desktop.app.rows`) for this assessment."""
        return ok_row(image if image is not None else self.name, self.prediction, sha256=self.sha256,
                      width=self.width, height=self.height, skin=self.skin, warnings=self.warnings,
                      metadata=self.metadata, columns=columns)


@dataclass(frozen=True)
class Failure:
    """An input that could not be scored, with what was learnt before it failed."""

    name: str
    reason: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    metadata: Metadata | None = None

    def row(self, model_name: str, model_sha256: str, columns: Sequence[str] = COLUMNS) -> dict[str, Any]:
        return error_row(self.name, self.reason, model_name=model_name, model_sha256=model_sha256,
                         sha256=self.sha256, width=self.width, height=self.height, metadata=self.metadata,
                         columns=columns)


def read_source(source: Source, name: str | None = None) -> RawInput:
    """Read ``source`` once and hash it. Raises :class:`ImageLoadError` (missing, unreadable, empty...)."""
    if isinstance(source, Image.Image):
        return RawInput(name or "image", None, None, source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return RawInput(name or "image", data, hashlib.sha256(data).hexdigest())
    path = os.fspath(source)
    data = read_image_file(path)
    return RawInput(name or path, data, hashlib.sha256(data).hexdigest())


def _pixels(data: bytes) -> int:
    """Width x height from the header only (0 when unreadable: decoding then gives the proper reason)."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.size[0] * probe.size[1]
    except Exception:
        return 0


def _decode(raw: RawInput, max_pixels: int) -> np.ndarray:
    try:
        if raw.image is not None:
            return load_image(raw.image, max_pixels=max_pixels)
        assert raw.data is not None
        if LARGE_IMAGE_PIXELS < _pixels(raw.data) <= max_pixels:
            with _LARGE_DECODE:
                return load_image(raw.data, max_pixels=max_pixels)
        return load_image(raw.data, max_pixels=max_pixels)
    except ImageLoadError as exc:
        raise ImageLoadError(exc.reason, raw.name) from None
    except MemoryError:
        raise ImageLoadError(MEMORY_REASON, raw.name) from None


def estimate_skin(rgb: np.ndarray) -> SkinToneEstimate:
    """The skin-tone estimate; an image it cannot judge gives ``unknown`` with the reason, never an error."""
    try:
        return estimate_skin_tone(rgb)
    except ValueError as exc:
        return SkinToneEstimate(fst="unknown", ita=None, skin_fraction=0.0, reason=str(exc))


def prepare(
    raw: RawInput,
    input_size: tuple[int, int],
    *,
    metadata: Metadata | None = None,
    estimate_fst: bool = True,
    preview_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Prepared:
    """Decode, build the model input, estimate the skin tone and check the image's quality.

    Raises :class:`ImageLoadError` for an input that cannot be decoded (the memory case included).
    """
    rgb = _decode(raw, max_pixels)
    h, w = rgb.shape[:2]
    sha = raw.sha256 or hashlib.sha256(rgb.tobytes()).hexdigest()
    try:
        x = preprocess(rgb, input_size)
        # One chain of copies, whatever the caller asked for, so the quality checks see the same pixels in
        # every front end: full -> <= PREVIEW_BASE_SIDE -> <= QUALITY_SIDE (the big step is paid once).
        base = downscale(rgb, PREVIEW_BASE_SIDE)
        warn = image_warnings(downscale(base, QUALITY_SIDE), original_size=(h, w))
        skin = estimate_skin(rgb) if estimate_fst else None
        preview = np.ascontiguousarray(downscale(base, preview_side)) if preview_side else None
    except MemoryError:
        raise ImageLoadError(MEMORY_REASON, raw.name) from None
    return Prepared(raw.name, sha, w, h, x, skin, tuple(warn), metadata, preview)


def predict(engine: Engine, x: np.ndarray, metadata: Sequence[Metadata | None], threshold: float | None,
            cam_target: str | None) -> list[Prediction]:
    """The model step of the scoring path: a batch of model inputs, Grad-CAM for ``cam_target`` (None: none)."""
    return engine.predict_preprocessed(x, list(metadata), cam=cam_target is not None, cam_target=cam_target or "top",
                                       threshold=threshold)


def complete(p: Prepared, prediction: Prediction, card_raw: dict[str, Any], card_dir=None) -> Assessment:
    """The assessment of a prepared input once the model has scored it (adds the domain warnings; ``card_dir``:
    the card's folder, where the out-of-scope check's sidecar lies)."""
    return Assessment(
        name=p.name, sha256=p.sha256, width=p.width, height=p.height, x=p.x, skin=p.skin,
        image_warnings=p.image_warnings,
        domain_warnings=tuple(domain_warnings(card_raw, prediction.probabilities, pooled=prediction.pooled,
                                              card_dir=card_dir)),
        prediction=prediction, metadata=p.metadata, preview=p.preview,
    )


def assess(
    engine: Engine,
    source: Source | RawInput,
    metadata: Metadata | None = None,
    *,
    name: str | None = None,
    threshold: float | None = None,
    cam_target: str | None = "top",
    estimate_fst: bool = True,
    preview_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Assessment:
    """Read, decode, check and score one image; never a partial result.

    ``source`` may also be an input already read (:func:`read_source`). ``cam_target`` None skips Grad-CAM.
    Raises :class:`ImageLoadError` (bad input, with a readable ``reason``); anything else is a bug.
    """
    raw = source if isinstance(source, RawInput) else read_source(source, name)
    p = prepare(raw, engine.input_size, metadata=metadata, estimate_fst=estimate_fst, preview_side=preview_side,
                max_pixels=max_pixels)
    return complete(p, predict(engine, p.x[None], [metadata], threshold, cam_target)[0], engine.card.raw,
                    engine.bundle.card_path.parent)


def try_assess(engine: Engine, source: Source, metadata: Metadata | None = None, *, name: str | None = None,
               **kwargs: Any) -> Assessment | Failure:
    """:func:`assess`, but an input that cannot be decoded gives a :class:`Failure` (with its sha256 when the
    file could be read), as a ``--batch`` row does, instead of raising. Keyword arguments are :func:`assess`'s.
    """
    label = name if name is not None else (os.fspath(source) if isinstance(source, (str, os.PathLike)) else "image")
    try:
        raw = read_source(source, name)
    except ImageLoadError as exc:
        return Failure(label, exc.reason, metadata=metadata)
    try:
        return assess(engine, raw, metadata, **kwargs)
    except ImageLoadError as exc:
        return Failure(raw.name, exc.reason, raw.sha256, metadata=metadata)


def rescore(
    engine: Engine, a: Assessment, metadata: Metadata | None, *, threshold: float | None = None,
    cam_target: str | None = "top",
) -> Assessment:
    """The same image scored again with other metadata (one forward pass on the kept model input)."""
    pred = predict(engine, a.x[None], [metadata], threshold, cam_target)[0]
    return dataclasses.replace(a, prediction=pred, metadata=metadata,
                               domain_warnings=tuple(domain_warnings(engine.card.raw, pred.probabilities,
                                                                     pooled=pred.pooled,
                                                                     card_dir=engine.bundle.card_path.parent)))


def with_threshold(pred: Prediction, threshold: float) -> Prediction:
    """The same prediction judged at another operating threshold (no re-scoring needed)."""
    return dataclasses.replace(pred, threshold=float(threshold), risk=risk_band(pred.malignancy, threshold))
