"""The case store: patients, lesions, visits (scored images) and audit runs in one SQLite file.

Why SQLite through :mod:`sqlite3`: it is in the standard library (so in the frozen bundle), one file, and every
``save_visit`` is its own committed transaction in WAL mode -- a crash or a ``kill -9`` loses at most the case
being written, never one already saved, and never leaves a half-written row.

The file lives in :func:`mendicant_desktop.app.paths.data_dir` (``cases.sqlite3``) with mode 0600 in a 0700
folder; its schema version is SQLite's ``user_version``, and :data:`MIGRATIONS` takes any older file forward
(a file from a newer version is refused, not damaged). Copies of the images (for follow-up, when the original
is moved or deleted) are kept under ``images/`` beside it, named by their sha256.

Patients are pseudonymous by default (a generated code such as ``P-7K3QX9``); a name and date of birth are only
stored when the caller passes them (the window offers them only when enabled in Settings).

Qt-free: the window uses it through its one worker helper, and the CLI or the server may open the same file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import secrets
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mendicant_desktop.core.errors import MendicantError
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.results import Prediction, SkinToneEstimate

from .paths import data_dir

STORE_FILE = "cases.sqlite3"
IMAGES_DIR = "images"
#: The schema this code reads and writes (SQLite ``PRAGMA user_version``).
SCHEMA_VERSION = 2
#: Letters of a pseudonymous patient code (no 0/O, 1/I look-alikes).
_CODE_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"

#: ``MIGRATIONS[v]`` takes a version-``v`` file to version ``v + 1``. Never edit a released step: add one.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the first schema
    """
    CREATE TABLE patients (
        id INTEGER PRIMARY KEY,
        code TEXT NOT NULL UNIQUE,
        name TEXT,
        birth_date TEXT,
        created TEXT NOT NULL
    );
    CREATE TABLE lesions (
        id INTEGER PRIMARY KEY,
        patient_id INTEGER NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
        label TEXT NOT NULL DEFAULT '',
        site TEXT NOT NULL DEFAULT 'unknown',
        created TEXT NOT NULL
    );
    CREATE TABLE visits (
        id INTEGER PRIMARY KEY,
        lesion_id INTEGER REFERENCES lesions(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        path TEXT,
        sha256 TEXT,
        image_copy TEXT,
        thumbnail BLOB,
        width INTEGER,
        height INTEGER,
        metadata TEXT NOT NULL DEFAULT '{}',
        result TEXT,
        model_name TEXT,
        model_version TEXT,
        model_sha256 TEXT,
        malignancy REAL,
        risk TEXT,
        threshold REAL,
        fst_estimate TEXT,
        fst_override TEXT,
        notes TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        created TEXT NOT NULL,
        scored TEXT,
        updated TEXT NOT NULL
    );
    CREATE TABLE audit_runs (
        id INTEGER PRIMARY KEY,
        created TEXT NOT NULL,
        model_name TEXT,
        model_sha256 TEXT,
        inputs TEXT NOT NULL,
        results TEXT NOT NULL
    );
    """,
    # 1 -> 2: visit date (a follow-up photo may be entered later than it was taken), soft delete for undo,
    # clinician; indexes for the search.
    """
    ALTER TABLE visits ADD COLUMN visit_date TEXT;
    ALTER TABLE visits ADD COLUMN deleted TEXT;
    ALTER TABLE visits ADD COLUMN clinician TEXT NOT NULL DEFAULT '';
    UPDATE visits SET visit_date = substr(created, 1, 10);
    CREATE INDEX visits_lesion ON visits(lesion_id);
    CREATE INDEX visits_sha ON visits(sha256);
    CREATE INDEX lesions_patient ON lesions(patient_id);
    """,
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class StoreError(MendicantError):
    """The case store cannot be opened or written (message says why and where)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def new_patient_code() -> str:
    """A pseudonymous patient code: ``P-`` and six random letters/digits (about 10^9 codes)."""
    return "P-" + "".join(secrets.choice(_CODE_ALPHABET) for _ in range(6))


# ---- the records ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patient:
    id: int
    code: str
    name: str | None
    birth_date: str | None
    created: str


@dataclass(frozen=True)
class Lesion:
    id: int
    patient_id: int
    label: str
    site: str
    created: str


@dataclass(frozen=True)
class Visit:
    """One stored image and its result. ``result`` is the record of :func:`result_record` (None for errors)."""

    id: int
    lesion_id: int | None
    name: str
    path: str | None
    sha256: str | None
    image_copy: str | None
    thumbnail: bytes | None
    width: int | None
    height: int | None
    metadata: dict[str, Any]
    result: dict[str, Any] | None
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    malignancy: float | None
    risk: str | None
    threshold: float | None
    fst_estimate: str | None
    fst_override: str | None
    notes: str
    status: str
    error: str
    created: str
    scored: str | None
    updated: str
    visit_date: str | None
    clinician: str
    patient_id: int | None = None
    patient_code: str | None = None
    lesion_label: str | None = None
    lesion_site: str | None = None

    @property
    def image_file(self) -> str | None:
        """The copy when it is there, else the original path when that is still there."""
        for p in (self.image_copy, self.path):
            if p and os.path.isfile(p):
                return p
        return None

    def prediction(self) -> Prediction | None:
        return prediction_from_record(self.result) if self.result else None

    def skin(self) -> SkinToneEstimate | None:
        return skin_from_record(self.result.get("skin")) if self.result else None

    def meta(self) -> Metadata:
        return metadata_from_record(self.metadata)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    created: str
    model_name: str | None
    model_sha256: str | None
    inputs: dict[str, Any]
    results: dict[str, Any]


# ---- converting the app layer's objects to stored records and back ----------------------------------------------
def prediction_record(p: Prediction) -> dict[str, Any]:
    return {"class_names": list(p.class_names), "probabilities": [float(v) for v in p.probabilities],
            "malignancy": float(p.malignancy), "threshold": float(p.threshold), "risk": p.risk,
            "top_k": [[c, float(v)] for c, v in p.top_k], "model_name": p.model_name,
            "model_sha256": p.model_sha256, "cam_target": p.cam_target}


def prediction_from_record(r: dict[str, Any]) -> Prediction:
    p = r["prediction"]
    return Prediction(class_names=tuple(p["class_names"]), probabilities=tuple(p["probabilities"]),
                      malignancy=p["malignancy"], threshold=p["threshold"], risk=p["risk"],
                      top_k=tuple((c, v) for c, v in p["top_k"]), model_name=p["model_name"],
                      model_sha256=p["model_sha256"], cam=None, cam_target=p.get("cam_target"))


def skin_record(s: SkinToneEstimate | None) -> dict[str, Any] | None:
    return None if s is None else dataclasses.asdict(s)


def skin_from_record(d: dict[str, Any] | None) -> SkinToneEstimate | None:
    if not d:
        return None
    names = {f.name for f in dataclasses.fields(SkinToneEstimate)}
    # JSON has no tuples: the estimate's sequence fields (e.g. the per-type probabilities) come back as lists.
    return SkinToneEstimate(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def metadata_record(m: Metadata | None) -> dict[str, Any]:
    return {} if m is None else {"age": m.age, "sex": m.sex, "site": m.site}


def metadata_from_record(d: dict[str, Any] | None) -> Metadata:
    d = d or {}
    kw = {k: d[k] for k in ("age", "sex", "site") if d.get(k) is not None}
    return Metadata(**kw)


def result_record(prediction: Prediction, *, row: dict[str, Any], skin: SkinToneEstimate | None,
                  warnings: Sequence[str] = (), model_version: str = "") -> dict[str, Any]:
    """The stored result: the app layer's row (the ``--batch`` cells), the prediction, the skin estimate,
    the warnings and the model's name, version and sha256."""
    return {"row": dict(row), "prediction": prediction_record(prediction), "skin": skin_record(skin),
            "warnings": list(warnings), "model": {"name": prediction.model_name, "version": model_version,
                                                  "sha256": prediction.model_sha256}}


def assessment_record(a, model_version: str = "") -> dict[str, Any]:
    """:func:`result_record` of an :class:`~mendicant_desktop.app.assessment.Assessment`."""
    r = result_record(a.prediction, row=a.row(), skin=a.skin, warnings=a.warnings, model_version=model_version)
    r.update(image_warnings=list(a.image_warnings), domain_warnings=list(a.domain_warnings))
    return r


def thumbnail_png(rgb) -> bytes:
    """PNG bytes of an RGB uint8 array (the list thumbnail)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _json(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


# ---- the store --------------------------------------------------------------------------------------------------
_VISIT_SELECT = """
    SELECT v.*, l.patient_id AS patient_id, p.code AS patient_code, l.label AS lesion_label, l.site AS lesion_site
    FROM visits v LEFT JOIN lesions l ON l.id = v.lesion_id LEFT JOIN patients p ON p.id = l.patient_id
"""
_VISIT_FIELDS = {f.name for f in dataclasses.fields(Visit)}
#: Columns ``update_visit`` may change.
_EDITABLE = frozenset({"lesion_id", "name", "path", "sha256", "image_copy", "thumbnail", "width", "height",
                       "metadata", "result", "model_name", "model_version", "model_sha256", "malignancy", "risk",
                       "threshold", "fst_estimate", "fst_override", "notes", "status", "error", "scored",
                       "visit_date", "clinician"})


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 if it does not exist; tighten it if it does."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    with contextlib.suppress(OSError):  # Windows: POSIX modes do not apply; the profile folder is private
        os.chmod(path, 0o600)


def migrate(conn: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the file to schema ``target``, one committed step at a time; returns the version reached."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(f"the case store was written by a newer MENDICANT (schema {version}; this version "
                         f"reads up to {SCHEMA_VERSION}); it was left untouched")
    while version < target:
        with conn:  # one transaction per step: a crash mid-migration leaves the previous version
            conn.executescript("BEGIN;" + MIGRATIONS[version] + f"PRAGMA user_version = {version + 1};")
        version += 1
    return version


class CaseStore:
    """One SQLite case store. Thread-safe (one lock): the window writes from its worker threads.

    ``copy_images``: keep a copy of each image beside the store (for follow-up when the original moves).
    """

    def __init__(self, path: str | os.PathLike, *, copy_images: bool = True) -> None:
        self.path = Path(path)
        self.copy_images = copy_images
        self._lock = threading.RLock()
        self._open()

    def _open(self) -> None:
        """Open (creating or migrating) the file. :meth:`erase_all` calls it again under the same lock, so no other
        thread can query a half-made store (a new lock there let one read before the migrations had run)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.chmod(self.path.parent, 0o700)
            _private_file(self.path)
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            try:
                self.schema_version = migrate(self._conn)  # first: a newer file is refused before any change
            except StoreError:
                self._conn.close()
                raise
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the case store {self.path}: {exc}") from exc
        for side in ("-wal", "-shm"):
            p = Path(str(self.path) + side)
            if p.exists():
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o600)

    @classmethod
    def open_default(cls, *, copy_images: bool = True) -> CaseStore:
        """The store in :func:`~mendicant_desktop.app.paths.data_dir`."""
        return cls(data_dir() / STORE_FILE, copy_images=copy_images)

    @property
    def images_dir(self) -> Path:
        return self.path.parent / IMAGES_DIR

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    def __enter__(self) -> CaseStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _write(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    return self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise StoreError(f"could not write to the case store {self.path}: {exc}") from exc

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"could not read the case store {self.path}: {exc}") from exc

    def integrity_ok(self) -> bool:
        return self._read("PRAGMA integrity_check")[0][0] == "ok"

    # -- patients and lesions ---------------------------------------------------------------------------------
    def add_patient(self, code: str | None = None, *, name: str | None = None,
                    birth_date: str | None = None) -> Patient:
        """A new patient; ``code`` defaults to a fresh pseudonymous code. An existing code is returned as is."""
        code = (code or "").strip() or new_patient_code()
        found = self.patient_by_code(code)
        if found is not None:
            return found
        cur = self._write("INSERT INTO patients(code, name, birth_date, created) VALUES (?,?,?,?)",
                          (code, name or None, birth_date or None, now_iso()))
        return self.patient(cur.lastrowid)

    def patient(self, patient_id: int) -> Patient | None:
        rows = self._read("SELECT * FROM patients WHERE id = ?", (patient_id,))
        return Patient(**dict(rows[0])) if rows else None

    def patient_by_code(self, code: str) -> Patient | None:
        rows = self._read("SELECT * FROM patients WHERE code = ?", (code,))
        return Patient(**dict(rows[0])) if rows else None

    def patients(self) -> list[Patient]:
        return [Patient(**dict(r)) for r in self._read("SELECT * FROM patients ORDER BY code")]

    def update_patient(self, patient_id: int, *, name: str | None = None, birth_date: str | None = None) -> None:
        self._write("UPDATE patients SET name = ?, birth_date = ? WHERE id = ?",
                    (name or None, birth_date or None, patient_id))

    def add_lesion(self, patient_id: int, *, label: str = "", site: str = "unknown") -> Lesion:
        cur = self._write("INSERT INTO lesions(patient_id, label, site, created) VALUES (?,?,?,?)",
                          (patient_id, label.strip(), site or "unknown", now_iso()))
        return self.lesion(cur.lastrowid)

    def lesion(self, lesion_id: int) -> Lesion | None:
        rows = self._read("SELECT * FROM lesions WHERE id = ?", (lesion_id,))
        return Lesion(**dict(rows[0])) if rows else None

    def lesions(self, patient_id: int | None = None) -> list[Lesion]:
        if patient_id is None:
            rows = self._read("SELECT * FROM lesions ORDER BY patient_id, id")
        else:
            rows = self._read("SELECT * FROM lesions WHERE patient_id = ? ORDER BY id", (patient_id,))
        return [Lesion(**dict(r)) for r in rows]

    def update_lesion(self, lesion_id: int, *, label: str | None = None, site: str | None = None) -> None:
        les = self.lesion(lesion_id)
        if les is None:
            return
        self._write("UPDATE lesions SET label = ?, site = ? WHERE id = ?",
                    (les.label if label is None else label.strip(), les.site if site is None else site, lesion_id))

    # -- visits -----------------------------------------------------------------------------------------------
    def copy_image(self, sha256: str, *, source: str | os.PathLike | None = None, data: bytes | None = None,
                   suffix: str = "") -> str | None:
        """Keep a private copy of the image (by sha256); returns its path, None when copying is off/failed."""
        if not self.copy_images or not sha256 or (source is None and data is None):
            return None
        if not suffix and source is not None:
            suffix = Path(source).suffix.lower()
        dest = self.images_dir / sha256[:2] / f"{sha256}{suffix or '.img'}"
        try:
            if not dest.is_file():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(dest.suffix + ".part")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    if data is not None:
                        f.write(data)
                    else:
                        with open(source, "rb") as src:
                            shutil.copyfileobj(src, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
        except OSError:
            return None
        return str(dest)

    def save_visit(self, *, name: str, status: str, path: str | None = None, sha256: str | None = None,
                   lesion_id: int | None = None, image_copy: str | None = None, thumbnail: bytes | None = None,
                   width: int | None = None, height: int | None = None, metadata: Metadata | None = None,
                   result: dict[str, Any] | None = None, fst_override: str | None = None, notes: str = "",
                   error: str = "", visit_date: str | None = None, clinician: str = "") -> int:
        """Insert one visit in its own committed transaction; returns its id."""
        pred = (result or {}).get("prediction") or {}
        model = (result or {}).get("model") or {}
        skin = (result or {}).get("skin") or {}
        ts = now_iso()
        cur = self._write(
            "INSERT INTO visits(lesion_id, name, path, sha256, image_copy, thumbnail, width, height, metadata, "
            "result, model_name, model_version, model_sha256, malignancy, risk, threshold, fst_estimate, "
            "fst_override, notes, status, error, created, scored, updated, visit_date, clinician) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (lesion_id, name, path, sha256, image_copy, thumbnail, width, height, _json(metadata_record(metadata)),
             None if result is None else _json(result), model.get("name"), model.get("version"),
             model.get("sha256"), pred.get("malignancy"), pred.get("risk"), pred.get("threshold"),
             skin.get("fst"), fst_override, notes, status, error, ts, ts if result is not None else None, ts,
             visit_date or ts[:10], clinician))
        return int(cur.lastrowid)

    def save_assessment(self, a, *, model_version: str = "", path: str | None = None, data: bytes | None = None,
                        lesion_id: int | None = None, thumbnail: bytes | None = None, fst_override: str | None = None,
                        notes: str = "", visit_date: str | None = None, clinician: str = "") -> int:
        """Store a scored :class:`~mendicant_desktop.app.assessment.Assessment` (and a copy of its image, read
        from ``path`` or given as ``data``) as one visit; returns its id."""
        copy = self.copy_image(a.sha256, source=path if data is None else None, data=data,
                               suffix="" if data is None else ".png")
        return self.save_visit(name=a.name, status="done", path=path, sha256=a.sha256, lesion_id=lesion_id,
                               image_copy=copy, thumbnail=thumbnail, width=a.width, height=a.height,
                               metadata=a.metadata, result=assessment_record(a, model_version),
                               fst_override=fst_override, notes=notes, visit_date=visit_date, clinician=clinician)

    def update_visit(self, visit_id: int, **fields: Any) -> None:
        """Change some fields of a visit (``metadata`` a :class:`Metadata`, ``result`` a record dict)."""
        bad = set(fields) - _EDITABLE
        if bad:
            raise ValueError(f"not editable: {sorted(bad)}")
        if "metadata" in fields:
            m = fields["metadata"]
            fields["metadata"] = _json(metadata_record(m) if isinstance(m, Metadata) else (m or {}))
        if "result" in fields:
            r = fields["result"]
            if r is not None:
                pred, model = r.get("prediction") or {}, r.get("model") or {}
                fields.setdefault("malignancy", pred.get("malignancy"))
                fields.setdefault("risk", pred.get("risk"))
                fields.setdefault("threshold", pred.get("threshold"))
                fields.setdefault("model_name", model.get("name"))
                fields.setdefault("model_version", model.get("version"))
                fields.setdefault("model_sha256", model.get("sha256"))
                fields.setdefault("fst_estimate", (r.get("skin") or {}).get("fst"))
                fields.setdefault("scored", now_iso())
            fields["result"] = None if r is None else _json(r)
        if not fields:
            return
        fields["updated"] = now_iso()
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE visits SET {cols} WHERE id = ?", (*fields.values(), visit_id))  # noqa: S608

    @staticmethod
    def _visit(row: sqlite3.Row) -> Visit:
        d = {k: row[k] for k in row.keys() if k in _VISIT_FIELDS}  # noqa: SIM118 - sqlite3.Row
        d["metadata"] = json.loads(d.get("metadata") or "{}")
        d["result"] = json.loads(d["result"]) if d.get("result") else None
        return Visit(**d)

    def visit(self, visit_id: int, *, include_deleted: bool = False) -> Visit | None:
        rows = self._read(_VISIT_SELECT + " WHERE v.id = ?" + ("" if include_deleted else " AND v.deleted IS NULL"),
                          (visit_id,))
        return self._visit(rows[0]) if rows else None

    def visits(self, *, patient: str | None = None, lesion_id: int | None = None, since: str | None = None,
               until: str | None = None, risk: str | None = None, text: str | None = None) -> list[Visit]:
        """Stored visits, oldest first. ``patient``: a patient code (exact); ``since``/``until``: ISO dates of
        the visit (inclusive); ``risk``: 'high'/'low'; ``text``: part of the image name, patient code, lesion
        label or notes (case-insensitive)."""
        where, params = ["v.deleted IS NULL"], []
        if patient:
            where.append("p.code = ?")
            params.append(patient)
        if lesion_id is not None:
            where.append("v.lesion_id = ?")
            params.append(lesion_id)
        if since:
            where.append("v.visit_date >= ?")
            params.append(since[:10])
        if until:
            where.append("v.visit_date <= ?")
            params.append(until[:10])
        if risk:
            where.append("v.risk = ?")
            params.append(risk)
        if text:
            where.append("(v.name LIKE ? OR p.code LIKE ? OR l.label LIKE ? OR v.notes LIKE ?)")
            params += [f"%{text}%"] * 4
        rows = self._read(_VISIT_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY v.visit_date, v.id", params)
        return [self._visit(r) for r in rows]

    def lesion_history(self, lesion_id: int) -> list[Visit]:
        """The visits of one lesion, oldest first (the follow-up view)."""
        return self.visits(lesion_id=lesion_id)

    def delete_visit(self, visit_id: int) -> None:
        """Remove a visit; it can be brought back with :meth:`undo_delete` until the next delete."""
        self._purge_deleted()
        self._write("UPDATE visits SET deleted = ? WHERE id = ?", (now_iso(), visit_id))

    def delete_visits(self, visit_ids: Iterable[int]) -> None:
        """Remove several visits as one undoable delete."""
        ids = list(visit_ids)
        self._purge_deleted()
        if ids:
            ts = now_iso()
            self._write(f"UPDATE visits SET deleted = ? WHERE id IN ({','.join('?' * len(ids))})",  # noqa: S608
                        (ts, *ids))

    def undo_delete(self) -> list[Visit]:
        """Bring back what the last delete removed; returns those visits (empty when there is nothing)."""
        rows = self._read("SELECT id FROM visits WHERE deleted IS NOT NULL")
        ids = [r[0] for r in rows]
        if not ids:
            return []
        self._write("UPDATE visits SET deleted = NULL WHERE deleted IS NOT NULL")
        return [v for v in (self.visit(i) for i in ids) if v is not None]

    def _purge_deleted(self) -> None:
        rows = self._read("SELECT id, image_copy, sha256 FROM visits WHERE deleted IS NOT NULL")
        if not rows:
            return
        self._write("DELETE FROM visits WHERE deleted IS NOT NULL")
        for r in rows:  # an image copy goes when no other visit uses it
            if r["image_copy"] and not self._read("SELECT 1 FROM visits WHERE image_copy = ?", (r["image_copy"],)):
                with contextlib.suppress(OSError):
                    os.remove(r["image_copy"])

    # -- audit runs -------------------------------------------------------------------------------------------
    def save_audit_run(self, inputs: dict[str, Any], results: dict[str, Any], *, model_name: str | None = None,
                       model_sha256: str | None = None) -> int:
        cur = self._write("INSERT INTO audit_runs(created, model_name, model_sha256, inputs, results) "
                          "VALUES (?,?,?,?,?)", (now_iso(), model_name, model_sha256, _json(inputs), _json(results)))
        return int(cur.lastrowid)

    def audit_runs(self) -> list[AuditRecord]:
        rows = self._read("SELECT * FROM audit_runs ORDER BY id")
        return [AuditRecord(id=r["id"], created=r["created"], model_name=r["model_name"],
                            model_sha256=r["model_sha256"], inputs=json.loads(r["inputs"]),
                            results=json.loads(r["results"])) for r in rows]

    # -- erase ------------------------------------------------------------------------------------------------
    def erase_all(self) -> None:
        """Delete every patient, lesion, visit, audit run and image copy, and the file itself (then recreate
        an empty store at the same place, so the object stays usable)."""
        with self._lock:
            self.close()
            for side in ("", "-wal", "-shm", "-journal"):
                p = Path(str(self.path) + side)
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            shutil.rmtree(self.images_dir, ignore_errors=True)
            self._open()


__all__ = [
    "MIGRATIONS", "SCHEMA_VERSION", "assessment_record", "STORE_FILE", "AuditRecord", "CaseStore", "Lesion", "Patient", "StoreError",
    "Visit", "metadata_from_record", "metadata_record", "migrate", "new_patient_code", "prediction_from_record",
    "prediction_record", "result_record", "skin_from_record", "skin_record", "thumbnail_png",
]
