"""The second task end to end: MSD Task05_Prostate's layout (2 MRI channels, T2 and ADC, 4D NIfTI
with channels last; 2 labels), the same data as nnU-Net channel files, a few training steps that
lower the loss, prediction on each input's exact grid, and evaluation per named label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from unetr_app.cli.app import app
from unetr_app.config import load_run_config
from unetr_app.data.dataset import labelled_cases
from unetr_app.data.manifest import check_dataset, load_manifest
from unetr_app.data.phantom import save_nifti
from unetr_app.data.phantom_prostate import write_prostate_dataset
from unetr_app.io.scans import find_cases, read_volume

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prostate(tmp_path_factory) -> Path:
    return write_prostate_dataset(tmp_path_factory.mktemp("prostate") / "Task05_Prostate", cases=6, test_cases=2, seed=1)


@pytest.fixture(scope="module")
def as_channel_files(prostate, tmp_path_factory) -> Path:
    """The same cases in nnU-Net's layout: CASE_0000 (T2), CASE_0001 (ADC), labelsTr/CASE, no list."""
    root = tmp_path_factory.mktemp("nnunet") / "Task05_Prostate"
    for images, labels in (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs")):
        (root / images).mkdir(parents=True), shutil.copytree(prostate / labels, root / labels)
        for path in sorted((prostate / images).glob("*.nii.gz")):
            image = nib.load(path)
            for channel in range(2):
                name = path.name.replace(".nii.gz", f"_{channel:04d}.nii.gz")
                save_nifti(np.asanyarray(image.dataobj)[..., channel], image.affine, root / images / name)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"}, "labels": {"background": 0, "peripheral_zone": 1, "transition_zone": 2}, "file_ending": ".nii.gz"}))
    return root


def _manifest():
    manifest = load_manifest("prostate")
    return manifest.model_copy(update={"counts": manifest.counts.model_copy(update={"training": 6, "test": 2})})


def test_both_layouts_check_clean_and_read_the_same_channels(prostate, as_channel_files):
    manifest = _manifest()
    assert check_dataset(prostate, manifest) == []
    assert check_dataset(as_channel_files, manifest.model_copy(update={"file_pattern": r"^prostate_\d+(_\d{4})?\.nii\.gz$"})) == []
    msd, nnunet = labelled_cases(prostate, manifest), labelled_cases(as_channel_files, manifest)
    assert [c["case"] for c in msd] == [c["case"] for c in nnunet] == [f"prostate_{i:02d}" for i in range(6)]
    assert [Path(p).name for p in nnunet[0]["image"]] == ["prostate_00_0000.nii.gz", "prostate_00_0001.nii.gz"]
    four_d, files = read_volume(find_cases(prostate / "imagesTs")[0]), read_volume(find_cases(as_channel_files / "imagesTs")[0])
    assert four_d.array.shape[3] == 2 and np.array_equal(four_d.array, files.array)
    assert np.array_equal(four_d.affine, files.affine)


def test_a_case_with_a_wrong_channel_count_is_named_in_data_check(as_channel_files, tmp_path):
    root = tmp_path / "Task05_Prostate"
    shutil.copytree(as_channel_files, root)
    (root / "imagesTr" / "prostate_02_0001.nii.gz").unlink()
    problems = [str(p) for p in check_dataset(root, _manifest().model_copy(update={"file_pattern": r".*"}))]
    assert problems == [f"{root}/imagesTr/prostate_02_0000.nii.gz: case prostate_02 has 1 channel(s); expected 2 (T2, ADC)"], problems


def test_train_predict_evaluate(prostate, as_channel_files, tmp_path):
    from unetr_app.pipelines.train import train

    overrides = {
        "model": {"params": {"feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_heads": 2}},
        "preprocessing": {"roi_size": [32, 32, 16]},
        "training": {"budget": {"steps": 12}, "log_every_steps": 4, "checkpoint_every_steps": 4, "val_every_steps": 12},
        "optimizer": {"lr": 3e-3},
        "schedule": {"warmup_fraction": 0.0},
    }
    config = load_run_config("prostate", profile="cpu-prostate", overrides=overrides)
    assert config.preprocessing.modalities == ("MRI", "MRI") and config.task.in_channels == 2
    run = tmp_path / "run"
    train(config, run, data_dir=prostate, device="cpu")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert losses[-1] < losses[0], losses  # it learns

    cli = CliRunner()
    result = cli.invoke(app, ["predict", str(prostate / "imagesTs"), str(tmp_path / "pred"), "-c", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    for case in find_cases(prostate / "imagesTs"):
        image, mask = nib.load(case.path), nib.load(tmp_path / "pred" / f"{case.name}.nii.gz")
        assert mask.shape == image.shape[:3] and np.array_equal(mask.affine, image.affine)
        assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1, 2}
    # the same scans as channel files give the same masks
    result = cli.invoke(app, ["predict", str(as_channel_files / "imagesTs"), str(tmp_path / "pred_files"), "-c", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    for mask in (tmp_path / "pred").glob("*.nii.gz"):
        assert np.array_equal(nib.load(mask).get_fdata(), nib.load(tmp_path / "pred_files" / mask.name).get_fdata())

    result = cli.invoke(app, ["evaluate", str(tmp_path / "pred"), str(prostate / "labelsTs"), "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "eval" / "evaluation_summary.json").read_text(encoding="utf-8"))
    assert summary["cases_evaluated"] == 2 and set(summary["mean"]) == {"peripheral_zone", "transition_zone"}


def test_missing_and_extra_channels_are_one_line_errors_naming_the_case(as_channel_files, tmp_path):
    from tests.predict.predict_helpers import TINY_UNETR, checkpoint_dict
    from unetr_app.io.checkpoint import save_checkpoint
    from unetr_app.models import create_model

    kwargs = {**TINY_UNETR, "in_channels": 2, "out_channels": 3}
    checkpoint = checkpoint_dict("unetr", kwargs, create_model("unetr", **kwargs).state_dict(), (4.0, 4.0, 4.0), None, {"background": 0, "pz": 1, "tz": 2})
    checkpoint["in_channels"] = 2
    save_checkpoint(tmp_path / "two.pt", checkpoint)
    inputs = tmp_path / "inputs"
    shutil.copytree(as_channel_files / "imagesTs", inputs)
    (inputs / "prostate_07_0001.nii.gz").unlink()  # one channel missing
    shutil.copy(inputs / "prostate_06_0000.nii.gz", inputs / "prostate_06_0002.nii.gz")  # one too many
    result = CliRunner().invoke(app, ["predict", str(inputs), str(tmp_path / "out"), "-c", str(tmp_path / "two.pt"), "--quiet"])
    assert result.exit_code == 1
    errors = {c["case"]: c["error"] for c in json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))["cases"]}
    assert "case prostate_06 has 3 channel files" in errors["prostate_06"] and "needs 2" in errors["prostate_06"]
    assert "case prostate_07 has 1 channel" in errors["prostate_07"] and "needs 2" in errors["prostate_07"]
    assert all("\n" not in e for e in errors.values())


@pytest.mark.parametrize("layout", ["msd", "channel_files"])
def test_review_opens_a_multi_channel_case_and_saves_on_its_grid(prostate, as_channel_files, tmp_path, layout):
    from unetr_app.review.session import ReviewSession

    root = prostate if layout == "msd" else as_channel_files
    session = ReviewSession(root / "imagesTs", prostate / "labelsTs", labels_dir=prostate / "labelsTs", corrections_dir=tmp_path / "fixed")
    opened = session.open(0)
    reference = nib.load(prostate / "labelsTs" / f"{opened.case.name}.nii.gz")
    assert opened.image.ndim == 3 and opened.image.shape == opened.labels.shape
    assert list(session.dice(opened).values()) == [1.0, 1.0]  # both zones, prediction = reference
    session.save_correction(opened, opened.labels)
    saved = nib.load(tmp_path / "fixed" / f"{opened.case.name}.nii.gz")
    assert saved.shape == reference.shape and np.array_equal(saved.affine, reference.affine)
    assert np.array_equal(np.asanyarray(saved.dataobj), np.asanyarray(reference.dataobj))


def test_data_check_names_swapped_channels_in_dataset_json(prostate, tmp_path):
    root = tmp_path / "Task05_Prostate"
    shutil.copytree(prostate, root)
    description = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    (root / "dataset.json").write_text(json.dumps({**description, "modality": {"0": "ADC", "1": "T2"}}))
    problems = [p.cause for p in check_dataset(root, _manifest())]
    assert problems == ["channels ADC, T2 differ from the manifest's T2, ADC (order matters)"], problems


def test_folds_and_their_post_processing_work_on_channel_files(as_channel_files, tmp_path):
    from unetr_app.pipelines.train import train

    overrides = {
        "model": {"params": {"feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_heads": 2}},
        "preprocessing": {"roi_size": [32, 32, 16]},
        "training": {"budget": {"steps": 2}, "log_every_steps": 2, "val_every_steps": 2},
    }
    config = load_run_config("prostate", profile="cpu-prostate", overrides=overrides)
    for fold in (0, 1):
        train(config, tmp_path / "exp" / f"fold_{fold}", data_dir=as_channel_files, device="cpu", fold=fold, folds=2)
    split = json.loads((tmp_path / "exp" / "fold_0" / "split.json").read_text(encoding="utf-8"))
    assert isinstance(split["validation"][0]["image"], list)  # cases are lists of channel files
    decision = json.loads((tmp_path / "exp" / "postprocessing.json").read_text(encoding="utf-8"))
    assert decision["validation_cases"] == 6  # every case validated once, read from its channel files


def test_the_fine_grid_is_a_clinical_t2s_0_8_by_0_8_by_4_mm_over_the_thick_grids_field_of_view():
    from unetr_app.data.phantom_prostate import make_prostate_case

    image, label, fine = make_prostate_case(3, grid="fine")
    np.testing.assert_allclose(sorted(np.linalg.norm(fine[:3, :3], axis=0)), [0.8, 0.8, 4.0])
    assert image.shape[:3] == label.shape and image.shape[-1] == 2 and {1, 2} <= set(np.unique(label))
    extent = lambda shape, affine: sorted(np.array(shape[:3]) * np.linalg.norm(affine[:3, :3], axis=0))[1:]  # noqa: E731
    np.testing.assert_allclose(extent(label.shape, fine), [96, 96], atol=1)
