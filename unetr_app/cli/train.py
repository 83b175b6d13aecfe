"""`unetr train`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unetr_app.cli.options import DeviceOption

console = Console()


def train(
    task: Annotated[str, typer.Option("--task", help="task config (configs/tasks/NAME.yaml)")] = "spleen",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="dataset folder; default $UNETR_DATA/<dataset>, then ./data/<dataset>")] = None,
    model: Annotated[str | None, typer.Option("--model", help="registered model name or configs/models YAML; default: the profile's")] = None,
    profile: Annotated[str, typer.Option("--profile", help="configs/profiles NAME or a .yaml path")] = "cpu-demo",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="override training.epochs")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder; default runs/<task>-<model>-<profile>-<time>")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from checkpoints/last.pt")] = False,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="teacher run folder or .pt checkpoint for --recipe distill (sets recipe.params.teacher)")] = None,
    device: DeviceOption = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any config key, e.g. --set training.lr=3e-4")] = None,
) -> None:
    """Train a segmentation model; writes config, checkpoints, metrics, summary and curves to the run folder."""
    from pipelines.train import load_run_config_for_resume, train as train_pipeline
    from unetr_app.config import load_run_config, parse_overrides
    from unetr_app.errors import UsageError
    from unetr_app.training.progress import RichReporter

    overrides = parse_overrides(set_ or [])
    if epochs is not None:
        overrides.setdefault("training", {})["epochs"] = epochs
    if teacher is not None:
        overrides.setdefault("recipe", {}).setdefault("params", {})["teacher"] = str(teacher)
    if resume:
        if out is None:
            raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
        if (out / "config.yaml").is_file():
            config = load_run_config_for_resume(out, epochs)
        else:
            console.print(f"no run to resume in {out}; starting a new one")
            config = load_run_config(task, model, profile, overrides)
    else:
        config = load_run_config(task, model, profile, overrides)
        out = out or Path("runs") / f"{task}-{config.model.name}-{config.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"training {config.model.name} on {config.task.name} ({config.profile}) into {out}")
    summary = train_pipeline(config, out, data_dir, device, resume, reporter=RichReporter(console))
    console.print(
        f"best validation Dice {summary['best_val_dice']:.4f} at epoch {summary['best_epoch']} "
        f"({summary['epochs']} epochs, {summary['seconds']:.0f} s)\n"
        f"results: {out}/summary.json, {out}/curves.png, checkpoints in {out}/checkpoints/"
    )
