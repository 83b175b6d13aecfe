"""A tiny trained run whose validation split holds enough cases to fit a quality model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner


@pytest.fixture(scope="session")
def qc_run(tmp_path_factory, phantom_dir, tiny_profile) -> Path:
    """8 steps of the tiny UNETR; 4 of the 6 phantom cases held out for validation (the QC fit)."""
    from unetr_app.cli.app import app

    run = tmp_path_factory.mktemp("qc_run") / "run"
    args = ["train", "--data-dir", str(phantom_dir), "--profile", str(tiny_profile), "--out", str(run), "--device", "cpu",
            "--steps", "8", "--set", "training.val_fraction=0.67"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture
def bare_run(qc_run, tmp_path) -> Path:
    """The same run as an older one: a checkpoint and nothing the QC fit writes."""
    old = tmp_path / "old_run"
    shutil.copytree(qc_run / "checkpoints", old / "checkpoints")
    return old
