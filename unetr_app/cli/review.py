"""`unetr review`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def review(
    images_dir: Annotated[Path, typer.Argument(help="folder of scans (the input of `unetr predict`)")],
    pred_dir: Annotated[Path, typer.Argument(help="folder of predicted masks (`unetr predict` output); never modified")],
    labels: Annotated[Path | None, typer.Option("--labels", help="folder of reference labels: shown as contours, Dice in the panel")] = None,
    corrections: Annotated[Path | None, typer.Option("--corrections", help="where corrections and review.csv go [default: PRED_DIR_corrections beside PRED_DIR]")] = None,
    case: Annotated[str | None, typer.Option("--case", help="open this case [default: the first pending one]")] = None,
    attention: Annotated[Path | None, typer.Option("--attention", help="folder of `unetr attention` maps: shown as one layer per head")] = None,
    order: Annotated[str, typer.Option("--order", help="name: natural name order; risk: highest risk first, from the qc.csv of `unetr predict`")] = "name",
    screenshot: Annotated[Path | None, typer.Option("--screenshot", help="write a PNG of the case and the panel, then exit (no window)")] = None,
) -> None:
    """Review predicted masks in napari: step through cases, accept / reject / flag, fix and save.

    With --save-probabilities predictions, an "uncertainty" layer (per-voxel entropy) can be switched
    on; a multi-channel scan has a layer per channel."""
    from unetr_app.extras import require_feature

    require_feature("unetr review")  # a missing extra is one line now, not after reading the folders
    from unetr_app.review.session import ReviewSession
    from unetr_app.review.viewer import run_review, screenshot_review

    session = ReviewSession(images_dir, pred_dir, labels, corrections, attention, order)
    index = session.index_of(case) if case else None
    if screenshot is None:
        run_review(session, index)
        return
    screenshot_review(session, screenshot, index if index is not None else 0)
    typer.echo(f"wrote {screenshot} ({session.cases[index or 0].name})")
