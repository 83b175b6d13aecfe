#!/usr/bin/env bash
# What napari needs to render on a bare Debian/Ubuntu machine: an X server (Xvfb) and the libraries
# of Qt's xcb platform plugin and OpenGL (from `ldd` of PyQt6's libqxcb.so).
# Idempotent and quiet: a package counts as present when dpkg has it or, failing that, when its
# program or library is found (so renamed packages, e.g. Debian 13's *t64, are not reinstalled);
# only missing ones are installed. Runs as root (CI) or through password-less sudo; otherwise it
# says what is missing and exits 0 (the viewer tests then skip instead of failing).
set -euo pipefail

# package:probe, where the probe is a program on PATH, a library soname, or a file glob
NEEDS=(
  xvfb:Xvfb xauth:xauth
  libgl1:libGL.so.1 libegl1:libEGL.so.1 "libgl1-mesa-dri:/usr/lib/*/dri/swrast_dri.so"
  libglib2.0-0:libglib-2.0.so.0 libfontconfig1:libfontconfig.so.1 libdbus-1-3:libdbus-1.so.3
  libx11-xcb1:libX11-xcb.so.1 libxkbcommon-x11-0:libxkbcommon-x11.so.0
  libxcb-icccm4:libxcb-icccm.so.4 libxcb-keysyms1:libxcb-keysyms.so.1 libxcb-cursor0:libxcb-cursor.so.0
  libxcb-image0:libxcb-image.so.0 libxcb-render-util0:libxcb-render-util.so.0 libxcb-randr0:libxcb-randr.so.0
  libxcb-shape0:libxcb-shape.so.0 libxcb-xkb1:libxcb-xkb.so.1
)

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_viewer_deps: no apt-get here; install Xvfb and Qt's xcb libraries yourself (viewer tests skip without them)" >&2
  exit 0
fi

present() {
  local package=$1 probe=$2
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" && return 0
  case $probe in
    /*) compgen -G "$probe" >/dev/null ;;
    *.so*) ldconfig -p 2>/dev/null | grep -q "$probe" ;;
    *) command -v "$probe" >/dev/null 2>&1 ;;
  esac
}

missing=()
for need in "${NEEDS[@]}"; do
  present "${need%%:*}" "${need#*:}" || missing+=("${need%%:*}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install_viewer_deps: missing ${missing[*]}; run this script as root to install them (viewer tests skip meanwhile)" >&2
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
fail() { cat "$log" >&2; echo "install_viewer_deps: $1" >&2; exit 1; }

"${as_root[@]}" apt-get update -qq >"$log" 2>&1 || fail "apt-get update failed (above)"
available=()
for package in "${missing[@]}"; do  # names differ between releases: take the t64 rename, skip the unknown
  if apt-cache show "$package" >/dev/null 2>&1; then available+=("$package")
  elif apt-cache show "${package}t64" >/dev/null 2>&1; then available+=("${package}t64")
  else echo "install_viewer_deps: no package $package in this release; skipped" >&2
  fi
done
[ ${#available[@]} -eq 0 ] && exit 0
echo "install_viewer_deps: installing ${available[*]}"
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${available[@]}" >"$log" 2>&1 || fail "apt-get install failed (above)"
