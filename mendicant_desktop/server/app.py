"""The FastAPI application: :func:`create_app` builds it from a :class:`ServerConfig`.

The model loads in the lifespan, on a background thread, so the process answers ``/health`` (alive,
loading) and ``/ready`` (503 until loaded) at once. Every route that touches the model or patient data
depends on :func:`Service.authorize`: the API key (when a key file is configured), then the per-key rate
limit. Bad input of any kind is answered 4xx with ``{"error": {"kind", "reason"}}``; a 500 is a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mendicant_desktop import __version__

from . import schemas as S
from .accesslog import RequestGuard
from .auth import HEADER, KeyStore
from .config import ServerConfig
from .errors import ApiError, error_body
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .ratelimit import RateLimiter
from .service import Service

log = logging.getLogger("mendicant_desktop.server")

DOCS_STATIC = "/docs-static"

#: Error answers every protected route may give (documented in the OpenAPI schema).
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": S.ErrorResponse, "description": "missing or unknown API key"},
    429: {"model": S.ErrorResponse, "description": "rate limit exceeded; see Retry-After"},
    503: {"model": S.ErrorResponse, "description": "the model is not loaded yet (or failed to load)"},
}
_INPUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_AUTH_RESPONSES,
    413: {"model": S.ErrorResponse, "description": "request body over the size limit"},
    415: {"model": S.ErrorResponse, "description": "not multipart/form-data, or a part that is not an image"},
    422: {"model": S.ErrorResponse, "description": "bad image or bad field (the reason says which)"},
    504: {"model": S.ErrorResponse, "description": "the request took longer than the per-request timeout"},
}

#: Form fields shared by the upload routes (module level: the annotations are resolved by name).
Age = Annotated[float | None, Form(ge=S.AGE_MIN, le=S.AGE_MAX, allow_inf_nan=False,
                                   description="age in years (0-120)")]
SexF = Annotated[S.Sex | None, Form(description="patient sex")]  # type: ignore[name-defined]
SiteF = Annotated[S.Site | None, Form(description="body site")]  # type: ignore[name-defined]
FstF = Annotated[S.Fst | None, Form(description="clinician-assigned Fitzpatrick type I-VI; overrides the "  # type: ignore[name-defined]
                                              "estimate")]


def _swagger_assets() -> Path | None:
    """Swagger UI's JS/CSS, shipped in the ``fastapi-offline`` wheel (no CDN: the service runs offline)."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def create_app(config: ServerConfig | None = None, *, engine_loader: Any = None) -> FastAPI:
    """Build the app. ``engine_loader()`` returns an engine (default: the app layer's model rule)."""
    config = config or ServerConfig()
    metrics = Metrics()
    keys = KeyStore.load(config.api_key_file)
    service = Service(config, metrics=metrics, keys=keys, limiter=RateLimiter(config.rate_limit_per_minute),
                      engine_loader=engine_loader)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loader.join, 60)
            service.close()

    app = FastAPI(
        title="MENDICANT Desktop local API",
        version=__version__,
        description="Offline skin-lesion decision support for EHR, PACS and dermatoscope software on the clinic "
                    "network. Decision support, not a diagnosis. Send the API key as `X-API-Key`.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=[HEADER, "Content-Type"], expose_headers=["Retry-After", "X-Request-ID"])
    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=config.max_body_bytes,
                       timeout_s=config.request_timeout_s)
    _add_docs(app)
    _add_routes(app, service)
    return app


def _add_docs(app: FastAPI) -> None:
    assets = _swagger_assets()

    if assets is not None:
        app.mount(DOCS_STATIC, StaticFiles(directory=assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if assets is None:  # no Swagger UI assets installed: a plain page pointing at the schema
            return HTMLResponse("<!doctype html><title>MENDICANT API</title><h1>MENDICANT Desktop local API</h1>"
                                "<p>The OpenAPI schema is at <a href='/openapi.json'>/openapi.json</a>. "
                                "Install the <code>[server]</code> extra for the interactive page.</p>")
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=app.title,
                                   swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_STATIC}/favicon.png")


def _add_routes(app: FastAPI, svc: Service) -> None:
    auth = [Depends(svc.authorize)]  # the API key, then the rate limit
    upload = [*auth, Depends(svc.require_multipart)]  # then multipart/form-data, before field validation

    @app.get("/health", response_model=S.Health, tags=["service"],
             responses={503: {"model": S.Health, "description": "the model failed to load"}})
    def health() -> JSONResponse:
        h = svc.health()
        return JSONResponse(h.model_dump(mode="json"), status_code=503 if h.status == "error" else 200)

    @app.get("/ready", response_model=S.Ready, tags=["service"],
             responses={503: {"model": S.Ready, "description": "not ready: the model is loading or failed"}})
    def ready() -> JSONResponse:
        r = svc.readiness()
        return JSONResponse(r.model_dump(mode="json"), status_code=200 if r.ready else 503)

    @app.get("/metrics", dependencies=auth, tags=["service"], responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                                                            "description": "Prometheus text exposition"},
                                                      **_AUTH_RESPONSES})
    def metrics_() -> Response:
        svc.refresh_gauges()
        return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/model", dependencies=auth, tags=["model"], response_model=dict[str, Any], responses=_AUTH_RESPONSES)
    def model() -> dict[str, Any]:
        """The loaded model's card (JSON), as verified at start-up."""
        return svc.require_engine().card.raw

    @app.post("/predict", dependencies=upload, response_model=S.PredictResponse, tags=["assessment"], responses=_INPUT_RESPONSES)
    async def predict(image: Annotated[UploadFile, File(description="the photo")],
                      age: Age = None, sex: SexF = None, site: SiteF = None, fst: FstF = None) -> Any:
        """Assess one image: the same fields as a ``--batch`` row."""
        data = await svc.read_upload(image)
        meta = S.ItemMetadata(age=age, sex=sex, site=site, fst=fst)
        return await run_in_threadpool(svc.predict, data, meta)

    @app.post("/batch_predict", dependencies=upload, response_model=S.BatchResponse, tags=["assessment"], responses=_INPUT_RESPONSES)
    async def batch_predict(
                            images: Annotated[list[UploadFile], File(description="the photos, in order")],
                            metadata: Annotated[str | None, Form(description="optional JSON array, one object per "
                                                                 "image: {age, sex, site, fst}")] = None,
                            ) -> Any:
        """Assess up to ``max_batch_items`` images. A bad item gets ``status: error``; the rest still score."""
        metas = svc.parse_batch_metadata(metadata, len(images))
        uploads = [await svc.read_upload(im, strict=False) for im in images]
        return await run_in_threadpool(svc.batch_predict, uploads, metas)

    @app.post("/explain", dependencies=upload, tags=["explanation"], response_model=S.ExplainResponse, responses={
        **_INPUT_RESPONSES, 202: {"model": S.JobCreated, "description": "occlusion: a job was queued"}})
    async def explain(image: Annotated[UploadFile, File()],
                      method: Annotated[S.ExplainMethod, Form(description="gradcam (immediate) or occlusion "  # type: ignore[name-defined]
                                                              "(a job: 202 + id)")] = S.ExplainMethod.gradcam,
                      target: Annotated[S.CamTarget, Form(description="top, malignancy or a class code")]  # type: ignore[name-defined]
                      = S.CamTarget.top,
                      age: Age = None, sex: SexF = None, site: SiteF = None) -> Any:
        """Grad-CAM overlay (PNG, base64) and raw map, or an occlusion-sensitivity job."""
        data = await svc.read_upload(image)
        meta = S.ItemMetadata(age=age, sex=sex, site=site)
        if method == S.ExplainMethod.occlusion:
            job = await run_in_threadpool(svc.submit_occlusion, data, meta, target.value)
            return JSONResponse(S.JobCreated(id=job.id, state=job.state, poll=f"/jobs/{job.id}").model_dump(),
                                status_code=202, headers={"Location": f"/jobs/{job.id}"})
        return await run_in_threadpool(svc.gradcam, data, meta, target.value)

    @app.get("/jobs/{job_id}", dependencies=auth, response_model=S.JobStatus, tags=["explanation"],
             responses={**_AUTH_RESPONSES, 404: {"model": S.ErrorResponse, "description": "no such job"}})
    def job_status(job_id: str) -> dict[str, Any]:
        return svc.job(job_id).snapshot()

    @app.delete("/jobs/{job_id}", dependencies=auth, response_model=S.JobStatus, tags=["explanation"],
                responses={**_AUTH_RESPONSES, 404: {"model": S.ErrorResponse, "description": "no such job"}})
    def job_cancel(job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued job at once, a running one at its next batch of occlusion passes."""
        return svc.job(job_id, cancel=True).snapshot()



async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    request.scope.setdefault("state", {})["error_kind"] = exc.kind
    return JSONResponse(error_body(exc.kind, exc.reason, exc.details), status_code=exc.status, headers=exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
               for e in exc.errors()]  # the offending input itself is never echoed
    reason = "; ".join(f"{'.'.join(d['loc'][1:]) or d['loc'][0] if d['loc'] else 'request'}: {d['msg']}"
                       for d in details) or "invalid request"
    request.scope.setdefault("state", {})["error_kind"] = "validation"
    return JSONResponse(error_body("validation", reason, details), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kinds = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 400: "bad_request"}
    kind = kinds.get(exc.status_code, "http_error")
    request.scope.setdefault("state", {})["error_kind"] = kind
    return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug: answered 500 in the usual error shape; logged with the exception's type only (its message and
    traceback could carry request content)."""
    request.scope.setdefault("state", {})["error_kind"] = "internal"
    log.error("internal error while answering %s", getattr(request.scope.get("route"), "path", "a request"),
              exc_info=(type(exc), exc, None))
    return JSONResponse(error_body("internal", f"internal error ({type(exc).__name__}); the request was not scored"),
                        status_code=500)
