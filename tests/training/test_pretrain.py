"""`unetr pretrain` end to end on the phantom, exact resume, and `train --init-from` from its run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.recipes.dino_helpers import pretrain_checkpoint
from unetr_app.io.checkpoint import load_checkpoint

TINY_DINO = Path(__file__).resolve().parents[1] / "configs" / "tiny-dino.yaml"


def pretrain(cli, phantom_dir, out, *extra):
    return cli("pretrain", phantom_dir / "imagesTr", phantom_dir / "imagesTs", "--method", "dino",
               "--profile", TINY_DINO, "--device", "cpu", "--out", out, *extra)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, phantom_dir):
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    out = tmp_path_factory.mktemp("dino") / "run"
    result = CliRunner().invoke(app, [str(a) for a in ("pretrain", phantom_dir / "imagesTr", phantom_dir / "imagesTs",
                                                       "--profile", TINY_DINO, "--device", "cpu", "--out", out)])
    assert result.exit_code == 0, result.output
    return out


def test_a_pretraining_run_reads_every_scan_without_labels(pretrained):
    summary = json.loads((pretrained / "summary.json").read_text(encoding="utf-8"))
    assert summary["scans"] == 8 and summary["steps"] == 2 and summary["method"] == "dino"
    lines = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all({"teacher_entropy_ratio", "teacher_student_kl", "batch_entropy_ratio"} <= set(line) for line in lines)
    assert (pretrained / "curves.png").stat().st_size > 0
    checkpoint = load_checkpoint(pretrained / "checkpoints" / "last.pt")
    assert checkpoint["recipe"]["name"] == "dino" and "teacher" in checkpoint["recipe"]["extra_state"]


def test_resume_continues_exactly(cli, tmp_path, phantom_dir, pretrained):
    assert pretrain(cli, phantom_dir, tmp_path / "split", "--steps", "1").exit_code == 0
    resumed = cli("pretrain", "--resume", "--out", tmp_path / "split", "--steps", "2", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    whole = load_checkpoint(pretrained / "checkpoints" / "last.pt")
    parts = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    for key, value in whole["state_dict"].items():
        assert torch.allclose(value, parts["state_dict"][key], atol=1e-6), key
    teacher, teacher_parts = whole["recipe"]["extra_state"]["teacher"], parts["recipe"]["extra_state"]["teacher"]
    assert all(torch.allclose(v, teacher_parts[k], atol=1e-6) for k, v in teacher.items())
    assert torch.allclose(whole["recipe"]["extra_state"]["center"], parts["recipe"]["extra_state"]["center"], atol=1e-6)


def test_train_init_from_a_pretraining_run_loads_every_encoder_key(cli, tmp_path, phantom_dir, tiny_profile, pretrained):
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--device", "cpu", "--steps", "1",
                 "--out", tmp_path / "fine", "--init-from", pretrained, "--init-key", "teacher", "--freeze-encoder")
    assert result.exit_code == 0, result.output
    assert "0 missing" in result.output
    record = json.loads((tmp_path / "fine" / "init.json").read_text(encoding="utf-8"))
    assert record["init"]["missing"] == [] and record["init"]["key"] == "teacher" and record["freeze_encoder"]
    teacher = load_checkpoint(pretrained / "checkpoints" / "last.pt")["recipe"]["extra_state"]["teacher"]
    trained = load_checkpoint(tmp_path / "fine" / "checkpoints" / "last.pt")["state_dict"]
    # frozen: after training the encoder still holds the teacher's weights
    for key, value in teacher.items():
        if key.startswith("encoder."):
            assert torch.equal(trained["vit." + key[len("encoder."):]], value), key


def test_bad_inputs_are_one_line_errors(cli, tmp_path, phantom_dir, tiny_profile):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("pretrain", empty, "--profile", TINY_DINO, "--out", tmp_path / "r2")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "no .nii" in errors[0] and "Traceback" not in result.output

    other, _ = pretrain_checkpoint(tmp_path, "vit_small_patch16")
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--device", "cpu", "--steps", "1",
                 "--out", tmp_path / "fine", "--init-from", other)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "architecture mismatch" in errors[0]
    assert "Traceback" not in result.output
    assert not any((tmp_path / "fine" / "checkpoints").glob("last.*"))


@pytest.mark.slow
def test_torchrun_pretraining_with_two_processes(tmp_path, phantom_dir):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "unetr_app",
               "pretrain", str(phantom_dir / "imagesTr"), str(phantom_dir / "imagesTs"), "--profile", str(TINY_DINO),
               "--device", "cpu", "--out", str(tmp_path / "ddp")]
    done = subprocess.run(command, cwd=repo, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text(encoding="utf-8"))
    assert summary["processes"] == 2 and summary["steps"] == 2
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2  # rank 0 alone writes
    assert "teacher" in load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last.pt")["recipe"]["extra_state"]


@pytest.mark.parametrize("profile", [[], ["--profile", TINY_DINO]], ids=["default profile", "named profile"])
def test_a_recipe_that_needs_labels_is_refused_naming_the_self_supervised_ones(cli, tmp_path, phantom_dir, profile):
    # without --profile the refusal once lost to a search for a profile named after the recipe
    result = cli("pretrain", phantom_dir / "imagesTr", "--method", "supervised", *profile, "--device", "cpu",
                 "--out", tmp_path / "run")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output
    assert "trains on labels" in errors[0] and "self-supervised recipes: dino" in errors[0]
    assert not (tmp_path / "run" / "config.yaml").exists(), "refused before the run folder is written"


def test_ibot_pretrains_with_its_patch_monitors_and_its_encoder_fine_tunes(cli, tmp_path, phantom_dir, tiny_profile):
    result = cli("pretrain", phantom_dir / "imagesTr", "--method", "ibot", "--profile", TINY_DINO, "--device", "cpu",
                 "--out", tmp_path / "ibot")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (tmp_path / "ibot" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all({"patch_loss", "patch_entropy_ratio", "patch_student_kl", "patch_batch_entropy_ratio"} <= set(line) for line in lines)
    checkpoint = load_checkpoint(tmp_path / "ibot" / "checkpoints" / "last.pt")
    assert checkpoint["recipe"]["name"] == "ibot" and "patch_center" in checkpoint["recipe"]["extra_state"]
    assert "mask_token" in checkpoint["state_dict"]
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--device", "cpu", "--steps", "1",
                 "--out", tmp_path / "fine", "--init-from", tmp_path / "ibot")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "fine" / "init.json").read_text(encoding="utf-8"))
    assert record["init"]["missing"] == [] and "mask_token" in record["init"]["unexpected"]


def test_each_method_pretrains_on_its_own_default_profile():
    from unetr_app.config import load_run_config
    from unetr_app.training.recipes import recipe_class

    assert {m: recipe_class(m).pretrain_profile for m in ("dino", "ibot", "masked")} == \
        {"dino": "cpu-dino", "ibot": "cpu-dino", "masked": "cpu-masked"}
    config = load_run_config(None, profile="cpu-dino", overrides={"recipe": {"name": "ibot"}})
    settings = recipe_class("ibot").parse_params(config.recipe.params)
    assert settings.patch_weight == 1.0 and settings.out_dim == 1024  # iBOT's term on cpu-dino's head


def test_ibot_resumes_exactly(cli, tmp_path, phantom_dir):
    whole = cli("pretrain", phantom_dir / "imagesTr", "--method", "ibot", "--profile", TINY_DINO, "--device", "cpu",
                "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    first = cli("pretrain", phantom_dir / "imagesTr", "--method", "ibot", "--profile", TINY_DINO, "--device", "cpu",
                "--out", tmp_path / "split", "--steps", "1")
    assert first.exit_code == 0, first.output
    resumed = cli("pretrain", "--resume", "--out", tmp_path / "split", "--steps", "2", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    a, b = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("whole", "split"))
    assert a["step"] == b["step"] == 2
    for key, value in a["state_dict"].items():
        assert torch.allclose(value, b["state_dict"][key], atol=1e-6), key
    for key in ("center", "patch_center"):  # the patch term's own centre comes back too
        assert torch.allclose(a["recipe"]["extra_state"][key], b["recipe"]["extra_state"][key], atol=1e-6), key
    teacher_a, teacher_b = a["recipe"]["extra_state"]["teacher"], b["recipe"]["extra_state"]["teacher"]
    assert all(torch.allclose(v, teacher_b[k], atol=1e-6) for k, v in teacher_a.items())
