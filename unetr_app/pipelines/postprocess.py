"""`unetr postprocess`: decide post-processing on an experiment's cross-validation predictions.

The recipe (nnU-Net's): every run folder under the experiment (one per fold) predicts its own
validation cases with its best checkpoint, on their original grids, into RUN/validation/ (cases
already there are kept); the pooled predictions decide which post-processing steps raise mean
validation Dice; the decision goes to EXPERIMENT/postprocessing.json, where `unetr predict` finds it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from unetr_app.device import resolve_device
from unetr_app.errors import CheckpointError, UsageError
from unetr_app.evaluation.postprocess import (
    DEFAULT_MIN_VOLUMES_MM3, ValidationCase, decide_postprocessing,
)
from unetr_app.inference.batch import OutputOptions, predict_cases
from unetr_app.inference.predictor import PredictSettings, Predictor
from unetr_app.inference.report import OK, REPORT_NAME, CaseRecord, build_report, write_report
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.checkpoint import load_model, resolve_checkpoint_path
from unetr_app.io.run_dir import SPLIT_FILE, RunDir
from unetr_app.io.scans import read_volume, source_for

log = logging.getLogger(__name__)


def find_runs(folder: Path) -> list[Path]:
    """Finished-enough run folders (a split and a best checkpoint): the folder itself or those below it."""
    folder = Path(folder)
    candidates = [folder, *sorted(p.parent for p in folder.glob(f"*/{SPLIT_FILE}")), *sorted(p.parent for p in folder.glob(f"*/*/{SPLIT_FILE}"))]
    return [run for run in dict.fromkeys(candidates) if RunDir(run).split.is_file() and _has_checkpoint(run)]


def _has_checkpoint(run_dir: Path) -> bool:
    try:
        return resolve_checkpoint_path(run_dir).is_file()
    except CheckpointError:
        return False


def predict_validation(run_dir: Path, device: str = "auto", show_progress: bool = False) -> list:
    """Predict a run's validation cases with its best checkpoint into RUN/validation/ (no post-processing).
    Done once per checkpoint: when every case is already predicted by it, the records (with their seconds) are read back."""
    split = RunDir(run_dir).read_split()
    cases = [source_for(c["image"]) for c in split["validation"]]  # a file, a DICOM folder or a list of channel files
    report = RunDir(run_dir).validation / REPORT_NAME
    # a run trained further since (a newer best checkpoint) predicts its validation cases again
    if report.is_file() and report.stat().st_mtime >= resolve_checkpoint_path(run_dir).stat().st_mtime:
        done = [CaseRecord(**case) for case in json.loads(report.read_text(encoding="utf-8"))["cases"]]
        if {r.case for r in done if r.status == OK} >= {c.name for c in cases}:
            return done
    torch_device = resolve_device(device)
    predictor = Predictor(load_model(run_dir, torch_device), PredictSettings(device=torch_device, tta=False))  # the run's best checkpoint
    out = RunDir(run_dir).validation
    out.mkdir(exist_ok=True)
    records = predict_cases(predictor, cases, OutputOptions(out), show_progress=show_progress)
    info = {"checkpoint": str(predictor.loaded.path), "model": predictor.loaded.name, "device": str(torch_device), "purpose": "cross-validation"}
    write_report(out, build_report(records, predictor.loaded.labels, info))
    return records


def validation_cases(run_dir: Path, predictions: Path | None = None) -> list[ValidationCase]:
    """A run's validation predictions (default: RUN/validation/) paired with their references."""
    split = RunDir(run_dir).read_split()
    predictions = predictions or RunDir(run_dir).validation
    pairs = []
    for case in split["validation"]:
        name = source_for(case["image"]).name
        predicted = nib.load(predictions / f"{name}.nii.gz")
        spacing = tuple(float(s) for s in np.linalg.norm(predicted.affine[:3, :3], axis=0))
        reference = read_volume(source_for(case["label"])).array.astype(np.uint8)
        pairs.append(ValidationCase(name, np.asarray(predicted.dataobj).astype(np.uint8), reference, spacing))
    return pairs


def run_labels(run_dir: Path) -> dict[str, int]:
    return dict(RunDir(run_dir).read_config_dict()["task"]["labels"])


def finished_fold_runs(run_dir: Path) -> list[Path] | None:
    """When a fold run's folder above now holds a finished run (summary.json) of every fold of the
    same splits file for the same model, one run per fold (this one for its own fold): the moment
    nnU-Net decides post-processing. Otherwise None."""
    run_dir = Path(run_dir)
    split = RunDir(run_dir).read_split()
    if not isinstance(split.get("fold"), int):
        return None
    model, by_fold = _model_name(run_dir), {split["fold"]: run_dir}
    for other in sorted(p.parent for p in run_dir.parent.glob(f"*/{SPLIT_FILE}")):
        recorded = RunDir(other).read_split()
        same = (recorded.get("splits"), recorded.get("folds")) == (split["splits"], split["folds"]) and _model_name(other) == model
        if same and RunDir(other).is_finished and _has_checkpoint(other):
            by_fold.setdefault(recorded["fold"], other)
    return [by_fold[k] for k in range(split["folds"])] if by_fold.keys() >= set(range(split["folds"])) else None


def _model_name(run_dir: Path) -> str | None:
    run = RunDir(run_dir)
    return run.read_config_dict()["model"]["name"] if run.is_started else None


def run_postprocess(folder: Path, device: str = "auto", min_volumes_mm3: Iterable[float] = DEFAULT_MIN_VOLUMES_MM3, show_progress: bool = False,
                    runs: list[Path] | None = None) -> dict:
    """Decide post-processing for `runs` (default: the runs in `folder`); writes and returns FOLDER/postprocessing.json."""
    folder = Path(folder)
    runs = runs or find_runs(folder)
    if not runs:
        raise UsageError(f"{folder}: no run folders with split.json and a checkpoint (train with `unetr train --fold K` first)")
    for run in runs:
        predict_validation(run, device, show_progress)
    cases = [case for run in runs for case in validation_cases(run)]
    labels = run_labels(runs[0])
    steps, trials = decide_postprocessing(cases, labels, min_volumes_mm3)
    decision = {**steps.to_dict(), "labels": labels, "validation_cases": len(cases), "runs": [str(r) for r in runs], "trials": trials}
    atomic_write_text(RunDir(folder).postprocessing, json.dumps(decision, indent=2) + "\n")
    log.info("post-processing for %s: %s", folder, steps)
    return decision
