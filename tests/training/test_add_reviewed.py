"""Corrections flow back into training: `unetr train --add-reviewed DIR` adds a review folder's
accepted and corrected cases to the training cases (never to validation) and records them in the
run's split, so a resumed run trains on the same cases."""

from __future__ import annotations

import json
import shutil

import pytest

from unetr_app.pipelines.train import load_or_make_split
from unetr_app.config import load_run_config
from unetr_app.errors import UsageError
from unetr_app.io.run_dir import RunDir
from unetr_app.review.session import ReviewSession


@pytest.fixture
def reviewed_test_scans(phantom_dir, tmp_path):
    """The phantom's two test scans reviewed: the first accepted, the second corrected."""
    predictions = tmp_path / "pred"
    shutil.copytree(phantom_dir / "labelsTs", predictions)  # stand-in predictions on the scans' grids
    (predictions / "predict_report.json").write_text(json.dumps({"labels": {"background": 0, "spleen": 1}}))
    session = ReviewSession(phantom_dir / "imagesTs", predictions)
    session.go_to(0), session.set_status("accepted")
    opened = session.open(1)
    edited = opened.labels.copy()
    edited[0, 0, 0] = 1
    session.save_correction(opened, edited)
    return session


def test_reviewed_cases_join_training_only_and_are_recorded(phantom_dir, tiny_profile, reviewed_test_scans, tmp_path):
    config = load_run_config("spleen", profile=str(tiny_profile), data_dir=phantom_dir)
    plain_train, plain_val = load_or_make_split(tmp_path / "plain", phantom_dir, config)
    corrections = reviewed_test_scans.corrections_dir
    train, val = load_or_make_split(tmp_path / "with", phantom_dir, config, add_reviewed=corrections)
    assert val == plain_val and train[: len(plain_train)] == plain_train
    added = train[len(plain_train):]
    assert len(added) == 2 and all(c["image"].startswith(str(phantom_dir / "imagesTs")) for c in added)
    assert added[1]["label"].startswith(str(corrections))  # the correction, not the prediction
    split = RunDir(tmp_path / "with").read_split()
    assert sorted(split["reviewed"]["cases"].values()) == ["accepted", "corrected"]
    assert load_or_make_split(tmp_path / "with", phantom_dir, config) == (train, val)  # a resumed run reads them back


def test_reviewed_training_scans_are_refused_in_one_line(phantom_dir, tiny_profile, tmp_path):
    predictions = tmp_path / "pred"
    shutil.copytree(phantom_dir / "labelsTr", predictions)
    session = ReviewSession(phantom_dir / "imagesTr", predictions)
    session.go_to(0), session.set_status("accepted")
    config = load_run_config("spleen", profile=str(tiny_profile), data_dir=phantom_dir)
    with pytest.raises(UsageError, match="already a training case"):
        load_or_make_split(tmp_path / "run", phantom_dir, config, add_reviewed=session.corrections_dir)


def test_a_resumed_run_adds_a_new_review_folder_once(phantom_dir, tiny_profile, reviewed_test_scans, tmp_path):
    """`train --resume RUN --add-reviewed DIR` on a run trained without DIR: its cases join the
    recorded training cases; resuming again with the same DIR reads them back, not twice."""
    config = load_run_config("spleen", profile=str(tiny_profile), data_dir=phantom_dir)
    base_train, base_val = load_or_make_split(tmp_path / "run", phantom_dir, config)
    corrections = reviewed_test_scans.corrections_dir
    train, val = load_or_make_split(tmp_path / "run", phantom_dir, config, add_reviewed=corrections)
    assert val == base_val and train[: len(base_train)] == base_train and len(train) == len(base_train) + 2
    split = RunDir(tmp_path / "run").read_split()
    assert split["reviewed"]["folders"] == [str(corrections)] and sorted(split["reviewed"]["cases"]) == ["spleen_7", "spleen_8"]
    assert load_or_make_split(tmp_path / "run", phantom_dir, config, add_reviewed=corrections) == (train, val)


def test_after_a_new_review_folder_best_is_chosen_among_the_steps_that_train_on_it(cli, phantom_dir, tiny_profile, reviewed_test_scans, tmp_path):
    """`predict -c RUN` reads best: after `--add-reviewed` it must be a checkpoint trained with the
    corrections, even when the validation Dice before them was higher."""
    import torch

    from unetr_app.io.checkpoint import load_checkpoint

    run = tmp_path / "run"
    common = ["--data-dir", phantom_dir, "--device", "cpu"]
    assert cli("train", "--profile", tiny_profile, "--out", run, "--steps", 4, "--set", "training.val_fraction=0.34", *common).exit_code == 0
    sidecar = run / "checkpoints" / "last.pt"  # as if the run had validated at a Dice no later step can beat
    saved = torch.load(sidecar, weights_only=True)
    saved["training_state"]["state"]["best_val_dice"] = 2.0
    torch.save(saved, sidecar)
    result = cli("train", "--out", run, "--resume", "--steps", 8, "--add-reviewed", reviewed_test_scans.corrections_dir, *common)
    assert result.exit_code == 0, result.output
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == 8 and best["best_step"] == 8 and best["best_val_dice"] <= 1.0
    assert "best checkpoint chosen again" in result.output
