"""`unetr evaluate` judges the quality estimates of qc.csv and the calibration of saved
probabilities, against hand-computed values."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from unetr_app.cli.app import app
from unetr_app.quality.calibration import apply_temperature

SHAPE = (12, 8, 8)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
# predictions: the reference cube shifted by 0..3 voxels along i (Dice 1, 0.75, 0.5, 0.25), then empty (0)
SHIFTS = {"a": 0, "b": 1, "c": 2, "d": 3, "e": None}
PREDICTED = {"a": 0.9, "b": 0.8, "c": 0.3, "d": 0.4, "e": 0.1}


def _save(array, path):
    nib.save(nib.Nifti1Image(np.asarray(array, np.uint8), AFFINE), path)


def _cube(shift):
    mask = np.zeros(SHAPE, np.uint8)
    if shift is not None:
        mask[2 + shift:6 + shift, 2:6, 2:6] = 1
    return mask


def _folders(tmp_path, qc_rows):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir(), refs.mkdir()
    for name, shift in SHIFTS.items():
        _save(_cube(0), refs / f"{name}.nii.gz")
        _save(_cube(shift), preds / f"{name}.nii.gz")
    (preds / "predict_report.json").write_text(json.dumps({"labels": {"background": 0, "spleen": 1}, "cases": []}))
    lines = ["case,status,predicted_dice,risk,flag"] + qc_rows
    (preds / "qc.csv").write_text("\n".join(lines) + "\n")
    return preds, refs


def _evaluate(preds, refs, *extra):
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(refs), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((preds / "evaluation_summary.json").read_text()), result.output


def test_quality_estimates_judged_against_measured_dice(tmp_path):
    rows = [f"{c},ok,{p},{1 - p:.1f}," for c, p in PREDICTED.items()]
    preds, refs = _folders(tmp_path, rows)
    summary, output = _evaluate(preds, refs)
    quality = summary["quality"]
    assert [c["dice"] for c in quality["per_case"]] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    # ranks of predicted (5, 4, 2, 3, 1) against measured (5, 4, 3, 2, 1): sum d^2 = 2, 1 - 6 * 2 / (5 * 24)
    assert quality["spearman_predicted_dice"] == pytest.approx(0.9)
    # failures (Dice < 0.5) have risks 0.6, 0.9; successes 0.1, 0.2, 0.7: 5 of the 6 pairs ordered
    assert quality["auroc_failure"] == pytest.approx(5 / 6) and quality["failures"] == 2
    # kept by risk: losses 0, .25, .75, .5, 1 -> selective risks 0, .125, 1/3, .375, .5
    assert quality["aurc"] == pytest.approx((0 + 0.125 + 1 / 3 + 0.375 + 0.5) / 5)
    assert quality["aurc_best"] == pytest.approx((0 + 0.125 + 0.25 + 0.375 + 0.5) / 5)
    assert (preds / "quality_judgement.png").read_bytes()[:4] == b"\x89PNG"
    assert "Spearman(predicted, measured Dice) 0.9000" in output and "AUROC for Dice < 0.5 0.8333" in output
    assert summary["calibration"] is None  # no probabilities saved


def test_failure_threshold_and_cases_without_an_estimate(tmp_path):
    rows = [f"{c},ok,{p},{1 - p:.1f}," for c, p in PREDICTED.items() if c != "e"] + ["e,failed,,,"]
    preds, refs = _folders(tmp_path, rows)
    summary, _ = _evaluate(preds, refs, "--failure-dice", "0.3")
    quality = summary["quality"]
    assert quality["cases"] == 4 and quality["without_estimate"] == ["e"]
    # one failure (d, Dice 0.25, risk 0.6) above successes of risk 0.1, 0.2 but below 0.7
    assert quality["auroc_failure"] == pytest.approx(2 / 3) and quality["failure_dice"] == 0.3


def test_ece_before_and_after_the_saved_temperature(tmp_path):
    preds, refs = _folders(tmp_path, [f"{c},ok,{p},{1 - p:.1f}," for c, p in PREDICTED.items()])
    # case a: foreground probability 0.8 everywhere on a reference that is foreground in 64 of 768
    # voxels; tempered with T = 2: softmax(log p / 2) gives sqrt(.8) / (sqrt(.8) + sqrt(.2)) = 2/3
    raw = np.stack([np.full(SHAPE, 0.2), np.full(SHAPE, 0.8)]).astype(np.float32)
    tempered = apply_temperature(raw, [2.0, 2.0], axis=0)
    np.savez(preds / "a_probabilities.npz", probabilities=tempered.astype(np.float16), temperature=np.float32([2.0, 2.0]))
    summary, output = _evaluate(preds, refs)
    calibration = summary["calibration"]
    share = 64 / np.prod(SHAPE)  # one bin holds every voxel: ECE = |accuracy - confidence|
    assert calibration["ece_before"] == pytest.approx(0.8 - share, abs=1e-3)
    assert calibration["ece_after"] == pytest.approx(2 / 3 - share, abs=1e-3)
    assert calibration["cases"] == 1 and calibration["voxels"] == np.prod(SHAPE) and calibration["temperature"] == [2.0, 2.0]
    assert "calibration over 1 cases: ECE 0.71" in output


def test_probabilities_on_another_grid_are_skipped_with_the_reason(tmp_path):
    preds, refs = _folders(tmp_path, [f"{c},ok,{p},{1 - p:.1f}," for c, p in PREDICTED.items()])
    np.savez(preds / "b_probabilities.npz", probabilities=np.full((2, 4, 4, 4), 0.5, np.float16), temperature=np.float32([1, 1]))
    summary, output = _evaluate(preds, refs)
    assert summary["calibration"]["cases"] == 0 and "b_probabilities.npz" in summary["calibration"]["skipped"]
    assert "calibration skips b_probabilities.npz: probabilities (2, 4, 4, 4) do not fit the reference" in output


def test_a_qc_csv_that_is_not_one_is_a_one_line_error(tmp_path):
    preds, refs = _folders(tmp_path, [])
    (preds / "qc.csv").write_text("name,score\na,1\n")
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(refs)])
    assert result.exit_code != 0 and "qc.csv: not a qc.csv" in result.output and "Traceback" not in result.output
