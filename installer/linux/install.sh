#!/bin/sh
# Install the unpacked MENDICANT Desktop archive for this user (default) or system-wide (root).
#   ./install.sh              -> ~/.local/opt/mendicant-desktop, ~/.local/bin/mendicant-desktop, menu entry
#   sudo ./install.sh --system -> /opt/mendicant-desktop, /usr/local/bin/mendicant-desktop, menu entry for all
#   ./install.sh --uninstall [--system]   removes what the matching install put there (settings are kept)
# No network access, no package manager: everything is copied from this folder.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
mode=user action=install
for a in "$@"; do
  case "$a" in
    --system) mode=system ;;
    --uninstall) action=uninstall ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $a" >&2; exit 2 ;;
  esac
done
if [ "$mode" = system ]; then
  prefix=/opt/mendicant-desktop bindir=/usr/local/bin share=/usr/share
else
  prefix="$HOME/.local/opt/mendicant-desktop"
  bindir="$HOME/.local/bin" share="${XDG_DATA_HOME:-$HOME/.local/share}"
fi
desktop="$share/applications/mendicant-desktop.desktop"
icon_png="$share/icons/hicolor/256x256/apps/mendicant-desktop.png"
icon_svg="$share/icons/hicolor/scalable/apps/mendicant-desktop.svg"
refresh() {
  command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database -q "$share/applications" || true
  command -v gtk-update-icon-cache >/dev/null 2>&1 && gtk-update-icon-cache -q -t "$share/icons/hicolor" || true
}
if [ "$action" = uninstall ]; then
  rm -rf "$prefix"
  rm -f "$bindir/mendicant-desktop" "$desktop" "$icon_png" "$icon_svg"
  refresh
  echo "MENDICANT Desktop removed from $prefix (settings in ~/.config/MENDICANT Desktop are kept)."
  exit 0
fi
[ -x "$here/mendicant-desktop/mendicant-desktop" ] || { echo "install.sh: run it from the unpacked archive" >&2; exit 1; }
rm -rf "$prefix.new"
mkdir -p "$prefix.new"
cp -a "$here/mendicant-desktop" "$here/mendicant-desktop.sh" "$here/VERSION" "$prefix.new/"
[ -f "$here/README.txt" ] && cp -a "$here/README.txt" "$prefix.new/"
rm -rf "$prefix"
mv "$prefix.new" "$prefix"
mkdir -p "$bindir" "$(dirname "$desktop")" "$(dirname "$icon_png")" "$(dirname "$icon_svg")"
ln -sf "$prefix/mendicant-desktop.sh" "$bindir/mendicant-desktop"
cp "$here/icons/mendicant-desktop.png" "$icon_png"
cp "$here/icons/mendicant-desktop.svg" "$icon_svg"
sed -e "s|^Exec=.*|Exec=\"$prefix/mendicant-desktop.sh\" %F|" \
    -e "s|^TryExec=.*|TryExec=$prefix/mendicant-desktop.sh|" \
    "$here/mendicant-desktop.desktop" > "$desktop"
chmod 644 "$desktop"
refresh
echo "MENDICANT Desktop $(cat "$prefix/VERSION") installed in $prefix"
echo "  menu entry: $desktop"
echo "  command:    $bindir/mendicant-desktop (--batch, --audit, --selftest, --version)"
case ":$PATH:" in *":$bindir:"*) ;; *) echo "  note: $bindir is not on PATH" ;; esac
