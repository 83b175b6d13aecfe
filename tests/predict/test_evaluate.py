"""`unetr evaluate` against hand-computed Dice, Hausdorff and surface Dice on small shapes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from .predict_helpers import axis_affine, save_nifti
from unetr_app.cli.app import app
from unetr_app.evaluation import label_metrics


def box(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return mask


def point(shape, at):
    mask = np.zeros(shape, bool)
    mask[at] = True
    return mask


def test_dice_of_shifted_cubes():
    a, b = box((10, 10, 10), (2, 2, 2), (6, 6, 6)), box((10, 10, 10), (3, 2, 2), (7, 6, 6))
    # 64 voxels each, 3 x 4 x 4 = 48 shared: 2 * 48 / 128
    assert label_metrics(a, b, (1, 1, 1))["dice"] == pytest.approx(0.75)


def test_hausdorff_uses_spacing_in_mm():
    a, b = point((8, 8, 8), (2, 2, 2)), point((8, 8, 8), (5, 2, 2))
    metrics = label_metrics(a, b, spacing=(2.0, 1.0, 1.0), tolerance_mm=5.0)
    assert metrics["hd95_mm"] == pytest.approx(6.0)  # 3 voxels x 2 mm
    assert metrics["nsd"] == 0.0  # 6 mm apart, 5 mm tolerance
    assert label_metrics(a, b, spacing=(2.0, 1.0, 1.0), tolerance_mm=7.0)["nsd"] == pytest.approx(1.0)
    diagonal = label_metrics(point((8, 8, 8), (1, 1, 1)), point((8, 8, 8), (4, 5, 1)), spacing=(1.0, 1.0, 3.0))
    assert diagonal["hd95_mm"] == pytest.approx(5.0)  # (3, 4) voxels of 1 mm


def test_full_hausdorff_of_cubes_two_voxels_apart():
    a, b = box((10, 10, 10), (2, 2, 2), (6, 6, 6)), box((10, 10, 10), (4, 2, 2), (8, 6, 6))
    # every boundary voxel of one cube has a boundary voxel of the other 2 voxels (x 1.5 mm) away at most
    assert label_metrics(a, b, (1.5, 1.0, 1.0), percentile=None)["hd95_mm"] == pytest.approx(3.0)


def test_empty_masks():
    empty, some = np.zeros((6, 6, 6), bool), point((6, 6, 6), (3, 3, 3))
    assert label_metrics(empty, empty, (1, 1, 1)) == {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    assert label_metrics(some, empty, (1, 1, 1)) == {"dice": 0.0, "hd95_mm": None, "nsd": 0.0}


def test_evaluate_command_writes_csv_summary_and_reports_missing_cases(tmp_path):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir(), refs.mkdir()
    affine = axis_affine("LPS", (2.0, 1.0, 1.0))
    shape = (10, 10, 10)
    reference = box(shape, (2, 2, 2), (6, 6, 6)).astype(np.uint8)
    save_nifti(reference, affine, refs / "a.nii.gz")
    save_nifti(box(shape, (3, 2, 2), (7, 6, 6)).astype(np.uint8), affine, preds / "a.nii.gz")
    save_nifti(reference, affine, preds / "only_pred.nii.gz")
    save_nifti(reference, affine, refs / "only_ref.nii.gz")
    (preds / "predict_report.json").write_text(json.dumps({"labels": {"background": 0, "spleen": 1}, "cases": []}))

    result = CliRunner().invoke(app, ["evaluate", str(preds), str(refs), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "evaluation_summary.json").read_text())
    assert summary["missing"] == {"without_label": ["only_pred"], "without_prediction": ["only_ref"]}
    assert summary["cases_evaluated"] == 1
    assert summary["mean"]["spleen"]["dice"] == pytest.approx(0.75)
    rows = list(csv.DictReader((tmp_path / "eval" / "evaluation.csv").open()))
    assert [(r["case"], r["label"], r["status"]) for r in rows] == [
        ("a", "spleen", "ok"),
        ("only_pred", "", "missing_label"),
        ("only_ref", "", "missing_prediction"),
    ]
    assert float(rows[0]["hd95_mm"]) == pytest.approx(2.0)  # one voxel of 2 mm along x
    assert "only_ref" in result.output
