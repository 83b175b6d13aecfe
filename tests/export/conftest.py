"""Fixtures for exchange tests: a tiny trained run and a tiny untrained checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unetr_app.io.checkpoint import save_checkpoint
from unetr_app.models import create_model

TINY_UNETR = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32],
              "feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_heads": 2}
PREPROCESSING = {"orientation": "RAS", "spacing": [8.0, 8.0, 8.0], "intensity_window": [-175, 250], "roi_size": [32, 32, 32]}


def build_checkpoint(path: Path, name: str = "unetr", kwargs: dict | None = None, seed: int = 0) -> Path:
    """A checkpoint of an untrained model (its logits are as good as any for format checks)."""
    kwargs = dict(TINY_UNETR if kwargs is None else kwargs)
    torch.manual_seed(seed)
    model = create_model(name, **kwargs)
    save_checkpoint(path, {
        "model": {"name": name, "kwargs": kwargs}, "state_dict": model.state_dict(), "preprocessing": PREPROCESSING,
        "inference": {"overlap": 0.25, "sw_batch_size": 2, "blend_mode": "gaussian"},
        "labels": {"background": 0, "spleen": 1}, "task": "spleen", "modality": "CT", "in_channels": 1,
    })
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("exchange_ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, phantom_dir, tiny_profile) -> Path:
    """32 steps of the tiny UNETR on the phantom (the recipe tests/training uses): masks that follow
    anatomy, so the comparison below is about the pipelines, not about an untrained net's noise."""
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    run = tmp_path_factory.mktemp("exchange_run") / "run"
    learn = ["--set", "optimizer.lr=2e-3", "--set", "training.num_samples=4",
             "--set", "training.seed=1", "--set", "preprocessing.spacing=[6.0, 6.0, 6.0]", "--set", "training.val_fraction=0.34"]
    args = ["train", "--data-dir", str(phantom_dir), "--profile", str(tiny_profile), "--out", str(run), "--device", "cpu",
            "--steps", "32", *learn]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run
