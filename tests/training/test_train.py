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

from unetr_app.io.checkpoint import load_checkpoint, load_model

FAST = ["--set", "training.val_fraction=0.34"]


def train_args(phantom_dir, profile, out, *extra):
    return ["train", "--data-dir", phantom_dir, "--profile", profile, "--out", out, "--device", "cpu", *FAST, *extra]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


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
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dataset"] == str(phantom_dir)


def test_tiny_run_writes_its_folder_and_learns(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    # 64 steps of a tiny UNETR: enough to learn the spleen from a fixed seed on a 6 mm grid, though
    # not from every seed (the init decides; seeds 0-2 reached 0.32, 0.61, 0.10 here): the seed is fixed
    learn = ["--set", "training.max_steps_per_epoch=8", "--set", "training.lr=2e-3", "--set", "training.num_samples=4",
             "--set", "training.seed=1", "--set", "preprocessing.spacing=[6.0, 6.0, 6.0]"]
    result = cli(*train_args(phantom_dir, tiny_profile, run, "--epochs", 8, *learn))
    assert result.exit_code == 0, result.output
    lines = metrics(run)
    assert [m["epoch"] for m in lines] == list(range(1, 9))
    summary = json.loads((run / "summary.json").read_text())
    assert {"best_val_dice", "best_epoch", "epochs", "seconds"} <= summary.keys() and summary["epochs"] == 8
    assert summary["best_val_dice"] > lines[0]["val_dice"] + 0.2, "validation Dice improves over the first epoch"
    assert summary["best_val_dice"] == max(m["val_dice"] for m in lines)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["training"]["epochs"] == 8 and config["model"]["name"] == "unetr"
    split = json.loads((run / "split.json").read_text())
    assert len(split["validation"]) == 2 and not {c["image"] for c in split["train"]} & {c["image"] for c in split["validation"]}
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")], "no temporary files left"

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["epoch"] == summary["best_epoch"] and "training_state" not in best
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


@pytest.mark.slow
def test_killed_run_resumes_without_gaps_or_repeats_and_matches_an_uninterrupted_run(tmp_path, phantom_dir, tiny_profile):
    epochs = "4"
    base = [sys.executable, "-m", "unetr_app", "train", "--data-dir", str(phantom_dir), "--profile", str(tiny_profile), "--device", "cpu", "--epochs", epochs, *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    straight = tmp_path / "straight"
    subprocess.run([*base, "--out", str(straight)], check=True, env=env, capture_output=True)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen([*base, "--out", str(interrupted)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not _has_epoch(interrupted, 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: as a power cut or OOM kill
    process.wait()
    done = load_checkpoint(interrupted / "checkpoints" / "last.pt")["epoch"]
    assert 2 <= done < 4, "killed mid-run"
    # a crash between the checkpoint and the metrics line leaves the file behind or ahead: repair it
    with open(interrupted / "metrics.jsonl", "a") as handle:
        handle.write('{"epoch": 99, "train_loss": 0}\n')

    resumed = subprocess.run([*base, "--out", str(interrupted), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert [m["epoch"] for m in metrics(interrupted)] == [1, 2, 3, 4]
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["epoch"] == 4
    # per-epoch reseeding plus restored optimizer/scheduler/RNG state: the same training as never stopped
    for name, tensor in _weights(straight / "checkpoints" / "last.pt").items():
        torch.testing.assert_close(_weights(interrupted / "checkpoints" / "last.pt")[name], tensor, msg=name)
    assert [m["train_loss"] for m in metrics(interrupted)] == pytest.approx([m["train_loss"] for m in metrics(straight)])


def _has_epoch(run: Path, epoch: int) -> bool:
    try:
        return load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] >= epoch
    except Exception:  # not written yet, or being renamed into place
        return False


def test_resume_extends_a_finished_run(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    assert cli(*train_args(phantom_dir, tiny_profile, run, "--epochs", 1)).exit_code == 0
    result = cli("train", "--out", run, "--resume", "--epochs", 2, "--data-dir", phantom_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert [m["epoch"] for m in metrics(run)] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["epochs"] == 2
    # the cosine schedule is stretched to the new length and ends at zero, not restarted
    assert metrics(run)[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
