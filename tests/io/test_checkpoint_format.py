"""The checkpoint writer decides by type where an entry goes; checkpoints written the older ways still load."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from unetr_app.io.checkpoint import (FORMAT, build_checkpoint, checkpoint_files, load_checkpoint, read_safetensors,
                                     save_checkpoint, write_safetensors)


def _description() -> dict:
    return {"model": {"name": "unetr", "kwargs": {"feature_size": 16}},
            "preprocessing": {"spacing": [1.5, 1.5, 2.0]}, "inference": {"overlap": 0.25}, "labels": {"spleen": 1}}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 2)


def test_weights_go_to_safetensors_plain_data_to_its_header_tensors_and_state_to_the_sidecar(tmp_path):
    teacher = {"w": torch.ones(2)}
    data = build_checkpoint(_description(), _model(), step=7,
                            recipe={"name": "distill", "extra_state": {"teacher": {"path": "runs/t", "sha256": "ab"}}},
                            teacher_weights=teacher, training_state={"epoch": 1})
    save_checkpoint(tmp_path / "last.pt", data)
    weights, sidecar = checkpoint_files(tmp_path / "last.pt")
    tensors, metadata = read_safetensors(weights)
    header = json.loads(metadata["checkpoint"])
    assert set(tensors) == {"weight", "bias"}
    assert header["step"] == 7 and header["recipe"]["extra_state"]["teacher"] == {"path": "runs/t", "sha256": "ab"}
    on_the_side = torch.load(sidecar, weights_only=True)
    assert set(on_the_side) - {"format", "format_version", "save_id", "weights"} == {"teacher_weights", "training_state"}
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["teacher_weights"]["w"], teacher["w"]) and loaded["training_state"] == {"epoch": 1}


def test_a_value_that_is_neither_tensor_nor_plain_data_is_refused_naming_its_key(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['recipe.params.teacher'\]: a PosixPath"):
        save_checkpoint(tmp_path / "best.pt", build_checkpoint(_description(), _model(), recipe={"params": {"teacher": Path("x")}}))
    assert not any(tmp_path.iterdir())


def test_a_format_1_single_torch_file_still_loads(tmp_path):
    model = _model()
    torch.save({"format": FORMAT, "format_version": 1, **_description(), "state_dict": model.state_dict(), "step": 3},
               tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["state_dict"]["weight"], model.weight.detach())


def test_a_pair_written_the_previous_way_still_loads(tmp_path):
    # the previous writer: whatever json.dumps accepted went to the header, the rest (here the recipe
    # with a teacher's weights, and the training state) to the sidecar, both naming one save_id
    model, save_id = _model(), uuid.uuid4().hex
    header = {**_description(), "step": 5, "best_val_dice": 0.5}
    write_safetensors(tmp_path / "last.safetensors", model.state_dict(),
                      {"format": FORMAT, "format_version": "2", "save_id": save_id, "checkpoint": json.dumps(header)})
    torch.save({"format": FORMAT, "format_version": 2, "save_id": save_id, "weights": "last.safetensors",
                "recipe": {"name": "dino", "extra_state": {"teacher": {"w": torch.zeros(2)}}}, "training_state": {"epoch": 2}},
               tmp_path / "last.pt")
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert loaded["step"] == 5 and loaded["training_state"] == {"epoch": 2}
    assert torch.equal(loaded["recipe"]["extra_state"]["teacher"]["w"], torch.zeros(2))
    assert torch.equal(load_checkpoint(tmp_path / "last.safetensors")["state_dict"]["bias"], model.bias.detach())
