"""Ensembles average the softmax of several checkpoints; post-processing from validation is applied by default."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from tests.predict.predict_helpers import (
    TINY_UNETR, axis_affine, blob_label, checkpoint_dict, echo_checkpoint, save_nifti, tiny_unetr_checkpoint,
)
from unetr_app.data.phantom import make_phantom_case
from unetr_app.evaluation.postprocess import Postprocessing
from unetr_app.io.checkpoint import save_checkpoint
from unetr_app.models import create_model


def _scan(folder):
    folder.mkdir(parents=True, exist_ok=True)
    case = make_phantom_case(0)
    return save_nifti(case.image[::2, ::2], case.affine @ np.diag([2, 2, 1, 1]), folder / "case0_0000.nii.gz")


def _probabilities(out):
    return np.load(out / "case0_probabilities.npz")["probabilities"].astype(np.float32)


def test_an_ensemble_of_one_checkpoint_twice_equals_it(cli, tmp_path):
    scan = _scan(tmp_path / "in")
    one = tiny_unetr_checkpoint(tmp_path / "a.pt")
    assert cli("predict", scan, tmp_path / "single", "-c", one, "-q", "--save-probabilities").exit_code == 0
    assert cli("predict", scan, tmp_path / "twice", "-c", one, "-c", one, "-q", "--save-probabilities").exit_code == 0
    np.testing.assert_allclose(_probabilities(tmp_path / "twice"), _probabilities(tmp_path / "single"), atol=1e-3)
    np.testing.assert_array_equal(nib.load(tmp_path / "twice" / "case0.nii.gz").get_fdata(), nib.load(tmp_path / "single" / "case0.nii.gz").get_fdata())
    report = json.loads((tmp_path / "twice" / "predict_report.json").read_text(encoding="utf-8"))
    assert len(report["checkpoint"]) == 2 and report["model"] == "unetr+unetr"

    torch.manual_seed(1)  # another model: the ensemble's probabilities are the mean of both
    other = tmp_path / "b.pt"
    save_checkpoint(other, checkpoint_dict("unetr", TINY_UNETR, create_model("unetr", **TINY_UNETR).state_dict(), (4.0, 4.0, 4.0), [-175.0, 250.0], {"background": 0, "spleen": 1}))
    assert cli("predict", scan, tmp_path / "other", "-c", other, "-q", "--save-probabilities").exit_code == 0
    assert cli("predict", scan, tmp_path / "pair", "-c", one, "-c", other, "-q", "--save-probabilities").exit_code == 0
    mean = (_probabilities(tmp_path / "single") + _probabilities(tmp_path / "other")) / 2
    np.testing.assert_allclose(_probabilities(tmp_path / "pair"), mean, atol=2e-3)


def test_checkpoints_that_disagree_are_a_one_line_error_before_any_work(cli, tmp_path):
    scan = _scan(tmp_path / "in")
    three_classes = echo_checkpoint(tmp_path, spacing=(4.0, 4.0, 4.0), classes=3)
    spleen = tiny_unetr_checkpoint(tmp_path / "a.pt")
    result = cli("predict", scan, tmp_path / "out", "-c", spleen, "-c", three_classes)
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "label maps differ" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    coarse = echo_checkpoint(tmp_path / "", spacing=(2.0, 2.0, 2.0), classes=3)
    result = cli("predict", scan, tmp_path / "out", "-c", three_classes, "-c", coarse)
    assert result.exit_code == 1 and "preprocessing differ" in result.output and not (tmp_path / "out").exists()


def test_postprocessing_beside_the_checkpoint_is_applied_unless_turned_off(cli, tmp_path):
    label = blob_label((40, 40, 30), seed=3, classes=2)
    label[2:4, 2:4, 2:4] = 1  # a stray 8-voxel blob apart from the organ
    scan = save_nifti(label.astype(np.float32), axis_affine("RAS", (2.0, 2.0, 2.0)), (tmp_path / "in").mkdir() or tmp_path / "in" / "case0_0000.nii.gz")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = echo_checkpoint(run / "checkpoints", spacing=(2.0, 2.0, 2.0), classes=2)  # predicts its input's labels
    steps = Postprocessing(largest_component=(1,))
    (run / "postprocessing.json").write_text(json.dumps(steps.to_dict()))

    assert cli("predict", scan, tmp_path / "raw", "-c", checkpoint, "-q", "--no-postprocess").exit_code == 0
    assert cli("predict", scan, tmp_path / "pp", "-c", checkpoint, "-q").exit_code == 0
    raw = np.asarray(nib.load(tmp_path / "raw" / "case0.nii.gz").dataobj)
    processed = np.asarray(nib.load(tmp_path / "pp" / "case0.nii.gz").dataobj)
    np.testing.assert_array_equal(raw, label)  # the echo model is exact
    np.testing.assert_array_equal(processed, steps.apply(label, (2.0, 2.0, 2.0)))
    assert raw[2:4, 2:4, 2:4].all() and not processed[2:4, 2:4, 2:4].any()
    report = json.loads((tmp_path / "pp" / "predict_report.json").read_text(encoding="utf-8"))
    assert report["postprocessing"] == str(run / "postprocessing.json")
