"""Bundle size report: the unpacked PyInstaller bundle, its archive, and the megabytes each exclusion saves.

    python benchmarks/bundle_size.py                       # measure dist/mendicant-desktop (+ build/pyinstaller)
    python benchmarks/bundle_size.py --naive               # + build a no-exclusion bundle and compare (~1-2 min)
    python benchmarks/bundle_size.py --dist DIR --workpath DIR --archive FILE.tar.gz --xz --json out.json

How each number is measured (all in MB = 10^6 bytes):

* **unpacked bundle** -- sum of the sizes of the regular files under the onedir folder (symlinks not
  followed), with a breakdown by component;
* **archive** -- the size of ``--archive`` when given, and the size of a ``tar | gzip -9`` (and with
  ``--xz``, ``xz -9``) stream of the bundle computed here;
* **file rules** (Qt plugins/translations/GTK stack, symbol stripping) -- *measured with/without*:
  ``build.spec`` writes ``excluded-files.json`` into the PyInstaller workpath with the exact size of every
  file it removed from the Analysis, i.e. bytes that would otherwise have been copied into the bundle;
* **module excludes** -- two columns: *measured with/without* (``--naive``: a second build of the same spec
  with ``MENDICANT_SPEC_NAIVE=1``, no excludes/filters/stripping; every file and every PYZ module present
  only in the naive build is attributed to the exclusion group that names it), and *installed size*: the
  on-disk size of the excluded packages in this environment (package folder + its vendored ``*.libs``),
  which is what a build that pulled them in (an ``import torch`` creeping into the app, ``--collect-all``)
  would add. A measured 0 with a large installed size means the exclusion is a guard: the app does
  not import that package today, and the spec makes sure it never silently does.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import importlib.util
import io
import json
import lzma
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "installer"))
import exclusions as X  # noqa: E402

MB = 1e6
RESULTS = REPO / "benchmarks" / "results" / "bundle_size.json"


def files_of(root: Path) -> dict[str, int]:
    """bundle-relative path ('/'-separated, under _internal stripped) -> size, regular files only."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_symlink():
                continue
            rel = p.relative_to(root).as_posix()
            out[rel] = p.stat().st_size
    return out


def component(rel: str) -> str:
    parts = rel.split("/")
    if parts[0] != "_internal":
        return "executable (bootloader + PYZ of all Python code)"
    if len(parts) == 2:
        name = parts[1]
        if name.startswith("libpython") or name == "base_library.zip":
            return "Python runtime (libpython, stdlib)"
        return "system libraries (X11/xcb, dbus, glib, OpenSSL, libstdc++ ...)"
    top = parts[1]
    if top == "PySide6":
        if parts[2:4] == ["Qt", "lib"] and parts[4].startswith("libicu"):
            return "ICU (Qt's Unicode/locale data)"
        if parts[2:3] == ["Qt"]:
            return "Qt libraries + plugins"
        return "PySide6 bindings"
    if top in ("shiboken6",):
        return "PySide6 bindings"
    if top in ("numpy", "numpy.libs"):
        return "numpy (+ OpenBLAS)"
    if top in ("PIL", "pillow.libs"):
        return "Pillow"
    if top == "onnxruntime":
        return "onnxruntime"
    if top == "python3.11" or top.startswith("python3"):
        return "Python runtime (libpython, stdlib)"
    if top == "resources":
        return "resources (model, icons, styles)" if parts[2:3] != ["models"] else "resources: model"
    return f"other ({top})"


def pyz_modules(exe: Path) -> dict[str, int]:
    """module name -> compressed bytes inside the executable's PYZ (needs PyInstaller)."""
    try:
        from PyInstaller.archive.readers import CArchiveReader
    except ImportError:
        return {}
    try:
        pkg = CArchiveReader(str(exe))
    except Exception:  # noqa: BLE001
        return {}
    out = {}
    for name, entry in pkg.toc.items():
        if entry[-1] == "z":  # PKG_ITEM_PYZ
            pyz = pkg.open_embedded_archive(name)
            for mod, e in pyz.toc.items():
                out[mod] = int(e[2]) if len(e) > 2 else 0
    return out


def compressed_sizes(root: Path, xz: bool) -> dict[str, int]:
    """Size of tar|gzip -9 (and xz -9) of the bundle folder, streamed (nothing written to disk)."""

    class Count(io.RawIOBase):
        def __init__(self) -> None:
            self.n = 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[override]
            self.n += len(b)
            return len(b)

    sinks: dict[str, tuple[Count, object]] = {}
    c = Count()
    sinks["tar.gz (gzip -9)"] = (c, gzip.GzipFile(fileobj=c, mode="wb", compresslevel=9, mtime=0))
    if xz:
        c2 = Count()
        sinks["tar.xz (xz -9)"] = (c2, lzma.LZMACompressor(preset=9))

    class Tee(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[override]
            for counter, comp in sinks.values():
                if isinstance(comp, gzip.GzipFile):
                    comp.write(b)
                else:
                    counter.write(comp.compress(bytes(b)))
            return len(b)

    tee = Tee()
    with tarfile.open(fileobj=tee, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        tar.add(str(root), arcname=root.name)
    out = {}
    for name, (counter, comp) in sinks.items():
        if isinstance(comp, gzip.GzipFile):
            comp.close()
        else:
            counter.write(comp.flush())
        out[name] = counter.n
    return out


def installed_size(module: str) -> int:
    """On-disk size of an installed package/module (+ its auditwheel ``<dist>.libs`` folder); 0 if absent."""
    if module.startswith("PySide6."):
        import PySide6

        base = Path(PySide6.__file__).parent
        short = module.split(".", 1)[1]
        total = sum(p.stat().st_size for p in base.glob(f"{short}.*") if p.is_file())
        lib = short.replace("Qt", "Qt6", 1)
        total += sum(p.stat().st_size for p in (base / "Qt" / "lib").glob(f"lib{lib}.so*")
                     if p.is_file() and not p.is_symlink())
        return total
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return 0
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        if spec is not None and spec.submodule_search_locations:
            paths = [Path(p) for p in spec.submodule_search_locations]
        else:
            return 0
    else:
        origin = Path(spec.origin)
        paths = [origin.parent] if origin.name == "__init__.py" else [origin]
    total = 0
    for p in paths:
        if p.is_file():
            total += p.stat().st_size
            continue
        for dirpath, _d, files in os.walk(p):
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files
                         if not os.path.islink(os.path.join(dirpath, f)))
        if "." not in module:
            for libs in p.parent.glob(f"{module.replace('_', '?')}*.libs"):
                total += sum(f.stat().st_size for f in libs.iterdir() if f.is_file())
    return total


# naive-only files that belong to a module exclusion although their path does not name the module
_EXTRA_PATHS = {
    "numpy/Pillow extras": ("pillow.libs/", "PIL/"),  # libavif/freetype/harfbuzz of PIL._avif/_imagingft
    "stdlib extras": ("_tcl_data/", "_tk_data/", "tcl8/", "libtcl", "libtk", "libsqlite3", "libssl",
                      "python3.11/lib-dynload/_ssl", "python3.11/lib-dynload/_tkinter",
                      "python3.11/lib-dynload/_sqlite3", "python3.11/lib-dynload/_curses"),
}


def _is_stdlib(module: str) -> bool:
    top = module.split(".")[0]
    return top in sys.stdlib_module_names or top in ("test", "_tkinter", "_ssl", "_sqlite3", "_curses")


def _group_installed(mods: list[str]) -> int | None:
    """Installed size of a group's third-party modules (stdlib modules are not counted); None if all stdlib."""
    third = [m for m in mods if not _is_stdlib(m)]
    if not third:
        return None
    # a module whose parent package is also listed is already counted with it
    third = [m for m in third if not any(m.startswith(o + ".") for o in third if o != m)]
    return sum(installed_size(m) for m in third)


def _group_of_path(rel: str) -> str | None:
    """Exclusion group that a naive-only bundle path belongs to (None: unattributed)."""
    inner = rel.split("/", 1)[1] if rel.startswith("_internal/") else rel
    group = X.file_rule_for(inner)
    if group:
        return group
    for g in X.MODULE_EXCLUDES:
        for prefix, paths in _EXTRA_PATHS.items():
            if g.startswith(prefix) and inner.startswith(paths):
                return g
    for g, (_reason, mods) in X.MODULE_EXCLUDES.items():
        for m in mods:
            pref = m.replace(".", "/")
            if inner == pref or inner.startswith(pref + "/") or inner.startswith(pref + ".") or \
                    inner.split("/")[0] in (f"{m}.libs",):
                return g
            if m.startswith("PySide6.Qt"):
                lib = "lib" + m.split(".", 1)[1].replace("Qt", "Qt6", 1)
                if inner.startswith(f"PySide6/Qt/lib/{lib}.so") or inner.startswith(f"PySide6/Qt/lib/{lib}"):
                    return g
            if m in ("ssl", "_ssl") and os.path.basename(inner).startswith(("libssl", "_ssl.")):
                return g
    return None


def _group_of_module(mod: str) -> str | None:
    for g, (_reason, mods) in X.MODULE_EXCLUDES.items():
        if any(mod == m or mod.startswith(m + ".") for m in mods):
            return g
    return None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist_name in ("PySide6-Essentials", "onnxruntime", "numpy", "pillow", "pyinstaller"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist_name] = metadata.version(dist_name)
    return out


def _bundled_model(dist: Path) -> dict[str, str] | None:
    cards = sorted((dist / "_internal" / "resources" / "models").glob("*.json"))
    if not cards:
        return None
    card = json.loads(cards[0].read_text(encoding="utf-8"))
    return {"name": card.get("name"), "version": card.get("version"), "sha256": card.get("sha256")}


def naive_build(tmp: Path) -> Path:
    env = dict(os.environ, MENDICANT_SPEC_NAIVE="1")
    cmd = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
           "--distpath", str(tmp / "dist"), "--workpath", str(tmp / "build"), str(REPO / "build.spec")]
    if sys.platform != "win32":
        cmd = ["nice", "-n", "10", *cmd]
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    return tmp / "dist" / "mendicant-desktop"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dist", type=Path, default=REPO / "dist" / "mendicant-desktop")
    ap.add_argument("--workpath", type=Path, default=None,
                    help="PyInstaller workpath holding excluded-files.json (default: build/pyinstaller/build, "
                         "else build/build)")
    ap.add_argument("--archive", type=Path, help="an existing archive to report (e.g. dist/*.tar.gz)")
    ap.add_argument("--naive", action="store_true", help="build a no-exclusion bundle to measure module excludes")
    ap.add_argument("--naive-dist", type=Path, help="reuse an existing no-exclusion bundle")
    ap.add_argument("--xz", action="store_true", help="also measure tar.xz (slow)")
    ap.add_argument("--no-compress", action="store_true", help="skip the tar.gz measurement")
    ap.add_argument("--json", type=Path, default=RESULTS,
                    help=f"where to write the report as JSON (default {RESULTS.relative_to(REPO)}, from which "
                         "docs/production_deployment_guide.md's tables are generated by benchmarks/doc_tables.py)")
    args = ap.parse_args(argv)

    dist = args.dist.resolve()
    if not (dist / "_internal").is_dir():
        print(f"bundle_size: {dist} is not a PyInstaller onedir bundle; build it first", file=sys.stderr)
        return 2
    report: dict = {"dist": str(dist.relative_to(REPO)) if dist.is_relative_to(REPO) else str(dist),
                    "generated_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "versions": _versions(), "model": _bundled_model(dist)}
    files = files_of(dist)
    total = sum(files.values())
    comp: dict[str, int] = defaultdict(int)
    for rel, size in files.items():
        comp[component(rel)] += size
    report["unpacked_bytes"] = total
    report["components"] = dict(sorted(comp.items(), key=lambda kv: -kv[1]))
    print(f"unpacked bundle: {total / MB:.1f} MB in {len(files)} files ({dist})  [budget 250, target 150]")
    for name, size in report["components"].items():
        print(f"  {size / MB:7.1f} MB  {name}")

    if args.archive and args.archive.is_file():
        report["archive"] = {str(args.archive): args.archive.stat().st_size}
        print(f"archive: {args.archive.stat().st_size / MB:.1f} MB  {args.archive}")
    if not args.no_compress:
        t0 = time.perf_counter()
        sizes = compressed_sizes(dist, args.xz)
        report["compressed"] = sizes
        for name, n in sizes.items():
            print(f"compressed bundle, {name}: {n / MB:.1f} MB ({time.perf_counter() - t0:.0f} s to measure)")

    # --- exclusions -----------------------------------------------------------------------------------
    work = args.workpath
    if work is None:
        for cand in (REPO / "build" / "pyinstaller" / "build", REPO / "build" / "build"):
            if (cand / "excluded-files.json").is_file():
                work = cand
                break
    rules = {}
    if work is not None and (work / "excluded-files.json").is_file():
        rules = json.loads((work / "excluded-files.json").read_text())["file_rules"]
    else:
        print("bundle_size: no excluded-files.json found (pass --workpath); file-rule savings unknown",
              file=sys.stderr)

    measured: dict[str, int] = defaultdict(int)
    unattributed: dict[str, int] = defaultdict(int)
    naive_total = None
    naive_dist = args.naive_dist
    tmp = None
    if args.naive and naive_dist is None:
        tmp = tempfile.TemporaryDirectory(prefix="mendicant-naive-")
        print("building the no-exclusion bundle (MENDICANT_SPEC_NAIVE=1) ...", flush=True)
        naive_dist = naive_build(Path(tmp.name))
    if naive_dist is not None:
        nfiles = files_of(naive_dist)
        naive_total = sum(nfiles.values())
        for rel, size in nfiles.items():
            if rel in files:
                continue
            g = _group_of_path(rel)
            if g is None:
                unattributed[rel.split("/")[1] if rel.startswith("_internal/") and rel.count("/") > 1 else rel] += size
            else:
                measured[g] += size
        # Python modules: compare the PYZ archives inside the two executables
        final_mods = pyz_modules(dist / "mendicant-desktop")
        naive_mods = pyz_modules(naive_dist / "mendicant-desktop")
        for mod, size in naive_mods.items():
            if mod not in final_mods:
                g = _group_of_module(mod)
                if g is None:
                    unattributed["(python) " + mod.split(".")[0]] += size
                else:
                    measured[g] += size
        report["naive_unpacked_bytes"] = naive_total
        print(f"\nno-exclusion bundle: {naive_total / MB:.1f} MB -> final {total / MB:.1f} MB "
              f"(saved {(naive_total - total) / MB:.1f} MB)")

    rows = []
    for g, reason in X.all_groups():
        if g in rules:
            m = rules[g]["bytes"]
            src = "measured (files dropped from the Analysis)"
        elif naive_dist is not None:
            m = measured.get(g, 0)
            src = "measured (naive build - final build)"
        else:
            m = None
            src = "run with --naive to measure"
        mods = X.MODULE_EXCLUDES.get(g, (None, []))[1]
        inst = _group_installed(mods) if mods else None
        rows.append({"group": g, "reason": reason, "saved_bytes": m, "how": src, "installed_bytes": inst})
    for g, v in rules.items():
        if g not in dict(X.all_groups()):
            rows.append({"group": g, "reason": "", "saved_bytes": v["bytes"],
                         "how": "measured (stripped copies vs originals)", "installed_bytes": None})
    report["exclusions"] = rows
    report["unattributed_naive_only"] = dict(sorted(unattributed.items(), key=lambda kv: -kv[1]))

    print("\nexclusion                                                        saved MB   installed MB")
    for r in rows:
        saved = "   n/a" if r["saved_bytes"] is None else f"{r['saved_bytes'] / MB:6.1f}"
        inst = "     -" if r["installed_bytes"] is None else f"{r['installed_bytes'] / MB:7.1f}"
        print(f"  {r['group'][:62]:62s} {saved}   {inst}")
    if naive_total is not None:
        module_sum = sum(r["saved_bytes"] or 0 for r in rows if r["group"] in X.MODULE_EXCLUDES)
        other = sum(unattributed.values())
        report["unattributed_bytes"] = other
        print(f"module excludes attributed: {module_sum / MB:.1f} MB; naive-only files/modules not named by any "
              f"exclusion (transitive dependencies of excluded packages): {other / MB:.1f} MB")
    if unattributed:
        print("largest naive-only files/modules not named by any exclusion:")
        for k, v in list(report["unattributed_naive_only"].items())[:15]:
            print(f"  {v / MB:6.2f} MB  {k}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
