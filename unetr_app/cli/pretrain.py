"""`unetr pretrain`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unetr_app.cli.options import DeviceOption

console = Console()


def pretrain(
    images: Annotated[list[Path] | None, typer.Argument(help="folders (or files) of scans, any format predict reads; labels are not needed")] = None,
    method: Annotated[str, typer.Option("--method", help="self-supervised method (recipe): dino")] = "dino",
    model: Annotated[str | None, typer.Option("--model", help="registered model name; default: the profile's")] = None,
    profile: Annotated[str, typer.Option("--profile", help="configs/profiles NAME or a .yaml path")] = "cpu-dino",
    task: Annotated[str, typer.Option("--task", help="task config whose orientation/spacing/window the profile completes")] = "spleen",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="budget: N optimizer steps")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", min=0.01, help="budget: M minutes (timed, then fixed in steps)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="budget: N passes over the scans")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=1, help="write last.pt every N steps")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder; default runs/pretrain-<method>-<model>-<time>")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out (its recorded scans and config)")] = False,
    device: DeviceOption = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any config key, e.g. --set recipe.params.local_crops=4")] = None,
) -> None:
    """Pretrain a segmentation model's encoder on unlabelled scans; `unetr train --init-from RUN` uses it.

    Under `torchrun --nproc-per-node N -m unetr_app pretrain ...` it trains with DistributedDataParallel.
    """
    from pipelines.pretrain import METHODS, pretrain as pretrain_pipeline
    from pipelines.train import load_recorded_config, with_budget
    from unetr_app.config import BudgetConfig, load_run_config, parse_overrides
    from unetr_app.errors import UsageError
    from unetr_app.training.progress import RichReporter

    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    budgets = {k: v for k, v in (("steps", steps), ("minutes", minutes), ("epochs", epochs)) if v is not None}
    if len(budgets) > 1:
        raise UsageError(f"give one budget, not {' and '.join('--' + k for k in budgets)}")
    if resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
    if resume and (out / "config.yaml").is_file():
        config = load_recorded_config(out)
    else:
        if not images:
            raise UsageError("give at least one folder of scans (IMAGES_DIR)")
        overrides = parse_overrides(set_ or [])
        overrides.setdefault("recipe", {})["name"] = method
        config = load_run_config(task, model, profile, overrides)
        out = out or Path("runs") / f"pretrain-{method}-{config.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = with_budget(config, BudgetConfig(**budgets) if budgets else None, checkpoint_every)
    console.print(f"pretraining {config.model.name} with {method} ({config.profile}) into {out}")
    summary = pretrain_pipeline(config, out, images, device, resume, reporter=RichReporter(console))
    if summary is None:
        return
    console.print(
        f"final loss {summary['final_loss']:.4f} ({summary['steps']} steps on {summary['scans']} scans, {summary['seconds']:.0f} s)\n"
        f"results: {out}/summary.json, {out}/curves.png, checkpoints in {out}/checkpoints/; "
        f"fine-tune with `unetr train --init-from {out}`"
    )
