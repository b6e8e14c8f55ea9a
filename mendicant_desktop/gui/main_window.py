"""The main window: menus, toolbar, tabs (Assess, Audit, Model), drag and drop, status bar."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from PySide6.QtCore import QMimeData, QSize, Qt, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDropEvent,
    QGuiApplication,
    QImage,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QFileDialog,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QTabWidget,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop import __version__
from mendicant_desktop.app.images import downscale
from mendicant_desktop.app.inputs import dialog_filter
from mendicant_desktop.core.preprocess import load_image

from . import report, text
from .assess_tab import DISPLAY_SIDE, AssessTab
from .audit_tab import AuditTab
from .model_tab import ModelTab
from .qtutil import icon
from .services import Services
from .settings_dialog import SettingsDialog
from .worker import BackgroundOp

IMAGE_FILTER = dialog_filter()


def _safe_name(s: str) -> str:
    return re.sub(r"[^\w.-]+", "_", s).strip("_")[:80] or "case"


class MainWindow(QMainWindow):
    pdfExported = Signal(str)  # path, after a PDF has been written
    exportFailed = Signal(str)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.settings = services.settings
        self.setWindowTitle("MENDICANT — skin-lesion decision support")
        self.setWindowIcon(icon("mendicant"))
        self.setAcceptDrops(True)
        self.setMinimumSize(1024, 640)

        central = QWidget()
        cl = QVBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        self.notice = QLabel(text.DISCLAIMER_SHORT)
        self.notice.setObjectName("Disclaimer")
        self.notice.setToolTip(text.DISCLAIMER)
        self.notice.setWordWrap(True)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.assess = AssessTab(services)
        self.audit = AuditTab(services)
        self.model_tab = ModelTab(services)
        self.tabs.addTab(self.assess, "Assess")
        self.tabs.addTab(self.audit, "Audit")
        self.tabs.addTab(self.model_tab, "Model")
        self.tabs.setTabToolTip(0, "Assess images (drag and drop, open or paste)")
        self.tabs.setTabToolTip(1, "Fairness audit by skin type on a labelled image set")
        self.tabs.setTabToolTip(2, "The model card: provenance, verification and metrics")
        cl.addWidget(self.tabs, 1)
        cl.addWidget(self.notice)
        self.setCentralWidget(central)

        self._build_actions()
        self._build_status()
        self.assess.queueChanged.connect(self._queue_changed)
        self.assess.message.connect(self._message)
        self.assess.currentCaseChanged.connect(self._update_actions)
        self.audit.message.connect(self._message)
        services.engineChanged.connect(self._engine_ready)
        services.modelFailed.connect(self._model_failed)
        services.modelLoading.connect(lambda: self.model_label.setText("Model: verifying…"))
        self._update_actions()
        self.restore_size()

    #: The first window size on a screen with room for it.
    PREFERRED_SIZE = (1280, 800)

    def restore_size(self) -> None:
        """The last size and place when saved, else the preferred size; either way within the screen's
        available geometry (a 1366×768 laptop keeps its status bar and disclaimer on screen)."""
        geo, _state = self.settings.window_state()
        restored = geo is not None and self.restoreGeometry(geo)
        screen = self.screen() or QGuiApplication.primaryScreen()
        if screen is None:
            if not restored:
                self.resize(*self.PREFERRED_SIZE)
            return
        avail = screen.availableGeometry()
        # the frame (title bar, borders) is not known before the window is shown: leave room for a usual one
        room_w, room_h = avail.width() - 16, avail.height() - 40
        self.setMinimumSize(min(1024, room_w), min(640, room_h))
        w, h = (self.width(), self.height()) if restored else self.PREFERRED_SIZE
        w, h = min(w, room_w), min(h, room_h)
        if (w, h) != (self.width(), self.height()):
            self.resize(w, h)
        if not restored:
            self.move(avail.x() + (avail.width() - w) // 2, avail.y() + max(0, (avail.height() - h - 30) // 2))

    # ---- actions ------------------------------------------------------------------------------
    def _act(self, label: str, slot, shortcut=None, tip: str = "", icon_name: str = "") -> QAction:
        a = QAction(label, self)
        if icon_name:
            a.setIcon(icon(icon_name))
        if shortcut is not None:
            seqs = shortcut if isinstance(shortcut, list) else [shortcut]
            a.setShortcuts([QKeySequence(s) for s in seqs])
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        shortcut_text = a.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        a.setToolTip(f"{tip or label.replace('&', '').rstrip('…')}" + (f" ({shortcut_text})" if shortcut_text else ""))
        a.setStatusTip(tip or label.replace("&", ""))
        a.triggered.connect(slot)
        self.addAction(a)
        return a

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.act_open = self._act("&Open images…", self.open_images, K.Open, "Open one or more image files", "open")
        self.act_folder = self._act("Open &folder…", self.open_folder, "Ctrl+Shift+O",
                                    "Open every image in a folder (and its subfolders)", "folder")
        self.act_paste = self._act("&Paste image", self.paste, K.Paste, "Assess an image from the clipboard", "paste")
        self.act_pdf = self._act("Export case &report (PDF)…", self.export_pdf_dialog, "Ctrl+E",
                                 "Save the selected case as a PDF report", "pdf")
        self.act_print = self._act("&Print case report…", self.print_report, QKeySequence.StandardKey.Print,
                                   "Print the selected case's report")
        self.act_pdf_all = self._act("Export report of the cases &shown (PDF)…", self.export_all_pdf_dialog, None,
                                     "One PDF with the report of every scored case the list shows (search and "
                                     "filters apply)")
        self.act_csv = self._act("Export session (&CSV)…", self.export_csv_dialog, "Ctrl+Shift+E",
                                 "Save every case of this session as CSV (the batch columns)", "csv")
        self.act_quit = self._act("&Quit", self.close, "Ctrl+Q")
        self.act_overlay = self._act("Toggle &heat map", self.assess.view.toggle_overlay, "Ctrl+H",
                                     "Show or hide the Grad-CAM heat map", "heatmap")
        self.act_explain = self._act("&Detailed explanation…", self.assess.explain_current, None,
                                     "Occlusion sensitivity of the selected case (runs in the background; "
                                     "this takes several seconds)")
        self.act_next = self._act("&Next case", self.assess.next_case, ["Ctrl+Down", "Ctrl+J"], "Select the next case")
        self.act_prev = self._act("P&revious case", self.assess.previous_case, ["Ctrl+Up", "Ctrl+K"],
                                  "Select the previous case")
        self.act_fit = self._act("&Fit to window", self.assess.view.view.fit, "Ctrl+0")
        self.act_zoom_in = self._act("Zoom &in", lambda: self.assess.view.view.zoom_by(1.25), ["Ctrl++", "Ctrl+="])
        self.act_zoom_out = self._act("Zoom &out", lambda: self.assess.view.view.zoom_by(0.8), "Ctrl+-")
        self.act_remove = self._act("&Remove case", self.assess.remove_current, "Del", "Remove the selected case")
        self.act_remove.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.assess.list.addAction(self.act_remove)
        self.act_undo = self._act("&Undo remove", self.assess.undo_remove, K.Undo,
                                  "Bring back the last removed case(s)")
        self.act_undo.setEnabled(False)
        self.act_settings = self._act("&Settings…", self.open_settings, "Ctrl+,",
                                      "Threads, threshold, heat map and skin-type options", "settings")
        self.act_shortcuts = self._act("&Keyboard shortcuts", self.show_shortcuts, "F1")
        self.act_about = self._act("&About MENDICANT", self.show_about)

        self._build_menus()
        self._build_toolbar()

    def _build_menus(self) -> None:
        """File, Edit, View and Help menus over the actions."""
        mb = self.menuBar()
        m = mb.addMenu("&File")
        for a in (self.act_open, self.act_folder, self.act_paste):
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_pdf)
        m.addAction(self.act_pdf_all)
        m.addAction(self.act_print)
        m.addAction(self.act_csv)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = mb.addMenu("&Edit")
        m.addAction(self.act_undo)
        m.addAction(self.act_remove)
        m.addSeparator()
        m.addAction(self.act_settings)
        m = mb.addMenu("&View")
        for a in (self.act_overlay, self.act_fit, self.act_zoom_in, self.act_zoom_out):
            m.addAction(a)
        m.addAction(self.act_explain)
        m.addSeparator()
        m.addAction(self.act_next)
        m.addAction(self.act_prev)
        m = mb.addMenu("&Help")
        m.addAction(self.act_shortcuts)
        m.addAction(self.act_about)

    def _build_toolbar(self) -> None:
        """The main toolbar: getting images in, the heat map, the exports, settings."""
        tb = QToolBar("Main")
        tb.setObjectName("MainToolbar")
        tb.setMovable(False)
        tb.setIconSize(QSize(20, 20))
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.act_open.setIconText("Open")
        self.act_folder.setIconText("Folder")
        self.act_paste.setIconText("Paste")
        self.act_pdf.setIconText("PDF report")
        self.act_csv.setIconText("Export CSV")
        self.act_overlay.setIconText("Heat map")
        self.act_settings.setIconText("Settings")
        for a in (self.act_open, self.act_folder, self.act_paste):
            tb.addAction(a)
        tb.addSeparator()
        tb.addAction(self.act_overlay)
        tb.addSeparator()
        tb.addAction(self.act_pdf)
        tb.addAction(self.act_csv)
        tb.addSeparator()
        tb.addAction(self.act_settings)
        self.addToolBar(tb)
        self.toolbar = tb

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.model_label = QLabel("Model: loading…")
        self.queue_label = QLabel("")
        self.queue_bar = QProgressBar()
        self.queue_bar.setMaximumWidth(160)
        self.queue_bar.setMaximumHeight(14)
        self.queue_bar.setTextVisible(False)
        self.queue_bar.setVisible(False)
        sb.addWidget(self.model_label)
        sb.addPermanentWidget(self.queue_label)
        sb.addPermanentWidget(self.queue_bar)

    def _update_actions(self, *_) -> None:
        case = self.assess.current_case()
        self.act_pdf.setEnabled(case is not None and case.status == "done" and self.services.engine is not None)
        self.act_print.setEnabled(self.act_pdf.isEnabled())
        self.act_pdf_all.setEnabled(self.services.engine is not None and self.assess.model.rowCount() > 0)
        self.act_csv.setEnabled(self.assess.model.rowCount() > 0)
        self.act_explain.setEnabled(self.services.engine is not None and self.assess.view.can_explain(case))
        self.act_undo.setEnabled(self.assess.btn_undo.isEnabled())

    # ---- status -------------------------------------------------------------------------------
    def _engine_ready(self, engine) -> None:
        c = engine.card
        thr = self.services.threshold
        src = self.services.threshold_source
        short = text.pct(thr) if src == "model" else f"{text.pct(thr)} ({src}; default {text.pct(c.threshold)})"
        self.model_label.setText(f"Model: {c.name} {c.version} ✔ verified · {engine.threads} thread(s) · "
                                 f"threshold {short}")
        self.model_label.setToolTip(f"sha256 {c.sha256}\nThreshold {text.threshold_text(thr, c.threshold, src)}")
        self._update_actions()

    def _model_failed(self, reason: str) -> None:
        self.model_label.setText("Model: NOT LOADED — see the Model tab")
        self.model_label.setToolTip(reason)
        self._update_actions()

    def _queue_changed(self, done: int, errors: int, total: int) -> None:
        pending = total - done - errors
        if total == 0:
            self.queue_label.setText("")
            self.queue_bar.setVisible(False)
        else:
            bits = [f"{done} of {total} assessed"]
            if errors:
                bits.append(f"{errors} could not be read")
            if pending:
                bits.append(f"{pending} in queue")
            self.queue_label.setText(" · ".join(bits))
            self.queue_bar.setVisible(pending > 0)
            self.queue_bar.setRange(0, total)
            self.queue_bar.setValue(done + errors)
        self._update_actions()
        if self.services.engine is not None:
            self._engine_ready(self.services.engine)

    def _message(self, msg: str) -> None:
        self.statusBar().showMessage(msg, 8000)

    # ---- getting images in --------------------------------------------------------------------
    def open_images(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open images", self.settings.last_dir, IMAGE_FILTER)
        if files:
            self.settings.last_dir = str(Path(files[0]).parent)
            self.add_paths(files)

    def open_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open a folder of images", self.settings.last_dir)
        if d:
            self.settings.last_dir = d
            self.add_paths([d])

    def add_paths(self, paths) -> list:
        self.tabs.setCurrentWidget(self.assess)
        return self.assess.add_paths(list(paths))

    def paste(self) -> None:
        self.handle_mime(QGuiApplication.clipboard().mimeData(), source="clipboard")

    def handle_mime(self, mime: QMimeData | None, source: str = "drop") -> bool:
        """Files/folders (URLs) or raw image data, from a drop or the clipboard."""
        if mime is None:
            return False
        paths = [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []
        if paths:
            self.add_paths(paths)
            return True
        if mime.hasImage():
            img = mime.imageData()
            if isinstance(img, QImage) and not img.isNull():
                self.tabs.setCurrentWidget(self.assess)
                self.assess.add_image(img)
                return True
        if mime.hasUrls():
            self._message("Only files on this computer can be assessed (web links are not downloaded).")
        else:
            self._message(f"Nothing to assess in the {source}: it holds no image or file.")
        return False

    def dragEnterEvent(self, e: QDragEnterEvent) -> None:  # noqa: N802
        md = e.mimeData()
        if md.hasUrls() or md.hasImage():
            e.acceptProposedAction()
            self.assess.drop_zone.set_highlight(True)
        else:
            e.ignore()

    def dragMoveEvent(self, e) -> None:  # noqa: N802
        e.acceptProposedAction()

    def dragLeaveEvent(self, e) -> None:  # noqa: N802
        self.assess.drop_zone.set_highlight(False)

    def dropEvent(self, e: QDropEvent) -> None:  # noqa: N802
        self.assess.drop_zone.set_highlight(False)
        if self.handle_mime(e.mimeData()):
            e.acceptProposedAction()
        else:
            e.ignore()

    # ---- exports ------------------------------------------------------------------------------
    def export_pdf_dialog(self) -> None:
        case = self.assess.current_case()
        if case is None or case.status != "done":
            return
        default = str(Path(self.settings.last_dir or Path.home()) / f"MENDICANT-{_safe_name(Path(case.name).stem)}.pdf")
        path, _ = QFileDialog.getSaveFileName(self, "Export case report", default, "PDF (*.pdf)")
        if path:
            if not path.lower().endswith(".pdf"):
                path += ".pdf"
            self.export_pdf(path)

    def _report_op(self, cases):
        """A worker function building the report data of ``cases`` (their images re-read when dropped)."""
        engine = self.services.engine
        card, s = engine.card, self.settings
        colormap, opacity, skin_on = s.colormap, s.opacity, s.estimate_fst
        source = self.services.threshold_source
        clinician, clinic = s.clinician, s.clinic
        items = [(c, c.display, c.path) for c in cases]

        def datas():
            out = []
            for case, image, src in items:
                img = image
                if img is None:  # the display copy was dropped from memory: read the file again
                    img = downscale(load_image(src), DISPLAY_SIDE) if src is not None else case.thumb
                out.append(dataclasses.replace(
                    report.snapshot(case, img, card.name, card.version, card.sha256, colormap=colormap,
                                    opacity=opacity, skin_enabled=skin_on),
                    model_threshold=card.threshold, threshold_source=source, clinician=clinician, clinic=clinic))
            return out

        return datas

    def export_pdf(self, path: str, case=None, cases=None) -> BackgroundOp | None:
        """Write the PDF report of ``case`` (default: the selected one), or of several ``cases`` one after the
        other, in the background."""
        many = cases is not None
        cases = [c for c in (cases if many else [case or self.assess.current_case()])
                 if c is not None and c.prediction is not None and c.status == "done"]
        if not cases or self.services.engine is None:
            return None
        datas = self._report_op(cases)

        def op(ctx):
            ds = datas()
            return report.write_pdf(ds if many else ds[0], path)

        def ok(p) -> None:
            self._message(f"Report saved: {p}" + (f" ({len(cases)} cases)" if many else ""))
            self.pdfExported.emit(str(p))

        def failed(exc: BaseException) -> None:
            self._message(f"Could not save the report: {getattr(exc, 'reason', None) or exc}")
            self.exportFailed.emit(str(exc))

        return BackgroundOp(self, op=op, success=ok).failure(failed).run_in_background()

    def export_all_pdf_dialog(self) -> None:
        cases = [c for c in self.assess.visible_cases() if c.status == "done"]
        if not cases:
            return
        default = str(Path(self.settings.last_dir or Path.home()) / "MENDICANT-cases.pdf")
        path, _ = QFileDialog.getSaveFileName(self, f"Export a report of {len(cases)} cases", default, "PDF (*.pdf)")
        if path:
            self.export_pdf(path if path.lower().endswith(".pdf") else path + ".pdf", cases=cases)

    def print_report(self, cases=None, printer=None, ask: bool = True) -> bool:
        """Print the selected case's report (or ``cases``) through the system's print dialog."""
        from PySide6.QtPrintSupport import QPrintDialog, QPrinter

        cases = cases or [self.assess.current_case()]
        cases = [c for c in cases if c is not None and c.status == "done" and c.prediction is not None]
        if not cases or self.services.engine is None:
            return False
        printer = printer or QPrinter(QPrinter.PrinterMode.HighResolution)
        if ask:
            dlg = QPrintDialog(printer, self)
            dlg.setWindowTitle("Print case report")
            if dlg.exec() != QPrintDialog.DialogCode.Accepted:
                return False
        ds = self._report_op(cases)()
        doc = report.build_document(ds if len(ds) > 1 else ds[0])
        doc.print_(printer)
        self._message(f"Sent {len(ds)} report{'s' if len(ds) != 1 else ''} to the printer")
        return True

    def export_csv_dialog(self) -> None:
        default = str(Path(self.settings.last_dir or Path.home()) / "MENDICANT-session.csv")
        path, _ = QFileDialog.getSaveFileName(self, "Export session", default, "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str) -> Path | None:
        try:
            eng = self.services.engine
            out = report.write_csv(self.assess.model.cases, path,
                                   *((eng.card.name, eng.card.sha256, eng.card.threshold,
                                      self.services.threshold_source) if eng else ()))
        except OSError as exc:
            self._message(f"Could not save {path}: {exc}")
            return None
        self._message(f"Session saved: {out} ({self.assess.model.rowCount()} cases)")
        return out

    # ---- dialogs ------------------------------------------------------------------------------
    def open_settings(self) -> None:
        eng = self.services.engine
        dlg = SettingsDialog(self.settings, eng.card.threshold if eng is not None else None, self,
                             store=self.services.store)
        dlg.eraseRequested.connect(self.erase_all)
        try:
            dlg.exec()
        finally:
            dlg.deleteLater()  # not left as a child of the window until exit (see SettingsDialog._show_opacity)

    def erase_all(self) -> bool:
        """Settings ▸ Erase all local data, after a confirmation."""
        store = self.services.store
        where = f"\n\nThe case store: {store.path.parent}" if store is not None else ""
        if not self.assess.confirm(
                "Erase all local data",
                "Erase every saved case, patient, lesion, image copy and audit run on this computer?\n\n"
                "This cannot be undone. Settings are kept." + where, yes="Erase everything"):
            return False
        self.assess.erase_all()
        return True

    def shortcuts_box(self) -> QMessageBox:
        rows = []
        for a in (self.act_open, self.act_folder, self.act_paste, self.act_pdf, self.act_csv, self.act_overlay,
                  self.act_next, self.act_prev, self.act_fit, self.act_zoom_in, self.act_zoom_out, self.act_remove,
                  self.act_settings, self.act_shortcuts, self.act_quit):
            keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in a.shortcuts())
            rows.append(f"<tr><td style='padding-right:18px'><b>{keys}</b></td><td>{a.text().replace('&', '')}</td></tr>")
        box = QMessageBox(QMessageBox.Icon.NoIcon, "Keyboard shortcuts", "", QMessageBox.StandardButton.Ok, self)
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText("<table cellpadding='2'>" + "".join(rows) + "</table>"
                    "<p>In the image: scroll to zoom, drag to pan, double-click to fit.</p>")
        return box

    def show_shortcuts(self) -> None:
        self.shortcuts_box().exec()

    def about_box(self) -> QMessageBox:
        eng = self.services.engine
        model = f"{eng.card.name} {eng.card.version}" if eng is not None else "not loaded"
        box = QMessageBox(QMessageBox.Icon.NoIcon, "About MENDICANT", "", QMessageBox.StandardButton.Ok, self)
        box.setIconPixmap(icon("mendicant").pixmap(64, 64))
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(f"<h3>MENDICANT Desktop {__version__}</h3><p>Offline skin-lesion decision support. Images never "
                    f"leave this computer.</p><p>Model: {model}</p><p>{text.DISCLAIMER}</p>")
        return box

    def _quit_confirmed(self, unsaved) -> bool:
        n = len(unsaved)
        if self.services.store is None:
            why = "cases are not being saved on this computer (the case store could not be opened)"
        else:
            scoring = sum(c.status in ("queued", "scoring") for c in unsaved)
            failed = sum(bool(c.save_error) for c in unsaved)
            bits = []
            if scoring:
                bits.append(f"{scoring} still being scored")
            if failed:
                bits.append(f"{failed} could not be saved")
            if n - scoring - failed:
                bits.append(f"{n - scoring - failed} still being written")
            why = ", ".join(bits)
        return self.assess.confirm("Quit MENDICANT",
                                   f"{n} case{'s are' if n != 1 else ' is'} not saved yet ({why}).\n\n"
                                   "Quit anyway and lose them?", yes="Quit without saving")

    def show_about(self) -> None:
        self.about_box().exec()

    def closeEvent(self, e: QCloseEvent) -> None:  # noqa: N802
        unsaved = self.assess.unsaved_cases()
        if unsaved and not self._quit_confirmed(unsaved):
            e.ignore()
            return
        self.assess.keeper.wait_idle(5000)  # let the saves already queued reach the disk
        self.settings.save_window_state(self.saveGeometry(), self.saveState())
        self.assess.cancel_all()
        if self.audit.is_running():
            self.audit.cancel()
        super().closeEvent(e)

