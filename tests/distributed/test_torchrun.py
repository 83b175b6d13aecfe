"""`torchrun ... unetr_app train` end to end (gloo on CPU): rank 0 alone writes, a run killed whole
resumes exactly, and under `--max-restarts 1` a killed worker is restarted with its peer and the
run ends with an uninterrupted run's weights. One uninterrupted run is the reference of both."""

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

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
SGD = ["--set", "optimizer.name=sgd", "--set", "optimizer.lr=0.1", "--set", "optimizer.momentum=0.9"]  # float-tolerant updates
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def torchrun(*args: str, launcher: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *launcher, "-m", "unetr_app", "train", *args]


def fresh_run(out: Path, phantom_dir: Path) -> list[str]:
    """8 steps, a line every 2, validation at the end; --resume: start, or go on where a run stopped."""
    return ["--out", str(out), "--resume", "--data-dir", str(phantom_dir), "--profile", str(TINY), "--device", "cpu", "--steps", "8",
            "--set", "training.val_fraction=0.34", "--set", "training.log_every_steps=2", "--set", "training.val_every_steps=8", *SGD]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def step_of(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    except Exception:  # not written yet, or being renamed into place
        return 0


def wait_for_step(run: Path, step: int, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and step_of(run) < step:
        time.sleep(0.05)


def assert_same_weights(run: Path, reference: Path) -> None:
    final = load_checkpoint(run / "checkpoints" / "last.pt")["state_dict"]
    for name, tensor in load_checkpoint(reference / "checkpoints" / "last.pt")["state_dict"].items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, phantom_dir) -> Path:
    """An uninterrupted two-process run (read-only)."""
    run = tmp_path_factory.mktemp("torchrun") / "straight"
    done = subprocess.run(torchrun(*fresh_run(run, phantom_dir)), cwd=REPO, env=ENV, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def test_rank_0_alone_writes_and_a_killed_run_resumes_exactly(straight, tmp_path, phantom_dir):
    lines = metrics(straight)
    assert [m["step"] for m in lines] == [2, 4, 6, 8], "rank 0 alone writes: one line per interval"
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["best.safetensors", "last.pt", "last.safetensors"]
    summary = json.loads((straight / "summary.json").read_text(encoding="utf-8"))
    assert summary["processes"] == 2 and summary["steps"] == 8
    assert len(lines[-1]["val_dice_per_case"]) == 2, "validation split across the ranks and gathered"
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4], "4 training cases over 2 processes: a pass is 2 steps"

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(torchrun(*fresh_run(interrupted, phantom_dir)), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_step(interrupted, 2)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, at once
    process.wait()
    assert 2 <= step_of(interrupted) < 8, "killed mid-run"

    # the run folder holds everything: resuming needs no profile or budget again
    resumed = subprocess.run(torchrun("--out", str(interrupted), "--resume", "--data-dir", str(phantom_dir), "--device", "cpu"),
                             cwd=REPO, env=ENV, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in metrics(interrupted)] == [2, 4, 6, 8]
    assert_same_weights(interrupted, straight)


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


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's workers in /proc")
def test_a_killed_worker_is_restarted_and_the_run_ends_as_an_uninterrupted_one(straight, tmp_path, phantom_dir):
    restarted = tmp_path / "restarted"
    launcher = subprocess.Popen(torchrun(*fresh_run(restarted, phantom_dir), launcher=("--max-restarts", "1")), cwd=REPO, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8")
    wait_for_step(restarted, 2, seconds=240)
    killed_at = step_of(restarted)
    (first, second) = workers_of(launcher.pid)
    os.kill(second, signal.SIGKILL)  # one worker dies; torchrun stops the other and restarts both
    output, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, output[-12000:]
    assert 2 <= killed_at < 8, "killed mid-run"
    assert "restart" in output.lower(), output[-3000:]

    summary = json.loads((restarted / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == 8 and summary["processes"] == 2
    assert_same_weights(restarted, straight)
