"""A task from the dataset's own dataset.json (MSD and nnU-Net v2 forms): labels, channels and
modality come from it; a task YAML that disagrees is refused in one line naming both files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unetr_app.config import load_run_config, resolve_task, task_from_dataset_json
from unetr_app.data.dataset import labelled_cases
from unetr_app.errors import ConfigError
from unetr_app.io.checkpoint import load_checkpoint

MSD_LIVER = {"name": "LiverTumour", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "cancer"}}
V2_BRAIN = {"channel_names": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}, "labels": {"background": 0, "edema": 1, "tumour": 2},
            "numTraining": 2, "file_ending": ".nii.gz"}


def _write(folder: Path, description: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(description))
    return folder / "dataset.json"


def test_msd_form(tmp_path):
    task = task_from_dataset_json(_write(tmp_path / "Task03_Liver", MSD_LIVER))
    assert task["labels"] == {"background": 0, "liver": 1, "cancer": 2}
    assert task["channels"] == {"CT": "CT"} and task["modality"] == "CT" and task["in_channels"] == 1
    assert task["name"] == "livertumour" and task["dataset_dir"] == "Task03_Liver" and task["manifest"] is None


def test_nnunet_v2_form_names_four_mr_channels(tmp_path):
    task = task_from_dataset_json(_write(tmp_path / "Dataset001_Brain", V2_BRAIN))
    assert task["labels"] == {"background": 0, "edema": 1, "tumour": 2}
    assert task["channels"] == {"FLAIR": "MRI", "T1w": "MRI", "t1gd": "MRI", "T2w": "MRI"} and task["in_channels"] == 4
    assert task["name"] == "dataset001_brain" and task["file_ending"] == ".nii.gz"


@pytest.mark.parametrize("labels", [{"background": 0, "whole": [1, 2]}, {"0": "background", "1": 2}, {}])
def test_labels_of_neither_form_are_one_line_naming_the_file(tmp_path, labels):
    path = _write(tmp_path / "Odd", {"modality": {"0": "CT"}, "labels": labels})
    with pytest.raises(ConfigError) as err:
        task_from_dataset_json(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def liver_dir(phantom_dir, tmp_path_factory) -> Path:
    """The phantom relabelled as an MSD liver task (same voxels, other names)."""
    root = tmp_path_factory.mktemp("liver") / "Task03_Liver"
    shutil.copytree(phantom_dir, root)
    description = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**description, "name": "Liver", "labels": {"0": "background", "1": "liver"}}))
    return root


def test_a_yaml_that_agrees_is_completed_and_one_that_disagrees_is_refused(phantom_dir, liver_dir, tmp_path):
    assert resolve_task(None, phantom_dir)["manifest"] == "spleen"  # the folder Task09_Spleen is the spleen task
    assert resolve_task("spleen", phantom_dir)["labels"] == {"background": 0, "spleen": 1}
    assert resolve_task(None, liver_dir)["labels"] == {"background": 0, "liver": 1}
    with pytest.raises(ConfigError) as err:
        resolve_task("spleen", liver_dir)
    message = str(err.value)
    assert "spleen.yaml" in message and str(liver_dir / "dataset.json") in message and "'liver': 1" in message and "\n" not in message
    two_channels = tmp_path / "mr.yaml"
    two_channels.write_text("name: mr\ndataset_dir: Task09_Spleen\nmodality: MRI\nin_channels: 2\nchannels: {T2: MRI, ADC: MRI}\n")
    with pytest.raises(ConfigError, match=r"mr.yaml: channels \[T2: MRI, ADC: MRI\] disagree with .*dataset.json's \[CT: CT\]"):
        resolve_task(str(two_channels), phantom_dir)


def test_cases_are_listed_without_a_manifest(liver_dir):
    assert len(labelled_cases(liver_dir, None)) == 6


def test_train_on_a_dataset_that_is_not_the_spleen_records_its_labels(cli, liver_dir, tiny_profile, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "--data-dir", liver_dir, "--profile", tiny_profile, "--steps", "1", "--out", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "on liver" in result.output
    checkpoint = load_checkpoint(run)
    assert checkpoint["labels"] == {"background": 0, "liver": 1} and checkpoint["task"] == "liver" and checkpoint["modality"] == "CT"


def test_train_refuses_a_disagreeing_task_yaml_in_one_line(cli, liver_dir, tiny_profile, tmp_path):
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    result = CliRunner().invoke(app, ["train", "--task", "spleen", "--data-dir", str(liver_dir), "--profile", str(tiny_profile), "--steps", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    (line,) = [l for l in result.output.splitlines() if l.strip()]
    assert line.startswith("error:") and "disagree" in line
    assert not (tmp_path / "r").exists()


def test_load_run_config_takes_the_task_from_the_folder(liver_dir, tiny_profile):
    config = load_run_config(None, profile=str(tiny_profile), data_dir=liver_dir)
    assert config.task.labels == {"background": 0, "liver": 1} and config.task.manifest is None
