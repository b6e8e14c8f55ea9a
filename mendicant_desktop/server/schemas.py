"""Pydantic v2 models of every request field and response body; they make up the OpenAPI schema."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from mendicant_desktop.core.metadata import SEXES, SITES
from mendicant_desktop.core.results import CLASS_NAMES
from mendicant_desktop.core.skintone import FST_TYPES

Sex = Enum("Sex", {s.replace("-", "_"): s for s in SEXES}, type=str)  # type: ignore[misc]
Site = Enum("Site", {s.replace("-", "_"): s for s in SITES}, type=str)  # type: ignore[misc]
Fst = Enum("Fst", {f: f for f in FST_TYPES}, type=str)  # type: ignore[misc]
CamTarget = Enum("CamTarget", {t: t for t in ("top", "malignancy", *CLASS_NAMES)}, type=str)  # type: ignore[misc]

#: Age bounds the model accepts (the same as ``core.metadata.parse_age``).
AGE_MIN, AGE_MAX = 0.0, 120.0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorDetail(_Model):
    kind: str = Field(description="machine-readable error kind, e.g. bad_image, validation, unauthorized")
    reason: str = Field(description="human-readable reason")
    details: list[dict[str, Any]] | None = Field(default=None, description="per-field problems (validation)")


class ErrorResponse(_Model):
    error: ErrorDetail


class ItemMetadata(_Model):
    """Patient details for one image of a batch (all optional)."""

    age: float | None = Field(default=None, ge=AGE_MIN, le=AGE_MAX, allow_inf_nan=False)
    sex: Sex | None = None  # type: ignore[valid-type]
    site: Site | None = None  # type: ignore[valid-type]
    fst: Fst | None = Field(default=None, description="clinician-assigned Fitzpatrick type; overrides the estimate")  # type: ignore[valid-type]


class ModelRef(_Model):
    name: str
    version: str
    sha256: str


class Health(_Model):
    status: Literal["ok", "loading", "error"]
    model_verified: bool = Field(description="the model file's sha256 matched its card when it was loaded")
    model: ModelRef | None
    model_error: str | None = None
    uptime_s: float
    queue_depth: int = Field(description="predictions waiting for the batching thread")
    jobs_active: int = Field(description="explanation jobs queued or running")
    version: str = Field(description="mendicant-desktop version")
    batching: bool
    auth: bool = Field(description="API keys are required")


class Ready(_Model):
    ready: bool
    reason: str | None = None


class JobProgress(_Model):
    done: int
    total: int


class OcclusionResult(_Model):
    target: str
    base_score: float
    patch: int
    stride: int
    n_passes: int
    seconds: float
    overlay_png_base64: str = Field(description="the normalised drop map blended over the image, PNG, base64")
    map: list[list[float]] = Field(description="mean score drop per pixel at model-input resolution, downsampled "
                                               "to the patch grid (rows = y)")


class JobCreated(_Model):
    id: str
    state: str
    poll: str = Field(description="GET this path for the job's state and result")


class JobStatus(_Model):
    id: str
    kind: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: JobProgress
    error: str | None
    result: OcclusionResult | None
    created: float
    finished: float | None


class ExplainMethod(str, Enum):
    gradcam = "gradcam"
    occlusion = "occlusion"


# ---------------------------------------------------------------------------------------------------------
# The assessment: exactly the application layer's row columns (the same cells as a ``--batch`` row), plus
# three fields a row leaves to its file: the threshold, the model version and the clinician's FST override.
# ---------------------------------------------------------------------------------------------------------
from mendicant_desktop.app import rows as _rows  # noqa: E402

#: The row columns a response carries: every batch column and the metadata the model was given.
ROW_COLUMNS: tuple[str, ...] = _rows.columns_for(metadata=True)
#: Fields a response adds to the row.
EXTRA_FIELDS: tuple[str, ...] = ("threshold", "model_version", "fst_override")

_DESCRIPTIONS = {
    "image": "the upload's file name (the path, in a batch row)",
    "status": "ok or error", "error": "why the image could not be scored (empty when ok)",
    "malignancy": "p(mel) + p(bcc) + p(akiec)", "top_class": "the most probable class, as its ISIC column name",
    "risk": "high when malignancy >= threshold, else low",
    "fst_estimate": "estimated Fitzpatrick type I-VI (ITA on visible skin), or unknown",
    "ita": "individual typology angle (degrees)", "skin_fraction": "share of the border ring classified as skin",
    "width": "decoded width (px)", "height": "decoded height (px)", "sha256": "SHA-256 of the uploaded bytes",
    "model": "model name", "model_sha256": "sha256 of the model file (verified against its card)",
    "warnings": f"image-quality and domain warnings, joined by {_rows.WARNING_SEPARATOR!r}",
    "meta_age": "the age the model was given", "meta_sex": "the sex the model was given",
    "meta_site": "the body site the model was given",
    "threshold": "the model's operating threshold", "model_version": "model version (from its card)",
    "fst_override": "the clinician-assigned Fitzpatrick type sent with the request, if any",
}
for _isic, _cls in _rows.PROB_COLUMNS:
    _DESCRIPTIONS[_isic] = f"probability of {_cls}"


def _row_field(name: str) -> tuple[Any, Any]:
    kind: Any = float if name in _rows.FLOAT_COLUMNS or name == "threshold" else (
        int if name in _rows.INT_COLUMNS else str)
    required = name in ("status", "model", "model_sha256", "threshold", "model_version")
    if required:
        return kind, Field(description=_DESCRIPTIONS.get(name, name))
    return kind | None, Field(default=None, description=_DESCRIPTIONS.get(name, name))


_ROW_FIELDS = {name: _row_field(name) for name in (*ROW_COLUMNS, *EXTRA_FIELDS)}
PredictResponse = create_model("PredictResponse", __config__=ConfigDict(frozen=True), **_ROW_FIELDS)  # type: ignore[call-overload]
BatchItem = create_model("BatchItem", __config__=ConfigDict(frozen=True),  # type: ignore[call-overload]
                         index=(int, Field(description="position of the image in the request")), **_ROW_FIELDS)


class BatchResponse(_Model):
    items: list[BatchItem]  # type: ignore[valid-type]
    ok: int
    failed: int


class ExplainResponse(_Model):
    method: Literal["gradcam"]
    target: str | None = Field(description="the class (or 'malignancy') the map explains")
    map_shape: list[int]
    map: list[list[float]] = Field(description="the raw Grad-CAM map in [0, 1] at feature-map resolution")
    overlay_png_base64: str = Field(description="the map blended over the image (longest side 512 px), PNG, base64")
    result: PredictResponse  # type: ignore[valid-type]
