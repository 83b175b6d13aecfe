"""`unetr pretrain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unetr_app.cli.options import (DEFAULT_TASK, CheckpointEveryOption, DeviceOption, EpochsOption, MinutesOption,
                                   StepsOption, budget_from)

console = Console()


def pretrain(
    images: Annotated[list[Path] | None, typer.Argument(help="folders (or files) of scans, any format predict reads; labels are not needed")] = None,
    method: Annotated[str, typer.Option("--method", help="self-supervised recipe (recipe.name): dino, ibot (DINO + masked patch tokens), or masked (masked image modelling)")] = "dino",
    model: Annotated[str | None, typer.Option("--model", help="registered model name; default: the profile's")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="configs/profiles NAME or a .yaml path  [default: cpu-dino for dino and ibot, cpu-masked for masked]")] = None,
    task: Annotated[str, typer.Option("--task", help="task config whose orientation/spacing/window the profile completes")] = DEFAULT_TASK,
    steps: StepsOption = None,
    minutes: MinutesOption = None,
    epochs: EpochsOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder; default runs/pretrain-<method>-<model>-<time>")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out (its recorded scans and config)")] = False,
    device: DeviceOption = "auto",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any config key, e.g. --set recipe.params.local_crops=4")] = None,
) -> None:
    """Pretrain a segmentation model's encoder on unlabelled scans; `unetr train --init-from RUN` uses it.

    Under `torchrun --nproc-per-node N -m unetr_app pretrain ...` it trains with DistributedDataParallel.
    """
    from unetr_app.pipelines.pretrain import pretrain as pretrain_pipeline, pretraining_recipe
    from unetr_app.pipelines.train import with_budget
    from unetr_app.config import load_run_config, parse_overrides
    from unetr_app.errors import UsageError
    from unetr_app.io.run_dir import start_or_resume
    from unetr_app.training.progress import RichReporter

    budget = budget_from(steps, minutes, epochs)

    def new_config():
        if not images:
            raise UsageError("give at least one folder of scans (IMAGES_DIR)")
        overrides = parse_overrides(set_ or [])
        overrides.setdefault("recipe", {})["name"] = method
        # an unknown or supervised --method is named before any profile is looked for
        return load_run_config(task, model, profile or pretraining_recipe(method).pretrain_profile, overrides)

    start = start_or_resume(out, resume=resume, new_config=new_config, run_name=lambda c: f"pretrain-{method}-{c.model.name}")
    config, run = with_budget(start.config, budget, checkpoint_every), start.run
    out = run.path
    console.print(f"pretraining {config.model.name} with {method} ({config.profile}) into {out}")
    summary = pretrain_pipeline(config, out, images, device, resume, reporter=RichReporter(console))
    if summary is None:
        return
    console.print(
        f"final loss {summary['final_loss']:.4f} ({summary['steps']} steps on {summary['scans']} scans, {summary['seconds']:.0f} s)\n"
        f"results: {run.summary}, {run.curves}, checkpoints in {run.checkpoints}/; "
        f"fine-tune with `unetr train --init-from {out}`"
    )
