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
    task: Annotated[str | None, typer.Option("--task", help="task config (configs/tasks/NAME.yaml)  [default: spleen]")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="dataset folder; default $UNETR_DATA/<dataset>, then ./data/<dataset>")] = None,
    model: Annotated[str | None, typer.Option("--model", help="registered model name or configs/models YAML; default: the profile's")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="configs/profiles NAME or a .yaml path  [default: cpu-demo]")] = None,
    recipe: Annotated[str | None, typer.Option("--recipe", help="training recipe (recipe.name), e.g. supervised")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="budget: N optimizer steps")] = None,
    minutes: Annotated[float | None, typer.Option("--minutes", min=0.01, help="budget: M minutes of training (timed, then fixed in steps)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="budget: N passes over the training cases, turned into steps")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", min=1, help="write last.pt every N steps")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run folder; default runs/<task>-<model>-<profile>-<time>")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the run in --out from checkpoints/last.pt (--steps/--minutes/--epochs may extend it)")] = False,
    teacher: Annotated[Path | None, typer.Option("--teacher", help="teacher run folder or .pt checkpoint for --recipe distill (sets recipe.params.teacher)")] = None,
    init_from: Annotated[Path | None, typer.Option("--init-from", help="start the encoder from a pretraining/training run, checkpoint or MONAI UNETR/Swin UNETR state dict")] = None,
    init_key: Annotated[str, typer.Option("--init-key", help="with --init-from a pretraining run: teacher or student weights")] = "teacher",
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="train only the decoder")] = False,
    device: DeviceOption = "auto",
    fold: Annotated[str | None, typer.Option("--fold", help="cross-validation fold K of the dataset's splits.json, or 'all'; default: a val_fraction split")] = None,
    folds: Annotated[int | None, typer.Option("--folds", min=2, help="folds when splits.json is first made (default 5)")] = None,
    tracker: Annotated[str | None, typer.Option("--tracker", help="mlflow: also log to MLflow ($MLFLOW_TRACKING_URI, default runs/mlflow.db); none: no TensorBoard events either")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override any config key, e.g. --set optimizer.lr=3e-4")] = None,
) -> None:
    """Train a model with a recipe; writes config, checkpoints, metrics, summary and curves to the run folder.

    Under `torchrun --nproc-per-node N -m unetr_app train ...` it trains with DistributedDataParallel.
    """
    from pipelines.train import load_recorded_config, train as train_pipeline, with_budget
    from unetr_app.config import BudgetConfig, load_run_config, parse_overrides
    from unetr_app.errors import UsageError
    from unetr_app.training.progress import RichReporter

    budgets = {k: v for k, v in (("steps", steps), ("minutes", minutes), ("epochs", epochs)) if v is not None}
    if len(budgets) > 1:
        raise UsageError(f"give one budget, not {' and '.join('--' + k for k in budgets)}")
    budget = BudgetConfig(**budgets) if budgets else None
    if resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
    if resume and (out / "config.yaml").is_file():
        config = load_recorded_config(out)
        teacher_set = [f"recipe.params.teacher={teacher}"] if teacher is not None else []
        _refuse_ignored_options(config, task=task, model=model, profile=profile, recipe=recipe, overrides=(set_ or []) + teacher_set)
    else:
        if resume:
            console.print(f"no run to resume in {out}; starting a new one")
        overrides = parse_overrides(set_ or [])
        if recipe is not None:
            overrides.setdefault("recipe", {})["name"] = recipe
        if teacher is not None:
            overrides.setdefault("recipe", {}).setdefault("params", {})["teacher"] = str(teacher)
        config = load_run_config(task or "spleen", model, profile or "cpu-demo", overrides)
        out = out or Path("runs") / f"{config.task.name}-{config.model.name}-{config.profile}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = with_budget(config, budget, checkpoint_every)
    console.print(f"training {config.model.name} on {config.task.name} with the {config.recipe.name} recipe ({config.profile}) into {out}")
    from unetr_app.training.init import EncoderInit

    init = EncoderInit(init_from, init_key, freeze_encoder, announce=console.print)
    summary = train_pipeline(config, out, data_dir, device, resume, reporter=RichReporter(console), fold=fold, folds=folds, init=init, tracker=tracker)
    if summary is None:  # a torchrun process other than rank 0
        return
    dice = f"best validation Dice {summary['best_val_dice']:.4f} at step {summary['best_step']}" if summary["best_val_dice"] is not None else f"final loss {summary['final_train_loss']:.4f}"
    console.print(
        f"{dice} ({summary['steps']} steps, {summary['epochs']:.1f} epochs, {summary['seconds']:.0f} s)\n"
        f"results: {out}/summary.json, {out}/curves.png, checkpoints in {out}/checkpoints/"
    )


def _refuse_ignored_options(config, *, task, model, profile, recipe, overrides: list[str]) -> None:
    """A resumed run keeps its recorded config: options that would change it are refused, naming them."""
    from unetr_app.config import parse_overrides
    from unetr_app.errors import UsageError

    recorded = config.to_dict()
    given = {"--task": (task, config.task.name), "--model": (model, config.model.name),
             "--profile": (profile and Path(profile).stem, config.profile), "--recipe": (recipe, config.recipe.name)}
    ignored = [f"{flag} {value} (the run has {had})" for flag, (value, had) in given.items() if value is not None and value != had]
    for pair in overrides:
        key = pair.partition("=")[0]
        if _differs(recorded, parse_overrides([pair])):
            ignored.append(f"--set {pair} (the run has {key}={_lookup(recorded, key)!r})")
    if ignored:
        raise UsageError(
            f"--resume continues the run as it was recorded and would ignore {'; '.join(ignored)}. "
            "Drop them (only --steps/--minutes/--epochs may extend a run), or start a new run with another --out"
        )


def _differs(recorded: dict, override: dict) -> bool:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(recorded.get(key), dict):
            if _differs(recorded[key], value):
                return True
        elif recorded.get(key, object()) != value and not (isinstance(value, list) and list(recorded.get(key) or []) == value):
            return True
    return False


def _lookup(recorded: dict, dotted: str):
    node = recorded
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
