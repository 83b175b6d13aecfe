"""`unetr train` end to end on a tiny phantom: the run folder, learning, resume, safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from unetr_app.cli.app import app
from unetr_app.io.checkpoint import load_checkpoint, load_model

FAST = ["--set", "training.val_fraction=0.34"]


def train_args(phantom_dir, profile, out, *extra):
    return ["train", "--data-dir", phantom_dir, "--profile", profile, "--out", out, "--device", "cpu", *FAST, *extra]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def test_missing_data_says_where_it_looked_and_how_to_get_data(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UNETR_DATA", raising=False)
    result = cli("train", "--task", "spleen")
    assert result.exit_code == 2
    message = result.output
    assert "data/Task09_Spleen" in message and "UNETR_DATA is not set" in message
    assert "Task09_Spleen.tar" in message and "CC-BY-SA 4.0" in message
    assert "unetr data synth" in message and "Traceback" not in message


def test_data_is_found_through_unetr_data(cli, tmp_path, monkeypatch, phantom_dir, tiny_profile):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("UNETR_DATA", str(phantom_dir.parent))
    result = cli("train", "--profile", tiny_profile, "--out", tmp_path / "run", "--epochs", 1, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))["dataset"] == str(phantom_dir)


def test_tiny_run_writes_its_folder_and_learns(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    # 32 steps of a tiny UNETR: enough to learn the spleen from a fixed seed on a 6 mm grid, though
    # not from every seed (the init decides; seeds 0-2 reached 0.32, 0.61, 0.10 here): the seed is fixed
    learn = ["--set", "training.val_every_steps=4", "--set", "training.log_every_steps=4", "--set", "optimizer.lr=2e-3", "--set", "training.num_samples=4",
             "--set", "training.seed=1", "--set", "preprocessing.spacing=[6.0, 6.0, 6.0]"]
    result = cli(*train_args(phantom_dir, tiny_profile, run, "--steps", 32, *learn))
    assert result.exit_code == 0, result.output
    lines = metrics(run)
    assert [m["step"] for m in lines] == list(range(4, 33, 4))
    assert [m["epoch"] for m in lines] == list(range(1, 9)), "4 training cases: one pass every 4 steps"
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert {"best_val_dice", "best_step", "steps", "epochs", "seconds"} <= summary.keys() and summary["steps"] == 32
    assert summary["best_val_dice"] > lines[0]["val_dice"] + 0.2, "validation Dice improves over the first epoch"
    assert summary["best_val_dice"] == max(m["val_dice"] for m in lines)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["training"]["budget"] == {"steps": 32} and config["model"]["name"] == "unetr"
    split = json.loads((run / "split.json").read_text(encoding="utf-8"))
    assert len(split["validation"]) == 2 and not {c["image"] for c in split["train"]} & {c["image"] for c in split["validation"]}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.safetensors", "last.pt", "last.safetensors"], "only best and last, no temporary files"

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["step"] == summary["best_step"] and "training_state" not in best
    assert best["recipe"]["name"] == "supervised"
    assert best["preprocessing"]["spacing"] == [6.0, 6.0, 6.0] and best["labels"] == {"background": 0, "spleen": 1}
    loaded = load_model(run)  # a run folder means its best.pt
    x = torch.rand(1, 1, 32, 32, 32)
    assert loaded.model(x).shape == (1, 2, 32, 32, 32)
    assert loaded.preprocessing.roi_size == (32, 32, 32)


def test_existing_run_is_not_overwritten_without_resume(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    assert cli(*train_args(phantom_dir, tiny_profile, run, "--epochs", 1)).exit_code == 0
    again = cli(*train_args(phantom_dir, tiny_profile, run, "--epochs", 1))
    assert again.exit_code == 2 and "--resume" in again.output


def _weights(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


# recipe heads need one of our decoders (MONAI's UNETR builds none): a narrow DeiT with UNETR's decoder
NARROW_DEIT = ["--model", "deit_tiny_distilled_patch16", "--set", "model.params.embed_dim=32", "--set", "model.params.depth=4",
               "--set", "model.params.num_heads=2", "--set", "model.params.feature_size=4"]
RECIPE_MODEL_ARGS = {"self_distill": NARROW_DEIT, "distill": NARROW_DEIT}
# pretraining reads unlabelled scans through `unetr pretrain`; its exact resume has its own test
OWN_RESUME_TEST = {"dino": "exact resume tested in tests/training/test_pretrain.py::test_resume_continues_exactly",
                   "ibot": "exact resume tested in tests/training/test_pretrain.py::test_ibot_resumes_exactly",
                   "masked": "exact resume tested in tests/recipes/test_masked.py::test_a_masked_pretraining_run_resumes_exactly"}


def _resumable_recipes():
    from unetr_app.training.recipes import list_recipes

    for name in list_recipes():
        reason = OWN_RESUME_TEST.get(name)
        yield pytest.param(name, RECIPE_MODEL_ARGS.get(name, []), id=name, marks=[pytest.mark.skip(reason=reason)] if reason else [])


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, phantom_dir, tiny_profile) -> Path:
    """A CNN teacher run for the recipes that distil from one (2 steps: its quality does not matter here)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    done = CliRunner().invoke(app, [str(a) for a in (*train_args(phantom_dir, tiny_profile, run), "--steps", "2", "--model", "segresnet_small")])
    assert done.exit_code == 0, done.output
    return run


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "recipe_args"), list(_resumable_recipes()))
def test_killed_run_resumes_without_gaps_or_repeats_and_matches_an_uninterrupted_run(request, tmp_path, phantom_dir, tiny_profile, recipe, recipe_args):
    from unetr_app.training.recipes import recipe_class

    if recipe_class(recipe).needs_teacher:
        recipe_args = [*recipe_args, "--teacher", str(request.getfixturevalue("tiny_teacher"))]
    # 12 steps over 4 training cases, a line every 2 steps and last.pt every 3: the kill lands
    # mid-epoch and mid-interval, which the resumed run must replay exactly
    base = [sys.executable, "-m", "unetr_app", "train", "--data-dir", str(phantom_dir), "--profile", str(tiny_profile), "--device", "cpu",
            "--steps", "12", "--checkpoint-every", "3", "--recipe", recipe, *recipe_args, *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    # the uninterrupted run goes alongside the one to be killed (one thread each): independent runs
    straight = tmp_path / "straight"
    straight_log = tmp_path / "straight.log"  # a file, not a pipe: nobody reads it until the run ends
    with straight_log.open("w") as log:
        straight_run = subprocess.Popen([*base, "--out", str(straight)], env=env, stdout=subprocess.DEVNULL, stderr=log)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([*base, "--out", str(interrupted)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not _has_step(interrupted, 3):
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: as a power cut or OOM kill
    process.wait()
    assert straight_run.wait(timeout=600) == 0, straight_log.read_text(encoding="utf-8")
    done = load_checkpoint(interrupted / "checkpoints" / "last.pt")["step"]
    assert 3 <= done < 12, "killed mid-run"
    # a crash between the checkpoint and the metrics line leaves the file behind or ahead: repair it
    with open(interrupted / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 99, "loss": 0}\n')

    resumed = subprocess.run([*base[:base.index("--steps")], "--out", str(interrupted), "--resume"], env=env, capture_output=True, text=True, encoding="utf-8")
    assert resumed.returncode == 0, resumed.stderr
    assert [m["step"] for m in metrics(interrupted)] == [2, 4, 6, 8, 10, 12]
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["step"] == 12
    # per-epoch reseeding, replayed batches and restored optimizer/RNG/recipe state: the same training as never stopped
    for name, tensor in _weights(straight / "checkpoints" / "last.pt").items():
        torch.testing.assert_close(_weights(interrupted / "checkpoints" / "last.pt")[name], tensor, msg=name)
    for key in ("loss", "val_dice"):
        assert [m.get(key) for m in metrics(interrupted)] == pytest.approx([m.get(key) for m in metrics(straight)])


def _has_step(run: Path, step: int) -> bool:
    try:
        return load_checkpoint(run / "checkpoints" / "last.pt")["step"] >= step
    except Exception:  # not written yet, or being renamed into place
        return False


def test_resume_extends_a_finished_run(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    assert cli(*train_args(phantom_dir, tiny_profile, run, "--epochs", 1)).exit_code == 0
    result = cli("train", "--out", run, "--resume", "--epochs", 2, "--data-dir", phantom_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in metrics(run)] == [2, 4, 6, 8], "one pass is 4 steps; the second pass adds 4"
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["training"]["budget"] == {"epochs": 2}
    # the cosine schedule is stretched to the new length and ends at zero, not restarted
    assert metrics(run)[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    assert metrics(run)[2]["lr"] > 0, "the extension continues at a positive LR"


def test_a_run_killed_in_its_first_save_starts_again_on_resume(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    assert cli(*train_args(phantom_dir, tiny_profile, run, "--steps", 2)).exit_code == 0
    (run / "checkpoints" / "last.safetensors").unlink()  # killed after the sidecar's rename, before the weights'
    stale = run / "checkpoints" / ".last.tmp-99999.safetensors"
    stale.write_bytes(b"half a checkpoint")
    result = cli("train", "--out", run, "--resume", "--data-dir", phantom_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 2
    assert not stale.exists(), "what the killed run was writing is removed"


def test_resume_refuses_options_it_would_ignore(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    assert cli(*train_args(phantom_dir, tiny_profile, run, "--steps", 2)).exit_code == 0
    resume = ["train", "--out", run, "--resume", "--data-dir", phantom_dir, "--device", "cpu"]
    refused = cli(*resume, "--profile", "gpu-default", "--set", "optimizer.lr=0.5", "--model", "vit_tiny_patch16")
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    message = " ".join(refused.output.split())
    assert "--profile gpu-default" in message and "--set optimizer.lr=0.5" in message and "--model vit_tiny_patch16" in message
    assert "--task" not in message
    # the values the run already has are not ignored: `make demo` repeats its options with --resume
    again = cli(*resume, "--profile", tiny_profile, "--set", "training.val_fraction=0.34", "--steps", 4)
    assert again.exit_code == 0, again.output
    assert [m["step"] for m in metrics(run)] == [2, 4]
