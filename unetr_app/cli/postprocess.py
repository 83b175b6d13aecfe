"""`unetr postprocess`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.cli.options import DeviceOption


def postprocess(
    experiment_dir: Annotated[Path, typer.Argument(help="a run folder trained with --fold, or a folder of them (one per fold)")],
    device: DeviceOption = "auto",
    min_volume: Annotated[list[float] | None, typer.Option("--min-volume", min=0, help="candidate smallest component to keep, mm^3 (repeat; default 100, 1000, 10000)")] = None,
) -> None:
    """Decide post-processing on cross-validation predictions; writes postprocessing.json, which predict applies."""
    from rich.console import Console
    from rich.table import Table

    from unetr_app.pipelines.postprocess import run_postprocess
    from unetr_app.evaluation.postprocess import DEFAULT_MIN_VOLUMES_MM3
    from unetr_app.io.run_dir import RunDir

    decision = run_postprocess(experiment_dir, device, min_volume or DEFAULT_MIN_VOLUMES_MM3, show_progress=True)
    table = Table("label", "step", "mean Dice before", "after", "kept", title=f"{decision['validation_cases']} validation cases")
    for trial in decision["trials"]:
        table.add_row(trial["label"], trial["step"], f"{trial['dice_before']:.4f}", f"{trial['dice_after']:.4f}", "yes" if trial["kept"] else "no")
    console = Console()
    console.print(table)
    console.print(f"-> {RunDir(experiment_dir).postprocessing} (predict applies it; --no-postprocess turns it off)")
