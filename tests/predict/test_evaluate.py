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
    summary = json.loads((tmp_path / "eval" / "evaluation_summary.json").read_text(encoding="utf-8"))
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


def _reoriented(array, affine, code):
    """The same voxels and world positions stored in the voxel order `code` (no resampling)."""
    from nibabel import orientations as ornt

    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(tuple(code)))
    return ornt.apply_orientation(array, transform), affine @ ornt.inv_ornt_aff(transform, array.shape)


@pytest.mark.parametrize("code", ["LAS", "SLA"])
def test_reference_in_another_voxel_order_gives_the_dice_of_manual_reorientation(tmp_path, code):
    """dcm2niix writes LAS, SimpleITK reads the same series as LPS: the same grid, other voxel order
    (SLA: axes permuted as well as flipped)."""
    from unetr_app.evaluation import case_metrics

    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir(), refs.mkdir()
    shape, lps = (12, 10, 8), axis_affine("LPS", (1.5, 1.0, 2.5))
    pred = box(shape, (2, 2, 1), (8, 7, 6)).astype(np.uint8)
    ref = np.maximum(box(shape, (3, 1, 2), (9, 6, 7)), 2 * box(shape, (9, 7, 6), (11, 9, 8))).astype(np.uint8)
    pred[9:11, 7:9, 6:8] = 2
    save_nifti(pred, lps, preds / "a.nii.gz")
    las_ref, las_affine = _reoriented(ref, lps, code)
    assert las_ref.shape != ref.shape or not np.array_equal(las_ref, ref)  # really stored differently
    save_nifti(las_ref, las_affine, refs / "a.nii.gz")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"0": "background", "1": "liver", "2": "lesion"}))

    result = CliRunner().invoke(app, ["evaluate", str(preds), str(refs), "--labels-json", str(labels)])
    assert result.exit_code == 0, result.output
    summary = json.loads((preds / "evaluation_summary.json").read_text(encoding="utf-8"))
    expected = case_metrics(pred, ref, (1.5, 1.0, 2.5), {"background": 0, "liver": 1, "lesion": 2})
    assert summary["failed"] == {}
    for name in ("liver", "lesion"):
        assert summary["mean"][name]["dice"] == pytest.approx(expected[name]["dice"])
        assert summary["mean"][name]["hd95_mm"] == pytest.approx(expected[name]["hd95_mm"])


def test_truly_different_grids_are_refused_with_the_reason_on_the_console(tmp_path):
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    preds.mkdir(), refs.mkdir()
    shape = (10, 10, 10)
    mask = box(shape, (2, 2, 2), (6, 6, 6)).astype(np.uint8)
    save_nifti(mask, axis_affine("RAS", (1.0, 1.0, 1.0)), preds / "shifted.nii.gz")
    shifted = axis_affine("RAS", (1.0, 1.0, 1.0))
    shifted[0, 3] += 0.5  # half a voxel: the same shape, another grid
    save_nifti(mask, shifted, refs / "shifted.nii.gz")
    save_nifti(mask, axis_affine("RAS", (1.0, 1.0, 1.0)), preds / "spacing.nii.gz")
    save_nifti(mask[:, :, :5], axis_affine("RAS", (1.0, 1.0, 2.0)), refs / "spacing.nii.gz")
    save_nifti(mask, axis_affine("RAS", (1.0, 1.0, 1.0)), refs / "unpredicted.nii.gz")

    result = CliRunner().invoke(app, ["evaluate", str(preds), str(refs)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("refused shifted:") and "0.5 mm" in line for line in lines), result.output
    assert any(line.startswith("refused spacing:") and "different grid" in line for line in lines), result.output
    assert any(line.startswith("missing unpredicted:") and "no prediction" in line for line in lines), result.output
    summary = json.loads((preds / "evaluation_summary.json").read_text(encoding="utf-8"))
    assert summary["cases_evaluated"] == 0 and set(summary["failed"]) == {"shifted", "spacing"}


def test_label_names_come_from_the_dataset_json_above_the_references(tmp_path):
    root = tmp_path / "Task05_Prostate"
    preds, refs = tmp_path / "pred", root / "labelsTs"
    preds.mkdir(), refs.mkdir(parents=True)
    mask = box((8, 8, 8), (2, 2, 2), (5, 5, 5)).astype(np.uint8)
    save_nifti(mask, axis_affine("RAS", (1.0, 1.0, 1.0)), preds / "p.nii.gz")
    save_nifti(mask, axis_affine("RAS", (1.0, 1.0, 1.0)), refs / "p.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "peripheral_zone", "2": "transition_zone"}}))
    result = CliRunner().invoke(app, ["evaluate", str(preds), str(refs)])
    assert result.exit_code == 0, result.output
    summary = json.loads((preds / "evaluation_summary.json").read_text(encoding="utf-8"))
    assert set(summary["mean"]) == {"peripheral_zone", "transition_zone"}
    assert summary["mean"]["peripheral_zone"]["dice"] == 1.0
