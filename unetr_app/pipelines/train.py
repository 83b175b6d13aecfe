"""Train a model on a task with a recipe: the recipe, step by step.

Under `torchrun --nproc-per-node N -m unetr_app train ...` every process runs this function; rank 0
alone prepares the run folder and writes files, the others wait for it and read what it wrote.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from unetr_app.pipelines.postprocess import finished_fold_runs, run_postprocess
from unetr_app import distributed, tracking
from unetr_app.config import BudgetConfig, RunConfig, validate_run_config
from unetr_app.data.dataset import find_dataset_dir, labelled_cases, split_cases
from unetr_app.data.fingerprint import load_or_compute_fingerprint
from unetr_app.quality.reference import keep_training_reference
from unetr_app.data.manifest import load_manifest
from unetr_app.data.splits import cases_for_fold
from unetr_app.device import resolve_device
from unetr_app.errors import UsageError
from unetr_app.io.atomic import remove_stale_temporaries
from unetr_app.io.checkpoint import can_resume_from
from unetr_app.io.run_dir import RunDir
from unetr_app.models import create_model
from unetr_app.quality.reviewed import reviewed_cases
from unetr_app.training.loaders import build_loaders
from unetr_app.training.init import EncoderInit, prepare_encoder
from unetr_app.training.recipes import model_arguments, recipe_class
from unetr_app.training.loop import Trainer
from unetr_app.training.records import count_parameters
from unetr_app.training.state import seed_everything

log = logging.getLogger(__name__)


def train(config: RunConfig, run_dir: Path, data_dir: Path | None = None, device: str = "auto", resume: bool = False,
          reporter=None, checkpoint_extras: dict[str, Any] | None = None, fold: int | str | None = None, folds: int | None = None,
          init: EncoderInit | None = None, tracker: str | None = None, add_reviewed: Path | None = None) -> dict | None:
    """Train `config` into `run_dir`; returns the summary written to `run_dir/summary.json` (None on ranks > 0).
    `add_reviewed`: a `unetr review` corrections folder whose accepted and corrected cases join the training cases."""
    torch_device = resolve_device(device)
    with distributed.process_group("nccl" if torch_device.type == "cuda" else "gloo") as shard:
        reporter = tracking.track_run(config, Path(run_dir), reporter, tracker)  # TensorBoard events; MLflow with --tracker mlflow
        return _train(config, Path(run_dir), data_dir, distributed.device_for(shard, torch_device), resume, reporter, checkpoint_extras, shard, (fold, folds), init, add_reviewed)


def _train(config, run_dir, data_dir, device, resume, reporter, checkpoint_extras, shard, fold=(None, None), init=None,
           add_reviewed=None) -> dict | None:
    recipe = recipe_class(config.recipe.name)  # an unknown recipe fails before the dataset is looked for
    if recipe.self_supervised:
        raise UsageError(f"--recipe {config.recipe.name}: a self-supervised recipe trains on unlabelled scans; "
                         f"use `unetr pretrain SCANS... --method {config.recipe.name}`, then `unetr train --init-from RUN`")
    dataset, run = find_dataset_dir(config.task, data_dir), RunDir(run_dir)
    note = recipe.check(config, dataset)  # a bad teacher or unlabelled folder fails before the run folder is touched
    # a review folder new to this run: best.pt is chosen again among the steps that train on it, so
    # `predict -c RUN` gives the corrected model, not one from before the corrections
    new_review = run.split.is_file() and _is_new_review(run.read_split(), add_reviewed)
    if shard.is_main:
        if note:
            reporter.note(note)
        prepare_run_dir(run, resume)
        main_train_cases, _ = load_or_make_split(run, dataset, config, *fold, add_reviewed=add_reviewed)
        run.write_config(config)
        main_fingerprint = load_or_compute_fingerprint(run_dir, main_train_cases, config.task.channel_modalities, config.training.seed)
        keep_training_reference(run_dir, main_train_cases, config.task.labels, list(config.task.channel_modalities.values()),
                                main_fingerprint)
    distributed.barrier(shard)
    train_cases, val_cases = load_or_make_split(run_dir, dataset, config)
    fingerprint = load_or_compute_fingerprint(run_dir, train_cases, config.task.channel_modalities, config.training.seed)

    seed_everything(config.training.seed)
    model_kwargs = model_arguments(config)
    model = create_model(config.model.name, **model_kwargs)
    restoring = resume and can_resume_from(run.last)
    initialised = prepare_encoder(model, run_dir, config.model.name, init, restoring, main=shard.is_main)
    extras = {"fingerprint": fingerprint, **(checkpoint_extras or {})}
    trainer = Trainer(config, model, device, run_dir, reporter=reporter, shard=shard, checkpoint_extras=extras, model_kwargs=model_kwargs)
    if restoring:
        trainer.restore(run.last)
        if new_review:
            trainer.state.best_val_dice, trainer.state.best_step = -1.0, 0
            if shard.is_main:
                reporter.note(f"{add_reviewed}: best checkpoint chosen again among the steps from {trainer.state.step} on, which train on its cases")
    train_loader, val_loader = build_loaders(config, train_cases, val_cases, shard=shard)
    state = trainer.fit(train_loader, val_loader)
    if not shard.is_main:
        return None

    last_line = state.history[-1] if state.history else {}
    summary = {
        "best_val_dice": state.best_val_dice if state.best_val_dice >= 0 else None,
        "best_step": state.best_step,
        "steps": state.step,
        "total_steps": state.total_steps,
        "epochs": round(state.step / max(len(train_loader), 1), 3),
        "seconds": round(state.seconds, 1),
        "final_train_loss": last_line.get("loss"),
        "recipe": config.recipe.name,
        "model": config.model.name,
        "parameters": count_parameters(model),
        "profile": config.profile,
        "device": str(device),
        "precision": trainer.precision.name,
        "processes": shard.world_size,
        "dataset": str(dataset),
        "train_cases": len(train_cases),
        "val_cases": len(val_cases),
        **({"encoder": initialised} if initialised else {}),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    trainer.records.write_summary(summary)
    trainer.records.plot_curves(state.history)
    reporter.finish(summary)
    if fold_runs := finished_fold_runs(run_dir):  # the split records the fold, also when resumed without --fold
        log.info("every fold in %s is done: deciding post-processing on the cross-validation predictions", run_dir.parent)
        run_postprocess(run_dir.parent, str(device), runs=fold_runs)
    elif val_cases and run.read_split().get("fold") is None:
        # a run outside cross-validation decides on its validation cases what an experiment decides on
        # its folds'; a fold run's own decision would shadow the experiment's (found above it), and
        # `--fold all` watches cases it trains on
        log.info("deciding post-processing on the %d validation cases of %s", len(val_cases), run_dir)
        run_postprocess(run_dir, str(device), runs=[run_dir])
    return summary


def prepare_run_dir(run: RunDir, resume: bool) -> None:
    """A new run needs an unused folder; --resume needs (or starts) one."""
    if run.last.exists() and not resume:
        raise UsageError(f"{run.path} already holds a run; continue it with --resume, or choose another --out")
    run.prepare()
    for folder in (run.path, run.checkpoints):  # what a killed run was writing (a checkpoint can be GBs)
        remove_stale_temporaries(folder)


def load_or_make_split(run_dir: Path | RunDir, dataset: Path, config: RunConfig, fold: int | str | None = None, folds: int | None = None,
                       add_reviewed: Path | None = None):
    """The split is made once per run and recorded; a resumed run reads it back. With `fold`, it is
    that fold of the dataset's splits.json (shared by every model and run). Reviewed cases
    (`add_reviewed`) join the training cases only: validation stays the dataset's own labels. A
    resumed run given a review folder it has not recorded adds that folder's cases to its split."""
    run = RunDir(run_dir)
    if run.split.is_file():
        split = run.read_split()
        if _is_new_review(split, add_reviewed):
            split = _with_reviewed(split, add_reviewed)
            run.write_json(run.split, split)
        return split["train"], split["validation"]
    cases = labelled_cases(dataset, load_manifest(config.task.manifest))
    if fold is not None:
        train_cases, val_cases, recorded = cases_for_fold(dataset, cases, fold, folds, config.training.val_fraction, config.training.seed)
        split = {**recorded, "train": train_cases, "validation": val_cases}
    else:
        train_cases, val_cases = split_cases(cases, config.training.val_fraction, config.training.seed)
        split = {"seed": config.training.seed, "val_fraction": config.training.val_fraction, "train": train_cases, "validation": val_cases}
    if add_reviewed is not None:
        split = _with_reviewed(split, add_reviewed)
    run.write_json(run.split, split)
    return split["train"], split["validation"]


def _with_reviewed(split: dict, add_reviewed: Path) -> dict:
    """The split with a review folder's accepted and corrected cases added to its training cases
    and recorded (the folder and each case's verdict) beside any folders added before."""
    reviewed = reviewed_cases(add_reviewed, split["train"] + split["validation"])
    recorded = split.get("reviewed") or {}
    folders = [*_reviewed_folders(split), str(add_reviewed)]
    cases = {**recorded.get("cases", {}), **{e["case"]: e["reviewed"] for e in reviewed}}
    log.info("%d reviewed cases from %s join the training cases", len(reviewed), add_reviewed)
    return {**split, "train": split["train"] + [{k: e[k] for k in ("case", "image", "label")} for e in reviewed],
            "reviewed": {"folders": folders, "cases": cases}}


def _is_new_review(split: dict, add_reviewed: Path | None) -> bool:
    """A review folder the recorded split has not added yet."""
    return add_reviewed is not None and str(add_reviewed) not in _reviewed_folders(split)


def _reviewed_folders(split: dict) -> list[str]:
    recorded = split.get("reviewed") or {}
    return recorded.get("folders") or ([recorded["folder"]] if "folder" in recorded else [])


def with_budget(config: RunConfig, budget: BudgetConfig | None = None, checkpoint_every: int | None = None) -> RunConfig:
    """The config with another budget (replacing steps/minutes/epochs) or checkpoint interval."""
    data = config.to_dict()
    if budget is not None:
        data["training"]["budget"] = budget.model_dump(exclude_none=True)
    if checkpoint_every is not None:
        data["training"]["checkpoint_every_steps"] = checkpoint_every
    return validate_run_config(data, source="command line")


