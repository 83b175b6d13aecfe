"""The streaming fingerprint: known values on hand-made cases, its cache, and bad input reported
one line per problem (naming the file and the fix) while the rest is still computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from unetr_app.data.phantom import save_nifti
from unetr_app.planning.fingerprint import compute_fingerprint

LABELS = {"0": "background", "1": "gland", "2": "lesion"}


def _case(root: Path, name: str, spacing=(0.8, 0.8, 4.0), shape=(24, 24, 6), label_shape=None, value=2, channels=1) -> None:
    image = np.full(shape + ((channels,) if channels > 1 else ()), 100.0, np.float32)
    label = np.zeros(label_shape or shape, np.uint8)
    label[4:12, 4:12, 1:3] = 1
    label[0:4, 0:4, 0:2] = value  # on the border
    image[..., 1:3] = 500.0 if channels == 1 else image[..., 1:3]
    affine = np.diag([*spacing, 1.0])
    save_nifti(image, affine, root / "imagesTr" / f"{name}.nii.gz")
    save_nifti(label, affine, root / "labelsTr" / f"{name}.nii.gz")


def _dataset(root: Path, cases=4, description: dict | None = None, listed=True) -> Path:
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        _case(root, f"case_{i}")
    if description is not False:
        training = [{"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"} for i in range(cases)] if listed else []
        (root / "dataset.json").write_text(json.dumps(description or {"name": "Gland", "modality": {"0": "T2"}, "labels": LABELS, "training": training}))
    return root


def test_known_values_of_a_hand_made_dataset(tmp_path):
    fp = compute_fingerprint(_dataset(tmp_path / "Gland"))
    assert fp["cases"] == 4 and fp["problems"] == []
    assert fp["spacing"]["median"] == [0.8, 0.8, 4.0] and fp["shape"]["median"] == [24, 24, 6]
    assert fp["orientations"] == {"RAS": 4}
    # 24*24*6 = 3456 voxels: gland 8*8*2 = 128, lesion 4*4*2 = 32 per case
    assert fp["classes"]["gland"]["voxel_fraction"] == pytest.approx(128 / 3456)
    assert fp["classes"]["lesion"]["voxel_fraction"] == pytest.approx(32 / 3456)
    assert fp["classes"]["lesion"]["touches_border"] == 1.0 and fp["classes"]["gland"]["touches_border"] == 0.0
    (channel,) = fp["channels"]  # foreground: z slices 1-2 (500) of the gland, 1 of 2 lesion slices at 500
    assert channel["modality"] == "MRI" and channel["samples"] == 4 * 160
    assert channel["percentile_50_0"] == 500.0 and channel["mean"] == pytest.approx((128 * 500 + 16 * 500 + 16 * 100) / 160)


def test_cache_reuses_unchanged_cases_and_rereads_a_changed_one(tmp_path):
    root = _dataset(tmp_path / "Gland")
    assert compute_fingerprint(root)["computed_cases"] == 4
    assert compute_fingerprint(root)["computed_cases"] == 0
    _case(root, "case_2", value=1)  # rewritten: another size and modification time
    again = compute_fingerprint(root)
    assert again["computed_cases"] == 1 and again["classes"]["lesion"]["voxel_fraction"] == pytest.approx(3 * 32 / (4 * 3456))


def test_bad_cases_are_one_line_each_and_the_rest_is_still_computed(tmp_path):
    root = _dataset(tmp_path / "Gland", cases=6)
    _case(root, "case_1", spacing=(8.0, 8.0, 40.0))  # 10x the median
    _case(root, "case_2", label_shape=(24, 24, 5))  # label on another grid
    _case(root, "case_3", value=3)  # a value dataset.json does not name
    _case(root, "case_4", channels=2)  # two channels; dataset.json names one
    fp = compute_fingerprint(root)
    lines = {line.split(":")[0].split("/")[-1]: line for line in fp["problems"]}
    assert "10x the median" in lines["case case_1"] and "--exclude-outliers" in lines["case case_1"]
    assert "case_2.nii.gz" in lines and "resample the label" in lines["case_2.nii.gz"]
    assert "[3]" in lines["case case_3"] and "add the label to dataset.json" in lines["case case_3"]
    assert "2 channel(s)" in lines["case case_4"] and "dataset.json names 1 (T2)" in lines["case case_4"]
    assert all("\n" not in line for line in fp["problems"]) and len(fp["problems"]) == 4
    assert fp["outliers"] == ["case_1"] and "case_1" in fp["planned_cases"]
    assert fp["channels"][0]["samples"] == 4 * 160  # cases 0, 1, 3, 5 (case 2: no aligned label; case 4: other channels)
    excluded = compute_fingerprint(root, exclude_outliers=True)
    assert "case_1" not in excluded["planned_cases"] and excluded["spacing"]["median"] == [0.8, 0.8, 4.0]


def test_an_empty_training_list_pairs_the_folders(tmp_path):
    fp = compute_fingerprint(_dataset(tmp_path / "Gland", listed=False))
    (line,) = fp["problems"]
    assert "dataset.json: the training list is empty" in line and "fill the list" in line and fp["cases"] == 4


def test_without_dataset_json_the_folder_layout_alone_with_a_warning(tmp_path):
    fp = compute_fingerprint(_dataset(tmp_path / "Gland", description=False))
    (line,) = fp["problems"]
    assert "dataset.json: missing" in line and "add a dataset.json" in line
    assert fp["task"]["labels"] == {"background": 0, "label_1": 1, "label_2": 2} and fp["task"]["modality"] == "MRI"
    assert fp["described"] is False and fp["spacing"]["median"] == [0.8, 0.8, 4.0]


def test_unetr_plan_writes_plans_and_train_auto_uses_them(cli, tmp_path):
    root = _dataset(tmp_path / "Gland", cases=4)
    result = cli("plan", root, "--device", "cpu", "--memory", "4")
    assert result.exit_code == 0, result.output
    plans = yaml.safe_load((root / "plans.yaml").read_text())
    cpu = plans["targets"]["cpu"]
    assert plans["device"] == "cpu" and cpu["memory_gb"] == 4 and list(plans["targets"]) == ["cpu"]
    assert cpu["normalisation"] == {"T2": {"scheme": "zscore_per_image"}} and plans["profile"]["preprocessing"]["intensity_window"] is None
    assert "fingerprint of" in result.output and "unetr window" in result.output
    again = cli("plan", root, "--device", "cuda", "--memory", "16")
    assert again.exit_code == 2 and "--overwrite" in again.output  # another plan is not written over silently
    run = tmp_path / "run"
    trained = cli("train", "--data-dir", root, "--profile", "auto", "--steps", "1", "--out", run, "--device", "cpu",
                  "--set", "training.val_every_steps=1", "--set", "training.num_samples=1")
    assert trained.exit_code == 0, trained.output
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["profile"] == "auto-cpu" and config["task"]["labels"] == {"background": 0, "gland": 1, "lesion": 2}
    assert config["preprocessing"]["spacing"] == cpu["spacing"] and config["preprocessing"]["roi_size"] == cpu["unetr"]["roi"]
