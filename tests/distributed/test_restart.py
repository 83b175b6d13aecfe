"""`torchrun --max-restarts 1 ... train --resume`: a worker killed mid-run is restarted with its
peer, both resume from the last checkpoint, and the run ends with an uninterrupted run's weights."""

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

from unetr_app.io.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SGD = ["--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.1", "--set", "optimizer.momentum=0.9"]  # float-tolerant updates


def torchrun(out: Path, phantom_dir: Path, *launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *launcher,
            "-m", "unetr_app", "train", "--out", str(out), "--resume", "--data-dir", str(phantom_dir), "--profile", str(TINY),
            "--device", "cpu", "--steps", "8", "--set", "training.val_fraction=0.34", "--set", "training.log_every_steps=2",
            "--set", "training.val_every_steps=8", *SGD]


def step_of(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    except Exception:  # not written yet, or being renamed into place
        return 0


def workers_of(launcher_pid: int) -> list[int]:
    """The training processes torchrun started (its children running unetr_app)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == launcher_pid and b"unetr_app" in command:
                found.append(int(entry.name))
    return sorted(found)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers in /proc")
def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(tmp_path, phantom_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    straight = tmp_path / "straight"
    done = subprocess.run(torchrun(straight, phantom_dir), cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    restarted = tmp_path / "restarted"
    launcher = subprocess.Popen(torchrun(restarted, phantom_dir, "--max-restarts", "1"), cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
    deadline = time.time() + 240
    while time.time() < deadline and step_of(restarted) < 2:
        time.sleep(0.05)
    killed_at = step_of(restarted)
    (first, second) = workers_of(launcher.pid)
    os.kill(second, signal.SIGKILL)  # one worker dies; torchrun stops the other and restarts both
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-12000:]
    assert 2 <= killed_at < 8, "killed mid-run"
    assert "restart" in output.lower(), output[-3000:]

    summary = json.loads((restarted / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 8 and summary["processes"] == 2
    final = load_checkpoint(restarted / "checkpoints" / "last.pt")["state_dict"]
    for name, tensor in load_checkpoint(straight / "checkpoints" / "last.pt")["state_dict"].items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
