#!/usr/bin/env bash
# Whole release chain for Linux: clean venv -> pip install .[build] -> pyinstaller build.spec -> smoke test
# -> versioned archive dist/mendicant-desktop-<version>-linux-<arch>.tar.gz (+ .sha256).
#
#   installer/build.sh [options]
#     --python PY        interpreter for the build venv (default: python3.11, else python3)
#     --venv DIR         build venv location (default: build/venv; recreated unless --reuse-venv)
#     --reuse-venv       keep an existing venv (faster rebuilds; a release should start clean)
#     --wheelhouse DIR   install from local wheels only (offline build machine): pip --no-index --find-links DIR
#     --pytest           also run tests/packaging against the new bundle (installs pytest into the venv)
#     --allow-no-model   build even when resources/models has no model (development only; the smoke test
#                        then uses the tiny test model, which needs the onnx package)
#     --xz               also write a .tar.xz (smaller, slower to make)
#
# Runs PyInstaller under `nice`. Prints the bundle size, the archive size and the start-up time at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="" VENV="$ROOT/build/venv" REUSE=0 WHEELHOUSE="" RUN_PYTEST=0 ALLOW_NO_MODEL=0 XZ=0
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY="$2"; shift 2 ;;
    --venv) VENV="$2"; shift 2 ;;
    --reuse-venv) REUSE=1; shift ;;
    --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
    --pytest) RUN_PYTEST=1; shift ;;
    --allow-no-model) ALLOW_NO_MODEL=1; shift ;;
    --xz) XZ=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$PY" ]; then
  PY="$(command -v python3.11 || command -v python3 || true)"
  [ -n "$PY" ] || { echo "build.sh: no python3 found; pass --python" >&2; exit 2; }
fi

log() { printf '\n== build.sh: %s\n' "$*"; }
NICE=(); command -v nice >/dev/null && NICE=(nice -n 10)

VERSION="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' mendicant_desktop/__init__.py)"
[ -n "$VERSION" ] || { echo "build.sh: cannot read __version__ from mendicant_desktop/__init__.py" >&2; exit 1; }
ARCH="$(uname -m)"
NAME="mendicant-desktop-$VERSION-linux-$ARCH"

shopt -s nullglob
cards=(resources/models/*.json)
shopt -u nullglob
if [ "${#cards[@]}" -eq 0 ] && [ "$ALLOW_NO_MODEL" -ne 1 ]; then
  echo "build.sh: resources/models has no model card: a release must bundle the model" \
       "(python -m compression build), or pass --allow-no-model for a development build" >&2
  exit 1
fi

# Qt's xcb platform plugin needs these X libraries; present on the build host, they are bundled and the
# app starts on desktops that lack them (Qt >= 6.5 fails with "xcb-cursor0 ... is needed" otherwise).
missing=()
for lib in libxcb-cursor.so.0 libxcb-icccm.so.4 libxcb-keysyms.so.1 libxkbcommon-x11.so.0; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || missing+=("$lib")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "build.sh: WARNING: ${missing[*]} not installed on this build machine: they will not be bundled and" \
       "clinic machines will need them (Debian/Ubuntu: apt install libxcb-cursor0 libxcb-icccm4" \
       "libxcb-keysyms1 libxkbcommon-x11-0)" >&2
fi

# 1. clean venv ---------------------------------------------------------------------------------------
if [ "$REUSE" -ne 1 ] || [ ! -x "$VENV/bin/python" ]; then
  log "creating a clean venv in $VENV ($("$PY" --version))"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install --disable-pip-version-check -q)
[ -n "$WHEELHOUSE" ] && PIP+=(--no-index --find-links "$WHEELHOUSE")

# 2. install the app + PyInstaller ----------------------------------------------------------------------
log "pip install .[build]"
"${PIP[@]}" ".[build]"
if [ "${#cards[@]}" -eq 0 ] || [ "$RUN_PYTEST" -eq 1 ]; then
  extra=(pytest)
  [ "${#cards[@]}" -eq 0 ] && extra+=(onnx)  # the tiny stand-in model is written with onnx
  "${PIP[@]}" "${extra[@]}"
fi
if "$VPY" -c "import torch" 2>/dev/null; then
  echo "build.sh: torch is importable in the build venv; the build must not see it" >&2; exit 1
fi

# 3. PyInstaller ---------------------------------------------------------------------------------------
log "pyinstaller build.spec (version $VERSION)"
t0=$(date +%s)
"${NICE[@]}" "$VPY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$ROOT/dist" --workpath "$ROOT/build/pyinstaller" build.spec
echo "build took $(( $(date +%s) - t0 )) s"
DIST="$ROOT/dist/mendicant-desktop"
EXE="$DIST/mendicant-desktop"
[ -x "$EXE" ] || { echo "build.sh: $EXE was not produced" >&2; exit 1; }

# 4. smoke test ----------------------------------------------------------------------------------------
log "smoke test"
SMOKE="$(mktemp -d)"
trap 'rm -rf "$SMOKE"' EXIT
MODEL_ARGS=()
if [ "${#cards[@]}" -eq 0 ]; then
  card="$("$VPY" -c "import sys; sys.path.insert(0, '.'); from tests.support.tiny_model import build_tiny_bundle; print(build_tiny_bundle('$SMOKE/model'))")"
  MODEL_ARGS=(--model "$card")
fi
"$EXE" --version | tee "$SMOKE/version.txt"
grep -q "^mendicant-desktop $VERSION" "$SMOKE/version.txt"
mkdir -p "$SMOKE/in"
"$VPY" - "$SMOKE/in" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1])
rng = np.random.default_rng(1)
for i in range(4):
    img = np.clip(np.array([215, 170, 145]) - 15 * i + rng.normal(0, 8, (240, 320, 3)), 0, 255).astype(np.uint8)
    img[90:150, 120:200] = (95, 60, 45)
    Image.fromarray(img).save(out / f"lesion_{i}.jpg", quality=90)
(out / "corrupt.jpg").write_bytes((out / "lesion_0.jpg").read_bytes()[:500])
EOF
set +e
if command -v unshare >/dev/null && unshare -n true 2>/dev/null; then OFFLINE=(unshare -n); else OFFLINE=(); fi
MENDICANT_BLOCK_NETWORK=1 "${OFFLINE[@]}" "$EXE" --batch "$SMOKE/in" --out "$SMOKE/scores.csv" --quiet "${MODEL_ARGS[@]}"
rc=$?
set -e
[ "$rc" -eq 3 ] || { echo "build.sh: --batch with one corrupt file should exit 3, got $rc" >&2; exit 1; }
rows=$(( $(wc -l < "$SMOKE/scores.csv") - 1 ))
[ "$rows" -eq 5 ] || { echo "build.sh: expected 5 CSV rows, got $rows" >&2; exit 1; }
echo "batch: rc 3, $rows rows (offline: ${OFFLINE[*]:-hook only})"
t0=$(date +%s%N)
QT_QPA_PLATFORM=offscreen MENDICANT_CONFIG_DIR="$SMOKE/cfg" "$EXE" --selftest "${MODEL_ARGS[@]}" | tee "$SMOKE/selftest.txt"
STARTUP_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
grep -q "selftest OK" "$SMOKE/selftest.txt"
if find "$DIST" \( -iname 'torch*' -o -iname 'libtorch*' -o -iname 'keras*' \) | grep -q .; then
  echo "build.sh: torch/keras found inside the bundle" >&2; exit 1
fi
if [ "$RUN_PYTEST" -eq 1 ]; then
  log "pytest tests/packaging (reusing the new bundle)"
  MENDICANT_FROZEN_DIST="$DIST" "$VPY" -m pytest -q -m packaging tests/packaging -p no:cacheprovider
fi

# 5. archive -------------------------------------------------------------------------------------------
log "archive $NAME.tar.gz"
STAGE="$ROOT/build/stage/$NAME"
rm -rf "$ROOT/build/stage"
mkdir -p "$STAGE/icons"
cp -a "$DIST" "$STAGE/mendicant-desktop"
install -m 755 installer/linux/mendicant-desktop.sh "$STAGE/mendicant-desktop.sh"
install -m 755 installer/linux/install.sh "$STAGE/install.sh"
install -m 644 installer/linux/mendicant-desktop.desktop "$STAGE/mendicant-desktop.desktop"
install -m 644 resources/icons/mendicant.png "$STAGE/icons/mendicant-desktop.png"
install -m 644 resources/icons/mendicant.svg "$STAGE/icons/mendicant-desktop.svg"
install -m 644 installer/linux/README.txt "$STAGE/README.txt"
echo "$VERSION" > "$STAGE/VERSION"
(cd "$STAGE" && find mendicant-desktop/_internal/resources/models -type f -exec sha256sum {} + > SHA256SUMS.models 2>/dev/null || true)
EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"
TAR=(tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -C "$ROOT/build/stage")
ARCHIVE="$ROOT/dist/$NAME.tar.gz"
"${TAR[@]}" -cf - "$NAME" | "${NICE[@]}" gzip -9 -n > "$ARCHIVE"
(cd "$ROOT/dist" && sha256sum "$NAME.tar.gz" > "$NAME.tar.gz.sha256")
if [ "$XZ" -eq 1 ]; then
  "${TAR[@]}" -cf - "$NAME" | "${NICE[@]}" xz -9 -T1 > "$ROOT/dist/$NAME.tar.xz"
  (cd "$ROOT/dist" && sha256sum "$NAME.tar.xz" > "$NAME.tar.xz.sha256")
fi

bundle_mb=$(du -sb "$DIST" | awk '{printf "%.1f", $1/1e6}')
archive_mb=$(stat -c %s "$ARCHIVE" | awk '{printf "%.1f", $1/1e6}')
log "done"
echo "bundle:   $DIST  ($bundle_mb MB unpacked; budget 250, target 150)"
echo "archive:  $ARCHIVE  ($archive_mb MB)"
[ "$XZ" -eq 1 ] && echo "archive:  $ROOT/dist/$NAME.tar.xz  ($(stat -c %s "$ROOT/dist/$NAME.tar.xz" | awk '{printf "%.1f", $1/1e6}') MB)"
echo "selftest: ${STARTUP_MS} ms wall (start, window, model verified + loaded, one image scored, exit)"
