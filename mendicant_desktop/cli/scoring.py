"""The batch scoring pipeline, shared by ``--batch`` and ``--audit``.

Inputs stream from a generator (for example :func:`~mendicant_desktop.cli.discover.iter_inputs`).
A small thread pool reads, hashes, decodes and preprocesses them (Pillow and numpy release the GIL
for most of that work) and estimates the skin tone, while the calling thread runs batched
inference through :meth:`Engine.predict_preprocessed` -- the only scoring code in the app. At most
``window`` inputs are in flight, so memory does not grow with the number of inputs. Rows come out
in input order, each as soon as it and every row before it are done.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
from PIL import Image

from mendicant_desktop.core.errors import ImageLoadError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import DEFAULT_MAX_PIXELS, load_image, preprocess, read_image_file
from mendicant_desktop.core.results import Prediction, SkinToneEstimate
from mendicant_desktop.core.saliency import overlay
from mendicant_desktop.core.skintone import estimate_skin_tone

from .discover import InputItem
from .metadata_csv import MetadataTable, MetaRecord
from .writers import PROB_COLUMNS, clean_text, columns_for

log = logging.getLogger(__name__)

#: Images above this many pixels are decoded one at a time, bounding peak memory.
LARGE_IMAGE_PIXELS = 8_000_000
#: Saliency overlays are written at most this many pixels on their longest side.
SALIENCY_MAX_SIDE = 1024
#: Images per inference batch. On CPU the bundled Xception is no faster per image in larger batches,
#: while every extra image adds ~20 MB to ONNX Runtime's peak memory.
DEFAULT_BATCH_SIZE = 2

MetadataSource = Union[MetadataTable, Callable[[str], Union[Metadata, MetaRecord, None]], None]  # noqa: UP007


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class _Prepared:
    path: str
    sha256: str
    width: int
    height: int
    x: np.ndarray  # model input (H, W, 3) float32
    tone: SkinToneEstimate
    meta: Metadata | None
    thumb: np.ndarray | None  # RGB uint8 for the saliency overlay


@dataclass
class _Failed:
    path: str
    reason: str
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    meta: Metadata | None = None


_SKIPPED = object()


@dataclass
class Scored:
    """One input's outcome: ``row`` is None when ``skip`` said it was already done (``--resume``)."""

    path: str
    row: dict[str, Any] | None

    @property
    def skipped(self) -> bool:
        return self.row is None


def _lookup_meta(source: MetadataSource, path: str) -> tuple[Metadata | None, str | None]:
    if source is None:
        return None, None
    rec = source.lookup(path) if isinstance(source, MetadataTable) else source(path)
    if rec is None:
        return None, None
    if isinstance(rec, MetaRecord):
        return rec.metadata, rec.error
    return rec, None


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if max(h, w) <= SALIENCY_MAX_SIDE:
        return rgb
    im = Image.fromarray(rgb)
    im.thumbnail((SALIENCY_MAX_SIDE, SALIENCY_MAX_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(im)


class _Preparer:
    """Runs in the decode pool: read, hash, skip check, decode, preprocess, skin tone."""

    def __init__(
        self,
        input_size: tuple[int, int],
        metadata: MetadataSource,
        skip: Callable[[str, str], bool] | None,
        want_thumb: bool,
        max_pixels: int,
    ) -> None:
        self.input_size = input_size
        self.metadata = metadata
        self.skip = skip
        self.want_thumb = want_thumb
        self.max_pixels = max_pixels
        self._large = threading.Lock()

    def __call__(self, item: InputItem) -> _Prepared | _Failed | object:
        path = item.path
        if item.error:
            return _Failed(path, item.error)
        sha = None
        meta = None
        try:
            data = read_image_file(path)
            sha = hashlib.sha256(data).hexdigest()
            if self.skip is not None and self.skip(path, sha):
                return _SKIPPED
            meta, meta_error = _lookup_meta(self.metadata, path)
            if meta_error:
                return _Failed(path, meta_error, sha)
            rgb, x = self._decode(data)
        except ImageLoadError as exc:
            return _Failed(path, exc.reason, sha, meta=meta)
        except MemoryError:
            return _Failed(path, "not enough memory to decode this image", sha, meta=meta)
        except Exception as exc:  # one odd file must not end a long run
            log.debug("unexpected error preparing %s", path, exc_info=True)
            return _Failed(path, f"unexpected error while decoding: {type(exc).__name__}: {exc}", sha, meta=meta)
        h, w = rgb.shape[:2]
        try:
            tone = estimate_skin_tone(rgb)
        except ValueError as exc:
            tone = SkinToneEstimate(fst="unknown", ita=None, skin_fraction=0.0, reason=str(exc))
        thumb = _thumbnail(rgb) if self.want_thumb else None
        return _Prepared(path, sha, w, h, x, tone, meta, thumb)

    def _decode(self, data: bytes) -> tuple[np.ndarray, np.ndarray]:
        pixels = 0
        try:
            with Image.open(io.BytesIO(data)) as probe:  # header only: is this a large image?
                pixels = probe.size[0] * probe.size[1]
        except Exception:
            pass  # load_image gives the proper reason
        if LARGE_IMAGE_PIXELS < pixels <= self.max_pixels:
            with self._large:
                rgb = load_image(data, max_pixels=self.max_pixels)
                return rgb, preprocess(rgb, self.input_size)
        rgb = load_image(data, max_pixels=self.max_pixels)
        return rgb, preprocess(rgb, self.input_size)


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(float(v), nd)


def base_row(path: str, engine: Engine, columns: Iterable[str]) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update(image=clean_text(path), model=engine.card.name, model_sha256=engine.card.sha256)
    return row


def _meta_cells(row: dict[str, Any], meta: Metadata | None) -> None:
    if "meta_sex" in row and meta is not None:
        row.update(meta_age=meta.age, meta_sex=meta.sex, meta_site=meta.site)


def error_row(f: _Failed, engine: Engine, columns: Iterable[str]) -> dict[str, Any]:
    row = base_row(f.path, engine, columns)
    row.update(status="error", error=f.reason, sha256=f.sha256, width=f.width, height=f.height)
    _meta_cells(row, f.meta)
    return row


_ISIC_CODE = {model: isic for isic, model in PROB_COLUMNS}


def ok_row(p: _Prepared, pred: Prediction, engine: Engine, columns: Iterable[str]) -> dict[str, Any]:
    row = base_row(p.path, engine, columns)
    row.update(status="ok", error="")
    for isic, cls in PROB_COLUMNS:
        row[isic] = round(pred.prob(cls), 8)
    row.update(
        malignancy=round(pred.malignancy, 8),
        top_class=_ISIC_CODE.get(pred.top_class, pred.top_class.upper()),
        risk=pred.risk,
        fst_estimate=p.tone.fst,
        ita=_round(p.tone.ita, 2),
        skin_fraction=_round(p.tone.skin_fraction, 4),
        width=p.width,
        height=p.height,
        sha256=p.sha256,
    )
    _meta_cells(row, p.meta)
    return row


def saliency_name(path: str, sha256: str) -> str:
    """Overlay file name: the image's stem plus a content hash, so equal names never collide."""
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    return f"{clean_text(stem)}_{sha256[:12]}.png"


def _write_overlay(thumb: np.ndarray, cam: np.ndarray, dest: str) -> None:
    tmp = dest + ".part"
    Image.fromarray(overlay(thumb, cam)).save(tmp, format="PNG")
    os.replace(tmp, dest)


class _Slot:
    __slots__ = ("path", "row", "done", "png")

    def __init__(self, path: str) -> None:
        self.path = path
        self.row: dict[str, Any] | None = None
        self.done = False
        self.png: cf.Future | None = None


def iter_scored(
    inputs: Iterable[InputItem | str | os.PathLike],
    engine: Engine,
    *,
    metadata: MetadataSource = None,
    saliency_dir: str | os.PathLike | None = None,
    saliency_target: str = "top",
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip: Callable[[str, str], bool] | None = None,
    stop: threading.Event | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    columns: Iterable[str] | None = None,
) -> Iterator[Scored]:
    """Score ``inputs`` through the engine; yield one :class:`Scored` per input, in input order.

    ``skip(path, sha256)`` returning True marks an input as already done (no row). Setting ``stop``
    makes the generator return soon, dropping the inputs still in flight; closing the generator
    does the same. Bad inputs never raise: they give rows with ``status='error'``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    workers = int(workers or default_workers())
    cols = tuple(columns) if columns is not None else columns_for(metadata is not None, saliency_dir is not None)
    sal_dir = os.fspath(saliency_dir) if saliency_dir is not None else None
    if sal_dir is not None:
        os.makedirs(sal_dir, exist_ok=True)
    prepare = _Preparer(tuple(engine.input_size), metadata, skip, sal_dir is not None, max_pixels)
    window = max(2 * batch_size, batch_size + 2 * workers)
    pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="batch-decode")
    png_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="batch-png") if sal_dir else None
    pending: deque[tuple[_Slot, cf.Future]] = deque()
    slots: deque[_Slot] = deque()
    batch: list[tuple[_Slot, _Prepared]] = []
    source = iter(inputs)
    exhausted = False

    def stopped() -> bool:
        return stop is not None and stop.is_set()

    def fill() -> None:
        nonlocal exhausted
        while not exhausted and len(pending) < window:
            try:
                item = next(source)
            except StopIteration:
                exhausted = True
                return
            if not isinstance(item, InputItem):
                item = InputItem(os.fspath(item))
            slot = _Slot(item.path)
            pending.append((slot, pool.submit(prepare, item)))
            slots.append(slot)

    def run_batch() -> None:
        if not batch:
            return
        x = np.stack([p.x for _, p in batch])
        metas = [p.meta for _, p in batch]
        try:
            preds = engine.predict_preprocessed(x, metas, cam=sal_dir is not None, cam_target=saliency_target)
        except Exception as exc:
            log.debug("inference failed", exc_info=True)
            for slot, p in batch:
                f = _Failed(p.path, f"model inference failed: {type(exc).__name__}: {exc}", p.sha256, p.width,
                            p.height, p.meta)
                slot.row, slot.done = error_row(f, engine, cols), True
            batch.clear()
            return
        for (slot, p), pred in zip(batch, preds, strict=True):
            slot.row = ok_row(p, pred, engine, cols)
            if png_pool is not None and pred.cam is not None and p.thumb is not None:
                dest = os.path.join(sal_dir, saliency_name(p.path, p.sha256))
                slot.row["saliency_png"] = dest
                slot.png = png_pool.submit(_write_overlay, p.thumb, pred.cam, dest)
            slot.done = True
        batch.clear()

    def wait(fut: cf.Future) -> bool:
        while not fut.done():
            if stopped():
                return False
            cf.wait([fut], timeout=0.1)
        return True

    def ready() -> Iterator[Scored]:
        while slots and slots[0].done:
            slot = slots[0]
            if slot.png is not None:
                if not slot.png.done():
                    return
                exc = slot.png.exception()
                if exc is not None and slot.row is not None:
                    slot.row["saliency_png"] = None
                    log.warning("could not write the saliency overlay for %s: %s", slot.path, exc)
            slots.popleft()
            yield Scored(slot.path, slot.row)

    try:
        fill()
        while pending or batch:
            if stopped():
                return
            if pending:
                slot, fut = pending[0]
                # Run a partial batch rather than let inference sit idle while decoding catches up.
                if batch and not fut.done() and len(batch) >= max(1, batch_size // 2):
                    run_batch()
                    yield from ready()
                    continue
                if not wait(fut):
                    return
                pending.popleft()
                res = fut.result()
                fill()
                if isinstance(res, _Prepared):
                    batch.append((slot, res))
                elif res is _SKIPPED:
                    slot.done = True
                else:
                    assert isinstance(res, _Failed)
                    slot.row, slot.done = error_row(res, engine, cols), True
                if len(batch) >= batch_size or (not pending and exhausted):
                    run_batch()
            else:
                run_batch()
            yield from ready()
        while slots:
            if slots[0].png is not None and not wait(slots[0].png):
                return
            yield from ready()
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        if png_pool is not None:
            png_pool.shutdown(wait=True)


def score_paths(
    paths: Iterable[InputItem | str | os.PathLike],
    engine: Engine,
    **kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """Score files and yield one row dict per input, in order (the columns of ``docs/batch.md``).

    The same code path as ``--batch``; ``paths`` are files (use :func:`iter_inputs` to expand
    folders). Keyword arguments are those of :func:`iter_scored`. Rows skipped by ``skip`` are not
    yielded.
    """
    for s in iter_scored(paths, engine, **kwargs):
        if s.row is not None:
            yield s.row
