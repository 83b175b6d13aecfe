"""Distillation on scans without labels (`unetr train --recipe distill --teacher RUN --unlabelled DIR`):
the crop stream, the loss, the checks made before a run starts, and an exact resume."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.recipes.recipe_helpers import StandInStudent, batch, tiny_config
from tests.recipes.test_train_cli import STUDENT, error_line, teacher_run, train  # noqa: F401 (teacher_run: a fixture)
from unetr_app.config import AugmentationConfig
from unetr_app.data.multicrop import find_scans, preprocess_scans
from unetr_app.data.unlabelled import UnlabelledCrops
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.training.objectives import soft_distillation
from unetr_app.training.recipes import build_recipe


@pytest.fixture(scope="module")
def unlabelled_samples(phantom_dir):
    return preprocess_scans(find_scans([phantom_dir / "imagesTs"]), tiny_config().preprocessing)


def crops(samples, seed=0, rank=0):
    return UnlabelledCrops(samples, [32, 32, 32], num_samples=2, scans_per_batch=3, augmentation=AugmentationConfig(), seed=seed, rank=rank)


def test_the_crop_stream_is_set_by_seed_rank_and_draw_count(unlabelled_samples):
    stream = crops(unlabelled_samples)
    first = [next(stream) for _ in range(3)]
    assert first[0].shape == (6, 1, 32, 32, 32), "scans_per_batch x num_samples crops of the ROI"
    assert not torch.equal(first[0], first[1]), "each draw is new crops"
    assert torch.equal(next(crops(unlabelled_samples)), first[0]), "the same seed and rank give the same crops"
    again = crops(unlabelled_samples)
    again.draws = 2  # what a checkpoint records: the stream continues where it stopped
    assert torch.equal(next(again), first[2])
    assert not torch.equal(next(crops(unlabelled_samples, rank=1)), first[0]), "each torchrun rank draws other crops"
    assert not torch.equal(next(crops(unlabelled_samples, seed=1)), first[0])


def test_the_loss_weighs_the_labelled_and_the_unlabelled_distillation_terms_equally(teacher_path, phantom_dir):
    config = tiny_config()
    params = {"teacher": str(teacher_path), "alpha": 0.25, "mode": "soft", "unlabelled": [str(phantom_dir / "imagesTs")]}
    recipe = build_recipe("distill", StandInStudent(), config, params)
    data = batch(3, n=2)
    parts = recipe(data)

    unlabelled = next(UnlabelledCrops(recipe.unlabelled.samples, config.preprocessing.roi_size, config.training.num_samples,
                                      config.training.batch_size, config.augmentation, config.training.seed))
    with torch.no_grad():
        both = torch.cat([data["image"], unlabelled])
        teacher_logits = recipe.teacher.model(both)
        student = recipe.model.forward_train(both)
        task = recipe.task_loss(student["logits"][:2], data["label"])
        labelled_term = soft_distillation(student["distill_logits"][:2], teacher_logits[:2], 3.0)
        unlabelled_term = soft_distillation(student["distill_logits"][2:], teacher_logits[2:], 3.0)
    assert unlabelled.shape[0] == config.training.batch_size * config.training.num_samples
    torch.testing.assert_close(parts["distill_unlabelled_loss"], unlabelled_term)
    torch.testing.assert_close(parts["distill_loss"], labelled_term)
    torch.testing.assert_close(parts["loss"].detach(), 0.75 * task + 0.25 * (labelled_term + unlabelled_term) / 2)
    assert parts["output"].shape[0] == 2, "the task metrics see the labelled crops only"


def test_distilling_on_unlabelled_scans_trains_and_resumes_the_crop_stream(cli, tmp_path, phantom_dir, tiny_profile, teacher_run):
    student = tmp_path / "student"
    folder = phantom_dir / "imagesTs"
    args = ["--recipe", "distill", "--teacher", teacher_run, "--unlabelled", folder, *STUDENT]
    result = train(cli, phantom_dir, tiny_profile, student, *args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (student / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(line["distill_unlabelled_loss"] > 0 for line in lines if "loss" in line)
    checkpoint = load_checkpoint(student / "checkpoints" / "last.pt")
    assert checkpoint["recipe"]["extra_state"]["unlabelled_draws"] == 2, "one unlabelled batch a step"
    assert checkpoint["config"]["recipe"]["params"]["unlabelled"] == [str(folder)]

    resumed = cli("train", "--out", student, "--resume", "--steps", 4, "--data-dir", phantom_dir, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(student / "checkpoints" / "last.pt")["recipe"]["extra_state"]["unlabelled_draws"] == 4


def test_unlabelled_folders_are_checked_before_a_run_starts(cli, tmp_path, phantom_dir, tiny_profile, teacher_run):
    def attempt(folder, recipe=("--recipe", "distill", "--teacher", teacher_run)):
        out = tmp_path / f"run_{folder.name}"
        result = train(cli, phantom_dir, tiny_profile, out, *recipe, "--unlabelled", folder, *STUDENT)
        assert result.exit_code == 2 and not (out / "checkpoints").exists()
        return " ".join(error_line(result).split())

    assert "no such folder" in attempt(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "holds no scans" in attempt(tmp_path / "empty")

    copies = tmp_path / "copies"
    copies.mkdir()
    labelled = sorted((phantom_dir / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copy(labelled, copies / labelled.name)
    said = attempt(copies)
    assert "overlaps the labelled training set" in said and labelled.name in said

    two_channels = tmp_path / "two_channels"
    two_channels.mkdir()
    scan = nib.load(sorted((phantom_dir / "imagesTs").glob("*.nii.gz"))[0])
    volume = np.asarray(scan.dataobj)
    nib.save(nib.Nifti1Image(np.stack([volume, volume], axis=-1), scan.affine), two_channels / "mri.nii.gz")
    assert "has 2 channels, the task has 1" in attempt(two_channels)

    assert "only the distill recipe" in attempt(phantom_dir / "imagesTs", recipe=("--recipe", "supervised"))
