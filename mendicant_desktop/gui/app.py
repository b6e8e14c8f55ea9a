"""GUI entry point: ``mendicant-desktop [IMAGE ...]`` and ``mendicant-desktop --selftest [--screenshot PNG]``.

``main(argv) -> int`` is called by :mod:`mendicant_desktop.__main__` for every argument list that is not
a headless mode. The model card is ``--model CARD`` > ``MENDICANT_MODEL`` > the bundled model.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mendicant_desktop.app.errors import ExitCode

SELFTEST_TIMEOUT_S = 120.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="mendicant-desktop", description="MENDICANT Desktop (GUI).")
    p.add_argument("images", nargs="*", help="images or folders to queue at start-up")
    p.add_argument("--model", metavar="CARD", help="model card (.json) to load; default: $MENDICANT_MODEL or the "
                   "bundled model")
    p.add_argument("--selftest", action="store_true", help="start the window, verify and load the model, score a "
                   "generated image through the drop path, exit 0 on success")
    p.add_argument("--screenshot", metavar="PNG", help="with --selftest: save the window with the result to PNG")
    p.add_argument("--timeout", type=float, default=SELFTEST_TIMEOUT_S, help=argparse.SUPPRESS)
    # benchmarks/gui_benchmark.py: open the window as usual, print "ready <s>" once the model is loaded, exit
    p.add_argument("--exit-when-ready", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(list(argv))


def _has_display() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM"))


#: The libraries Qt's xcb (X11) platform plugin loads that a minimal Linux install often lacks, with the
#: Debian/Ubuntu and Fedora packages that provide them (from ``ldd`` of PySide6's ``libQt6XcbQpa.so.6``). Qt aborts the process when one is missing, so the window
#: checks first and says what to install.
XCB_LIBRARIES: tuple[tuple[str, str, str], ...] = (
    ("libxcb-cursor.so.0", "libxcb-cursor0", "xcb-util-cursor"),
    ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0", "libxkbcommon-x11"),
    ("libxcb-icccm.so.4", "libxcb-icccm4", "xcb-util-wm"),
    ("libxcb-util.so.1", "libxcb-util1", "xcb-util"),
    ("libxcb-keysyms.so.1", "libxcb-keysyms1", "xcb-util-keysyms"),
    ("libxcb-image.so.0", "libxcb-image0", "xcb-util-image"),
    ("libxcb-render-util.so.0", "libxcb-render-util0", "xcb-util-renderutil"),
    ("libxcb-shape.so.0", "libxcb-shape0", "libxcb"),
    ("libxcb-randr.so.0", "libxcb-randr0", "libxcb"),
    ("libxcb-xkb.so.1", "libxcb-xkb1", "libxcb"),
    ("libX11-xcb.so.1", "libx11-xcb1", "libX11-xcb"),
    ("libEGL.so.1", "libegl1", "libglvnd-egl"),
    ("libGL.so.1", "libgl1", "libglvnd-glx"),
    ("libfontconfig.so.1", "libfontconfig1", "fontconfig"),
)


def _uses_xcb() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    plat = os.environ.get("QT_QPA_PLATFORM", "").strip().lower()
    if plat:
        return plat.startswith("xcb")
    return bool(os.environ.get("DISPLAY")) and not os.environ.get("WAYLAND_DISPLAY")


def missing_xcb_libraries(load=None) -> list[tuple[str, str, str]]:
    """The entries of :data:`XCB_LIBRARIES` that cannot be loaded (empty off X11 or when all are there)."""
    if not _uses_xcb():
        return []
    import ctypes

    load = load or ctypes.CDLL
    missing = []
    for entry in XCB_LIBRARIES:
        try:
            load(entry[0])
        except OSError:
            missing.append(entry)
    return missing


def xcb_help(missing: list[tuple[str, str, str]]) -> str:
    debian = " ".join(dict.fromkeys(m[1] for m in missing))
    fedora = " ".join(dict.fromkeys(m[2] for m in missing))
    return ("mendicant-desktop: the window cannot start: Qt's X11 platform plugin needs libraries this system "
            f"lacks ({', '.join(m[0] for m in missing)}).\n"
            f"  Debian/Ubuntu: sudo apt-get install {debian}\n"
            f"  Fedora/RHEL:   sudo dnf install {fedora}\n"
            "Headless modes need none of them: --batch, --audit, --serve.")


def create_app(argv: Sequence[str] = ()):
    """The QApplication with the app's style (Fusion + QSS), high-DPI friendly."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    from .gc_guard import install_gui_thread_collector
    from .qtutil import icon, load_stylesheet

    app = QApplication.instance()
    if app is None:
        QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
        app = QApplication(["mendicant-desktop", *argv])
        app.setApplicationName("MENDICANT Desktop")
        app.setOrganizationName("MENDICANT")
        app.setStyle("Fusion")
        app.setWindowIcon(icon("mendicant"))
        app.setStyleSheet(load_stylesheet())
    install_gui_thread_collector(app)  # cycles are collected on the GUI thread only: see gc_guard
    return app


def build_window(settings_path: str | os.PathLike | None = None, card: str | os.PathLike | None = None,
                 load: bool = True, store: str | os.PathLike | None = None):
    """(services, window) -- services injected into the window; starts the model load unless ``load=False``.

    ``store``: the case store file (default: the one in the data folder, see :mod:`mendicant_desktop.app.paths`).
    """
    from .main_window import MainWindow
    from .services import Services
    from .settings import AppSettings

    settings = AppSettings(settings_path)
    services = Services(settings, card, store=store)
    if load:
        # Start verifying/loading first: it runs on a worker while the window is built here. Its result
        # arrives through the event loop, i.e. after the window exists and has connected its slots.
        services.load_model()
    window = MainWindow(services)
    return services, window


def make_test_image(path: str | os.PathLike, size: tuple[int, int] = (640, 480)) -> Path:
    """A synthetic pigmented lesion on light skin (for the self-test; not a clinical image)."""
    import numpy as np
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    skin = np.array([222, 178, 152], np.float32)
    img = skin + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    ang = np.arctan2(yy - h / 2, xx - w / 2)
    radius = (min(w, h) * 0.22) * (1 + 0.12 * np.sin(3 * ang) + 0.06 * np.cos(7 * ang))
    d = np.hypot(xx - w / 2, (yy - h / 2) * 1.15)
    inside = np.clip((radius - d) / 6.0, 0, 1)[..., None]
    lesion = np.array([96, 60, 44], np.float32) + 30 * np.sin(xx / 9)[..., None] * np.array([0.3, 0.2, 0.1])
    out = img * (1 - inside) + lesion * inside
    p = Path(path)
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(p, quality=92)
    return p


def _wait(app, predicate, timeout_s: float) -> bool:
    from PySide6.QtCore import QDeadlineTimer, QEventLoop

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, QDeadlineTimer(50))
        time.sleep(0.002)
    return True


def selftest(args: argparse.Namespace) -> int:
    """Real window (offscreen without a display) -> verify+load model -> drop a test image -> result shown."""
    if not _has_display():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    t0 = time.perf_counter()
    app = create_app()
    from PySide6.QtCore import QMimeData, QUrl

    with tempfile.TemporaryDirectory(prefix="mendicant-selftest-") as tmp:
        services, window = build_window(Path(tmp) / "settings.ini", args.model, store=Path(tmp) / "cases.sqlite3")
        window.resize(1280, 800)
        window.show()
        if not _wait(app, lambda: services.engine is not None or services.error is not None, args.timeout):
            print("selftest FAILED: the model did not load in time", file=sys.stderr)
            return int(ExitCode.INTERNAL_ERROR)
        if services.engine is None:
            print(f"selftest FAILED: model verification/loading failed: {services.error}", file=sys.stderr)
            return int(ExitCode.USAGE)
        t_model = time.perf_counter() - t0
        card = services.engine.card
        img = make_test_image(Path(tmp) / "selftest lesion.jpg")
        shown: list = []
        window.assess.view.resultShown.connect(shown.append)
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(img))])
        t1 = time.perf_counter()
        if not window.handle_mime(mime):
            print("selftest FAILED: the drop path did not accept the test image", file=sys.stderr)
            return int(ExitCode.INTERNAL_ERROR)
        cases = window.assess.model.cases
        case = cases[-1] if cases else None

        def ready() -> bool:
            return case is not None and (case.status == "error" or (
                any(c is case for c in shown) and window.assess.view.view.overlay_visible()))

        if not _wait(app, ready, args.timeout):
            print(f"selftest FAILED: no result displayed within {args.timeout:.0f} s", file=sys.stderr)
            return int(ExitCode.INTERNAL_ERROR)
        if case.status == "error":
            print(f"selftest FAILED: the test image could not be scored: {case.error}", file=sys.stderr)
            return int(ExitCode.INTERNAL_ERROR)
        t_result = time.perf_counter() - t1
        _wait(app, lambda: False, 0.15)  # let the final paint happen
        pred = case.prediction
        if args.screenshot:
            out = Path(args.screenshot)
            out.parent.mkdir(parents=True, exist_ok=True)
            if not window.grab().save(str(out)):
                print(f"selftest FAILED: could not write the screenshot {out}", file=sys.stderr)
                return int(ExitCode.INTERNAL_ERROR)
        print(
            f"selftest OK: model {card.name} {card.version} verified (sha256 {card.sha256[:12]}…) and loaded in "
            f"{t_model:.2f} s; test image scored in {1000 * t_result:.0f} ms: top class {pred.top_class}, "
            f"malignancy {pred.malignancy:.3f} ({pred.risk}); overlay shown"
            + (f"; screenshot {args.screenshot}" if args.screenshot else "")
        )
        print(services.engine.self_check.summary())
        window.close()
        services.deleteLater()
        return int(ExitCode.OK)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(args_list)
    except SystemExit as exc:  # argparse: --help or a usage error
        return int(exc.code or 0)
    if args.screenshot and not args.selftest:
        print("mendicant-desktop: --screenshot only works with --selftest", file=sys.stderr)
        return int(ExitCode.USAGE)
    if args.selftest:
        try:
            return selftest(args)
        except Exception as exc:  # noqa: BLE001 - a self-test reports, it does not crash
            import traceback

            traceback.print_exc()
            print(f"selftest FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return int(ExitCode.INTERNAL_ERROR)
    if not _has_display():
        print("mendicant-desktop: no display found (DISPLAY/WAYLAND_DISPLAY unset). Headless modes still work: "
              "--batch, --audit, --selftest.", file=sys.stderr)
        return int(ExitCode.USAGE)
    missing = missing_xcb_libraries()
    if missing:
        print(xcb_help(missing), file=sys.stderr)
        return int(ExitCode.USAGE)
    app = create_app()
    services, window = build_window(card=args.model)
    window.show()
    if args.images:
        window.add_paths(args.images)
    if args.exit_when_ready:
        return _exit_when_ready(app, services, window)
    return int(app.exec())


def _exit_when_ready(app, services, window) -> int:
    """Cold-start probe: the window is shown and the model verified and loaded; then quit."""
    ok = _wait(app, lambda: services.engine is not None or services.error is not None, SELFTEST_TIMEOUT_S)
    if not ok or services.engine is None:
        print(f"not ready: {services.error or 'timeout'}", flush=True)
        return int(ExitCode.INTERNAL_ERROR)
    app.processEvents()
    window.grab()  # one real paint of the window with the model loaded
    print(f"ready {time.perf_counter():.6f}", flush=True)
    window.close()
    return int(ExitCode.OK)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
