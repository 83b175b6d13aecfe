"""`unetr train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unetr_app.cli.options import (DEFAULT_PROFILE, DEFAULT_TASK, CheckpointEveryOption, DeviceOption, EpochsOption,
                                   MinutesOption, ResumeOption, SetOption, StepsOption, budget_from)

console = Console()


def train(
    task: Annotated[str | None, typer.Option("--task", help="task config (configs/tasks/NAME.yaml)  [default: the --data-dir's dataset.json, else " + DEFAULT_TASK + "]")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="dataset folder; default $UNETR_DATA/<dataset>, then ./data/<dataset>")] = None,
    model: Annotated[str | None, typer.Option("--model", help="registered model name or configs/models YAML; default: the profile's")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="configs/profiles NAME, a .yaml path (a plans.yaml too), or auto: planned from the data  [default: " + DEFAULT_PROFILE + "]")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="training recipe (recipe.name), e.g. supervised")] = None,
    steps: StepsOption = None,
    minutes: MinutesOption = None,
    epochs: EpochsOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder; default runs/<task>-<model>-<profile>-<time>")] = None,
    resume: ResumeOption = False,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="teacher run folder or .pt checkpoint for --recipe distill (sets recipe.params.teacher)")] = None,
    unlabelled: Annotated[list[Path] | None, typer.Option("--unlabelled", help="with --recipe distill: a folder of scans without labels, distilled on too (repeatable; sets recipe.params.unlabelled)")] = None,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="start the encoder from a pretraining/training run, checkpoint or MONAI UNETR/Swin UNETR state dict; slow its LR with --set optimizer.encoder_lr_scale=0.1")] = None,
    init_key: Annotated[str, typer.Option("--init-key", help="with --init-from a pretraining run: teacher or student weights")] = "teacher",
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="train only the decoder")] = False,
    device: DeviceOption = "auto",
    fold: Annotated[str | None, typer.Option("--fold", help="cross-validation fold K of the dataset's splits.json, or 'all'; default: a val_fraction split")] = None,
    folds: Annotated[int | None, typer.Option("--folds", min=2, help="folds when splits.json is first made (default 5)")] = None,
    add_reviewed: Annotated[Path | None, typer.Option("--add-reviewed", help="a `unetr review` corrections folder: its accepted and corrected cases join the training cases")] = None,
    tracker: Annotated[str | None, typer.Option("--tracker", help="mlflow: also log to MLflow ($MLFLOW_TRACKING_URI, default runs/mlflow.db); none: no TensorBoard events either")] = None,
    set_: SetOption = None,
) -> None:
    """Train a model with a recipe; writes config, checkpoints, metrics, summary and curves to the run folder.

    Under `torchrun --nproc-per-node N -m unetr_app train ...` it trains with DistributedDataParallel.
    """
    from unetr_app.tracking import require_tracker

    require_tracker(tracker)  # a missing extra is one line now, not after the imports below
    from unetr_app.pipelines.train import train as train_pipeline, with_budget
    from unetr_app.config import load_run_config, parse_overrides
    from unetr_app.errors import UsageError
    from unetr_app.io.run_dir import start_or_resume
    from unetr_app.training.progress import RichReporter

    budget = budget_from(steps, minutes, epochs)
    teacher_set = [f"recipe.params.teacher={teacher}"] if teacher is not None else []
    unlabelled_folders = [str(folder) for folder in unlabelled or []]
    # JSON is YAML: the folder list survives parse_overrides whatever the paths hold
    unlabelled_set = [f"recipe.params.unlabelled={json.dumps(unlabelled_folders)}"] if unlabelled_folders else []

    def new_config():
        overrides = parse_overrides(set_ or [])
        if recipe is not None:
            overrides.setdefault("recipe", {})["name"] = recipe
        if teacher is not None:
            overrides.setdefault("recipe", {}).setdefault("params", {})["teacher"] = str(teacher)
        if unlabelled_folders:
            overrides.setdefault("recipe", {}).setdefault("params", {})["unlabelled"] = unlabelled_folders
        planned, task_name = None, task
        if profile == "auto":  # the plan for this dataset and device (unetr plan), made now if there is none
            from unetr_app.pipelines.plan import auto_profile

            planned, planned_task = auto_profile(data_dir, device, announce=console.print)
            task_name = task or planned_task
        return load_run_config(task_name, model, planned or profile or DEFAULT_PROFILE, overrides, data_dir=data_dir)

    # a planned profile is recorded as auto-<device>: --profile auto on resume names the same choice
    options = {"--task": (task, lambda c: c.task.name), "--model": (model, lambda c: c.model.name),
               "--profile": (profile and Path(profile).stem, lambda c: "auto" if profile == "auto" and c.profile.startswith("auto-") else c.profile),
               "--recipe": (recipe, lambda c: c.recipe.name)}
    start = start_or_resume(out, resume=resume, new_config=new_config, options=options, overrides=[*(set_ or []), *teacher_set, *unlabelled_set],
                            run_name=lambda c: f"{c.task.name}-{c.model.name}-{c.profile}")
    if resume and not start.resumed:
        console.print(f"no run to resume in {out}; starting a new one")
    config, run = start.config, start.run
    if unlabelled_folders and config.recipe.name != "distill":
        raise UsageError(f"--unlabelled: only the distill recipe trains on unlabelled scans, not {config.recipe.name!r}; "
                         "add --recipe distill --teacher RUN, or drop --unlabelled")
    out = run.path
    config = with_budget(config, budget, checkpoint_every)
    console.print(f"training {config.model.name} on {config.task.name} with the {config.recipe.name} recipe ({config.profile}) into {out}")
    from unetr_app.training.init import EncoderInit

    init = EncoderInit(init_from, init_key, freeze_encoder, announce=console.print)
    summary = train_pipeline(config, out, data_dir, device, resume, reporter=RichReporter(console), fold=fold, folds=folds, init=init, tracker=tracker, add_reviewed=add_reviewed)
    if summary is None:  # a torchrun process other than rank 0
        return
    dice = f"best validation Dice {summary['best_val_dice']:.4f} at step {summary['best_step']}" if summary["best_val_dice"] is not None else f"final loss {summary['final_train_loss']:.4f}"
    console.print(
        f"{dice} ({summary['steps']} steps, {summary['epochs']:.1f} epochs, {summary['seconds']:.0f} s)\n"
        f"results: {run.summary}, {run.curves}, checkpoints in {run.checkpoints}/"
        + (f"; post-processing decided on the validation cases: {run.postprocessing}" if run.postprocessing.is_file() else "")
    )

