"""`unetr compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.cli.options import DEFAULT_PROFILE, DEFAULT_TASK, DeviceOption, EpochsOption, MinutesOption, StepsOption


def compare(
    models: Annotated[str, typer.Option("--models", help="comma-separated registered model names or configs/models YAMLs")],
    out: Annotated[Path, typer.Option("--out", help="experiment folder: one run folder per model and fold, report.md, comparison.csv, plots")],
    task: Annotated[str, typer.Option("--task", help="task config (configs/tasks/NAME.yaml)")] = DEFAULT_TASK,
    folds: Annotated[int, typer.Option("--folds", min=2, help="cross-validation folds (the dataset's splits.json)")] = 3,
    steps: StepsOption = None,
    minutes: MinutesOption = None,
    epochs: EpochsOption = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="dataset folder; default $UNETR_DATA/<dataset>, then ./data/<dataset>")] = None,
    profile: Annotated[str, typer.Option("--profile", help="configs/profiles NAME or a .yaml path")] = DEFAULT_PROFILE,
    processes: Annotated[int | None, typer.Option("--processes", min=1, help="runs trained at once (subprocesses sharing the cores); default: one per visible GPU, else 1")] = None,
    device: DeviceOption = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="config override for every run, e.g. --set optimizer.lr=3e-4")] = None,
    receptive_field: Annotated[bool, typer.Option("--receptive-field/--no-receptive-field", help="measure and plot each model's effective receptive field")] = True,
) -> None:
    """Train every model on the same folds, seed and budget; report Dice, size, speed, curves and receptive fields.
    Rerunning skips finished runs and resumes a killed one."""
    from rich.console import Console
    from rich.table import Table

    from pipelines.compare import CompareRequest, run_compare

    console = Console()
    if not console.is_terminal:  # logs and pipes get the whole table, not an 80-column squeeze
        console = Console(width=160)
    request = CompareRequest(
        task=task, models=tuple(m.strip() for m in models.split(",") if m.strip()), out=out, folds=folds, steps=steps,
        minutes=minutes, epochs=epochs, profile=profile, data_dir=data_dir, processes=processes, device=device,
        overrides=tuple(set_ or []), receptive_field=receptive_field,
    )
    result = run_compare(request, on_event=lambda message: console.print(message, highlight=False))
    table = Table(title=f"{task}: {folds}-fold cross-validation", caption=f"{out}/report.md")
    for column in ("model", "params", "Dice", "Dice post-processed", "post-processing", "s / scan", "train s / fold", "ERF r50 mm"):
        table.add_column(column, justify="left" if column in ("model", "post-processing") else "right")
    for row in sorted(result["rows"], key=lambda r: -r["dice_mean"]):
        pp = "" if row.get("dice_postprocessed_mean") is None else f"{row['dice_postprocessed_mean']:.3f} ± {row['dice_postprocessed_std']:.3f}"
        table.add_row(
            row["model"], f"{row['parameters'] / 1e6:.2f} M", f"{row['dice_mean']:.3f} ± {row['dice_std']:.3f}", pp, row.get("postprocessing", ""),
            _fmt(row.get("seconds_per_scan"), ".2f"), _fmt(row.get("train_seconds_per_fold"), ".0f"), _fmt(row.get("erf_r50_mm"), ".0f"),
        )
    console.print(table)
    failed = [r for r in result["runs"] if r.status == "failed"]
    if failed:
        console.print(f"[red]{len(failed)} runs failed[/red]: " + "; ".join(f"{r.model} fold {r.fold}" for r in failed))
        raise typer.Exit(1)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
