"""Opening a review in a napari viewer, interactively or for one screenshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unetr_app.extras import require_feature
from unetr_app.io.atomic import atomic_path
from unetr_app.review.display import ensure_display
from unetr_app.review.session import ReviewSession

WINDOW_SIZE = (1500, 900)  # width, height of the screenshot window (pixels)


def open_review(session: ReviewSession, index: int | None = None, show: bool = True):
    """A napari viewer with the "UNETR review" widget docked on the right; returns (viewer, widget).
    A display must exist already (see `display.ensure_display`)."""
    import napari

    from unetr_app.review.widget import ReviewWidget

    viewer = napari.Viewer(title="unetr review", show=show)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="UNETR review", area="right")
    widget.set_session(session, index)
    return viewer, widget


def run_review(session: ReviewSession, index: int | None = None) -> None:
    napari = require_viewer()
    ensure_display(start_xvfb=False)  # an invisible Xvfb window would help nobody

    open_review(session, index)
    napari.run()


def screenshot_review(session: ReviewSession, out: Path, index: int | None = None) -> np.ndarray:
    """Render one case (the axial slice through its largest predicted region, the overlay and the
    widget) to a PNG, close the viewer and return the RGBA pixels."""
    require_viewer()
    from qtpy.QtWidgets import QApplication

    if QApplication.instance() is None:  # once Qt runs, it stays on the display it started on
        ensure_display(private=True)
    viewer, widget = open_review(session, index, show=True)
    try:
        viewer.window.resize(*WINDOW_SIZE)
        widget.fill_all_volumes()
        viewer.reset_view()
        widget.go_to_largest_region()
        _process_events()
        pixels = viewer.screenshot(canvas_only=False, flash=False)
    finally:
        viewer.close()
    write_png(out, pixels)
    return pixels


def require_viewer():
    """napari with a Qt binding, or the one line naming the extra that brings them."""
    return require_feature("unetr review")["napari"]


def write_png(out: Path, pixels: np.ndarray) -> None:
    import matplotlib.image

    with atomic_path(Path(out)) as tmp:
        matplotlib.image.imsave(tmp, np.ascontiguousarray(pixels[..., :3]), format="png")


def _process_events(rounds: int = 5) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()
