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
    seeds: Annotated[int, typer.Option("--seeds", help="train every (model, fold) this many times, with the same seeds for every model")] = 1,
    reference: Annotated[str | None, typer.Option("--reference", help="the model the others are compared against (paired interval); default: the first of --models")] = None,
) -> None:
    """Train every model on the same folds, seeds and budget; score each run's last checkpoint on its
    validation cases; report Dice with its spread over seeds, a paired bootstrap interval against
    --reference, post-processing decided by nested cross-validation, size, speed, curves and receptive
    fields. --minutes beside --steps adds an equal-wall-clock column. Rerunning skips finished runs
    and resumes a killed one."""
    from rich.console import Console
    from rich.table import Table

    from unetr_app.pipelines.compare import CompareRequest, run_compare

    console = Console()
    if not console.is_terminal:  # logs and pipes get the whole table, not an 80-column squeeze
        console = Console(width=160)
    request = CompareRequest(
        task=task, models=tuple(m.strip() for m in models.split(",") if m.strip()), out=out, folds=folds, steps=steps,
        minutes=minutes, epochs=epochs, profile=profile, data_dir=data_dir, processes=processes, device=device,
        overrides=tuple(set_ or []), receptive_field=receptive_field, seeds=seeds, reference=reference,
    )
    result = run_compare(request, on_event=lambda message: console.print(message, highlight=False))
    reference_model = request.reference_model
    with_time = any(row.get("time_dice_mean") is not None for row in result["rows"])
    table = Table(title=f"{task}: {folds}-fold cross-validation, {seeds} seed{'s' if seeds > 1 else ''}, last checkpoints", caption=f"{out}/report.md")
    columns = ["model", "params", "Dice", f"- {reference_model} [95%]", "post-processed (nested)"]
    columns += [f"Dice at {minutes:g} min", "steps", f"- {reference_model} [95%] (time)"] if with_time else []
    for column in (*columns, "gain last ¼", "s / scan", "train s / fold", "ERF r50 mm"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in sorted(result["rows"], key=lambda r: -r["dice_mean"]):
        cells = [row["model"], f"{row['parameters'] / 1e6:.2f} M", _pm(row["dice_mean"], row.get("dice_seed_std")), _diff(row, "", reference_model),
                 _fmt(row.get("dice_postprocessed_mean"), ".3f")]
        if with_time:
            cells += [_pm(row.get("time_dice_mean"), row.get("time_dice_seed_std")), _fmt(row.get("time_steps"), ".0f"), _diff(row, "time_", reference_model)]
        cells += [_fmt(row.get("late_val_gain"), "+.3f"), _fmt(row.get("seconds_per_scan"), ".2f"), _fmt(row.get("train_seconds_per_fold"), ".0f"), _fmt(row.get("erf_r50_mm"), ".0f")]
        table.add_row(*cells)
    console.print(table)
    failed = [r for r in result["runs"] if r.status == "failed"]
    if failed:
        from unetr_app.pipelines.compare import describe_run

        console.print(f"[red]{len(failed)} runs failed[/red]: " + "; ".join(describe_run(r) for r in failed))
        raise typer.Exit(1)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _pm(mean, spread) -> str:
    return "" if mean is None else f"{mean:.3f}" + ("" if spread is None else f" ± {spread:.3f}")


def _diff(row: dict, prefix: str, reference: str) -> str:
    if row["model"] == reference:
        return "reference"
    if row.get(f"{prefix}diff_to_reference") is None:
        return ""
    return f"{row[f'{prefix}diff_to_reference']:+.3f} [{row[f'{prefix}diff_low']:+.3f}, {row[f'{prefix}diff_high']:+.3f}]"
