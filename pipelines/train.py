"""Train a segmentation model on a task: the recipe, step by step."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml

from unetr_app.config import RunConfig, validate_run_config
from unetr_app.data.dataset import find_dataset_dir, labelled_cases, split_cases
from unetr_app.data.manifest import load_manifest
from unetr_app.data.splits import fold_cases, load_or_make_splits, parse_fold
from unetr_app.device import resolve_device
from unetr_app.errors import UsageError
from unetr_app.io.atomic import atomic_write_text
from unetr_app.models import create_model
from unetr_app.training.loaders import build_loaders
from unetr_app.training.trainer import Trainer, count_parameters, seed_everything

log = logging.getLogger(__name__)
LAST = Path("checkpoints") / "last.pt"


def train(config: RunConfig, run_dir: Path, data_dir: Path | None = None, device: str = "auto", resume: bool = False, reporter=None, fold: int | str | None = None, folds: int | None = None) -> dict:
    """Train `config` into `run_dir`; returns the summary written to `run_dir/summary.json`."""
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume)
    dataset = find_dataset_dir(config.task, data_dir)
    train_cases, val_cases = load_or_make_split(run_dir, dataset, config, fold, folds)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))

    torch_device = resolve_device(device)
    seed_everything(config.training.seed)
    model = create_model(config.model.name, **config.model_kwargs())
    trainer = Trainer(config, model, torch_device, run_dir, reporter=reporter)
    if resume and (run_dir / LAST).is_file():
        trainer.restore(run_dir / LAST)
    loaders = build_loaders(config, train_cases, val_cases)
    state = trainer.fit(*loaders)

    summary = {
        "best_val_dice": state.best_val_dice,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "seconds": round(state.seconds, 1),
        "final_train_loss": state.history[-1]["train_loss"],
        "model": config.model.name,
        "parameters": count_parameters(model),
        "profile": config.profile,
        "device": str(torch_device),
        "dataset": str(dataset),
        "train_cases": len(train_cases),
        "val_cases": len(val_cases),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    trainer.records.write_json("summary.json", summary)
    trainer.records.plot_curves(state.history)
    return summary


def prepare_run_dir(run_dir: Path, resume: bool) -> None:
    """A new run needs an unused folder; --resume needs (or starts) one."""
    if (run_dir / LAST).exists() and not resume:
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume, or choose another --out")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


def load_or_make_split(run_dir: Path, dataset: Path, config: RunConfig, fold: int | str | None = None, folds: int | None = None):
    """The split is made once per run and recorded; a resumed run reads it back. With `fold`, it is
    that fold of the dataset's splits.json (shared by every model and run)."""
    split_path = run_dir / "split.json"
    if split_path.is_file():
        split = json.loads(split_path.read_text())
        return split["train"], split["validation"]
    cases = labelled_cases(dataset, load_manifest(config.task.manifest))
    if fold is not None:
        splits, path = load_or_make_splits(dataset, cases, folds)
        train_cases, val_cases = fold_cases(cases, splits, parse_fold(fold), path)
        split = {"fold": fold, "folds": len(splits), "splits": str(path), "train": train_cases, "validation": val_cases}
    else:
        train_cases, val_cases = split_cases(cases, config.training.val_fraction, config.training.seed)
        split = {"seed": config.training.seed, "val_fraction": config.training.val_fraction, "train": train_cases, "validation": val_cases}
    atomic_write_text(split_path, json.dumps(split, indent=2) + "\n")
    return train_cases, val_cases


def load_run_config_for_resume(run_dir: Path, epochs: int | None) -> RunConfig:
    """A resumed run keeps its recorded config; only the number of epochs may change."""
    path = Path(run_dir) / "config.yaml"
    data = yaml.safe_load(path.read_text())
    if epochs is not None:
        data["training"]["epochs"] = epochs
    return validate_run_config(data, source=str(path))
