#!/bin/sh
# MENDICANT Desktop launcher (Linux). Works from the unpacked archive, through a symlink (e.g.
# ~/.local/bin/mendicant-desktop) and from the .desktop entry. All arguments are passed on:
#   mendicant-desktop.sh [IMAGE ...]                      the window
#   mendicant-desktop.sh --batch DIR --out scores.csv     headless scoring (exit 3 = some inputs failed)
#   mendicant-desktop.sh --audit ... | --selftest | --version | --help
# Portable mode: create mendicant-desktop/portable.txt (beside the executable) or export MENDICANT_PORTABLE=1.
self="$0"
while [ -L "$self" ]; do
  target="$(readlink "$self")"
  case "$target" in /*) self="$target" ;; *) self="$(dirname "$self")/$target" ;; esac
done
here="$(cd "$(dirname "$self")" && pwd)"
exe="$here/mendicant-desktop/mendicant-desktop"
[ -x "$exe" ] || exe="$here/mendicant-desktop"  # launcher placed inside the bundle folder
if [ ! -x "$exe" ] || [ -d "$exe" ]; then
  echo "mendicant-desktop: the application was not found beside $self" >&2
  exit 127
fi
# On a Wayland session without the Wayland client libraries, fall back to X11 (XWayland).
if [ -z "${QT_QPA_PLATFORM:-}" ] && [ -n "${WAYLAND_DISPLAY:-}" ] && [ -n "${DISPLAY:-}" ]; then
  export QT_QPA_PLATFORM="wayland;xcb"
fi
exec "$exe" "$@"
