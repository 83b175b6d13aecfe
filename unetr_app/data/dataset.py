"""Finding a task's dataset on disk, listing its labelled cases, and the train/validation split."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from unetr_app.config import TaskConfig
from unetr_app.data.manifest import Manifest, load_manifest
from unetr_app.errors import DataNotFoundError, UsageError

DATA_ENV = "UNETR_DATA"


def candidate_dirs(task: TaskConfig) -> list[Path]:
    """Where a dataset is looked for when no --data-dir is given, in order."""
    places = []
    if os.environ.get(DATA_ENV):
        places.append(Path(os.environ[DATA_ENV]) / task.dataset_dir)
    places.append(Path("data") / task.dataset_dir)
    return places


def find_dataset_dir(task: TaskConfig, data_dir: str | Path | None = None) -> Path:
    manifest = load_manifest(task.manifest)
    places = [Path(data_dir)] if data_dir else candidate_dirs(task)
    for place in places:
        if (place / manifest.layout.images_train).is_dir():
            return place
    looked = ", ".join(str(p) for p in places)
    unset = "" if data_dir or os.environ.get(DATA_ENV) else f" (${DATA_ENV} is not set)"
    raise DataNotFoundError(
        f"no {manifest.name} dataset found; looked in {looked}{unset}. "
        f"Get it from {manifest.where_to_get()} and extract it there, "
        f"or make a CT-like phantom with `unetr data synth data/{task.dataset_dir}`."
    )


def labelled_cases(root: Path, manifest: Manifest) -> list[dict[str, str]]:
    """[{image, label}] from dataset.json's training list, or by pairing file names."""
    description = root / manifest.layout.dataset_json
    if description.is_file():
        entries = json.loads(description.read_text()).get("training", [])
        cases = [{"image": str(root / e["image"]), "label": str(root / e["label"])} for e in entries]
    else:
        images = sorted((root / manifest.layout.images_train).glob(f"*{manifest.file_ending}"))
        cases = [{"image": str(p), "label": str(root / manifest.layout.labels_train / p.name)} for p in images if not p.name.startswith(".")]
    missing = [c["image"] for c in cases if not (Path(c["image"]).is_file() and Path(c["label"]).is_file())]
    if missing:
        raise UsageError(f"{len(missing)} training cases lack an image or label file (first: {missing[0]}); run `unetr data check {root}`")
    if len(cases) < 2:
        raise UsageError(f"{root}: need at least 2 labelled cases to train and validate, found {len(cases)}")
    return cases


def split_cases(cases: list[dict[str, str]], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split: the same cases, fraction and seed always give the same validation set."""
    order = sorted(cases, key=lambda c: c["image"])
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    return order[n_val:], order[:n_val]
