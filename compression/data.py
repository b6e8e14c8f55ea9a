"""Data stage: reproducible splits of ``../shared/data``, manifests, FST groups and a decoded-image cache.

- ISIC dermoscopy: the ``ham10000`` pool (the teacher's training pool) goes to *train only*, never to
  validation. The ``external`` pool is split by image, stratified by ``dx``.
- PAD-UFES-20 clinical crops: split by ``patient_id`` (never by image), patients stratified by their
  clinician FST and by whether they have a malignant lesion, so the validation split keeps every FST group.
- Labels: ``dx7`` index in the model's class order (akiec, bcc, bkl, df, mel, nv, vasc); SCC -> akiec for
  both sources (HAM's akiec includes Bowen's disease); plus the binary ``malignant`` column.
- FST per image: PAD's clinician label where present (``fst_source = "label"``), otherwise the engine's
  image-based estimate (:func:`mendicant_desktop.core.skintone.estimate_skin_tone`, ``fst_source = "estimated"``),
  which answers "unknown" for the masked PAD crops.
- Images are decoded once with the engine's own preprocessing (:func:`core.preprocess.load_image` and
  :func:`core.preprocess.preprocess`) into ``<run>/data/images.npy`` (float32, N x 254 x 254 x 3, memory
  mapped) and the metadata with :func:`core.metadata.encode_metadata` into ``<run>/data/meta.npy``.
- ``<run>/manifests/{train,val}.csv`` list every image with its file SHA-256 (for the model card).

The shared data folder is ``$MENDICANT_SHARED_DATA`` if set, else ``<repo>/../shared/data``; it is only read.
"""

from __future__ import annotations

import csv
import json
import os
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.bundle import sha256_file
from mendicant_desktop.core.errors import ConfigError, MetadataError
from mendicant_desktop.core.metadata import Metadata, encode_metadata
from mendicant_desktop.core.preprocess import MODEL_SIZE, load_image, preprocess
from mendicant_desktop.core.results import CLASS_NAMES, MALIGNANT_INDICES
from mendicant_desktop.core.skintone import estimate_skin_tone

from .config import Config

__all__ = [
    "CLASSES",
    "MALIGNANT_CLASS_IDX",
    "ROMAN",
    "Record",
    "DataIndex",
    "shared_data_dir",
    "read_records",
    "subset_records",
    "split_records",
    "build_data",
    "load_index",
    "data_done",
    "balanced_weights",
    "balanced_indices",
    "ImageDataset",
]

CLASSES: tuple[str, ...] = CLASS_NAMES  # the app's one class list (core.results)
MALIGNANT_CLASS_IDX: tuple[int, ...] = MALIGNANT_INDICES
ROMAN = ("I", "II", "III", "IV", "V", "VI")
ISIC = "isic_dermoscopy"
PAD = "pad_ufes20_clinical"
MANIFEST_COLUMNS = (
    "index", "split", "dataset", "pool", "image", "relpath", "sha256", "dx", "dx7", "label", "malignant",
    "fst", "fst_source", "patient_id", "age", "sex", "site",
)  # fmt: skip


def shared_data_dir(cfg: Config | None = None, repo_root: str | Path | None = None) -> Path:
    """The shared data folder: ``data.shared_data`` > ``$MENDICANT_SHARED_DATA`` > ``<repo>/../shared/data``."""
    if cfg is not None and cfg.data.shared_data:
        return Path(cfg.data.shared_data).expanduser().resolve()
    env = os.environ.get("MENDICANT_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[1]
    return (repo.parent / "shared" / "data").resolve()


@dataclass
class Record:
    """One labelled image. ``fst``/``fst_source`` are filled from PAD labels on read, estimates later."""

    dataset: str  # "isic" | "pad"
    pool: str  # "ham10000" | "external" | "pad"
    image: str
    relpath: str  # relative to the shared data folder
    dx: str
    dx7: str
    label: int
    malignant: int
    patient_id: str = ""
    age: float | None = None
    sex: str = "unknown"
    site: str = "unknown"
    fst: str = "unknown"
    fst_source: str = "estimated"
    split: str = ""
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata(self) -> Metadata:
        return Metadata(age=self.age, sex=self.sex, site=self.site)


def _dx7(dx: str, dx7: str) -> str:
    code = (dx7 or "").strip().lower()
    if not code and dx.strip().upper() == "SCC":
        code = "akiec"
    if code not in CLASSES:
        raise ValueError(f"unknown diagnosis dx={dx!r} dx7={dx7!r}")
    return code


def _roman(v: str) -> str:
    v = (v or "").strip()
    if v.isdigit() and 1 <= int(v) <= 6:
        return ROMAN[int(v) - 1]
    if v.upper() in ROMAN:
        return v.upper()
    return "unknown"


def read_records(data_dir: str | Path) -> list[Record]:
    """All labelled images of both data sets, in a fixed order (ISIC rows, then PAD rows)."""
    data_dir = Path(data_dir)
    out: list[Record] = []
    isic_csv = data_dir / ISIC / "labels.csv"
    pad_csv = data_dir / PAD / "labels.csv"
    for p in (isic_csv, pad_csv):
        if not p.is_file():
            raise ConfigError(
                f"data.shared_data: {p} not found (set MENDICANT_SHARED_DATA or data.shared_data)"
            )
    with open(isic_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            code = _dx7(row["dx"], row["dx7"])
            out.append(Record(
                dataset="isic", pool=row["pool"].strip(), image=row["image"],
                relpath=f"{ISIC}/images/{row['image']}", dx=row["dx"].strip(), dx7=code,
                label=CLASSES.index(code), malignant=int(row["malignant"]),
            ))  # fmt: skip
    with open(pad_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            code = _dx7(row["dx"], row["dx7"])
            try:
                meta = Metadata(age=row.get("age"), sex=row.get("gender") or "unknown",
                                site=row.get("region") or "unknown")  # fmt: skip
            except MetadataError:
                meta = Metadata(sex=row.get("gender") or "unknown", site=row.get("region") or "unknown")
            fst = _roman(row.get("fst", ""))
            out.append(Record(
                dataset="pad", pool="pad", image=row["image"], relpath=f"{PAD}/images/{row['image']}",
                dx=row["dx"].strip(), dx7=code, label=CLASSES.index(code), malignant=int(row["malignant"]),
                patient_id=row["patient_id"].strip(), age=meta.age, sex=meta.sex, site=meta.site,
                fst=fst, fst_source="label" if fst != "unknown" else "estimated",
            ))  # fmt: skip
    return out


def _rng(seed: int, *tags: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) for t in tags)])


def subset_records(records: Sequence[Record], max_images: int, seed: int) -> list[Record]:
    """A seeded subset of about ``max_images`` records, proportional per (dataset, pool, dx7) cell.

    PAD is subset by whole patients so the patient split stays meaningful. 0 keeps everything.
    """
    if max_images <= 0 or max_images >= len(records):
        return list(records)
    frac = max_images / len(records)
    cells: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        cells[(r.dataset, r.pool, r.dx7)].append(i)
    keep: set[int] = set()
    pad_patients: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.dataset == "pad":
            pad_patients[r.patient_id].append(i)
    for cell, idx in sorted(cells.items()):
        if cell[0] == "pad":
            continue
        k = max(1, int(round(len(idx) * frac)))
        perm = _rng(seed, "subset", *cell).permutation(len(idx))
        keep.update(idx[j] for j in perm[:k])
    pats = sorted(pad_patients)
    perm = _rng(seed, "subset", "pad").permutation(len(pats))
    n_pad = sum(len(v) for v in pad_patients.values())
    target = int(round(n_pad * frac))
    count = 0
    for j in perm:
        if count >= target:
            break
        keep.update(pad_patients[pats[j]])
        count += len(pad_patients[pats[j]])
    return [records[i] for i in sorted(keep)]


def split_records(records: Sequence[Record], isic_val_fraction: float, pad_val_fraction: float,
                  seed: int) -> list[str]:  # fmt: skip
    """``"train"``/``"val"`` per record; deterministic in (records, fractions, seed).

    ham10000 -> train; ISIC external stratified by dx; PAD by patient, stratified by (FST, any malignant).
    """
    split = ["train"] * len(records)
    by_dx: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.dataset == "isic" and r.pool == "external":
            by_dx[r.dx].append(i)
    for dx, idx in sorted(by_dx.items()):
        n_val = int(round(len(idx) * isic_val_fraction))
        perm = _rng(seed, "isic", dx).permutation(len(idx))
        for j in perm[:n_val]:
            split[idx[j]] = "val"
    patients: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.dataset == "pad":
            patients[r.patient_id].append(i)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid, idx in sorted(patients.items()):
        fsts = sorted({records[i].fst for i in idx if records[i].fst_source == "label"})
        malig = max(records[i].malignant for i in idx)
        strata[f"{fsts[0] if fsts else 'unknown'}|{malig}"].append(pid)
    for key, pids in sorted(strata.items()):
        n_img = sum(len(patients[p]) for p in pids)
        target = pad_val_fraction * n_img
        perm = _rng(seed, "pad", key).permutation(len(pids))
        count = 0
        for j in perm:
            if count + len(patients[pids[j]]) / 2 > target:
                continue  # skip patients that would overshoot by more than half their images
            for i in patients[pids[j]]:
                split[i] = "val"
            count += len(patients[pids[j]])
    return split


# --------------------------------------------------------------------------------------------------
# The run's data index
# --------------------------------------------------------------------------------------------------


@dataclass
class DataIndex:
    """Everything the later stages need, as arrays aligned with ``records``."""

    run_dir: Path
    records: list[Record]
    images: np.ndarray  # (N,254,254,3) float32 memmap, 0..255, core.preprocess output
    meta: np.ndarray  # (N,10) float32, core.metadata.encode_metadata

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], np.int64)

    @property
    def malignant(self) -> np.ndarray:
        return np.array([r.malignant for r in self.records], np.int64)

    @property
    def fst(self) -> np.ndarray:
        return np.array([r.fst for r in self.records], dtype=object)

    def indices(self, split: str) -> np.ndarray:
        return np.array([i for i, r in enumerate(self.records) if r.split == split], np.int64)

    def column(self, name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in self.records], dtype=object)


def data_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "data" / "DONE").is_file()


def _write_manifest(path: Path, records: Sequence[Record], indices: Sequence[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_COLUMNS)
        for i in indices:
            r = records[i]
            w.writerow([i, r.split, r.dataset, r.pool, r.image, r.relpath, r.sha256, r.dx, r.dx7, r.label,
                        r.malignant, r.fst, r.fst_source, r.patient_id,
                        "" if r.age is None else f"{r.age:g}", r.sex, r.site])  # fmt: skip
    os.replace(tmp, path)


def build_data(cfg: Config, run_dir: str | Path, *, log: Any = print) -> DataIndex:
    """Run the data stage into ``run_dir`` (skips work already done) and return the index."""
    run_dir = Path(run_dir)
    if data_done(run_dir):
        return load_index(run_dir)
    t0 = time.time()
    src = shared_data_dir(cfg)
    records = subset_records(read_records(src), cfg.data.max_images, cfg.run.seed)
    n = len(records)
    ddir = run_dir / "data"
    ddir.mkdir(parents=True, exist_ok=True)
    tmp_images = ddir / "images.npy.tmp"
    images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.float32, shape=(n, *MODEL_SIZE, 3))
    meta = np.zeros((n, 10), np.float32)
    for i, r in enumerate(records):
        path = src / r.relpath
        r.sha256 = sha256_file(path)
        rgb = load_image(path)
        images[i] = preprocess(rgb)
        meta[i] = encode_metadata(r.metadata if r.dataset == "pad" else None)
        if r.fst_source != "label":
            est = estimate_skin_tone(rgb)
            r.fst, r.fst_source = est.fst, "estimated"
            r.extra = {"ita": est.ita}
        if (i + 1) % 250 == 0:
            log(f"data: decoded {i + 1}/{n} images ({time.time() - t0:.0f}s)")
    images.flush()
    del images
    os.replace(tmp_images, ddir / "images.npy")
    np.save(ddir / "meta.npy", meta)
    # Splits use clinician FST only (never estimates), so they do not depend on the estimator.
    splits = split_records(records, cfg.data.isic_val_fraction, cfg.data.pad_val_fraction, cfg.run.seed)
    for r, s in zip(records, splits, strict=True):
        r.split = s
    with open(ddir / "records.json", "w", encoding="utf-8") as fh:
        json.dump([asdict(r) for r in records], fh)
    for s in ("train", "val"):
        _write_manifest(
            run_dir / "manifests" / f"{s}.csv", records, [i for i, r in enumerate(records) if r.split == s]
        )
    summary = summarize(records)
    summary["shared_data"] = str(src)
    summary["seconds"] = round(time.time() - t0, 1)
    with open(ddir / "summary.json", "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    (ddir / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    log(f"data: {n} images, train {summary['train']['n']}, val {summary['val']['n']} ({summary['seconds']}s)")
    return load_index(run_dir)


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in ("train", "val"):
        rs = [r for r in records if r.split == s]
        out[s] = {
            "n": len(rs),
            "by_pool": dict(Counter(r.pool for r in rs)),
            "by_dx7": dict(Counter(r.dx7 for r in rs)),
            "malignant": sum(r.malignant for r in rs),
            "pad_fst": dict(Counter(r.fst for r in rs if r.dataset == "pad")),
            "isic_fst_estimated": dict(Counter(r.fst for r in rs if r.dataset == "isic")),
            "pad_patients": len({r.patient_id for r in rs if r.dataset == "pad"}),
        }
    return out


def load_index(run_dir: str | Path) -> DataIndex:
    run_dir = Path(run_dir)
    ddir = run_dir / "data"
    if not data_done(run_dir):
        raise FileNotFoundError(f"{ddir} is incomplete: run `python -m compression data` first")
    with open(ddir / "records.json", encoding="utf-8") as fh:
        records = [Record(**d) for d in json.load(fh)]
    images = np.load(ddir / "images.npy", mmap_mode="r")
    meta = np.load(ddir / "meta.npy")
    return DataIndex(run_dir=run_dir, records=records, images=images, meta=meta)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def balanced_weights(keys: Sequence[Any]) -> np.ndarray:
    """Per-item sampling weights ``1 / count(key)`` normalised to sum 1: every key is drawn equally often."""
    counts = Counter(keys)
    w = np.array([1.0 / counts[k] for k in keys], np.float64)
    return w / w.sum()


def balanced_indices(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` positions drawn with replacement with probabilities ``weights``."""
    return rng.choice(len(weights), size=n, replace=True, p=weights)


# --------------------------------------------------------------------------------------------------
# Torch dataset over the decoded cache
# --------------------------------------------------------------------------------------------------


class ImageDataset:
    """``torch.utils.data.Dataset`` over a :class:`DataIndex` subset.

    Item: ``(image float32 (254,254,3) 0..255, meta float32 (10,), label int, malignant int, position)``.
    An optional ``transform(image_tensor, generator) -> image_tensor`` is applied with a per-item seeded
    generator (see :func:`compression.train.augment_image`).
    """

    def __init__(
        self, index: DataIndex, positions: Sequence[int], transform: Any = None, seed: int = 0
    ) -> None:
        self.index = index
        self.positions = np.asarray(positions, np.int64)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int) -> tuple[Any, Any, int, int, int]:
        import torch

        i = int(self.positions[k])
        img = torch.from_numpy(np.array(self.index.images[i], dtype=np.float32))
        if self.transform is not None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
            img = self.transform(img, g)
        meta = torch.from_numpy(self.index.meta[i].copy())
        r = self.index.records[i]
        return img, meta, r.label, r.malignant, i
