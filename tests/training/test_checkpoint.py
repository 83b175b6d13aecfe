"""A checkpoint is untrusted input: only tensors and plain data are ever unpickled, and the weights
people share (NAME.safetensors) hold no pickle at all."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from unetr_app.errors import CheckpointError
from unetr_app.io.checkpoint import FORMAT, can_resume_from, load_checkpoint, load_model, read_state_dict, save_checkpoint

TINY = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32],
        "feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2}


class _Payload:
    """Unpickling this would run `touch`: exactly what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _minimal(**extra):
    return {"model": {"name": "unetr", "kwargs": {}}, "state_dict": {"w": torch.zeros(2)}, "preprocessing": {}, "inference": {}, "labels": {"background": 0, "spleen": 1}, **extra}


def _tiny(**extra):
    from unetr_app.models import create_model

    torch.manual_seed(0)
    model = create_model("unetr", **TINY)
    return model, {
        "model": {"name": "unetr", "kwargs": TINY}, "state_dict": model.state_dict(),
        "preprocessing": {"orientation": "RAS", "spacing": [8.0, 8.0, 8.0], "intensity_window": [-175, 250], "roi_size": [32, 32, 32]},
        "inference": {"overlap": 0.25, "sw_batch_size": 2, "blend_mode": "gaussian"},
        "labels": {"background": 0, "spleen": 1}, "modality": "CT", **extra,
    }


def _safetensors_header(path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length])


def test_checkpoint_with_pickled_object_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, **_minimal(extra=_Payload(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_every_accepted_kind_refuses_pickled_objects(tmp_path):
    """Format-1 files, format-2 sidecars and bare state dicts (MONAI's): none may run code."""
    marker = tmp_path / "pwned"
    _, good = _tiny()
    save_checkpoint(tmp_path / "last.pt", {**good, "training_state": {"epoch": 1}})
    sidecar = torch.load(tmp_path / "last.pt", weights_only=True)
    torch.save({**sidecar, "training_state": {"optimizer": _Payload(marker)}}, tmp_path / "last.pt")
    torch.save({"state_dict": {"vit.w": torch.zeros(1)}, "extra": _Payload(marker)}, tmp_path / "monai.pt")
    fallback = {k: v for k, v in good.items() if k != "state_dict"}
    for attempt in (lambda: load_checkpoint(tmp_path / "last.pt"),
                    lambda: load_model(tmp_path / "monai.pt", fallback=fallback),
                    lambda: read_state_dict(tmp_path / "monai.pt")):
        with pytest.raises(CheckpointError, match="refused"):
            attempt()
    assert not marker.exists()


def test_weights_are_safetensors_and_training_state_a_sidecar(tmp_path):
    model, data = _tiny(epoch=3, best_val_dice=0.5)
    save_checkpoint(tmp_path / "best.pt", data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.safetensors"], "no pickle file for the shared part"
    header = _safetensors_header(tmp_path / "best.safetensors")
    assert header["__metadata__"]["format"] == FORMAT
    assert json.loads(header["__metadata__"]["checkpoint"])["labels"] == {"background": 0, "spleen": 1}
    loaded = load_model(tmp_path / "best.pt")  # the name the trainer uses still resolves
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value, rtol=0, atol=0)
    assert load_checkpoint(tmp_path)["epoch"] == 3  # a folder means its best

    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.rand(1, 1, 32, 32, 32)).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "last.pt", {**data, "training_state": {"optimizer": optimizer.state_dict(), "history": [{"epoch": 1}]}})
    assert {"last.safetensors", "last.pt"} <= {p.name for p in tmp_path.iterdir()}
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["training_state"]["history"] == [{"epoch": 1}] and last["epoch"] == 3
    torch.testing.assert_close(last["training_state"]["optimizer"]["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert "training_state" not in load_checkpoint(tmp_path / "last.safetensors"), "the shareable file has weights only"


def test_format_1_single_file_checkpoints_still_load(tmp_path):
    model, data = _tiny(epoch=2)
    run = tmp_path / "old_run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save({"format": FORMAT, "format_version": 1, **data}, run / "best.pt")
    loaded = load_model(tmp_path / "old_run")
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model.eval()(x))


def test_a_sidecar_from_another_save_is_detected(tmp_path):
    _, data = _tiny()
    save_checkpoint(tmp_path / "last.pt", {**data, "training_state": {"epoch": 1}})
    stale = (tmp_path / "last.pt").read_bytes()
    save_checkpoint(tmp_path / "last.pt", {**data, "training_state": {"epoch": 2}})
    (tmp_path / "last.pt").write_bytes(stale)  # as if killed between writing the weights and the sidecar
    with pytest.raises(CheckpointError, match="another save"):
        load_checkpoint(tmp_path / "last.pt")


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after the failing call runs, no `except Exception` catches it."""


def _kill_when_renaming(monkeypatch, name):
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def _state_dict_of(epoch):
    return {"w": torch.full((2,), float(epoch))}


def test_a_run_killed_between_the_two_renames_resumes_from_the_save_before(tmp_path, monkeypatch):
    last = tmp_path / "last.pt"
    for epoch in (1, 2):
        save_checkpoint(last, _minimal(state_dict=_state_dict_of(epoch), training_state={"epoch": epoch}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.safetensors"], "no previous pair is kept once a save completes"

    _kill_when_renaming(monkeypatch, "last.safetensors")  # the new sidecar is in place, its weights are not
    with pytest.raises(_Killed):
        save_checkpoint(last, _minimal(state_dict=_state_dict_of(3), training_state={"epoch": 3}))
    monkeypatch.undo()
    data = load_checkpoint(last)
    assert data["training_state"] == {"epoch": 2}, "the newest complete save, not a mix of two"
    torch.testing.assert_close(data["state_dict"]["w"], _state_dict_of(2)["w"])
    assert can_resume_from(last)  # and puts the previous pair back in place

    _kill_when_renaming(monkeypatch, "last.safetensors")  # the resumed run is killed in its first save too
    with pytest.raises(_Killed):
        save_checkpoint(last, _minimal(state_dict=_state_dict_of(3), training_state={"epoch": 3}))
    monkeypatch.undo()
    assert can_resume_from(last) and load_checkpoint(last)["training_state"] == {"epoch": 2}
    for tmp in tmp_path.glob(".*"):  # what a restarted run's stale-temporary sweep removes
        tmp.unlink()

    save_checkpoint(last, _minimal(state_dict=_state_dict_of(3), training_state={"epoch": 3}))
    assert load_checkpoint(last)["training_state"] == {"epoch": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.safetensors"]


def test_a_first_save_killed_before_its_weights_means_starting_again(tmp_path, monkeypatch):
    last = tmp_path / "last.pt"
    _kill_when_renaming(monkeypatch, "last.safetensors")
    with pytest.raises(_Killed):
        save_checkpoint(last, _minimal(training_state={"epoch": 1}))
    monkeypatch.undo()
    assert last.is_file() and not (tmp_path / "last.safetensors").exists()
    assert not can_resume_from(last)
    with pytest.raises(CheckpointError, match="missing beside it"):
        load_checkpoint(last)
    assert not can_resume_from(tmp_path / "never_saved.pt")


def test_roundtrip_and_format_checks(tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(path, _minimal(epoch=3))
    assert load_checkpoint(path)["epoch"] == 3
    assert not list(tmp_path.glob(".*")), "atomic write leaves no temporary file"

    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a unetr checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": FORMAT, "format_version": 99, **_minimal()}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")


def test_remove_checkpoint_deletes_both_files(tmp_path):
    from unetr_app.io.checkpoint import remove_checkpoint

    save_checkpoint(tmp_path / "epoch_2.pt", _minimal(training_state={"epoch": 2}))
    save_checkpoint(tmp_path / "epoch_3.pt", _minimal())
    remove_checkpoint(tmp_path / "epoch_2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_3.safetensors"]
