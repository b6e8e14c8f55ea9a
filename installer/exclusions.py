"""What the PyInstaller bundle leaves out, in one table shared by ``build.spec`` and
``benchmarks/bundle_size.py`` (which measures the megabytes each group saves).

Two kinds of exclusion:

* ``MODULE_EXCLUDES`` -- Python packages/modules passed to ``Analysis(excludes=...)``: the module graph
  never follows them, so neither their code nor the shared libraries they pull in reach the bundle.
* ``FILE_RULES`` -- files that PyInstaller's stock hooks collect for the packages we *do* use (Qt plugins,
  Qt translations, the GTK3 theme ...) but that this app never loads. ``build.spec`` drops them from
  the Analysis TOCs and writes what it dropped, with sizes, to ``<workpath>/excluded-files.json``.

Every rule is documented with the reason it is safe; ``tests/packaging/test_frozen.py`` proves the result
still runs (GUI self-test offscreen, batch, version).
"""

from __future__ import annotations

import fnmatch

# --- Python modules ----------------------------------------------------------------------------------
# group name -> (reason, [module names]). Group names are what the size benchmark reports.
MODULE_EXCLUDES: dict[str, tuple[str, list[str]]] = {
    "torch (+ torchvision/triton/sympy/networkx)": (
        "developer-side only (compression/); the app runs ONNX through onnxruntime",
        ["torch", "torchvision", "torchaudio", "triton", "functorch", "torch_pruning", "captum",
         "sympy", "mpmath", "networkx"],
    ),
    "keras / tensorflow / h5py": (
        "the Keras reference model is only used to port weights (compression/keras_oracle.py)",
        ["keras", "tensorflow", "tf_keras", "h5py", "jax", "jaxlib", "ml_dtypes", "optree", "namex"],
    ),
    "onnx tooling (onnx, onnxscript, onnxslim, ort quantization/transformers/tools)": (
        "export/quantization happen at build time; at run time only onnxruntime's inference core is needed",
        ["onnx", "onnxscript", "onnx_ir", "onnxslim", "onnxruntime.quantization", "onnxruntime.transformers",
         "onnxruntime.tools", "onnxruntime.training", "onnxruntime.backend", "onnxruntime.datasets"],
    ),
    "compression + tests (this repo)": (
        "developer-side pipeline and the test suite are never shipped",
        ["compression", "tests", "benchmarks"],
    ),
    "scientific stack not used at run time (scipy, pandas, sklearn, skimage, matplotlib, fairlearn)": (
        "test/benchmark dependencies; the engine is numpy + Pillow + onnxruntime only",
        ["scipy", "pandas", "sklearn", "skimage", "matplotlib", "fairlearn", "numba", "llvmlite",
         "imageio", "tifffile", "lazy_loader", "pyarrow"],
    ),
    "dev tools (pytest, IPython, setuptools, pip, import-linter, ruff, PyYAML)": (
        "never imported by the app (numpy.show_config imports yaml optionally)",
        ["pytest", "_pytest", "pytestqt", "pluggy", "IPython", "jedi", "parso", "setuptools", "pkg_resources",
         "pip", "importlinter", "grimp", "ruff", "wheel", "docutils", "sphinx", "jinja2", "markupsafe",
         "psutil", "cpuinfo", "py3nvml", "coloredlogs", "humanfriendly", "packaging", "fsspec", "filelock",
         "yaml", "_yaml"],
    ),
    "stdlib extras (ssl/libssl, tkinter, unittest, pydoc, distutils, lib2to3, xmlrpc, curses)": (
        "no network (so no TLS), no Tk, no test runner, no XML-RPC in the frozen app (sqlite3 stays: it is the "
        "case store); asyncio, http.client and urllib import ssl optionally",
        ["tkinter", "_tkinter", "turtle", "turtledemo", "idlelib", "unittest", "pydoc", "pydoc_data", "doctest",
         "distutils", "lib2to3", "xmlrpc", "ssl", "_ssl", "curses", "_curses", "ensurepip", "venv",
         "test"],
    ),
    "numpy/Pillow extras (f2py, AVIF codec, FreeType text, Tk/Qt bridges)": (
        "build helpers and codecs/bridges the app does not use: inputs are jpg/png/bmp/gif/tiff/webp (no AVIF), "
        "text is drawn by Qt (no PIL.ImageFont), Qt images are built from numpy (no PIL.ImageQt)",
        ["numpy.f2py", "numpy.distutils", "numpy._pyinstaller", "PIL.ImageTk", "PIL._tkinter_finder",
         "PIL._imagingtk", "PIL.ImageQt", "PIL._avif", "PIL.AvifImagePlugin", "PIL._imagingft"],
    ),
    "unused Qt modules": (
        "the GUI uses QtCore, QtGui, QtWidgets (+ the SVG plugins for its icons) only: no QML/Quick, no "
        "WebEngine, no Multimedia, no 3D, no networking, no SQL, no OpenGL widgets, no Designer/UiTools",
        [f"PySide6.{m}" for m in (
            "QtNetwork", "QtNetworkAuth", "QtQml", "QtQmlFeatures", "QtQuick", "QtQuick3D", "QtQuickControls2",
            "QtQuickTest", "QtQuickWidgets", "QtWebEngineCore", "QtWebEngineWidgets", "QtWebEngineQuick",
            "QtWebChannel", "QtWebSockets", "QtWebView", "QtHttpServer", "QtMultimedia", "QtMultimediaWidgets",
            "QtSpatialAudio", "QtTextToSpeech", "Qt3DCore", "Qt3DRender", "Qt3DInput", "Qt3DLogic",
            "Qt3DExtras", "Qt3DAnimation", "QtCharts", "QtDataVisualization", "QtGraphs", "QtGraphsWidgets",
            "QtSql", "QtTest", "QtOpenGL", "QtOpenGLWidgets", "QtDesigner", "QtUiTools", "QtHelp", "QtXml",
            "QtDBus", "QtConcurrent", "QtPrintSupport", "QtBluetooth", "QtNfc", "QtPositioning",
            "QtLocation", "QtSensors", "QtSerialPort", "QtSerialBus", "QtRemoteObjects", "QtScxml",
            "QtStateMachine", "QtPdf", "QtPdfWidgets", "QtAxContainer", "QtLabsStyleKit", "QtSvgWidgets",
        )] + ["PyQt5", "PyQt6", "PySide2", "shiboken2"],
    ),
}


def module_excludes() -> list[str]:
    out: list[str] = []
    for _reason, mods in MODULE_EXCLUDES.values():
        out.extend(mods)
    return sorted(set(out))


# --- files collected by stock hooks but never loaded ----------------------------------------------------
# (group, reason, glob patterns on the destination path inside the bundle, '/'-separated). A file is
# dropped when any pattern matches and no KEEP pattern does. The patterns cover the three wheel layouts:
# Linux ``PySide6/Qt/{lib,plugins,translations}`` with ``libQt6X.so.6``, Windows ``PySide6/{plugins,
# translations}`` with ``Qt6X.dll``, macOS ``PySide6/Qt/lib/QtX.framework``.


def _plugin(category: str, name: str = "") -> str:
    return f"PySide6*/plugins/{category}/*{name}*" if name else f"PySide6*/plugins/{category}/*"


def _qtlib(name: str) -> list[str]:
    """Qt library ``name`` (e.g. 'Network', 'Quick*') in every layout."""
    return [f"PySide6*/*Qt6{name}.*", f"PySide6*/Qt{name}.framework/*"]


FILE_RULES: list[tuple[str, str, list[str]]] = [
    ("Qt translations", "the UI is English-only; no .qm catalogue is loaded",
     ["PySide6*/translations/*"]),
    ("Qt plugins: pdf/webp/tiff/tga/wbmp/icns image formats (+ the QtPdf/Quick/Qml libraries qpdf pulls)",
     "images are decoded by Pillow; Qt only needs PNG (built in), JPEG, GIF, ICO and SVG for icons/paste",
     [_plugin("imageformats", n) for n in ("qpdf", "qwebp", "qtiff", "qtga", "qwbmp", "qicns", "qmacheif",
                                           "qmacjp2")]
     + [_plugin("vectorimageformats")] + _qtlib("Pdf") + _qtlib("Quick*") + _qtlib("Qml*")),
    ("Qt plugins: embedded-device platforms (eglfs, linuxfb, vnc, vkkhrdisplay, minimal, direct2d)",
     "clinic machines run X11/Wayland, Windows or macOS; tests run offscreen",
     [_plugin("platforms", n) for n in ("qeglfs", "qlinuxfb", "qvnc", "qvkkhrdisplay", "qminimal",
                                        "qdirect2d")]
     + [_plugin("egldeviceintegrations")] + _qtlib("EglFSDeviceIntegration") + _qtlib("EglFsKmsSupport")),
    ("Qt plugins: touch/tablet input, virtual keyboard",
     "evdev/TUIO input is for kiosk devices (and TUIO pulls QtNetwork); desktops use the windowing system",
     [_plugin("generic"), _plugin("platforminputcontexts", "qtvirtualkeyboard")]),
    ("Qt plugins: networking (tls, networkinformation) + QtNetwork",
     "the app never opens a socket",
     [_plugin("tls"), _plugin("networkinformation")] + _qtlib("Network")),
    ("Qt plugins: sql drivers, qml tooling, designer, wayland compositor",
     "no database, no QML, no Designer; the app is a Wayland client, never a compositor",
     [_plugin("sqldrivers"), _plugin("qmltooling"), _plugin("designer"),
      _plugin("wayland-graphics-integration-server")] + _qtlib("WaylandCompositor*")
     + _qtlib("WaylandEglCompositorHwIntegration")),
    ("Qt plugins: GTK3 platform theme (+ the GTK/cairo/pango/glib libraries only it needs)",
     "the app uses the Fusion style with its own stylesheet; a private copy of glib/cairo/pango beside the "
     "system GTK is a classic crash source; file dialogs use Qt's own (or xdg-desktop-portal's) dialog",
     [_plugin("platformthemes", "qgtk3")]),
]

# Never drop these, whatever a pattern says.
KEEP: list[str] = [
    _plugin("platforms", "qxcb"), _plugin("platforms", "qwayland"), _plugin("platforms", "qoffscreen"),
    _plugin("platforms", "qwindows"), _plugin("platforms", "qcocoa"), _plugin("imageformats", "qsvg"),
    _plugin("iconengines", "qsvgicon"), *_qtlib("Svg"),
]


def _norm(dest: str) -> str:
    return dest.replace("\\", "/")


def file_rule_for(dest: str) -> str | None:
    """The FILE_RULES group that drops the bundle path ``dest``, or None when the file stays."""
    d = _norm(dest)
    if any(fnmatch.fnmatch(d, k) for k in KEEP):
        return None
    for group, _reason, patterns in FILE_RULES:
        if any(fnmatch.fnmatch(d, p) for p in patterns):
            return group
    return None


def all_groups() -> list[tuple[str, str]]:
    """(group, reason) for every exclusion, modules first (for reports)."""
    return [(g, r) for g, (r, _m) in MODULE_EXCLUDES.items()] + [(g, r) for g, r, _p in FILE_RULES]
