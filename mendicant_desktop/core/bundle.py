"""Model bundle: ``<name>.onnx`` + ``<name>.json`` (model card) + ``<name>.head.npz`` (FP32 head).

The engine refuses to load a model whose bytes do not match the sha256 in its card, or whose card
is missing or malformed: a clinic must be able to tell exactly which model produced a result.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelVerificationError
from .metadata import META_SIZE
from .preprocess import MODEL_SIZE
from .results import CLASS_NAMES
from .selfcheck import SelfCheck, load_self_check

CARD_FORMAT_VERSION = 1
HEAD_KEYS: tuple[str, ...] = (
    "img_fc_w", "img_fc_b", "img_bn_scale", "img_bn_shift",
    "meta_fc1_w", "meta_fc1_b", "meta_bn1_scale", "meta_bn1_shift",
    "meta_fc2_w", "meta_fc2_b", "meta_bn2_scale", "meta_bn2_shift",
    "fc_w", "fc_b", "fc_bn_scale", "fc_bn_shift", "out_w", "out_b",
)
#: A linear head on pooled features of several depths (the adapted teacher): for Grad-CAM only the rows of its
#: (folded) weights that act on the pooled ``features`` output are needed, plus the biases. Columns: the class
#: logits, then (optionally) a direct malignancy logit.
LINEAR_HEAD_KEYS: tuple[str, ...] = ("linear_w_features", "linear_b")
_REQUIRED = ("format_version", "name", "version", "file", "sha256", "size_bytes", "class_names",
             "input", "preprocessing", "threshold", "provenance", "metrics")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def resources_dir() -> Path:
    """The bundled ``resources/`` folder (source tree, installed wheel or PyInstaller bundle)."""
    env = os.environ.get("MENDICANT_RESOURCES")
    if env:
        return Path(env)
    import sys

    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    here = Path(__file__).resolve()
    for cand in (here.parents[2] / "resources", here.parents[1] / "resources"):
        if cand.is_dir():
            return cand
    return here.parents[2] / "resources"


def default_model_card() -> Path:
    """The card of the bundled model: the only ``*.json`` in ``resources/models``."""
    models = resources_dir() / "models"
    cards = sorted(models.glob("*.json"))
    if not cards:
        raise ModelVerificationError(f"no model card (*.json) found in {models}")
    if len(cards) > 1:  # the app layer (app.model.resolve_card) lets MENDICANT_MODEL or --model choose
        raise ModelVerificationError(f"several model cards in {models}; set MENDICANT_MODEL")
    return cards[0]


@dataclass(frozen=True)
class ModelCard:
    """The parsed model card. ``raw`` keeps every field for display (GUI Model tab, reports)."""

    name: str
    version: str
    file: str
    sha256: str
    size_bytes: int
    class_names: tuple[str, ...]
    input_size: tuple[int, int]
    threshold: float
    head_file: str | None
    head_sha256: str | None
    metrics: dict[str, Any] = field(repr=False)
    provenance: dict[str, Any] = field(repr=False)
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model card") -> ModelCard:
        if not isinstance(d, dict):
            raise ModelVerificationError(f"{source}: not a JSON object")
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ModelVerificationError(f"{source}: missing required field(s) {', '.join(missing)}")
        if d["format_version"] != CARD_FORMAT_VERSION:
            raise ModelVerificationError(f"{source}: unsupported format_version {d['format_version']!r}")
        try:
            names = tuple(str(c) for c in d["class_names"])
            size = d["input"]["image"]["shape"][1:3]
            input_size = (int(size[0]), int(size[1]))
            threshold = float(d["threshold"])
            sha = str(d["sha256"]).lower()
            size_bytes = int(d["size_bytes"])
            head = d.get("head") or {}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelVerificationError(f"{source}: malformed field ({exc})") from None
        if names != CLASS_NAMES:
            raise ModelVerificationError(f"{source}: class_names {names} differ from the app's {CLASS_NAMES}")
        if not (0.0 < threshold < 1.0):
            raise ModelVerificationError(f"{source}: threshold {threshold} must lie in (0, 1)")
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            raise ModelVerificationError(f"{source}: sha256 is not a 64-digit hex string")
        return cls(
            name=str(d["name"]), version=str(d["version"]), file=str(d["file"]), sha256=sha,
            size_bytes=size_bytes, class_names=names, input_size=input_size, threshold=threshold,
            head_file=head.get("file"), head_sha256=(head.get("sha256") or None),
            metrics=dict(d["metrics"]), provenance=dict(d["provenance"]), raw=d,
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelCard:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelVerificationError(f"model card not found: {p}") from None
        except OSError as exc:
            raise ModelVerificationError(f"cannot read model card {p}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelVerificationError(f"model card {p.name} is not valid JSON: {exc}") from None
        # an older card may hold bare NaN tokens: read them as missing (None), so nothing downstream (METRICS.json,
        # the API's JSON responses) has to re-encode a NaN it cannot write
        return cls.from_dict(strict_json(data), source=p.name)


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A verified model: card, ONNX bytes (hash-checked) and the numpy head for Grad-CAM."""

    card: ModelCard
    card_path: Path
    model_path: Path
    model_bytes: bytes = field(repr=False)
    head: dict[str, np.ndarray] = field(repr=False)
    #: Built-in inputs with the FP32 counterpart's outputs (``self_check`` in the card); the engine runs them
    #: at load (see :mod:`mendicant_desktop.core.selfcheck`). ``None`` for a card without one.
    self_check: SelfCheck | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def sha256(self) -> str:
        return self.card.sha256

    @classmethod
    def load(cls, card_path: str | os.PathLike | None = None) -> ModelBundle:
        """Load and verify. ``card_path`` defaults to the bundled model's card."""
        cpath = Path(card_path) if card_path is not None else default_model_card()
        if cpath.suffix == ".onnx":
            cpath = cpath.with_suffix(".json")
        card = ModelCard.load(cpath)
        mpath = cpath.parent / card.file
        try:
            data = mpath.read_bytes()
        except FileNotFoundError:
            raise ModelVerificationError(f"model file not found: {mpath}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != card.sha256:
            raise ModelVerificationError(
                f"model file {mpath.name} does not match its card: sha256 {digest[:12]}… != {card.sha256[:12]}… "
                "(the file was modified or replaced; reinstall the application)"
            )
        if len(data) != card.size_bytes:
            raise ModelVerificationError(f"model file {mpath.name} size {len(data)} != card {card.size_bytes}")
        head = _load_head(cpath.parent, card)
        check = load_self_check(cpath.parent, card.raw.get("self_check"))
        return cls(card=card, card_path=cpath, model_path=mpath, model_bytes=data, head=head, self_check=check)


def _load_head(folder: Path, card: ModelCard) -> dict[str, np.ndarray]:
    if not card.head_file:
        raise ModelVerificationError(f"{card.name}: card names no head file (needed for Grad-CAM)")
    hpath = folder / card.head_file
    try:
        raw = hpath.read_bytes()
    except FileNotFoundError:
        raise ModelVerificationError(f"head file not found: {hpath}") from None
    if card.head_sha256 and hashlib.sha256(raw).hexdigest() != card.head_sha256:
        raise ModelVerificationError(f"head file {hpath.name} does not match the sha256 in its card")
    import io

    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            keys = LINEAR_HEAD_KEYS if LINEAR_HEAD_KEYS[0] in npz.files else HEAD_KEYS
            head = {k: np.asarray(npz[k], dtype=np.float32) for k in keys}
    except KeyError as exc:
        raise ModelVerificationError(f"head file {hpath.name} lacks array {exc}") from None
    except (ValueError, OSError) as exc:
        raise ModelVerificationError(f"head file {hpath.name} is malformed: {exc}") from None
    return head


def make_card(
    *,
    name: str,
    version: str,
    model_path: str | os.PathLike,
    head_path: str | os.PathLike,
    threshold: float,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    input_size: tuple[int, int] = MODEL_SIZE,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a model card dict for files already written; hashes and sizes are computed here."""
    from .metadata import AGE_MAX, AGE_MEAN, SEXES, SITES
    from .results import MALIGNANT_CLASSES

    mp, hp = Path(model_path), Path(head_path)
    card: dict[str, Any] = {
        "format_version": CARD_FORMAT_VERSION,
        "name": name,
        "version": version,
        "file": mp.name,
        "sha256": sha256_file(mp),
        "size_bytes": mp.stat().st_size,
        "head": {"file": hp.name, "sha256": sha256_file(hp)},
        "class_names": list(CLASS_NAMES),
        "malignant_classes": list(MALIGNANT_CLASSES),
        "malignancy_score": "p(mel) + p(bcc) + p(akiec)",
        "input": {
            "image": {"name": "image", "shape": [None, input_size[0], input_size[1], 3], "layout": "NHWC",
                      "dtype": "float32", "range": [0, 255]},
            "meta": {"name": "meta", "shape": [None, META_SIZE], "dtype": "float32"},
        },
        "outputs": {"probs": "probs", "features": "features (N, C, h, w), last feature map before pooling"},
        "preprocessing": {
            "orientation": "EXIF applied",
            "colour": "RGB 8-bit; alpha composited on black; 16-bit scaled",
            "resize": "bilinear, half-pixel centres, no antialiasing (tf.image.resize)",
            "size": list(input_size),
            "metadata": {"sex": list(SEXES), "site": list(SITES), "age_scale": AGE_MAX,
                         "age_missing_value": AGE_MEAN, "layout": "sex(3), site(5), age/90, age_missing"},
        },
        "threshold": float(threshold),
        "provenance": provenance,
        "metrics": metrics,
    }
    if extra:
        card.update(extra)
    return card


def strict_json(obj: Any) -> Any:
    """``obj`` with every NaN/inf float (also numpy floats) replaced by ``None``, recursively.

    Python's ``json`` writes NaN as a bare ``NaN`` token, which is not JSON: a strict reader (a browser, jq, the
    audit's own ``allow_nan=False`` METRICS.json) rejects the whole file. An AUROC that cannot be computed (a group
    with no images) is *missing*, and ``null`` says exactly that.
    """
    if isinstance(obj, Mapping):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def write_card(card: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a model card as strict JSON (a non-finite metric becomes ``null``; see :func:`strict_json`)."""
    p = Path(path)
    p.write_text(json.dumps(strict_json(card), indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")
    return p
