"""Frozen smoke tests: the PyInstaller bundle runs every entry point, offline, within its size budget.

The bundle is built once per session with ``pyinstaller build.spec`` into a temporary folder (a few
minutes), unless ``MENDICANT_FROZEN_DIST`` names an existing build (``dist/mendicant-desktop``, e.g.
the one ``installer/build.sh`` or a separate CI step just made). Such a build is reused only when it is
fresh (its executable is newer than every file under ``mendicant_desktop/``, ``resources/``,
``installer/`` and ``build.spec``; ``test_version`` then checks the version); otherwise this test rebuilds. PyInstaller missing is a failure, not a skip: install the ``build`` extra.

Model: the bundled one when ``resources/models`` has a card, else a tiny test model passed with
``--model`` (the real model is verified by the rest of the suite).

Env knobs: ``MENDICANT_FROZEN_DIST`` (reuse), ``MENDICANT_BUNDLE_BUDGET_MB`` (default 250),
``MENDICANT_COLD_START_BUDGET_S`` (default 3.0: start to main window on X11 under Xvfb, and the
self-test's window + model ready time; wall time when the machine is not overloaded, else CPU time).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
APP = "mendicant-desktop"
EXE_NAME = APP + (".exe" if sys.platform == "win32" else "")
SIZE_BUDGET_MB = float(os.environ.get("MENDICANT_BUNDLE_BUDGET_MB", "250"))
SIZE_TARGET_MB = 150.0
COLD_START_BUDGET_S = float(os.environ.get("MENDICANT_COLD_START_BUDGET_S", "3.0"))
BUILD_TIMEOUT_S = 1500
N_REAL = 6  # real images scored in the batch test (3 dermoscopy + 3 clinical when present)

# What a bundle is built from: reuse a dist only if it is newer than all of these.
SOURCES = ("mendicant_desktop", "resources", "installer", "build.spec")


def _version() -> str:
    text = (REPO / "mendicant_desktop" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'__version__\s*=\s*["\']([^"\']+)', text).group(1)


def _newest_source_mtime() -> float:
    newest = 0.0
    for rel in SOURCES:
        p = REPO / rel
        paths = [p] if p.is_file() else (q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.parts)
        for q in paths:
            newest = max(newest, q.stat().st_mtime)
    return newest


def _stale_reason(dist: Path) -> str | None:
    exe = dist / EXE_NAME
    if not exe.is_file():
        return f"{exe} does not exist"
    if exe.stat().st_mtime < _newest_source_mtime():
        return f"{exe} is older than the sources"
    return None


def _build(tmp: Path) -> Path:
    try:
        import PyInstaller  # noqa: F401
    except ImportError:
        pytest.fail("PyInstaller is not installed: pip install '.[build]' (the frozen smoke test must not be skipped)")
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(tmp / "dist"), "--workpath", str(tmp / "build"), str(REPO / "build.spec")]
    if shutil.which("nice") and sys.platform != "win32":
        cmd = ["nice", "-n", "10", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.fail(f"pyinstaller build.spec failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    print(f"\n[frozen] built the bundle in {time.perf_counter() - t0:.0f} s")
    return tmp / "dist" / APP


@pytest.fixture(scope="session")
def frozen_dist(tmp_path_factory) -> Path:
    env = os.environ.get("MENDICANT_FROZEN_DIST")
    if env:
        dist = Path(env).resolve()
        reason = _stale_reason(dist)
        if reason is None:
            print(f"\n[frozen] reusing {dist}")
            return dist
        print(f"\n[frozen] not reusing MENDICANT_FROZEN_DIST ({reason}); building")
    return _build(tmp_path_factory.mktemp("frozen"))


@pytest.fixture(scope="session")
def exe(frozen_dist) -> Path:
    p = frozen_dist / EXE_NAME
    assert p.is_file(), f"no executable at {p}"
    return p


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MENDICANT_", "PYTHON", "QT_", "LD_PRELOAD"))}
    env.update(extra)
    return env


def run(exe: Path, *args: str, timeout: float = 300, prefix: tuple[str, ...] = (), **env: str):
    t0 = time.perf_counter()
    proc = subprocess.run([*prefix, str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(**env), cwd=exe.parent.parent)
    proc.wall = time.perf_counter() - t0  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="session")
def model_args(tmp_path_factory) -> list[str]:
    """No args when a model is bundled; else ``--model <tiny card>``."""
    if sorted((REPO / "resources" / "models").glob("*.json")):
        return []
    from tests.support.tiny_model import build_tiny_bundle

    return ["--model", str(build_tiny_bundle(tmp_path_factory.mktemp("frozen_model")))]


def _real_images() -> list[Path]:
    data = Path(os.environ.get("MENDICANT_SHARED_DATA", REPO.parent / "shared" / "data"))
    picks: list[Path] = []
    for sub in ("isic_dermoscopy", "pad_ufes20_clinical"):
        folder = data / sub / "images"
        if folder.is_dir():
            picks += sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:N_REAL // 2]
    return picks


@pytest.fixture(scope="session")
def batch_inputs(tmp_path_factory) -> tuple[Path, int, str]:
    """A folder of images (real when ../shared/data exists, else generated) + one corrupt file."""
    folder = tmp_path_factory.mktemp("frozen_inputs")
    real = _real_images()
    if real:
        for p in real:
            shutil.copy2(p, folder / p.name)
        kind = "real"
    else:
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(N_REAL):
            yy, xx = np.mgrid[0:300, 0:400]
            base = np.array([220, 175, 150]) - 20 * i
            img = base + rng.normal(0, 8, (300, 400, 3))
            inside = ((xx - 200) ** 2 + ((yy - 150) * 1.2) ** 2) < (60 + 8 * i) ** 2
            img[inside] = [90, 55, 40]
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"generated_{i}.jpg", quality=90)
        kind = "generated"
    n = len(list(folder.iterdir()))
    good = next(folder.iterdir()).read_bytes()
    (folder / "zz_corrupt.jpg").write_bytes(good[: max(64, len(good) // 7)])  # truncated JPEG
    return folder, n, kind


def _bundle_bytes(dist: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(dist):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


# --- tests -----------------------------------------------------------------------------------------


def test_version(exe):
    proc = run(exe, "--version", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{APP} {_version()}"), proc.stdout
    assert "model" in proc.stdout
    if sorted((REPO / "resources" / "models").glob("*.json")):
        assert "unavailable" not in proc.stdout, proc.stdout
    print(f"\n[frozen] --version in {proc.wall:.2f} s: {proc.stdout.strip()!r}")


def _check_batch_csv(out: Path, n_good: int) -> None:
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n_good + 1, rows
    by_name = {Path(r["image"]).name: r for r in rows}
    bad = by_name.pop("zz_corrupt.jpg")
    assert bad["status"] == "error" and bad["error"], bad
    for name, r in by_name.items():
        assert r["status"] == "ok", (name, r)
        probs = [float(r[c]) for c in ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")]
        assert abs(sum(probs) - 1.0) < 1e-3, (name, probs)
        assert abs(float(r["malignancy"]) - (float(r["MEL"]) + float(r["BCC"]) + float(r["AKIEC"]))) < 1e-4
        assert r["risk"] in ("high", "low") and len(r["model_sha256"]) == 64


def test_batch_with_corrupt_file_exits_3(exe, batch_inputs, model_args, tmp_path):
    folder, n_good, kind = batch_inputs
    out = tmp_path / "scores.csv"
    proc = run(exe, "--batch", str(folder), "--out", str(out), "--quiet", *model_args, timeout=600)
    assert proc.returncode == 3, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    _check_batch_csv(out, n_good)
    print(f"\n[frozen] --batch on {n_good} {kind} images + 1 corrupt: rc 3 in {proc.wall:.1f} s")


def test_audit_report(exe, batch_inputs, model_args, tmp_path):
    folder, _n_good, _kind = batch_inputs
    images = sorted(p.name for p in folder.iterdir() if p.name != "zz_corrupt.jpg")
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "malignant", "fst"])
        for i, name in enumerate(images):
            w.writerow([name, i % 2, ("I", "II", "III")[i % 3]])
    out = tmp_path / "audit.html"
    proc = run(exe, "--audit", str(labels), "--images", str(folder), "--out", str(out), "--n-boot", "20",
               "--quiet", "--no-explain", *model_args, timeout=600)
    assert proc.returncode in (0, 3), f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    text = out.read_text(encoding="utf-8")
    assert "<html" in text.lower() and len(text) > 1000
    print(f"\n[frozen] --audit on {len(images)} images: rc {proc.returncode} in {proc.wall:.1f} s")


def _offline_prefix() -> tuple[tuple[str, ...], dict[str, str], str]:
    """unshare -n (a network namespace with no interfaces) when allowed, else the socket-blocking hook."""
    unshare = shutil.which("unshare")
    if unshare and sys.platform.startswith("linux"):
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            return (unshare, "-n"), {}, "network namespace (unshare -n)"
        probe = subprocess.run([unshare, "-rn", "true"], capture_output=True)
        if probe.returncode == 0:
            return (unshare, "-rn"), {}, "user+network namespace (unshare -rn)"
    return (), {"MENDICANT_BLOCK_NETWORK": "1"}, "socket-blocking runtime hook (MENDICANT_BLOCK_NETWORK=1)"


def test_batch_works_with_network_blocked(exe, batch_inputs, model_args, tmp_path):
    folder, n_good, _kind = batch_inputs
    prefix, env, how = _offline_prefix()
    # both isolation layers when possible: no interfaces at all, and any Python socket use fails loudly
    env = {**env, "MENDICANT_BLOCK_NETWORK": "1"}
    out = tmp_path / "offline.csv"
    proc = run(exe, "--batch", str(folder), "--out", str(out), "--quiet", *model_args,
               timeout=600, prefix=prefix, **env)
    assert proc.returncode == 3, f"rc={proc.returncode} ({how})\n{proc.stdout}\n{proc.stderr}"
    assert "network access is disabled" not in proc.stderr, proc.stderr
    _check_batch_csv(out, n_good)
    print(f"\n[frozen] offline --batch ({how} + MENDICANT_BLOCK_NETWORK=1): ok")


def test_runtime_hooks_are_bundled(exe):
    """The runtime hooks (offline switch used above, portable mode, log file) are inside the executable."""
    names = [n if isinstance(n, str) else n.decode() for n in _archive_names(exe)]
    assert any("pyi_rth_mendicant_offline" in n for n in names), "offline runtime hook missing from the bundle"
    assert any("pyi_rth_mendicant_portable" in n for n in names), "portable runtime hook missing from the bundle"
    assert any("pyi_rth_mendicant_logs" in n for n in names), "log runtime hook missing from the bundle"


def test_selftest_offscreen_and_cold_start(exe, model_args, tmp_path):
    shot = tmp_path / "selftest.png"
    proc = run(exe, "--selftest", "--screenshot", str(shot), *model_args, timeout=300,
               QT_QPA_PLATFORM="offscreen", MENDICANT_CONFIG_DIR=str(tmp_path / "cfg"))
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "selftest OK" in proc.stdout, proc.stdout
    assert shot.is_file() and shot.stat().st_size > 10_000
    m = re.search(r"loaded in ([0-9.]+) s", proc.stdout)
    in_app = float(m.group(1)) if m else float("nan")
    print(f"\n[frozen] --selftest offscreen: process wall {proc.wall:.2f} s (start, window, model verified and "
          f"loaded in {in_app:.2f} s inside the app, one image scored, exit)")
    assert proc.wall <= 60, "the whole self-test run took over a minute"
    if m and os.getloadavg()[0] <= (os.cpu_count() or 1):  # wall times on an overloaded runner measure neighbours
        assert in_app <= COLD_START_BUDGET_S, f"window + model ready took {in_app:.2f} s > {COLD_START_BUDGET_S} s"


def _window_viewable(display: str, title_part: str) -> bool:
    env = {**os.environ, "DISPLAY": display}
    tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True, env=env).stdout
    for line in tree.splitlines():
        if title_part in line:
            wid = line.split()[0]
            info = subprocess.run(["xwininfo", "-id", wid], capture_output=True, text=True, env=env).stdout
            if "IsViewable" in info:
                return True
    return False


def _evict_from_page_cache(folder: Path) -> bool:
    """Drop the bundle's files (only those) from the OS page cache, so the next start reads them from disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for root, _dirs, files in os.walk(folder):
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def _cpu_seconds(pid: int) -> float:
    """user+system CPU time of a running process (Linux /proc), all threads."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _time_to_window(exe: Path, model_args: list[str], display: str, cfg: Path) -> tuple[float | None, float, str]:
    """(wall seconds from exec to the main window being viewable, CPU seconds used by then, output)."""
    env = _env(DISPLAY=display, MENDICANT_CONFIG_DIR=str(cfg), MENDICANT_DATA_DIR=str(cfg / "data"))
    t0 = time.perf_counter()
    app = subprocess.Popen([str(exe), *model_args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shown, cpu = None, float("nan")
    while time.perf_counter() - t0 < 30 and app.poll() is None:
        if _window_viewable(display, "MENDICANT"):
            shown = time.perf_counter() - t0
            cpu = _cpu_seconds(app.pid)
            break
        time.sleep(0.01)
    app.terminate()
    try:
        out = app.communicate(timeout=15)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        app.kill()
        out = app.communicate()[0].decode(errors="replace")
    return shown, cpu, out


def test_cold_start_to_window_on_x11(exe, frozen_dist, model_args, tmp_path):
    """Real X server (Xvfb): time from exec to the main window being mapped (the xcb plugin must load).

    Cold: the bundle's files are first evicted from the page cache (posix_fadvise), as after a reboot;
    then a warm start. The budget applies to the cold start's wall time; on a machine busier than its
    core count (shared CI runners) wall time measures the neighbours, so the CPU time the app itself
    used up to the window is held to the budget instead, and both are printed."""
    xvfb, xwininfo = shutil.which("Xvfb"), shutil.which("xwininfo")
    if not (xvfb and xwininfo) or not sys.platform.startswith("linux"):
        pytest.skip("Xvfb/xwininfo not installed: the start-up time is covered by the offscreen self-test")
    read_fd, write_fd = os.pipe()
    server = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write_fd,))
    os.close(write_fd)
    try:
        import select

        ready, _, _ = select.select([read_fd], [], [], 60)  # Xvfb writes the display number once it accepts clients
        number = os.read(read_fd, 64).decode().strip() if ready else ""
        assert number.isdigit(), "Xvfb did not start within 60 s"
        display = f":{number}"
        evicted = _evict_from_page_cache(frozen_dist)
        load = os.getloadavg()[0]
        cold, cold_cpu, out = _time_to_window(exe, model_args, display, tmp_path / "cfg")
        assert cold is not None, f"the main window never appeared on {display}:\n{out[-3000:]}"
        warm, warm_cpu, _ = _time_to_window(exe, model_args, display, tmp_path / "cfg")
    finally:
        server.terminate()
        server.wait(timeout=10)
        os.close(read_fd)  # only now: Xvfb dies of SIGPIPE if the pipe closes while it runs
    label = "cold (bundle evicted from page cache)" if evicted else "first"
    cores = os.cpu_count() or 1
    print(f"\n[frozen] start to window (X11, Xvfb; load average {load:.1f} on {cores} cores): {label} {cold:.2f} s "
          f"wall / {cold_cpu:.2f} s CPU; warm {warm or float('nan'):.2f} s wall / {warm_cpu:.2f} s CPU")
    if load <= cores:
        assert cold <= COLD_START_BUDGET_S, f"start to window took {cold:.2f} s > {COLD_START_BUDGET_S} s"
    else:
        assert cold_cpu <= COLD_START_BUDGET_S, f"start to window used {cold_cpu:.2f} s CPU > {COLD_START_BUDGET_S} s"


def _archive_names(exe: Path) -> list[str]:
    try:
        from PyInstaller.archive.readers import pkg_archive_contents
    except ImportError:
        pkg_archive_contents = None
    if pkg_archive_contents is not None:
        try:
            return pkg_archive_contents(str(exe))
        except Exception:  # noqa: BLE001 - fall back to a byte scan
            pass
    return re.findall(rb"[A-Za-z_][A-Za-z0-9_.]{2,}", exe.read_bytes())  # type: ignore[return-value]


def test_no_torch_or_dev_stack_inside(frozen_dist, exe):
    forbidden = ("torch", "keras", "tensorflow", "compression", "onnxscript", "sympy")
    hits = []
    for root, dirs, files in os.walk(frozen_dist):
        for name in dirs + files:
            stem = name.split(".")[0].lower()
            if stem in forbidden or name.lower().startswith(("libtorch", "libc10")):
                hits.append(os.path.join(root, name))
    names = [n if isinstance(n, str) else n.decode() for n in _archive_names(exe)]
    hits += [n for n in names if n.split(".")[0] in forbidden]
    assert not hits, f"developer-side packages inside the bundle: {hits[:20]}"
    assert not any(n == "tests" or n.startswith("tests.") for n in names)


def test_portable_marker_keeps_settings_and_logs_beside_exe(frozen_dist, tmp_path):
    """A copy of the bundle with portable.txt writes its files into MENDICANT-settings beside the exe."""
    copy = tmp_path / "portable" / APP
    try:
        shutil.copytree(frozen_dist, copy, symlinks=True, copy_function=os.link)
    except OSError:
        shutil.copytree(frozen_dist, copy, symlinks=True)
    (copy / "portable.txt").write_text("portable\n")
    proc = run(copy / EXE_NAME, "--version", timeout=120, MENDICANT_LOG_FILE="1")
    assert proc.returncode == 0, proc.stderr
    log = copy / "MENDICANT-settings" / "logs" / "mendicant-desktop.log"
    assert log.is_file(), list(copy.iterdir())
    assert f"{APP} {_version()}" in log.read_text(encoding="utf-8")


def test_bundle_size_budget(frozen_dist):
    size_mb = _bundle_bytes(frozen_dist) / 1e6
    print(f"\n[frozen] unpacked bundle {size_mb:.1f} MB (budget {SIZE_BUDGET_MB:.0f}, target {SIZE_TARGET_MB:.0f})")
    assert size_mb <= SIZE_BUDGET_MB, f"bundle {size_mb:.1f} MB exceeds the {SIZE_BUDGET_MB:.0f} MB budget"
