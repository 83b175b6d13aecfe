"""Finding a task's dataset on disk, listing its labelled cases, and the train/validation split."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from unetr_app.config import TaskConfig
from unetr_app.data.manifest import Layout, Manifest, load_manifest
from unetr_app.errors import DataNotFoundError, UsageError
from unetr_app.io.scans import CaseSource, find_cases, source_for

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
    layout = manifest.layout if manifest else Layout()
    places = [Path(data_dir)] if data_dir else candidate_dirs(task)
    for place in places:
        if (place / layout.images_train).is_dir():
            return place
    looked = ", ".join(str(p) for p in places)
    unset = "" if data_dir or os.environ.get(DATA_ENV) else f" (${DATA_ENV} is not set)"
    if manifest is None:
        raise DataNotFoundError(f"no {task.name} dataset found; looked in {looked}{unset}: expected {layout.images_train}/ and {layout.labels_train}/ there")
    raise DataNotFoundError(
        f"no {manifest.name} dataset found; looked in {looked}{unset}. "
        f"Get it from {manifest.where_to_get()} and extract it there, "
        f"or make a CT-like phantom with `unetr data synth data/{task.dataset_dir}`."
    )


def labelled_cases(root: Path, manifest: Manifest | None) -> list[dict]:
    """[{case, image, label}] from dataset.json's training list, or by pairing case names.

    An image is a scan file (NIfTI, NRRD, MHA), a DICOM series folder, or a list of channel files;
    without a training list, nnU-Net's CASE_0000, CASE_0001 ... images pair with labelsTr/CASE.
    Without a manifest (a task from dataset.json alone) the folders are MSD's and nnU-Net's."""
    layout = manifest.layout if manifest else Layout()
    description = root / layout.dataset_json
    entries = json.loads(description.read_text(encoding="utf-8")).get("training", []) if description.is_file() else []
    if entries:
        cases = [{"image": _under(root, e["image"]), "label": _under(root, e["label"])} for e in entries]
        cases = [{"case": source_for(c["image"]).name if _exists(c["image"]) else "", **c} for c in cases]
    else:
        labels = {c.name: c for c in find_cases(root / layout.labels_train)} if (root / layout.labels_train).is_dir() else {}
        cases = [
            {"case": c.name, "image": _entry(c), "label": str(labels[c.name].path) if c.name in labels else str(root / layout.labels_train / c.name)}
            for c in find_cases(root / layout.images_train)
        ]
    missing = [str(c["image"]) for c in cases if not (_exists(c["image"]) and _exists(c["label"]))]
    if missing:
        raise UsageError(f"{len(missing)} training cases lack an image or label file (first: {missing[0]}); run `unetr data check {root}`")
    if len(cases) < 2:
        raise UsageError(f"{root}: need at least 2 labelled cases to train and validate, found {len(cases)}")
    return cases


def _under(root: Path, listed: str | list[str]) -> str | list[str]:
    return [str(root / p) for p in listed] if isinstance(listed, list) else str(root / listed)


def _exists(entry: str | list[str]) -> bool:
    return all(Path(p).exists() for p in (entry if isinstance(entry, list) else [entry]))


def _entry(case: CaseSource) -> str | list[str]:
    return [str(p) for p in case.channel_paths] if case.channel_paths else str(case.path)


def split_cases(cases: list[dict], val_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic split: the same cases, fraction and seed always give the same validation set."""
    order = sorted(cases, key=lambda c: str(c["image"]))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    return order[n_val:], order[:n_val]
