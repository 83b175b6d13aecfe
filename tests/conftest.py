"""Shared fixtures: a small phantom dataset, the tiny training profile, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from unetr_app.data.phantom import write_phantom_dataset

TESTS = Path(__file__).resolve().parent
TINY_PROFILE = TESTS / "configs" / "tiny.yaml"
TINY_MASKED = TESTS / "configs" / "tiny-masked.yaml"

# Tests share 2 cores with each other's subprocesses; more threads only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Six labelled and two test phantom cases in MSD layout (read-only: copy before breaking)."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "Task09_Spleen", cases=6, test_cases=2, seed=7)


@pytest.fixture(scope="session")
def tiny_profile() -> Path:
    return TINY_PROFILE


@pytest.fixture(scope="session")
def pretrained_masked(tmp_path_factory, phantom_dir) -> Path:
    """A 2-step masked-image pretraining run of the tiny UNETR on the phantom (read-only)."""
    out = tmp_path_factory.mktemp("masked") / "run"
    result = CliRunner().invoke(_app(), [str(a) for a in ("pretrain", phantom_dir / "imagesTr", "--method", "masked",
                                                          "--profile", TINY_MASKED, "--device", "cpu", "--out", out)])
    assert result.exit_code == 0, result.output
    return out


def _app():
    from unetr_app.cli.app import app

    return app


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str, env: dict | None = None):
        return runner.invoke(_app(), [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke
