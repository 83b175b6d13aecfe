"""`unetr train --recipe distill|self_distill` end to end on the tiny phantom, and its one-line errors."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from tests.recipes.recipe_helpers import tiny_config, write_teacher
from unetr_app.io.checkpoint import load_checkpoint, resolve_checkpoint_path

# a narrow DeiT with UNETR's decoder: the distillation token and heads exist, a step takes a second
STUDENT = ["--model", "deit_tiny_distilled_patch16", "--set", "model.params.embed_dim=32", "--set", "model.params.depth=4",
           "--set", "model.params.num_heads=2", "--set", "model.params.feature_size=4"]


def train(cli, phantom_dir, tiny_profile, out, *extra):
    return cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--out", out, "--device", "cpu",
               "--steps", 2, "--set", "training.val_fraction=0.34", *extra)


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    assert len(lines) >= 1 and lines[-1].startswith("error: ")
    return lines[-1]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, phantom_dir, tiny_profile):
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    run = tmp_path_factory.mktemp("teacher") / "cnn"
    args = ["train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--out", run, "--device", "cpu", "--steps", 2,
            "--set", "training.val_fraction=0.34", "--model", "segresnet_small"]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return run


def test_distilled_student_records_its_teacher_and_predicts_plainly(cli, tmp_path, phantom_dir, tiny_profile, teacher_run):
    teacher_file = resolve_checkpoint_path(teacher_run)  # the run's best weights file
    before = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    student = tmp_path / "student"
    result = train(cli, phantom_dir, tiny_profile, student, "--recipe", "distill", "--teacher", teacher_run, *STUDENT)
    assert result.exit_code == 0, result.output
    # before the student trains, the teacher's own validation Dice, read from its run
    summary = json.loads((teacher_run / "summary.json").read_text(encoding="utf-8"))
    said = " ".join(result.output.split())
    assert "teacher segresnet_small" in said and f"validation Dice {summary['best_val_dice']:.4f} at step {summary['best_step']}" in said

    assert hashlib.sha256(teacher_file.read_bytes()).hexdigest() == before, "the teacher's checkpoint is untouched"
    checkpoint = load_checkpoint(student / "checkpoints" / "last.pt")
    recorded = checkpoint["recipe"]["extra_state"]["teacher_reference"]
    assert recorded == {"path": str(teacher_file.resolve()), "sha256": before, "model": "segresnet_small"}
    assert not any(key.startswith("teacher") for key in checkpoint["state_dict"]), "the teacher's weights are not stored"
    assert any(key.startswith("distill_head.") for key in checkpoint["state_dict"])

    masks = tmp_path / "masks"
    predicted = cli("predict", phantom_dir / "imagesTs", masks, "--checkpoint", student / "checkpoints" / "last.pt", "--device", "cpu", "--quiet")
    assert predicted.exit_code == 0, predicted.output
    for image in sorted((phantom_dir / "imagesTs").glob("*.nii.gz")):
        scan, mask = nib.load(image), nib.load(masks / image.name)
        assert mask.shape == scan.shape and np.allclose(mask.affine, scan.affine)


def test_self_distilled_student_trains_and_predicts(cli, tmp_path, phantom_dir, tiny_profile):
    student = tmp_path / "student"
    result = train(cli, phantom_dir, tiny_profile, student, "--recipe", "self_distill", *STUDENT)
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(student / "checkpoints" / "last.pt")
    assert checkpoint["model"]["kwargs"]["aux_heads"] is True
    masks = tmp_path / "masks"
    predicted = cli("predict", phantom_dir / "imagesTs", masks, "--checkpoint", student / "checkpoints" / "last.pt", "--device", "cpu", "--quiet")
    assert predicted.exit_code == 0, predicted.output
    assert len(list(masks.glob("*.nii.gz"))) == len(list((phantom_dir / "imagesTs").glob("*.nii.gz")))


def test_distill_without_teacher(cli, tmp_path, phantom_dir, tiny_profile):
    result = train(cli, phantom_dir, tiny_profile, tmp_path / "run", "--recipe", "distill", *STUDENT)
    assert result.exit_code == 2
    assert "--teacher" in error_line(result) and not (tmp_path / "run").exists()


def test_missing_unreadable_and_incompatible_teachers(cli, tmp_path, phantom_dir, tiny_profile):
    result = train(cli, phantom_dir, tiny_profile, tmp_path / "a", "--recipe", "distill", "--teacher", tmp_path / "no-such-run", *STUDENT)
    assert result.exit_code == 1 and "no-such-run" in error_line(result) and "--teacher" in error_line(result)

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    result = train(cli, phantom_dir, tiny_profile, tmp_path / "b", "--recipe", "distill", "--teacher", junk, *STUDENT)
    assert result.exit_code == 1 and "junk.pt" in error_line(result) and "not a readable" in error_line(result)

    coarse = write_teacher(tmp_path / "coarse.pt", tiny_config(preprocessing={"spacing": [5.0, 5.0, 5.0]}))
    result = train(cli, phantom_dir, tiny_profile, tmp_path / "c", "--recipe", "distill", "--teacher", coarse, *STUDENT)
    assert result.exit_code == 2
    assert "spacing [5.0, 5.0, 5.0] differs from the student's [8.0, 8.0, 8.0]" in error_line(result)
    # refused before the run folder is made: the same --out works once the teacher is fixed
    assert not any((tmp_path / name).exists() for name in "abc")


def test_unknown_recipe_suggests_the_closest(cli, tmp_path, phantom_dir, tiny_profile):
    result = train(cli, phantom_dir, tiny_profile, tmp_path / "run", "--recipe", "self_distil")
    assert result.exit_code == 2
    line = error_line(result)
    assert "unknown recipe 'self_distil'" in line and "self_distill" in line
