"""The "Audit" tab: per-skin-type performance of the loaded model on a labelled image set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop import __version__
from mendicant_desktop.app import audit_text
from mendicant_desktop.app.audit_run import (
    AuditRun,
    audit_record,
    load_audit_inputs,
    model_card_dict,
    run_audit,
    to_html,
)
from mendicant_desktop.app.errors import CancelledError, UsageError
from mendicant_desktop.core import audit as core_audit

from .keeper import CaseKeeper
from .plots import GROUP_COLOURS, CalibrationPlot, RocPlot, Series
from .services import Services
from .text import pct
from .worker import BackgroundOp, store_pool

GUI_COLUMNS = audit_text.TABLE_COLUMNS[:-1]  # the note goes into a spanned cell / tooltip
#: The table's headers on screen (the exports keep the full ones) and their tooltips.
SHORT_HEADERS = {"AUROC (95% CI)": "AUROC", "Sensitivity (95% CI)": "Sensitivity",
                 "Specificity (95% CI)": "Specificity"}
HEADER_TIPS = {"n": "Images in the group", "Pos.": "Malignant images in the group",
               "AUROC (95% CI)": "AUROC of the malignancy score, with its 95% bootstrap confidence interval",
               "Sensitivity (95% CI)": "Sensitivity at the operating threshold (95% CI)",
               "Specificity (95% CI)": "Specificity at the operating threshold (95% CI)",
               "ECE": "Expected calibration error (10 bins)",
               "FST from": "Where the group's skin types come from: the labels file, the image, or both"}
#: The plots never get narrower than this beside the table.
MIN_PLOTS_WIDTH = 300


def _audit(engine, labels_csv: str, images_dir: str, threshold: float | None, n_boot: int, ctx,
           grouping: str = "type") -> AuditRun:
    """The Audit tab's background work: the app layer's audit run, reporting progress to ``ctx``."""
    labels, metadata = load_audit_inputs(labels_csv, images_dir)

    def progress(done: int, total: int) -> None:
        msg = (f"scored {done} of {total} images" if done < total
               else f"bootstrapping confidence intervals ({n_boot} resamples)")
        ctx.progress(done, total + 1, msg)

    run = run_audit(engine, labels, metadata, threshold=threshold, n_boot=n_boot, stop=lambda: ctx.cancelled,
                    progress=progress, images_dir=images_dir, grouping=grouping)
    if run.interrupted or ctx.cancelled:
        raise CancelledError("audit cancelled")
    if run.result is None:
        raise UsageError(f"none of the {run.total} images could be scored (first failure: {run.failed[0][1]})"
                         if run.failed else "nothing to audit")
    return run


class AuditTab(QWidget):
    finished = Signal(object)  # AuditRun, or None on failure/cancel
    message = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.run: AuditRun | None = None
        self._op: BackgroundOp | None = None
        self.keeper = CaseKeeper(services.store, parent=self)  # audit runs are kept with their inputs
        self.keeper.message.connect(self.message)

        root = QVBoxLayout(self)
        root.setContentsMargins(12, 8, 12, 8)
        root.setSpacing(6)
        intro = QLabel("Per-skin-type performance of the loaded model on your own labelled images. CSV columns: "
                       "<b>image</b>, <b>malignant</b> (0/1) or <b>dx</b>, <b>fst</b> (1–6; empty = estimated); optional "
                       "<b>three_partition</b> (malignant / benign / non-neoplastic) adds malignant vs benign neoplasms.")
        intro.setWordWrap(True)
        intro.setObjectName("Muted")
        root.addWidget(intro)

        root.addLayout(self._build_form())

        self.status = QLabel("")
        self.status.setWordWrap(True)
        root.addWidget(self.status)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        split.addWidget(self._build_table_column())
        split.addWidget(self._build_plots())
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([760, 500])
        self.split = split
        root.addWidget(split, 1)

        root.addLayout(self._build_exports())

        self.run_btn.clicked.connect(self.start)
        self.cancel_btn.clicked.connect(self.cancel)
        self.export_html_btn.clicked.connect(lambda: self._export("html"))
        self.export_csv_btn.clicked.connect(lambda: self._export("csv"))
        self._show_empty()
        self._show_last_stored()

    def _build_form(self) -> QFormLayout:
        """Labels file, image folder, resamples and the run/cancel controls."""
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setVerticalSpacing(4)
        self.labels_edit = QLineEdit()
        self.labels_edit.setPlaceholderText("labels.csv")
        self.images_edit = QLineEdit()
        self.images_edit.setPlaceholderText("folder with the images")
        b1 = QPushButton("Browse…")
        b1.clicked.connect(self._browse_labels)
        b2 = QPushButton("Browse…")
        b2.clicked.connect(self._browse_images)
        r1 = QHBoxLayout()
        r1.addWidget(self.labels_edit, 1)
        r1.addWidget(b1)
        r2 = QHBoxLayout()
        r2.addWidget(self.images_edit, 1)
        r2.addWidget(b2)
        form.addRow("Labelled CSV:", r1)
        form.addRow("Image folder:", r2)
        r3 = QHBoxLayout()
        self.n_boot = QSpinBox()
        self.n_boot.setRange(0, 10000)
        self.n_boot.setSingleStep(100)
        self.n_boot.setValue(1000)
        self.n_boot.setToolTip("Bootstrap resamples for the 95% confidence intervals")
        r3.addWidget(self.n_boot)
        r3.addSpacing(12)
        r3.addWidget(QLabel("Groups:"))
        self.grouping = QComboBox()
        self.grouping.addItem("per type I–VI", "type")
        self.grouping.addItem("DDI-style I–II / III–IV / V–VI", "ddi")
        self.grouping.setToolTip("DDI-style pooled groups keep small dark-skin groups above n = 30")
        r3.addWidget(self.grouping)
        r3.addSpacing(12)
        self.run_btn = QPushButton("Run audit")
        self.run_btn.setObjectName("Primary")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        r3.addWidget(self.run_btn)
        r3.addWidget(self.cancel_btn)
        r3.addWidget(self.progress, 1)
        form.addRow("Resamples:", r3)
        return form

    def _build_table_column(self) -> QWidget:
        """The per-group table, the gap sentence, how to read it and the failures."""
        left = QWidget()
        tl = QVBoxLayout(left)
        tl.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(GUI_COLUMNS))
        # before any section exists: the stretched last section starts (and may shrink back) to this, not 100 px
        self.table.horizontalHeader().setDefaultSectionSize(48)
        self.table.horizontalHeader().setMinimumSectionSize(24)
        # short headers (the full ones as tooltips): the table then fits beside the plots at 1024 px
        self.table.setHorizontalHeaderLabels([SHORT_HEADERS.get(c, c) for c in GUI_COLUMNS])
        for j, c in enumerate(GUI_COLUMNS):
            self.table.horizontalHeaderItem(j).setToolTip(HEADER_TIPS.get(c, c))
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hh.setStretchLastSection(True)
        tl.addWidget(self.table, 1)
        self.gap = QLabel("")
        self.gap.setWordWrap(True)
        self.gap.setObjectName("GapLabel")
        tl.addWidget(self.gap)
        self.reading = QLabel(
            f"Groups with n < {core_audit.MIN_GROUP_N}, or fewer than {core_audit.MIN_CLASS_N} positives or "
            "negatives, are insufficient: their figures are withheld and they are left out of the gap. Sensitivity "
            "and specificity are at the operating threshold; ECE is the expected calibration error (10 bins). "
            "Brackets: 95% confidence intervals. “label” = the labels file's skin type (a clinician's or an "
            "annotator's); “estimated” = from the image; a “mixed” group says how many of each.")
        self.reading.setWordWrap(True)
        self.reading.setObjectName("Muted")
        tl.addWidget(self.reading)
        self.failed_label = QLabel("")
        self.failed_label.setObjectName("Muted")
        self.failed_label.setWordWrap(True)
        tl.addWidget(self.failed_label)
        return left

    def _build_plots(self) -> QWidget:
        """ROC and calibration plots per skin type."""
        self.roc = RocPlot()
        self.cal = CalibrationPlot()
        # one above the other when there is room for both; else one tab each (at 1024x640 two stacked plots
        # would be squeezed under their minimum size and cut off)
        self.plot_stack = QStackedWidget()
        self._plot_column = QWidget()
        pl = QVBoxLayout(self._plot_column)
        pl.setContentsMargins(0, 0, 0, 0)
        pl.addWidget(self.roc, 1)
        pl.addWidget(self.cal, 1)
        self.plot_tabs = QTabWidget()
        self.plot_tabs.setDocumentMode(True)
        self.plot_stack.addWidget(self._plot_column)
        self.plot_stack.addWidget(self.plot_tabs)
        self._plots_tabbed = False
        return self.plot_stack

    def _arrange_plots(self, tabbed: bool) -> None:
        if tabbed == self._plots_tabbed:
            return
        self._plots_tabbed = tabbed
        if tabbed:
            self.plot_tabs.addTab(self.roc, "ROC curves")
            self.plot_tabs.addTab(self.cal, "Calibration")
            self.plot_stack.setCurrentWidget(self.plot_tabs)
        else:
            lay = self._plot_column.layout()
            lay.addWidget(self.roc, 1)
            lay.addWidget(self.cal, 1)
            self.plot_stack.setCurrentWidget(self._plot_column)
            self.roc.show()  # the tab widget had hidden the page that was not current
            self.cal.show()

    def _build_exports(self) -> QHBoxLayout:
        """The HTML and CSV export buttons (enabled once a run has finished)."""
        ex = QHBoxLayout()
        self.export_html_btn = QPushButton("Export HTML…")
        self.export_csv_btn = QPushButton("Export CSV…")
        for b in (self.export_html_btn, self.export_csv_btn):
            b.setEnabled(False)
        ex.addStretch(1)
        ex.addWidget(self.export_html_btn)
        ex.addWidget(self.export_csv_btn)
        return ex

    # ---- layout -------------------------------------------------------------------------------
    def _table_width(self) -> int:
        """The width that shows every column of the table without a horizontal scroll bar."""
        t = self.table
        hh = t.horizontalHeader()
        fm = hh.fontMetrics()
        # each column's cells and header text (measured, the header left alone: its last section stretches)
        last = t.columnCount() - 1
        cols = sum(hh.sectionSize(j) for j in range(last))  # sized to their contents (ResizeToContents)
        cols += max(t.sizeHintForColumn(last), fm.horizontalAdvance(t.horizontalHeaderItem(last).text()) + 16)
        return cols + 2 * t.frameWidth() + t.verticalScrollBar().sizeHint().width() + 4

    def _fit_table(self) -> None:
        """Every row and column of the table in view: the table its full width, the plots the rest (never under
        MIN_PLOTS_WIDTH), and the table as tall as its rows."""
        t = self.table
        total = self.split.width()
        if total > 0:
            want = min(self._table_width(), total - MIN_PLOTS_WIDTH - self.split.handleWidth())
            self.split.setSizes([max(want, 200), max(total - want - self.split.handleWidth(), MIN_PLOTS_WIDTH)])
        # stacked plots need the split to get 2 plot heights; judge from the tab's own height (the split's may
        # already be overflowing because of the stacked plots' minimum)
        below = self.export_html_btn.sizeHint().height() + 16
        self._arrange_plots(self.height() < self.split.y() + 2 * self.roc.minimumHeight() + 40 + below)
        rows = sum(t.rowHeight(i) for i in range(t.rowCount()))
        t.setMinimumHeight(min(rows + t.horizontalHeader().sizeHint().height() + 2 * t.frameWidth() + 2, 320))

    def resizeEvent(self, e) -> None:  # noqa: N802
        super().resizeEvent(e)
        self._fit_table()

    # ---- inputs -------------------------------------------------------------------------------
    def _browse_labels(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Labelled CSV", self.labels_edit.text(), "CSV files (*.csv)")
        if path:
            self.labels_edit.setText(path)
            if not self.images_edit.text() and (Path(path).parent / "images").is_dir():
                self.images_edit.setText(str(Path(path).parent / "images"))

    def _browse_images(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Image folder", self.images_edit.text())
        if d:
            self.images_edit.setText(d)

    def set_inputs(self, labels_csv: str | Path, images_dir: str | Path, n_boot: int | None = None,
                   grouping: str | None = None) -> None:
        self.labels_edit.setText(str(labels_csv))
        self.images_edit.setText(str(images_dir))
        if n_boot is not None:
            self.n_boot.setValue(int(n_boot))
        if grouping is not None:
            self.grouping.setCurrentIndex(max(0, self.grouping.findData(grouping)))

    # ---- run ----------------------------------------------------------------------------------
    def start(self) -> None:
        engine = self.services.engine
        labels, images = self.labels_edit.text().strip(), self.images_edit.text().strip()
        if engine is None:
            self._fail("The model is not loaded yet.")
            return
        if not labels or not Path(labels).is_file():
            self._fail("Choose the labelled CSV file first.")
            return
        if not images or not Path(images).is_dir():
            self._fail("Choose the folder that holds the images.")
            return
        threshold = self.services.threshold
        n_boot = self.n_boot.value()
        grouping = self.grouping.currentData()
        self.run_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.setFormat("starting…")
        self.status.setText("")

        def op(ctx):
            return _audit(engine, labels, images, threshold, n_boot, ctx, grouping)

        self._op = (BackgroundOp(self, op=op, success=self._done).failure(lambda e: self._fail(str(e)))
                    .with_progress(self._progress).on_cancel(self._cancelled).run_in_background())

    def cancel(self) -> None:
        if self._op is not None:
            self.cancel_btn.setEnabled(False)
            self.progress.setFormat("cancelling…")
            self._op.cancel()

    def is_running(self) -> bool:
        return self._op is not None and not self.run_btn.isEnabled()

    def _progress(self, done: int, total: int, text: str) -> None:
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        self.progress.setFormat(text)

    def _reset_controls(self) -> None:
        self.run_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        self.progress.setRange(0, 1)
        self._op = None

    def _fail(self, reason: str) -> None:
        self._reset_controls()
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.status.setText(f"<span style='color:#b00020'><b>Audit not run:</b> {reason}</span>")
        self.finished.emit(None)

    def _cancelled(self) -> None:
        self._reset_controls()
        self.progress.setValue(0)
        self.progress.setFormat("cancelled")
        self.status.setText("The audit was cancelled; no results were kept.")
        self.finished.emit(None)

    def _done(self, run: AuditRun) -> None:
        self._reset_controls()
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self.run = run
        self.show_run(run)
        eng = self.services.engine
        inputs, results = audit_record(run)
        self.keeper.save_audit(inputs, results, model_name=eng.card.name if eng else run.model,
                               model_sha256=eng.card.sha256 if eng else "")
        self.finished.emit(run)

    def _show_last_stored(self) -> None:
        """After a restart: say what the last stored audit run found (its figures are in the case store)."""
        store = self.services.store
        if store is None:
            return

        def ok(runs) -> None:
            if not runs or self.run is not None:
                return
            r = runs[-1]
            auroc = (r.results.get("overall") or {}).get("auroc")
            n = len(r.inputs.get("images") or [])
            self.status.setText(
                f"Last audit run {r.created[:16].replace('T', ' ')}: {n} images from "
                f"{Path(r.inputs.get('labels_path') or '?').name}, overall AUROC "
                f"{'–' if auroc is None else f'{auroc:.3f}'} ({len(runs)} run{'s' if len(runs) != 1 else ''} "
                "kept on this computer). Run it again to see the curves.")

        BackgroundOp(self, op=lambda ctx: store.audit_runs(), success=ok).run_in_background(store_pool())

    # ---- display ------------------------------------------------------------------------------
    def _show_empty(self) -> None:
        self.table.setRowCount(0)
        self.gap.setText("")
        self.roc.set_series([], "Run an audit to see ROC curves per skin type.")
        self.cal.set_series([], "")

    def show_run(self, run: AuditRun) -> None:
        res = run.result
        assert res is not None
        rows = audit_text.table_rows(res)
        self.table.clearSpans()
        self.table.setRowCount(len(rows))
        grey = QColor("#6b7480")
        for i, (cells, suff) in enumerate(rows):
            note = cells[-1]
            cells = cells[: len(GUI_COLUMNS)]
            for j, c in enumerate(cells):
                if not suff and 3 < j < 7:
                    continue  # hidden under the spanned note
                it = QTableWidgetItem(c)
                it.setToolTip(c)  # the full text of a cell the column elides
                if j in (1, 2):
                    it.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if note:
                    it.setToolTip(note)
                if not suff:
                    it.setForeground(grey)
                if i == 0:
                    f = it.font()
                    f.setBold(True)
                    it.setFont(f)
                self.table.setItem(i, j, it)
            if not suff:
                self.table.setSpan(i, 3, 1, 4)
                self.table.item(i, 3).setText(note[:1].upper() + note[1:] + " — figures withheld")
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self._fit_table()
        neo = audit_text.neoplasm_text(run)
        self.gap.setText(f"<b>{audit_text.gap_text(res)}</b>" + (f"<br>{neo}" if neo else ""))
        n_est = sum(s == "estimated" for s in run.fst_source)
        self.status.setText(
            f"{len(run.scores)} images scored with {run.model} at threshold {pct(run.threshold)}"
            + (f"; skin type estimated from the image for {n_est}" if n_est else "")
            + "."
        )
        curves = run.curves()
        show = ["overall"] + [g for g in res.gap_groups]
        hidden = [g for g in res.groups if g not in show]
        roc, cal = [], []
        for g in show:
            if g not in curves:
                continue
            c = curves[g]
            name = audit_text.group_label(g)
            gm = res.overall if g == "overall" else res.groups[g]
            auc = "" if np.isnan(gm.auroc) else f" (AUROC {gm.auroc:.2f})"
            roc.append(Series(name + auc, c["fpr"], c["tpr"], GROUP_COLOURS[g]))
            cal.append(Series(name, c["cal_x"], c["cal_y"], GROUP_COLOURS[g], markers=True,
                              sizes=c["cal_n"].astype(float)))
        note = ("Not plotted (insufficient): " + ", ".join(audit_text.group_label(g) for g in hidden)) if hidden else ""
        self.roc.set_series(roc, note)
        self.cal.set_series(cal, "Marker size grows with the number of images in the bin.")
        bits = []
        if run.failed:
            bits.append(f"{len(run.failed)} image(s) could not be scored (listed in the HTML export), e.g. "
                        f"{run.failed[0][0]}: {run.failed[0][1]}")
        if run.skipped:
            bits.append(f"{len(run.skipped)} label row(s) unusable, e.g. {run.skipped[0][0]}: {run.skipped[0][1]}")
        self.failed_label.setText("; ".join(bits))
        self.export_html_btn.setEnabled(True)
        self.export_csv_btn.setEnabled(True)

    # ---- export -------------------------------------------------------------------------------
    def export_html(self, path: str | Path) -> Path:
        assert self.run is not None
        engine = self.services.engine
        # the card of the model that scored this run (a model switched since then is not described)
        card = model_card_dict(engine.card) if engine is not None and engine.card.name == self.run.model else None
        p = Path(path)
        p.write_text(to_html(self.run, card, __version__), encoding="utf-8")
        return p

    def export_csv(self, path: str | Path) -> Path:
        assert self.run is not None
        p = Path(path)
        p.write_text(audit_text.to_csv(self.run), encoding="utf-8")
        return p

    def _export(self, kind: str) -> None:
        if self.run is None:
            return
        filt = "HTML report (*.html)" if kind == "html" else "CSV table (*.csv)"
        path, _ = QFileDialog.getSaveFileName(self, "Export audit", f"mendicant-audit.{kind}", filt)
        if not path:
            return
        try:
            out = self.export_html(path) if kind == "html" else self.export_csv(path)
        except OSError as exc:
            self.status.setText(f"<span style='color:#b00020'>Could not write {path}: {exc}</span>")
            return
        self.message.emit(f"Audit exported to {out}")
