#!/usr/bin/env bash
# What napari needs to render on a bare Debian/Ubuntu machine: an X server (Xvfb) and the libraries
# of Qt's xcb platform and OpenGL. Idempotent and quiet: installs only the packages that are missing.
# Runs as root (CI) or through sudo when available; without either it says what to install and exits 0
# (the viewer tests then skip instead of failing).
set -euo pipefail

PACKAGES=(
  xvfb xauth
  libgl1 libegl1 libgl1-mesa-dri libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-randr0
  libxcb-shape0 libxcb-xinerama0 libxcb-xkb1
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_viewer_deps: not a Debian-like system; install Xvfb and Qt's xcb libraries yourself" >&2
  exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  run_as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  run_as_root=(sudo -n)
else
  echo "install_viewer_deps: missing ${missing[*]}; run this script as root to install them (viewer tests will skip)" >&2
  exit 0
fi

echo "install_viewer_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! { "${run_as_root[@]}" apt-get update -qq && "${run_as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  rm -f "$log"
  echo "install_viewer_deps: apt-get failed (above)" >&2
  exit 1
fi
rm -f "$log"
