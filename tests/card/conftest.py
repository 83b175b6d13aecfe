"""A tiny finished run and a two-fold experiment of the tiny UNETR on the phantom (seconds each)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

STEPS = ["--steps", "8"]


def train(*args) -> None:
    from unetr_app.cli.app import app

    result = CliRunner().invoke(app, ["train", *[str(a) for a in args]], catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="session")
def card_run(tmp_path_factory, phantom_dir, tiny_profile) -> Path:
    run = tmp_path_factory.mktemp("card_run") / "spleen-tiny"
    train("--data-dir", phantom_dir, "--profile", tiny_profile, "--out", run, "--device", "cpu", *STEPS)
    return run


@pytest.fixture(scope="session")
def card_experiment(tmp_path_factory, phantom_dir, tiny_profile) -> Path:
    """OUT/unetr/fold_0 and fold_1, as `unetr compare` lays them out (the second fold's end decides post-processing)."""
    root = tmp_path_factory.mktemp("card_experiment")
    data = shutil.copytree(phantom_dir, root / "Task09_Spleen")  # splits.json is written into the dataset
    experiment = root / "unetr"
    for fold in (0, 1):
        train("--data-dir", data, "--profile", tiny_profile, "--out", experiment / f"fold_{fold}", "--device", "cpu",
              "--fold", fold, "--folds", 2, *STEPS)
    return experiment
