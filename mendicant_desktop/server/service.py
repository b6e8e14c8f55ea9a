"""What the routes do, kept out of the route functions: model state, auth, limits and scoring calls.

Scoring goes through the application layer only: :func:`mendicant_desktop.app.assess.assess` (one image),
its rows (:meth:`Assessment.row`, :meth:`Failure.row`), its model rule (:func:`app.model.load_engine`) and
its errors (:func:`app.errors.failure_reason`). The server adds the dynamic batcher under ``assess`` (it
is handed the batcher as its engine) and the HTTP answers.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import Request, Security
from fastapi.security import APIKeyHeader
from PIL import Image
from starlette.datastructures import UploadFile

from mendicant_desktop import __version__

from . import schemas as S
from .auth import HEADER, KeyStore
from .batcher import DynamicBatcher
from .config import ServerConfig
from .errors import ApiError
from .jobs import JobQueue, JobStoreFull
from .metrics import Metrics
from .ratelimit import RateLimiter

log = logging.getLogger("mendicant_desktop.server")

#: Longest side of the image under an explanation overlay (the PNG in the response).
OVERLAY_SIDE = 512
#: Part content types accepted as an image (the bytes' content decides the decoder; this refuses e.g. text).
_IMAGE_TYPES = ("image/", "application/octet-stream")

api_key_header = APIKeyHeader(name=HEADER, auto_error=False, description="an API key from the server's key file")


class Upload:
    """One uploaded file: its bytes, or why it was refused before decoding (batch items)."""

    __slots__ = ("name", "data", "refused")

    def __init__(self, name: str, data: bytes | None, refused: str | None = None) -> None:
        self.name = name
        self.data = data
        self.refused = refused


class Service:
    """Holds the engine (behind the batcher), the job queue, the key store and the rate limiter."""

    def __init__(self, config: ServerConfig, *, metrics: Metrics, keys: KeyStore, limiter: RateLimiter,
                 engine_loader: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.keys = keys
        self.limiter = limiter
        self._engine_loader = engine_loader
        self.engine: Any = None  # the core Engine
        self.batcher: DynamicBatcher | None = None
        self.jobs: JobQueue | None = None
        self.load_error: str | None = None
        self.started = time.monotonic()
        self._pool: cf.ThreadPoolExecutor | None = None
        self._loaded = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> threading.Thread:
        """Lifespan start-up: the worker threads, then the model load on a thread of its own (returned)."""
        self.load_error = None
        self._pool = cf.ThreadPoolExecutor(max(2, self.config.max_batch_size), thread_name_prefix="batch-items")
        self.jobs = JobQueue(self.config.max_jobs, self.config.job_ttl_s)
        loader = threading.Thread(target=self.load, name="model-loader", daemon=True)
        loader.start()
        return loader

    def load(self) -> None:
        """Load and verify the model (lifespan, on a thread). A failure is kept and reported, not raised."""
        try:
            if self._engine_loader is not None:
                engine = self._engine_loader()
            else:
                from mendicant_desktop.app import load_engine

                engine = load_engine(self.config.model, self.config.threads)
        except Exception as exc:
            from mendicant_desktop.app import failure_reason

            self.load_error = failure_reason(exc, "loading the model")
            log.error("the model failed to load: %s", self.load_error)
            return
        window = self.config.batch_window_ms / 1000.0 if self.config.batching else 0.0
        self.batcher = DynamicBatcher(engine, window_s=window, max_batch=self.config.max_batch_size,
                                      on_batch=self.metrics.batch_size.observe, track_arrivals=True)
        card = engine.card
        self.metrics.set_model(card.name, card.version, card.sha256)
        self.engine = engine  # last: a set engine is what "ready" means, so everything else must exist first
        self._loaded.set()
        log.info("model %s %s loaded and verified (sha256 %s); batching %s", card.name, card.version,
                 card.sha256[:12], f"{self.config.batch_window_ms:g} ms" if window else "off")

    def close(self) -> None:
        """Lifespan shut-down: stop the batcher, the jobs and the item pool (a later start() begins afresh)."""
        self.engine = None  # first: no new request starts scoring
        if self.batcher is not None:
            self.batcher.close()
        if self.jobs is not None:
            self.jobs.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self.batcher = self.jobs = self._pool = None
        self._loaded.clear()

    def wait_loaded(self, timeout: float) -> bool:
        return self._loaded.wait(timeout)

    # ------------------------------------------------------------------ state
    def require_engine(self) -> Any:
        if self.engine is None:
            if self.load_error:
                raise ApiError(503, "model_unavailable", f"the model failed to load: {self.load_error}")
            raise ApiError(503, "not_ready", "the model is still loading", headers={"Retry-After": "1"})
        return self.engine

    def health(self) -> S.Health:
        card = self.engine.card if self.engine is not None else None
        status = "ok" if card is not None else ("error" if self.load_error else "loading")
        return S.Health(
            status=status, model_verified=card is not None,
            model=S.ModelRef(name=card.name, version=card.version, sha256=card.sha256) if card else None,
            model_error=self.load_error, uptime_s=round(time.monotonic() - self.started, 3),
            queue_depth=self.batcher.depth if self.batcher else 0, jobs_active=self.jobs.depth if self.jobs else 0,
            version=__version__, batching=bool(self.batcher and self.batcher.enabled), auth=self.keys.enabled,
        )

    def readiness(self) -> S.Ready:
        if self.engine is not None:
            return S.Ready(ready=True)
        return S.Ready(ready=False, reason=self.load_error or "the model is loading")

    def refresh_gauges(self) -> None:
        self.metrics.queue_depth.set(self.batcher.depth if self.batcher else 0)
        self.metrics.jobs_active.set(self.jobs.depth if self.jobs else 0)

    # ------------------------------------------------------------------ dependencies
    def authorize(self, request: Request, key: str | None = Security(api_key_header)) -> str:
        """The caller's identity after the API-key check and the rate limit (a FastAPI dependency)."""
        if self.keys.enabled:
            name = self.keys.verify(key)
            if name is None:
                raise ApiError(401, "unauthorized", f"a valid API key is required in the {HEADER} header"
                               if not key else "unknown API key", headers={"WWW-Authenticate": HEADER})
            identity = f"key:{name}"
            request.scope.setdefault("state", {})["key_name"] = name
        else:
            client = request.client
            identity = f"client:{client.host if client else 'unknown'}"
        wait = self.limiter.acquire(identity)
        if wait is not None:
            raise ApiError(429, "rate_limited", f"more than {self.config.rate_limit_per_minute} requests per "
                           f"minute; retry in {wait:g} s", headers={"Retry-After": str(int(wait))})
        return identity

    def require_multipart(self, request: Request) -> None:
        """Upload routes take multipart/form-data only (a FastAPI dependency, so it answers before validation)."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, "unsupported_media_type",
                           f"send multipart/form-data with the image as a file part (got {ctype.split(';')[0] or 'none'})")

    async def read_upload(self, upload: UploadFile, *, strict: bool = True) -> Upload:
        name = upload.filename or "upload"
        ctype = (upload.content_type or "").lower()
        if ctype and not ctype.startswith(_IMAGE_TYPES):
            reason = f"the file part's content type {ctype!r} is not an image"
            if strict:
                raise ApiError(415, "unsupported_media_type", reason)
            return Upload(name, None, reason)
        return Upload(name, await upload.read())

    def parse_batch_metadata(self, text: str | None, n: int) -> list[S.ItemMetadata]:
        if n > self.config.max_batch_items:
            raise ApiError(413, "too_many_items", f"{n} images exceed the limit of {self.config.max_batch_items} "
                           "per request")
        if text is None or not text.strip():
            return [S.ItemMetadata()] * n
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(422, "validation", f"metadata is not JSON: {exc.msg}") from None
        if not isinstance(raw, list) or len(raw) != n:
            raise ApiError(422, "validation", f"metadata must be a JSON array with one object per image ({n})")
        out = []
        for i, item in enumerate(raw):
            try:
                out.append(S.ItemMetadata.model_validate(item if item is not None else {}))
            except Exception as exc:
                errors = getattr(exc, "errors", lambda: [])()
                msg = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
                raise ApiError(422, "validation", f"metadata[{i}]: {msg or exc}") from None
        return out

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _metadata(meta: S.ItemMetadata):
        from mendicant_desktop.core.metadata import Metadata

        if meta.age is None and meta.sex is None and meta.site is None:
            return None
        return Metadata(age=meta.age, sex=meta.sex.value if meta.sex else "unknown",
                        site=meta.site.value if meta.site else "unknown")

    def _assess(self, upload: Upload, meta: S.ItemMetadata, *, cam_target: str | None = None,
                preview_side: int | None = None):
        from mendicant_desktop.app import assess

        self.require_engine()
        assert self.batcher is not None
        with self.batcher.arriving():  # the batcher waits for this one while it decodes
            return assess(self.batcher, upload.data, self._metadata(meta), name=upload.name, cam_target=cam_target,
                          preview_side=preview_side)

    def _response(self, a: Any, meta: S.ItemMetadata) -> dict[str, Any]:
        row = a.row(S.ROW_COLUMNS)
        card = self.engine.card
        row.update(threshold=a.prediction.threshold, model_version=card.version,
                   fst_override=meta.fst.value if meta.fst else None)
        return row

    def _bad_input(self, exc: Exception) -> ApiError:
        from mendicant_desktop.app import failure_reason
        from mendicant_desktop.core.errors import ImageLoadError, MetadataError

        reason = failure_reason(exc, "scoring")
        if isinstance(exc, ImageLoadError):
            self.metrics.images.labels("bad_image").inc()
            return ApiError(422, "bad_image", reason)
        if isinstance(exc, MetadataError):
            return ApiError(422, "bad_metadata", reason)
        raise exc

    def predict(self, upload: Upload, meta: S.ItemMetadata) -> dict[str, Any]:
        try:
            a = self._assess(upload, meta)
        except ApiError:
            raise
        except Exception as exc:
            raise self._bad_input(exc) from None
        self.metrics.images.labels("ok").inc()
        return self._response(a, meta)

    def _batch_item(self, index: int, upload: Upload, meta: S.ItemMetadata) -> dict[str, Any]:
        """One item: the app layer's try_assess, so a bad image gives the same error row as ``--batch``."""
        from mendicant_desktop.app import Failure, failure_reason
        from mendicant_desktop.app.assessment import try_assess

        card = self.engine.card
        md = self._metadata(meta)
        if upload.refused is not None:
            result: Any = Failure(upload.name, upload.refused, metadata=md)
        else:
            assert self.batcher is not None
            try:
                with self.batcher.arriving():
                    result = try_assess(self.batcher, upload.data, md, name=upload.name, cam_target=None)
            except Exception as exc:  # one item's unexpected failure is that item's error row, not a failed batch
                log.error("batch item %d failed unexpectedly", index, exc_info=(type(exc), exc, None))
                sha = hashlib.sha256(upload.data or b"").hexdigest()
                result = Failure(upload.name, failure_reason(exc, "scoring"), sha, metadata=md)
        extra = {"threshold": card.threshold, "model_version": card.version,
                 "fst_override": meta.fst.value if meta.fst else None}
        if isinstance(result, Failure):
            self.metrics.images.labels("error").inc()
            return {"index": index, **result.row(card.name, card.sha256, S.ROW_COLUMNS), **extra}
        self.metrics.images.labels("ok").inc()
        return {"index": index, **self._response(result, meta)}

    def batch_predict(self, uploads: list[Upload], metas: list[S.ItemMetadata]) -> dict[str, Any]:
        """Items run concurrently, so the batcher merges them into ONNX Runtime batches; order is kept."""
        self.require_engine()
        assert self._pool is not None
        futures = [self._pool.submit(self._batch_item, i, u, m) for i, (u, m) in enumerate(zip(uploads, metas))]
        items = [f.result() for f in futures]
        ok = sum(1 for it in items if it["status"] == "ok")
        return {"items": items, "ok": ok, "failed": len(items) - ok}

    def gradcam(self, upload: Upload, meta: S.ItemMetadata, target: str) -> dict[str, Any]:
        try:
            a = self._assess(upload, meta, cam_target=target, preview_side=OVERLAY_SIDE)
        except ApiError:
            raise
        except Exception as exc:
            raise self._bad_input(exc) from None
        from mendicant_desktop.core.saliency import overlay

        cam = np.asarray(a.prediction.cam, dtype=np.float32)
        png = _png_base64(overlay(a.preview, cam))
        return {"method": "gradcam", "target": a.prediction.cam_target, "map_shape": list(cam.shape),
                "map": np.round(cam, 5).tolist(), "overlay_png_base64": png, "result": self._response(a, meta)}

    # ------------------------------------------------------------------ jobs
    def submit_occlusion(self, upload: Upload, meta: S.ItemMetadata, target: str):
        """Assess now (a bad image is answered 422 at once), run the occlusion passes as a job.

        The occlusion passes use the engine's raw forward (``Engine.run``) on the assessment's model input,
        never the batcher: they come in batches of their own.
        """
        from mendicant_desktop.core.explain import OcclusionSensitivity

        engine = self.require_engine()
        assert self.jobs is not None
        try:
            p = self._assess(upload, meta, preview_side=OVERLAY_SIDE)
        except ApiError:
            raise
        except Exception as exc:
            raise self._bad_input(exc) from None
        md = p.metadata

        def run(progress: Callable[[int, int], None], cancel: threading.Event) -> dict[str, Any]:
            from mendicant_desktop.core.saliency import overlay

            res = OcclusionSensitivity(engine).explain(p.x, md, target=target, progress=progress, cancel=cancel)
            return {"target": res.target, "base_score": res.base_score, "patch": res.patch, "stride": res.stride,
                    "n_passes": res.n_passes, "seconds": round(res.seconds, 3),
                    "overlay_png_base64": _png_base64(overlay(p.preview, res.normalized("drop"))),
                    "map": np.round(res.grid, 5).tolist()}

        try:
            return self.jobs.submit("occlusion", run)
        except JobStoreFull as exc:
            raise ApiError(503, "busy", f"{exc}; retry later", headers={"Retry-After": "10"}) from None

    def job(self, job_id: str, *, cancel: bool = False):
        """The job ``job_id`` (asked to stop first when ``cancel``); 404 when unknown or expired."""
        assert self.jobs is not None
        job = self.jobs.cancel(job_id) if cancel else self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, "not_found", "no such job (unknown id, or finished and expired)")
        return job


def _png_base64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")
