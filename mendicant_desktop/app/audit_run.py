"""The fairness-audit run behind ``--audit`` and the Audit tab: score the labelled images, audit per skin type.

:func:`load_audit_inputs` reads the labels (and the metadata from their age/sex/site columns, or from a
separate file) with :mod:`.tables`; :func:`run_audit` scores every usable row through
:func:`~.scoring.iter_scored` -- the ``--batch`` path -- with the malignancy Grad-CAM when asked to explain,
and audits the scores with :func:`core.audit.audit`; :func:`to_report` turns the run into the one HTML/JSON
report (:mod:`core.report_html`) both front ends write.

Two comparisons when the labels have a lesion category (:data:`.tables.PARTITION_COLUMNS`, e.g.
Fitzpatrick17k's ``three_partition``): the headline, malignant vs the rest (``result``), and malignant vs benign
neoplasms with the non-neoplastic (inflammatory) conditions left out (``neoplasm_result``). Skin types are grouped
per type or DDI-style (``grouping``, see :func:`core.audit.group_of`); each image records whether its type came
from the label or from the engine's estimate, and every group reports both counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core import audit as core_audit
from mendicant_desktop.core import report_html
from mendicant_desktop.core.bundle import ModelCard
from mendicant_desktop.core.errors import MetadataError
from mendicant_desktop.core.explain import SaliencyInLesion, saliency_in_lesion, summarize_saliency, to_uint8
from mendicant_desktop.core.inference import Engine

from .errors import LabelsError, UsageError
from .inputs import InputItem
from .scoring import Scored, StopFlag, iter_scored
from .tables import LabelRow, Labels, MetadataTable, load_metadata_csv, read_labels

#: Example heatmaps are shown at 1/``EXAMPLE_THUMB_STEP`` of the model input's size.
EXAMPLE_THUMB_STEP = 3
#: Where the skin type of an audited image came from.
FST_FROM_LABEL = "label"
FST_FROM_ESTIMATE = "estimated"
#: Digits of the per-image figures in METRICS.json.
PER_IMAGE_DIGITS = 6


@dataclass
class AuditRun:
    """The scored images (one entry per audited image in every list), failures and the audit itself."""

    images: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    fst_source: list[str] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)  # lesion category per image ('' when the file has none)
    per_image: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # label rows that could not be used
    saliency: list[SaliencyInLesion] = field(default_factory=list)  # with explain=True, one per audited image
    cams: list[np.ndarray | None] = field(default_factory=list)
    examples: dict[str, list[report_html.ExampleTile]] = field(default_factory=dict)
    result: core_audit.AuditResult | None = None
    neoplasm_result: core_audit.AuditResult | None = None  # malignant vs benign neoplasms (with a lesion category)
    grouping: str = "type"
    threshold: float = 0.5
    model: str = ""
    labels_path: str = ""
    images_dir: str = ""
    n_boot: int = 1000
    seed: int = 0
    explained: bool = False
    total: int = 0  # usable label rows
    n_done: int = 0  # of them scored (or failed) before the run ended
    interrupted: bool = False

    def neoplasm_mask(self) -> np.ndarray:
        """The images of the malignant-vs-benign-neoplasm comparison (a known category, not non-neoplastic)."""
        p = np.asarray(self.partitions, dtype=object)
        return (p == "malignant") | (p == "benign") if p.size == len(self.scores) else np.zeros(len(self.scores), bool)

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """ROC and calibration points overall and per group present (groups of this run's grouping)."""
        s = np.asarray(self.scores, dtype=np.float64)
        y = np.asarray(self.labels, dtype=np.int8)
        g = np.asarray([core_audit.group_of(v, self.grouping) for v in self.groups], dtype=object)
        out: dict[str, dict[str, np.ndarray]] = {}
        for name in ["overall"] + [n for n in core_audit.group_order(self.grouping) if np.any(g == n)]:
            m = np.ones(s.size, bool) if name == "overall" else g == name
            if not m.any():
                continue
            fpr, tpr, _ = core_audit.roc_curve(y[m], s[m])
            cal = core_audit.calibration_curve(y[m], s[m])
            out[name] = {"fpr": fpr, "tpr": tpr, "cal_x": cal.mean_predicted, "cal_y": cal.observed_rate,
                         "cal_n": cal.count}
        return out


def load_audit_inputs(
    labels_csv: str | os.PathLike, images_dir: str | os.PathLike, metadata_csv: str | os.PathLike | None = None,
) -> tuple[Labels, MetadataTable | None]:
    """The labels and the metadata fed to the model: from ``metadata_csv``, else the labels' own age/sex/site
    columns. Raises :class:`LabelsError` / :class:`UsageError` / :class:`MetadataError` with a readable message.
    """
    labels = read_labels(labels_csv, images_dir)
    if not labels.rows:
        first = f" (e.g. {labels.skipped[0][0]}: {labels.skipped[0][1]})" if labels.skipped else ""
        raise LabelsError(f"labels file {os.fspath(labels_csv)}: no usable rows{first}")
    if metadata_csv is not None:
        return labels, load_metadata_csv(metadata_csv)
    if not labels.has_meta_columns:
        return labels, None
    try:
        return labels, load_metadata_csv(labels_csv)
    except MetadataError as exc:
        raise UsageError(f"labels file metadata: {exc}") from None


def _explain(run: AuditRun, lab: LabelRow, scored: Scored, score: float, group: str, examples: int) -> None:
    """Saliency-in-lesion of the malignancy Grad-CAM, and the report's example tiles."""
    a = scored.assessment
    assert a is not None
    cam = a.prediction.cam
    try:
        img = to_uint8(a.x)
        sal = saliency_in_lesion(cam, img)
        thumb = np.ascontiguousarray(img[::EXAMPLE_THUMB_STEP, ::EXAMPLE_THUMB_STEP])
    except Exception as exc:  # an explanation problem must never fail the scoring
        sal, thumb = SaliencyInLesion(None, None, "error", f"{type(exc).__name__}: {exc}"), None
    run.saliency.append(sal)
    run.cams.append(cam)
    rec = run.per_image[-1]
    rec["saliency_in_lesion"] = None if sal.ratio is None else round(sal.ratio, PER_IMAGE_DIGITS)
    rec["lesion_fraction"] = None if sal.lesion_fraction is None else round(sal.lesion_fraction, PER_IMAGE_DIGITS)
    tiles = run.examples.setdefault(group, [])
    if len(tiles) < examples and thumb is not None and cam is not None and sal.ratio is not None:
        caption = (f"{os.path.basename(lab.image)[:22]} · {'malignant' if lab.malignant else 'benign'}"
                   f" · score {score:.2f} · in-lesion {sal.ratio:.2f}")
        tiles.append(report_html.ExampleTile(thumb, cam, caption))


def _record(run: AuditRun, lab: LabelRow, scored: Scored, explain: bool, examples: int) -> None:
    """Add one scored label row to the run (or to its failures)."""
    if scored.path != lab.path:  # cannot happen: one result per input, in order
        raise RuntimeError(f"scoring out of order at {lab.image!r}")
    a = scored.assessment
    if a is None:
        reason = scored.failure.reason if scored.failure is not None else "unknown error"
        run.failed.append((lab.image, reason))
        return
    mal = float(a.prediction.malignancy)
    if not math.isfinite(mal):
        run.failed.append((lab.image, "the model returned a non-finite score"))
        return
    if lab.fst != "unknown":
        group, src = lab.fst, FST_FROM_LABEL
    else:
        group = core_audit.parse_fst(a.skin.fst if a.skin is not None else "unknown")
        src = FST_FROM_ESTIMATE
    score = min(1.0, max(0.0, mal))
    run.images.append(lab.image)
    run.scores.append(score)
    run.labels.append(lab.malignant)
    run.groups.append(group)
    run.fst_source.append(src)
    run.partitions.append(lab.partition)
    rec = {"image": lab.image, "malignant": lab.malignant, "score": round(mal, 8), "fst": group, "fst_source": src,
           "sha256": a.sha256}
    if lab.partition:
        rec["partition"] = lab.partition
    run.per_image.append(rec)
    if explain:
        _explain(run, lab, scored, mal, group, examples)


def run_audit(
    engine: Engine,
    labels: Labels,
    metadata: MetadataTable | None = None,
    *,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    explain: bool = False,
    examples: int = 0,
    workers: int | None = None,
    stop: StopFlag = None,
    progress: Callable[[int, int], None] | None = None,
    images_dir: str | os.PathLike = "",
    grouping: str = "type",
) -> AuditRun:
    """Score every usable label row and audit per skin type.

    ``explain`` adds the malignancy Grad-CAM of each image, its saliency-in-lesion ratio and up to
    ``examples`` example tiles per group. ``progress(done, total)`` is called after each image. When
    ``stop`` fires the run returns early with ``interrupted`` set and no audit. ``threshold`` defaults to the
    model card's.
    """
    thr = float(engine.card.threshold if threshold is None else threshold)
    run = AuditRun(skipped=list(labels.skipped), threshold=thr, model=engine.card.name,
                   labels_path=os.path.abspath(labels.path) if labels.path else "",
                   images_dir=os.path.abspath(images_dir) if images_dir else "", n_boot=int(n_boot), seed=int(seed),
                   explained=explain, total=len(labels.rows), grouping=grouping)
    gen = iter_scored((InputItem(r.path) for r in labels.rows), engine, metadata=metadata, workers=workers,
                      stop=stop, threshold=thr, cam_target="malignancy" if explain else None)
    try:
        for lab, scored in zip(labels.rows, gen, strict=False):
            run.n_done += 1
            _record(run, lab, scored, explain, examples)
            if progress is not None:
                progress(run.n_done, run.total)
    finally:
        gen.close()
    if run.n_done < run.total:
        run.interrupted = True
        return run
    if run.scores:
        run.result = core_audit.audit(run.scores, run.labels, run.groups, thr, n_boot=n_boot, seed=seed,
                                      fst_source=run.fst_source, model=engine.card.name, grouping=grouping)
        run.neoplasm_result = neoplasm_audit(run)
    return run


def neoplasm_audit(run: AuditRun) -> core_audit.AuditResult | None:
    """Malignant vs benign neoplasms (non-neoplastic conditions left out), when the labels have a category and
    that subset holds both classes; else None."""
    m = run.neoplasm_mask()
    y = np.asarray(run.labels, dtype=np.int8)[m]
    if not m.any() or y.min() == y.max():
        return None
    pick = np.flatnonzero(m)
    return core_audit.audit([run.scores[i] for i in pick], y, [run.groups[i] for i in pick], run.threshold,
                            n_boot=run.n_boot, seed=run.seed, fst_source=[run.fst_source[i] for i in pick],
                            model=run.model, grouping=run.grouping)


def model_card_dict(card: ModelCard) -> dict[str, Any]:
    """The model card as the report shows it (``card`` is an engine's :class:`ModelCard`)."""
    return {**card.raw, "name": card.name, "version": card.version, "sha256": card.sha256,
            "size_bytes": card.size_bytes, "threshold": card.threshold, "provenance": card.provenance,
            "metrics": card.metrics}


def saliency_summary(run: AuditRun) -> tuple[dict[str, Any] | None, str]:
    """(the per-group saliency summary, the note under it) of an explained run; (None, "") otherwise."""
    if not run.explained or not run.saliency:
        return None, ""
    saliency = summarize_saliency(run.saliency, run.groups, run.cams)
    if not saliency:
        return None, ""
    kinds = saliency["overall"].mask_kinds if "overall" in saliency else {}
    note = ("Lesion masks: " + ", ".join(f"{v} {k.replace('-', ' ')}" for k, v in sorted(kinds.items()))
            + " (masked crop = the non-black region of a background-removed image; lesion split = the dark "
            "side of the engine's lesion/skin split).")
    no_ratio = [s.reason for s in run.saliency if s.ratio is None]
    if no_ratio:
        note += f" No ratio for {len(no_ratio)} image(s) (e.g. {no_ratio[0]})."
    return saliency, note


def to_report(run: AuditRun, model_card: Mapping[str, Any] | None = None, app_version: str = "") -> report_html.AuditReport:
    """The one audit report of a run (rendered by ``report_html.render_html`` / ``report_dict``)."""
    card = dict(model_card) if model_card else {"name": run.model, "threshold": run.threshold}
    saliency, note = saliency_summary(run)
    return report_html.AuditReport(
        result=run.result, neoplasm_result=run.neoplasm_result, neoplasm_mask=tuple(run.neoplasm_mask().tolist()),
        grouping=run.grouping, model_card=card, scores=run.scores, labels=run.labels, groups=run.groups,
        fst_sources=run.fst_source, failed=run.failed, skipped=run.skipped, saliency=saliency, saliency_note=note,
        examples=run.examples, per_image=run.per_image, labels_path=run.labels_path, images_dir=run.images_dir,
        n_boot=run.n_boot, seed=run.seed, app_version=app_version,
    )


def to_html(run: AuditRun, model_card: Mapping[str, Any] | None = None, app_version: str = "") -> str:
    """The self-contained HTML report, exactly as ``--audit`` writes it."""
    return report_html.render_html(to_report(run, model_card, app_version))


def audit_record(run: AuditRun) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inputs, results) of a finished run, JSON-ready, for the case store's ``save_audit_run``: what was
    audited (files, each image's label, skin type and its source, score; failures and skipped rows, the
    bootstrap settings and threshold) and what came out (the audit's figures)."""
    labels_sha = None
    with contextlib.suppress(OSError):
        labels_sha = hashlib.sha256(Path(run.labels_path).read_bytes()).hexdigest() if run.labels_path else None
    inputs = {
        "labels_path": run.labels_path, "labels_sha256": labels_sha, "images_dir": run.images_dir,
        "n_boot": run.n_boot, "seed": run.seed, "threshold": run.threshold, "model": run.model,
        "images": [{"image": i, "malignant": int(y), "fst": g, "fst_source": src, "score": float(sc)}
                   for i, y, g, src, sc in zip(run.images, run.labels, run.groups, run.fst_source, run.scores)],
        "failed": [list(f) for f in run.failed], "skipped": [list(k) for k in run.skipped],
    }
    results = run.result.to_dict(run.model) if run.result is not None else {}
    return inputs, results

