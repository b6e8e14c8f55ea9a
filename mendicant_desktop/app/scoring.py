"""Streaming scoring for ``--batch``, ``--audit``, the Audit tab and the server, built on :mod:`.assessment`.

Inputs stream from an iterable (for example :func:`~mendicant_desktop.app.inputs.iter_inputs`). A small
thread pool runs :func:`~.assessment.read_source` and :func:`~.assessment.prepare` (Pillow and numpy release the GIL
for most of that work), while the calling thread runs batched inference and :func:`~.assessment.complete`: the
steps of :func:`~.assessment.assess`, with the model step batched. At most ``window`` inputs are in flight, so
memory does not grow with the number of inputs. Results come out in input order, each as soon as it and
every one before it are done.
"""

from __future__ import annotations

import concurrent.futures as cf
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
from mendicant_desktop.core.inference import Engine, default_threads
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import DEFAULT_MAX_PIXELS
from mendicant_desktop.core.saliency import overlay

from .assessment import Assessment, Failure, Prepared, complete, predict, prepare, read_source
from .errors import failure_reason
from .inputs import InputItem
from .rows import clean_text, columns_for
from .tables import MetadataTable, MetaRecord

log = logging.getLogger(__name__)

#: Saliency overlays are written at most this many pixels on their longest side.
SALIENCY_MAX_SIDE = 1024
#: Images per inference batch. On CPU the bundled Xception is no faster per image in larger batches,
#: while every extra image adds ~20 MB to ONNX Runtime's peak memory.
DEFAULT_BATCH_SIZE = 2
#: How often (seconds) a wait for a decode checks the stop flag.
_STOP_POLL_S = 0.1

MetadataSource = Union[MetadataTable, Callable[[str], Union[Metadata, MetaRecord, None]], None]  # noqa: UP007
StopFlag = Union[threading.Event, Callable[[], bool], None]  # noqa: UP007


@dataclass
class Scored:
    """One input's outcome, in input order.

    ``row`` is the formatted row (None when ``skip`` said the input was already done, ``--resume``);
    ``assessment`` is set for a scored input, ``failure`` for one that could not be scored.
    """

    path: str
    row: dict[str, Any] | None
    assessment: Assessment | None = None
    failure: Failure | None = None

    @property
    def skipped(self) -> bool:
        return self.row is None


def lookup_metadata(source: MetadataSource, path: str) -> tuple[Metadata | None, str | None]:
    """(metadata, error) for ``path``: error is the reason a metadata row is unusable (a bad age)."""
    if source is None:
        return None, None
    rec = source.lookup(path) if isinstance(source, MetadataTable) else source(path)
    if rec is None:
        return None, None
    if isinstance(rec, MetaRecord):
        return rec.metadata, rec.error
    return rec, None


_SKIPPED = object()


class _Preparer:
    """Runs in the decode pool: read once and hash, skip check, metadata, then :func:`prepare`."""

    def __init__(self, input_size: tuple[int, int], metadata: MetadataSource, skip: Callable[[str, str], bool] | None,
                 preview_side: int | None, max_pixels: int) -> None:
        self.input_size = input_size
        self.metadata = metadata
        self.skip = skip
        self.preview_side = preview_side
        self.max_pixels = max_pixels

    def __call__(self, item: InputItem) -> Prepared | Failure | object:
        path = item.path
        if item.error:
            return Failure(path, item.error)
        sha = None
        meta = None
        try:
            raw = read_source(path)
            sha = raw.sha256
            if self.skip is not None and self.skip(path, raw.sha256 or ""):
                return _SKIPPED
            meta, meta_error = lookup_metadata(self.metadata, path)
            if meta_error:
                return Failure(path, meta_error, sha)
            return prepare(raw, self.input_size, metadata=meta, preview_side=self.preview_side,
                           max_pixels=self.max_pixels)
        except ImageLoadError as exc:
            return Failure(path, exc.reason, sha, metadata=meta)
        except Exception as exc:  # one odd file must not end a long run
            log.debug("unexpected error preparing %s", path, exc_info=True)
            return Failure(path, failure_reason(exc, "decoding"), sha, metadata=meta)


def saliency_name(path: str, sha256: str) -> str:
    """Overlay file name: the image's stem plus a content hash, so equal names never collide."""
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    return f"{clean_text(stem)}_{sha256[:12]}.png"


def write_overlay(preview: np.ndarray, cam: np.ndarray, dest: str) -> None:
    """The core Grad-CAM overlay of ``cam`` on ``preview``, written atomically as PNG."""
    tmp = dest + ".part"
    Image.fromarray(overlay(preview, cam)).save(tmp, format="PNG")
    os.replace(tmp, dest)


class _Slot:
    __slots__ = ("path", "scored", "done", "png")

    def __init__(self, path: str) -> None:
        self.path = path
        self.scored: Scored | None = None
        self.done = False
        self.png: cf.Future | None = None


def _stop_check(stop: StopFlag) -> Callable[[], bool]:
    if stop is None:
        return lambda: False
    if isinstance(stop, threading.Event):
        return stop.is_set
    return stop


class _Stream:
    """The state of one :func:`iter_scored` run (see there)."""

    def __init__(self, engine: Engine, inputs: Iterable[InputItem | str | os.PathLike], *, prepare_fn: _Preparer,
                 workers: int, batch_size: int, columns: tuple[str, ...], cam_target: str | None,
                 threshold: float | None, saliency_dir: str | None, stopped: Callable[[], bool]) -> None:
        self.engine = engine
        self.prepare = prepare_fn
        self.batch_size = batch_size
        self.columns = columns
        self.cam_target = cam_target
        self.threshold = threshold
        self.sal_dir = saliency_dir
        self.stopped = stopped
        self.window = max(2 * batch_size, batch_size + 2 * workers)
        self.pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="score-decode")
        self.png_pool = cf.ThreadPoolExecutor(1, thread_name_prefix="score-png") if saliency_dir else None
        self.pending: deque[tuple[_Slot, cf.Future]] = deque()
        self.slots: deque[_Slot] = deque()
        self.batch: list[tuple[_Slot, Prepared]] = []
        self.source = iter(inputs)
        self.exhausted = False

    def fill(self) -> None:
        while not self.exhausted and len(self.pending) < self.window:
            try:
                item = next(self.source)
            except StopIteration:
                self.exhausted = True
                return
            if not isinstance(item, InputItem):
                item = InputItem(os.fspath(item))
            slot = _Slot(item.path)
            self.pending.append((slot, self.pool.submit(self.prepare, item)))
            self.slots.append(slot)

    def fail(self, slot: _Slot, f: Failure) -> None:
        card = self.engine.card
        slot.scored = Scored(f.name, f.row(card.name, card.sha256, self.columns), failure=f)
        slot.done = True

    def run_batch(self) -> None:
        if not self.batch:
            return
        batch, self.batch = self.batch, []
        x = np.stack([p.x for _, p in batch])
        try:
            preds = predict(self.engine, x, [p.metadata for _, p in batch], self.threshold, self.cam_target)
        except Exception as exc:
            log.debug("inference failed", exc_info=True)
            reason = f"model inference failed: {type(exc).__name__}: {exc}"
            for slot, p in batch:
                self.fail(slot, Failure(p.name, reason, p.sha256, p.width, p.height, p.metadata))
            return
        for (slot, p), pred in zip(batch, preds, strict=True):
            a = complete(p, pred, self.engine.card.raw)
            row = a.row(self.columns)
            if self.png_pool is not None and pred.cam is not None and a.preview is not None:
                dest = os.path.join(self.sal_dir, saliency_name(a.name, a.sha256))
                row["saliency_png"] = dest
                slot.png = self.png_pool.submit(write_overlay, a.preview, pred.cam, dest)
            slot.scored = Scored(a.name, row, assessment=a)
            slot.done = True

    def wait(self, fut: cf.Future) -> bool:
        while not fut.done():
            if self.stopped():
                return False
            cf.wait([fut], timeout=_STOP_POLL_S)
        return True

    def ready(self) -> Iterator[Scored]:
        while self.slots and self.slots[0].done:
            slot = self.slots[0]
            if slot.png is not None:
                if not slot.png.done():
                    return
                exc = slot.png.exception()
                if exc is not None and slot.scored is not None and slot.scored.row is not None:
                    slot.scored.row["saliency_png"] = None
                    log.warning("could not write the saliency overlay for %s: %s", slot.path, exc)
            self.slots.popleft()
            yield slot.scored if slot.scored is not None else Scored(slot.path, None)

    def take(self, slot: _Slot, res: Any) -> None:
        if isinstance(res, Prepared):
            self.batch.append((slot, res))
        elif res is _SKIPPED:
            slot.done = True
        else:
            assert isinstance(res, Failure)
            self.fail(slot, res)

    def step(self) -> bool:
        """Advance by one decoded input or one batch; False when stopped."""
        if not self.pending:
            self.run_batch()
            return True
        slot, fut = self.pending[0]
        # Run a partial batch rather than let inference sit idle while decoding catches up.
        if self.batch and not fut.done() and len(self.batch) >= max(1, self.batch_size // 2):
            self.run_batch()
            return True
        if not self.wait(fut):
            return False
        self.pending.popleft()
        res = fut.result()
        self.fill()
        self.take(slot, res)
        if len(self.batch) >= self.batch_size or (not self.pending and self.exhausted):
            self.run_batch()
        return True

    def run(self) -> Iterator[Scored]:
        self.fill()
        while self.pending or self.batch:
            if self.stopped() or not self.step():
                return
            yield from self.ready()
        while self.slots:
            if self.slots[0].png is not None and not self.wait(self.slots[0].png):
                return
            yield from self.ready()

    def close(self) -> None:
        for _, fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.png_pool is not None:
            self.png_pool.shutdown(wait=True)


def iter_scored(
    inputs: Iterable[InputItem | str | os.PathLike],
    engine: Engine,
    *,
    metadata: MetadataSource = None,
    saliency_dir: str | os.PathLike | None = None,
    saliency_target: str = "top",
    cam_target: str | None = None,
    threshold: float | None = None,
    workers: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skip: Callable[[str, str], bool] | None = None,
    stop: StopFlag = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    columns: Iterable[str] | None = None,
) -> Iterator[Scored]:
    """Score ``inputs`` through the engine; yield one :class:`Scored` per input, in input order.

    Grad-CAM runs for ``saliency_target`` when ``saliency_dir`` is given (an overlay PNG per scored image is
    written there), else for ``cam_target`` when that is given, else not at all. ``skip(path, sha256)``
    returning True marks an input as already done (no row). ``stop`` (an Event or a callable) makes the
    generator return soon, dropping the inputs still in flight; closing the generator does the same. Bad
    inputs never raise: they give a :class:`Scored` with ``failure`` and a row with ``status='error'``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cols = tuple(columns) if columns is not None else columns_for(metadata is not None, saliency_dir is not None)
    sal_dir = os.fspath(saliency_dir) if saliency_dir is not None else None
    if sal_dir is not None:
        os.makedirs(sal_dir, exist_ok=True)
    workers = int(workers or default_threads())
    preparer = _Preparer(tuple(engine.input_size), metadata, skip, SALIENCY_MAX_SIDE if sal_dir else None, max_pixels)
    stream = _Stream(engine, inputs, prepare_fn=preparer, workers=workers, batch_size=batch_size, columns=cols,
                     cam_target=saliency_target if sal_dir else cam_target, threshold=threshold,
                     saliency_dir=sal_dir, stopped=_stop_check(stop))
    try:
        yield from stream.run()
    finally:
        stream.close()


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
