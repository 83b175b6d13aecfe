"""`train --init-from RUN --init-key teacher|student`: a teacher's weights are weights, a teacher
reference is not (a distill run keeps only where its teacher came from)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.recipes.dino_helpers import pretrain_checkpoint, tiny_model, write_checkpoint
from unetr_app.training.init import EncoderInit, prepare_encoder

REFERENCE = {"path": "/runs/teacher/checkpoints/best.safetensors", "sha256": "ab" * 32, "model": "segresnet_small"}


def test_init_key_teacher_loads_a_pretraining_runs_teacher_encoder(tmp_path):
    source, recipe = pretrain_checkpoint(tmp_path, "vit_small_patch16")
    model = tiny_model("vit_small_patch16", seed=3)
    record = prepare_encoder(model, tmp_path / "fine", "vit_small_patch16", EncoderInit(source, "teacher"), restoring=False)
    assert record["init"]["key"] == "teacher" and record["init"]["missing"] == []
    teacher = recipe.teacher.state_dict()
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, teacher["encoder." + key]), key
    assert not torch.equal(model.encoder.state_dict()[key], recipe.model.state_dict()["encoder." + key]), "not the student"
    assert json.loads((tmp_path / "fine" / "init.json").read_text(encoding="utf-8"))["init"]["key"] == "teacher"


@pytest.mark.parametrize("entry", ["teacher_reference", "teacher"], ids=["reference", "reference-under-the-old-name"])
def test_init_key_teacher_from_a_distill_run_is_one_line_naming_init_key_student(cli, tmp_path, phantom_dir, tiny_profile, entry):
    student = tiny_model("unetr", seed=2)
    source = write_checkpoint(tmp_path / "distilled" / "last.pt", "unetr", student.state_dict(),
                              recipe={"name": "distill", "params": {}, "extra_state": {entry: REFERENCE}})
    train = ["train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--device", "cpu", "--steps", 1,
             "--set", "training.val_fraction=0.34", "--init-from", source]
    refused = cli(*train, "--out", tmp_path / "refused", "--init-key", "teacher")
    errors = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert refused.exit_code == 2 and len(errors) == 1 and "Traceback" not in refused.output
    assert "has no teacher weights" in errors[0] and "--init-key student" in errors[0] and str(source) in errors[0]

    accepted = cli(*train, "--out", tmp_path / "fine", "--init-key", "student")
    assert accepted.exit_code == 0, accepted.output
    record = json.loads((tmp_path / "fine" / "init.json").read_text(encoding="utf-8"))
    assert record["init"]["key"] == "student" and record["init"]["missing"] == []
