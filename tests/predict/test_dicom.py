"""A DICOM series (written here with SimpleITK from a phantom) is one case named by its folder; its
mask matches the series' geometry as SimpleITK reads it, and the label-echo model returns it exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from .predict_helpers import echo_checkpoint, save_nifti, axis_affine, blob_label
from unetr_app.cli.app import app
from tests.export.dicom_series import write_ct_series as write_dicom_series  # one DICOM series writer for every test
from unetr_app.data.phantom import make_phantom_case


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    label = make_phantom_case(3).label[::2, ::2, :]  # spleen mask of a phantom, 2 mm x 2 mm x 4 mm below
    label = np.maximum(label, blob_label(label.shape, seed=3, classes=2))  # and boxes, so nothing is empty
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rows run along -y: not the identity
    write_dicom_series(label, (2.0, 2.0, 4.0), (-80.0, 95.5, -310.0), direction, root / "inputs" / "abdomen_ct")
    save_nifti(label, axis_affine("LPS", (2.0, 2.0, 4.0)), root / "inputs" / "other_0000.nii.gz")
    return root, label


def test_series_folder_is_predicted_on_its_own_grid(series, tmp_path):
    root, label = series
    checkpoint = echo_checkpoint(root, spacing=(2.0, 2.0, 2.0), classes=2)
    folder = root / "inputs" / "abdomen_ct"
    result = CliRunner().invoke(app, ["predict", str(folder), str(tmp_path), "-c", str(checkpoint), "--quiet"])
    assert result.exit_code == 0, result.output

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    mask = sitk.ReadImage(str(tmp_path / "abdomen_ct.nii.gz"))
    assert mask.GetSize() == reference.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(mask.GetDirection(), reference.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(reference))


def test_series_beside_nifti_files_in_one_folder(series, tmp_path):
    root, label = series
    checkpoint = echo_checkpoint(root, spacing=(2.0, 2.0, 2.0), classes=2)
    result = CliRunner().invoke(app, ["predict", str(root / "inputs"), str(tmp_path), "-c", str(checkpoint), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "predict_report.json").read_text(encoding="utf-8"))
    assert [(c["case"], c["status"]) for c in report["cases"]] == [("abdomen_ct", "ok"), ("other", "ok")]
    spleen = int(label.sum())
    assert all(c["volumes"]["organ1"]["voxels"] == spleen for c in report["cases"])


def test_folder_with_two_series_gives_two_cases(series, tmp_path):
    root, label = series
    folder = tmp_path / "two_series"
    write_dicom_series(label, (2.0, 2.0, 4.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), folder / "a")
    for path in (folder / "a").iterdir():  # the same slices again under another series UID
        image = sitk.ReadImage(str(path))
        image.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.3")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(folder / f"b_{path.name}"))
        writer.Execute(image)
    for path in (folder / "a").iterdir():
        path.rename(folder / path.name)
    (folder / "a").rmdir()
    checkpoint = echo_checkpoint(root, spacing=(2.0, 2.0, 2.0), classes=2)
    result = CliRunner().invoke(app, ["predict", str(folder), str(tmp_path / "out"), "-c", str(checkpoint), "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["two_series_1.nii.gz", "two_series_2.nii.gz"]
