"""Masks land on the input's exact grid, whatever the orientation, spacing or file format.

The label-echo model returns the label it is given, so where resampling is lossless (the network's
spacing equals the input's, or divides it along axis-aligned directions) the whole pipeline must
hand back the input label voxel for voxel.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from .predict_helpers import axis_affine, blob_label, echo_checkpoint, oblique_affine, save_nifti
from unetr_app.cli.app import app
from unetr_app.io.scans import case_name

SHAPE = (40, 36, 30)
CASES = {  # name -> affine; spacings differ from each other and (mostly) from the network's
    "ras": axis_affine("RAS", (2.0, 2.0, 2.0)),
    "lps": axis_affine("LPS", (2.0, 2.0, 4.0)),
    "lai": axis_affine("LAI", (2.0, 4.0, 6.0)),
    "oblique": oblique_affine((2.0, 2.0, 2.0)),
    "oblique_aniso": oblique_affine((1.3, 1.7, 3.1), degrees=-35.0),
}
EXACT = ("ras", "lps", "lai", "oblique")  # lossless resampling to 2 mm: integer up-sampling or none


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    root = tmp_path_factory.mktemp("geometry")
    inputs, outputs = root / "in", root / "out"
    inputs.mkdir()
    labels = {}
    for index, name in enumerate(CASES):
        labels[name] = blob_label(SHAPE, seed=index)
    labels["oblique_aniso"] = two_boxes(SHAPE)  # simple shapes: thin slivers would vanish at 2 mm
    for name, affine in CASES.items():
        save_nifti(labels[name], affine, inputs / f"{name}_0000.nii.gz")
    # the same kind of volume as MetaImage and NRRD (read through SimpleITK)
    for index, suffix in enumerate(("mha", "nrrd")):
        labels[f"sitk_{suffix}"] = blob_label(SHAPE, seed=10 + index)
        image = sitk.GetImageFromArray(np.swapaxes(labels[f"sitk_{suffix}"], 0, 2))
        image.SetSpacing((2.0, 2.0, 2.0))
        image.SetOrigin((12.5, -7.0, 33.0))
        image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated 90 degrees in plane
        sitk.WriteImage(image, str(inputs / f"sitk_{suffix}.{suffix}"))
    checkpoint = echo_checkpoint(root, spacing=(2.0, 2.0, 2.0))
    result = CliRunner().invoke(app, ["predict", str(inputs), str(outputs), "--checkpoint", str(checkpoint), "--quiet"])
    assert result.exit_code == 0, result.output
    return inputs, outputs, labels


def two_boxes(shape):
    label = np.zeros(shape, np.uint8)
    label[6:20, 5:25, 4:16] = 1
    label[22:36, 10:30, 12:26] = 2
    return label


def input_path(inputs, name):
    return next(p for p in inputs.iterdir() if case_name(p) == name)


@pytest.mark.parametrize("name", [*CASES, "sitk_mha", "sitk_nrrd"])
def test_mask_has_input_geometry_in_nibabel_and_simpleitk(predicted, name):
    inputs, outputs, _ = predicted
    source, mask_path = input_path(inputs, name), outputs / f"{name}.nii.gz"
    reference, mask = sitk.ReadImage(str(source)), sitk.ReadImage(str(mask_path))
    assert mask.GetSize() == reference.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-5)
    written = nib.load(mask_path)
    assert written.get_data_dtype() == np.uint8
    if source.name.endswith(".nii.gz"):
        original = nib.load(source)
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
        np.testing.assert_allclose(written.header.get_zooms(), original.header.get_zooms(), atol=1e-6)


@pytest.mark.parametrize("name", [*EXACT, "sitk_mha", "sitk_nrrd"])
def test_label_echo_reproduces_the_input_label_exactly(predicted, name):
    _, outputs, labels = predicted
    mask = np.asarray(nib.load(outputs / f"{name}.nii.gz").dataobj)
    if name.startswith("sitk"):  # SimpleITK's geometry round-trips through NIfTI; compare in its voxel order
        mask = np.swapaxes(sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / f"{name}.nii.gz"))), 0, 2)
    np.testing.assert_array_equal(mask, labels[name])


def test_lossy_resampling_still_lands_on_the_right_voxels(predicted):
    """1.3 x 1.7 x 3.1 mm oblique -> 2 mm and back blurs boundaries but shifts nothing: the labelled
    region's centre in world coordinates stays within one network voxel (2 mm). (Compared as
    foreground: the echo model reads a blurred 0|2 edge as the middle label 1.)"""
    _, outputs, labels = predicted
    affine = CASES["oblique_aniso"]
    mask = np.asarray(nib.load(outputs / "oblique_aniso.nii.gz").dataobj) > 0
    truth = labels["oblique_aniso"] > 0
    dice = 2 * np.sum(mask & truth) / (mask.sum() + truth.sum())
    centre = [affine[:3, :3] @ np.argwhere(m).mean(axis=0) for m in (mask, truth)]
    assert dice > 0.85, dice
    assert np.linalg.norm(centre[0] - centre[1]) < 2.0, centre


def test_report_names_labels_and_volumes(predicted):
    _, outputs, labels = predicted
    report = json.loads((outputs / "predict_report.json").read_text(encoding="utf-8"))
    assert report["labels"] == {"background": 0, "organ1": 1, "organ2": 2}
    ras = next(c for c in report["cases"] if c["case"] == "ras")  # `_0000` dropped from the case name
    assert ras["status"] == "ok"
    voxels = int(np.sum(labels["ras"] == 1))
    assert ras["volumes"]["organ1"] == {"voxels": voxels, "ml": pytest.approx(voxels * 8 / 1000)}
    rows = (outputs / "statistics.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "case,status,organ1_voxels,organ1_ml,organ2_voxels,organ2_ml"
    assert len(rows) == 1 + len(CASES) + 2


def test_mirroring_tta_undoes_its_flips(tmp_path):
    """The echo model is voxel-wise, so averaging over the 8 mirrored copies must change nothing."""
    label = blob_label(SHAPE, seed=5)
    save_nifti(label, CASES["lps"], tmp_path / "case.nii.gz")
    checkpoint = echo_checkpoint(tmp_path, spacing=(2.0, 2.0, 2.0))
    args = ["predict", str(tmp_path / "case.nii.gz"), str(tmp_path / "out"), "-c", str(checkpoint), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--tta", "on", "--stitch-device", "cpu"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))["tta"] is True
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj), label)
