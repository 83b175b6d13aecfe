"""One bad file is reported in one line and skipped; the good file beside it is still predicted."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from .predict_helpers import TINY_UNETR, axis_affine, checkpoint_dict, save_nifti
from unetr_app.cli.app import app
from unetr_app.io.checkpoint import save_checkpoint
from unetr_app.models import create_model

AFFINE = axis_affine("RAS", (4.0, 4.0, 4.0))
EXPECTED = {  # case -> words its error must contain
    "truncated": "truncated",
    "not_an_image": "not a readable image",
    "flat": "2D image",
    "series": "4D image",
    "holes": "NaN",
    "empty_axis": "zero size",
    "huge": "too large",
}


def write_bad_inputs(folder):
    body = np.random.default_rng(0).normal(-1000, 20, (24, 24, 24)).astype(np.int16)
    body[4:20, 4:20, 4:20] += 1040
    save_nifti(body, AFFINE, folder / "good.nii.gz")
    whole = gzip.compress(nib.Nifti1Image(body, AFFINE).to_bytes())
    (folder / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (folder / "not_an_image.nii.gz").write_text("patient notes, not a scan\n")
    save_nifti(np.zeros((24, 24), np.int16), np.eye(4), folder / "flat.nii.gz")
    save_nifti(np.zeros((8, 8, 8, 3), np.int16), AFFINE, folder / "series.nii.gz")
    holes = body.astype(np.float32)
    holes[5, 5, 5] = np.nan
    save_nifti(holes, AFFINE, folder / "holes.nii.gz")
    save_nifti(np.zeros((0, 8, 8), np.int16), AFFINE, folder / "empty_axis.nii.gz")
    save_nifti(np.zeros((400, 400, 300), np.uint8), AFFINE, folder / "huge.nii.gz")  # header decides; data compresses


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("bad")
    (root / "in").mkdir()
    write_bad_inputs(root / "in")
    args = ["predict", str(root / "in"), str(root / "out"), "-c", str(tiny_checkpoint), "--quiet", "--max-memory-gb", "0.5"]
    result = CliRunner().invoke(app, args)
    return result, root / "out"


def test_batch_goes_on_and_exits_1(run):
    result, out = run
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert (out / "good.nii.gz").is_file()
    report = json.loads((out / "predict_report.json").read_text(encoding="utf-8"))
    assert {c["case"]: c["status"] for c in report["cases"]} == {"good": "ok", **{name: "failed" for name in EXPECTED}}
    assert report["summary"]["failed"] == len(EXPECTED)


@pytest.mark.parametrize("case", EXPECTED)
def test_each_bad_input_has_its_one_line_error(run, case):
    result, out = run
    report = json.loads((out / "predict_report.json").read_text(encoding="utf-8"))
    error = next(c["error"] for c in report["cases"] if c["case"] == case)
    assert "\n" not in error
    path, problem = error.split(": ", 1)
    assert path.endswith(f"{case}.nii.gz") and EXPECTED[case] in problem, error
    assert not (out / f"{case}.nii.gz").exists()
    assert f"{case}.nii.gz" in result.output  # told on the terminal too


def test_usage_errors_exit_2_without_traceback(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    missing = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), str(tmp_path / "out"), "-c", str(tiny_checkpoint)])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    save_nifti(np.zeros((8, 8, 8), np.int16), AFFINE, tmp_path / "a.nii.gz")
    overlap = runner.invoke(app, ["predict", str(tmp_path / "a.nii.gz"), str(tmp_path / "out"), "-c", str(tiny_checkpoint), "--overlap", "1.5"])
    assert overlap.exit_code == 2 and "--overlap" in overlap.output
    same_folder = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path), "-c", str(tiny_checkpoint)])
    assert same_folder.exit_code == 2 and "overwrite the input" in same_folder.output
    (tmp_path / "file").write_text("")
    not_a_folder = runner.invoke(app, ["predict", str(tmp_path / "a.nii.gz"), str(tmp_path / "file"), "-c", str(tiny_checkpoint)])
    assert not_a_folder.exit_code == 2 and "not a folder" in not_a_folder.output
    for result in (missing, overlap, same_folder, not_a_folder):
        assert "Traceback" not in result.output


@pytest.mark.parametrize("window, value", [(None, 0), ([-175.0, 250.0], -1024)], ids=["zeros_zscored", "air_ct_window"])
def test_a_scan_empty_after_normalisation_is_a_one_line_error(tmp_path, window, value):
    # nothing survives the foreground crop: all zeros (z-scored over nonzero voxels) or all air (CT window)
    checkpoint = tmp_path / "tiny.pt"
    state = create_model("unetr", **TINY_UNETR).state_dict()
    save_checkpoint(checkpoint, checkpoint_dict("unetr", TINY_UNETR, state, (4.0, 4.0, 4.0), window, {"background": 0, "spleen": 1}))
    (tmp_path / "in").mkdir()
    body = np.full((24, 24, 24), value, np.int16)
    body[4:20, 4:20, 4:20] = np.random.default_rng(0).integers(20, 60, (16, 16, 16))
    save_nifti(body, AFFINE, tmp_path / "in" / "good.nii.gz")
    save_nifti(np.full((24, 24, 24), value, np.int16), AFFINE, tmp_path / "in" / "empty.nii.gz")
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "in"), str(tmp_path / "out"), "-c", str(checkpoint), "--quiet"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    cases = {c["case"]: c for c in json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))["cases"]}
    assert cases["good"]["status"] == "ok" and (tmp_path / "out" / "good.nii.gz").is_file()
    error = cases["empty"]["error"]
    assert error.startswith(f"{tmp_path / 'in' / 'empty.nii.gz'}: empty scan") and "nothing to segment" in error, error
    assert "\n" not in error and not (tmp_path / "out" / "empty.nii.gz").exists()
