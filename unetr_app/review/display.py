"""An X display for napari: the user's, or a private Xvfb started for a batch job or a test run.

Qt aborts the whole process when it has no display, and its offscreen platform does not render
napari's OpenGL canvas; Xvfb with Qt's xcb platform does. So a screenshot without a screen, or a
test run on a headless machine, starts its own Xvfb (found on PATH) and points DISPLAY at it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess

from unetr_app.errors import UsageError

SCREEN = "1600x1200x24"
_started: list[subprocess.Popen] = []


def ensure_display(start_xvfb: bool = True, private: bool = False) -> str:
    """Return a usable DISPLAY, starting a private Xvfb if there is none (or, with `private`, even if
    there is one, so a batch screenshot opens no window on the user's screen); raise `UsageError`
    when there is no display and none may or can be started. Call before Qt's QApplication exists."""
    if private and shutil.which("Xvfb"):
        return _start_xvfb(shutil.which("Xvfb"))
    if os.environ.get("WAYLAND_DISPLAY"):
        return os.environ["WAYLAND_DISPLAY"]
    if os.environ.get("DISPLAY"):
        if x_server_reachable(os.environ["DISPLAY"]):
            return os.environ["DISPLAY"]
        del os.environ["DISPLAY"]  # stale (a closed SSH session, a dead Xvfb): Qt would abort on it
    if not start_xvfb:
        raise UsageError("no display for the napari viewer; run it on a desktop, or render without one with --screenshot OUT.png")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise UsageError(
            "no display for the napari viewer and no Xvfb to make one; install it "
            "(`bash scripts/install_viewer_deps.sh`, or apt-get install xvfb) or run under `xvfb-run -a`"
        )
    return _start_xvfb(xvfb)


def _start_xvfb(xvfb: str) -> str:
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", SCREEN, "-nolisten", "tcp"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_end)
    with os.fdopen(read_end) as handle:
        number = handle.readline().strip()  # Xvfb writes the display number once it accepts clients
    if not number:
        process.kill()
        raise UsageError(f"{xvfb} did not start (exit code {process.wait()}); run under `xvfb-run -a` instead")
    _started.append(process)
    atexit.register(stop_displays)
    os.environ["DISPLAY"] = f":{number}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"  # offscreen does not render napari's canvas
    return os.environ["DISPLAY"]


def x_server_reachable(display: str) -> bool:
    """Whether an X server answers at `display` (":1", "unix:1.0", "localhost:10.0")."""
    host, _, number = display.rpartition(":")
    number = number.split(".")[0]
    if not number.isdigit():
        return False
    if host in ("", "unix"):
        return os.path.exists(f"/tmp/.X11-unix/X{number}")
    try:
        with socket.create_connection((host, 6000 + int(number)), timeout=1.0):
            return True
    except OSError:
        return False


def stop_displays() -> None:
    """Stop the Xvfb servers this process started (only those)."""
    while _started:
        process = _started.pop()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
