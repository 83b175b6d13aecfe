"""`unetr qc`: fit what judges a run's masks, on its validation cases (pooled over folds).

The recipe: the training cases give the reference (intensity histograms, air and fat shares, label
volumes, spacings); every run predicts its validation cases with all mirrored passes and the
post-processing `unetr predict` applies (the masks it will judge), and each prediction's signals
are paired with its measured Dice; a ridge regression of Dice on the signals
is the quality model (its fit without the agreement signal learns from one unmirrored pass per
case, the masks that have no agreement signal). It also records whether the mirrored passes
scored above one unmirrored pass: a model trained with few flips can be worse mirrored, and
prediction then stops mirroring under `--tta auto` and warns under `--tta on`. The validation
voxels' probabilities fit one temperature per class. The three files go beside the run (or, for
an experiment's folds, in the experiment folder), where `unetr predict` finds them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np


from unetr_app.device import resolve_device
from unetr_app.errors import UsageError
from unetr_app.evaluation.postprocess import postprocessing_for
from unetr_app.inference.predictor import PredictSettings, Predictor
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.checkpoint import load_model
from unetr_app.io.run_dir import RunDir
from unetr_app.io.scans import read_volume, source_for
from unetr_app.quality.calibration import TEMPERATURE_NAME, apply_temperature, expected_calibration_error, fit_temperature, log_probabilities, write_temperature
from unetr_app.quality.case import case_signals, scan_signals
from unetr_app.quality.model import QC_MODEL_NAME, fit_quality_model
from unetr_app.quality.reference import REFERENCE_NAME, compute_reference, write_reference
from unetr_app.quality.signals import dice

from unetr_app.pipelines.postprocess import find_runs

log = logging.getLogger(__name__)
VOXELS_PER_CASE = 50_000  # validation voxels per case for the temperature fit


def run_fit_quality(folder: Path, device: str = "auto", mirrors: bool = True) -> dict:
    """Fit and write qc_reference.json, qc_model.json and temperature.json for the runs in `folder`."""
    folder = Path(folder)
    runs = find_runs(folder)
    if not runs:
        raise UsageError(f"{folder}: no run folders with split.json and a checkpoint (train a run first)")
    splits = [RunDir(run).read_split() for run in runs]
    torch_device = resolve_device(device)
    first = load_model(runs[0], torch_device)
    labels = first.labels
    training = list({c["case"] if "case" in c else str(c["image"]): c for s in splits for c in s["train"]}.values())
    modalities = [c["modality"] for c in (first.fingerprint or {}).get("channels", [])] or [first.modality] * first.in_channels
    reference = compute_reference(training, labels, modalities, first.fingerprint)
    rows, voxels = [], ([], [])
    for run, split in zip(runs, splits):
        loaded = load_model(run, torch_device)
        # the masks predict will write: with the post-processing it applies beside this checkpoint
        predictor = Predictor(loaded, PredictSettings(device=torch_device, tta=mirrors, postprocessing=postprocessing_for(loaded.path)))
        for case in split["validation"]:
            rows.append(_validation_case(predictor, case, reference, labels, voxels))
    single_pass = ([r["single_pass_signals"] for r in rows], [r["single_pass_dice"] for r in rows]) if mirrors else None
    model = fit_quality_model([r["signals"] for r in rows], [r["dice"] for r in rows], single_pass)
    if model is not None and mirrors:
        model["mirroring"] = {"cases": len(rows), "mirrored_dice": float(np.mean([r["dice"] for r in rows])),
                              "single_pass_dice": float(np.mean([r["single_pass_dice"] for r in rows]))}
    logits, classes = np.concatenate(voxels[0]), np.concatenate(voxels[1])
    temperature = fit_temperature(logits, classes)
    p = np.exp(logits).T  # (classes, voxels): the validation probabilities
    ece = {"before": expected_calibration_error(p, classes), "after": expected_calibration_error(apply_temperature(p, temperature), classes)}
    write_reference(folder / REFERENCE_NAME, reference)
    if model is not None:
        atomic_write_text(folder / QC_MODEL_NAME, json.dumps({**model, "runs": [str(r) for r in runs], "mirrored": mirrors}, indent=2) + "\n")
    write_temperature(folder / TEMPERATURE_NAME, temperature, labels, {"validation_cases": len(rows), "voxels": int(classes.size), "ece_validation": ece})
    return {"cases": [{"case": r["case"], "dice": r["dice"], "single_pass_dice": r["single_pass_dice"], **r["signals"]} for r in rows], "model": model,
            "temperature": temperature.tolist(), "ece_validation": ece, "folder": str(folder)}


def _validation_case(predictor: Predictor, case: dict, reference: dict, labels: dict[str, int], voxels) -> dict:
    volume = read_volume(source_for(case["image"]))
    truth = np.rint(read_volume(source_for(case["label"])).array).astype(np.int64)
    prepared = predictor.prepare(volume)
    passes = predictor.infer_passes(prepared)
    prediction = predictor.restore(prepared, passes.probabilities, keep_probabilities=True)
    values = [v for v in labels.values() if v != 0]
    measured = _mean_dice(prediction.labels, truth, values)
    scan = scan_signals(volume, reference)
    signals = case_signals(prediction.labels, passes.probabilities.numpy(), passes.labels, volume, reference, labels, scan)
    single, single_signals = measured, signals
    if len(passes.labels) > 1:  # one unmirrored pass: does mirroring help, and what a one-pass mask's signals say
        first = predictor.infer_passes(prepared, predictor.members[:1], [()])
        first_labels = predictor.restore(prepared, first.probabilities).labels
        single = _mean_dice(first_labels, truth, values)
        single_signals = case_signals(first_labels, first.probabilities.numpy(), first.labels, volume, reference, labels, scan)
    rng = np.random.default_rng(len(voxels[0]))
    pick = rng.choice(truth.size, min(VOXELS_PER_CASE, truth.size), replace=False)
    voxels[0].append(log_probabilities(prediction.probabilities.reshape(-1, prediction.probabilities.shape[-1])[pick]))
    voxels[1].append(truth.reshape(-1)[pick])
    log.info("%s: Dice %.3f (one unmirrored pass %.3f)", volume.source.name, measured, single)
    return {"case": volume.source.name, "dice": measured, "signals": signals, "single_pass_dice": single, "single_pass_signals": single_signals}


def _mean_dice(labels: np.ndarray, truth: np.ndarray, values: list[int]) -> float:
    return float(np.mean([dice(labels == v, truth == v) for v in values]))


