"""A checkpoint write that fails (the disk fills) keeps the previous checkpoint loadable, and
training stops with one line saying so."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import safetensors.torch
import torch

from unetr_app.errors import CheckpointError
from unetr_app.io.checkpoint import checkpoint_files, load_checkpoint, save_checkpoint


def checkpoint(step: int) -> dict:
    weights = {"layer.weight": torch.full((4, 4), float(step))}
    return {"model": {"name": "x", "kwargs": {}}, "state_dict": weights, "step": step, "labels": {"background": 0, "spleen": 1},
            "preprocessing": {"orientation": "RAS", "spacing": [8.0, 8.0, 8.0], "intensity_window": [-175, 250], "roi_size": [32, 32, 32]},
            "inference": {"overlap": 0.25, "sw_batch_size": 2, "blend_mode": "gaussian"},
            "training_state": {"optimizer": {"moment": torch.full((4,), float(step))}}}


def fill_disk_after(monkeypatch, module, name: str, calls_ok: int = 0):
    """Make module.name write half of what it would, then fail as a full disk does."""
    real, calls = getattr(module, name), {"n": 0}

    def full_disk(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= calls_ok:
            return real(obj, path, *args, **kwargs)
        real(obj, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[: Path(path).stat().st_size // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, name, full_disk)


@pytest.mark.parametrize("failing", ["weights", "sidecar"])
def test_a_failed_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch, failing):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, checkpoint(4))
    if failing == "weights":
        fill_disk_after(monkeypatch, safetensors.torch, "save_file")
    else:  # the weights are written in full, the training state is not: neither may replace step 4's
        fill_disk_after(monkeypatch, torch, "save")
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(path, checkpoint(8))
    message = str(raised.value)
    assert "last.pt: could not write the checkpoint (No space left on device)" in message
    assert "previous one there is unchanged" in message and "--resume" in message and "\n" not in message

    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert loaded["step"] == 4 and torch.equal(loaded["state_dict"]["layer.weight"], torch.full((4, 4), 4.0))
    assert torch.equal(loaded["training_state"]["optimizer"]["moment"], torch.full((4,), 4.0))
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(f.name for f in checkpoint_files(path)), "no temporaries left"


def test_training_stops_with_one_line_when_the_disk_fills(tmp_path, monkeypatch, cli, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    # the first checkpoint (step 4: last.pt, best.pt) is written; the step-8 one meets a full disk
    fill_disk_after(monkeypatch, safetensors.torch, "save_file", calls_ok=2)
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--out", run, "--device", "cpu", "--steps", "8",
                 "--set", "training.checkpoint_every_steps=4")
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "could not write the checkpoint (No space left on device)" in lines[0], result.output
    assert "Traceback" not in result.output

    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["training_state"]["state"]["step"] == 4
    resumed = cli("train", "--out", run, "--resume", "--device", "cpu", "--data-dir", phantom_dir)
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["training_state"]["state"]["step"] == 8
