"""Training under torch.distributed (gloo on CPU): the same step as one process, and torchrun runs."""

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
import torch.distributed as dist
import torch.multiprocessing as mp

from unetr_app.config import load_run_config, parse_overrides
from unetr_app.distributed import Shard
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.models import create_model
from unetr_app.training.loop import Trainer
from unetr_app.training.state import seed_everything

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
# SGD: Adam's first step is lr * sign(gradient), where a rounding difference in a gradient near
# zero flips a whole step; SGD's update is proportional to the gradient, so float tolerance holds
SGD = ["optimizer.name=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.9"]


def _samples() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 1, 32, 32, 32, generator=generator)
    label = (torch.rand(2, 1, 32, 32, 32, generator=generator) > 0.7).float()
    return {"image": image, "label": label}


def _one_step(rank: int, world_size: int, init_file: str, out: str) -> None:
    """Build the tiny model from the same seed, take one optimizer step on this process's share."""
    torch.set_num_threads(1)
    shard = Shard()
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        shard = Shard(rank, world_size, rank)
    config = load_run_config("spleen", profile=str(TINY), overrides=parse_overrides(SGD))
    seed_everything(0)
    model = create_model(config.model.name, **config.model_kwargs())
    trainer = Trainer(config, model, torch.device("cpu"), Path(out) / f"rank{rank}", shard=shard)
    trainer.state.total_steps = 100
    samples = _samples()
    mine = slice(rank, rank + 1) if world_size > 1 else slice(0, 2)
    trainer.train_step({key: value[mine] for key, value in samples.items()})
    if rank == 0:
        torch.save(trainer.model.state_dict(), Path(out) / f"weights_{world_size}.pt")
    if world_size > 1:
        dist.destroy_process_group()


def test_two_processes_with_one_sample_each_step_like_one_process_with_both(tmp_path):
    _one_step(0, 1, "", str(tmp_path))
    mp.spawn(_one_step, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "weights_1.pt", weights_only=True)
    pair = torch.load(tmp_path / "weights_2.pt", weights_only=True)
    initial = _initial_weights()
    moved = 0
    for name, tensor in single.items():
        torch.testing.assert_close(pair[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(tensor, initial[name])
    assert moved > len(single) // 2, "the step changed the weights (the comparison is not of two untouched models)"


def _initial_weights() -> dict[str, torch.Tensor]:
    config = load_run_config("spleen", profile=str(TINY))
    seed_everything(0)
    return create_model(config.model.name, **config.model_kwargs()).state_dict()


# --- torchrun end to end ----------------------------------------------------------------------


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "unetr_app", "train", *args]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _step_of(run: Path) -> int:
    try:
        return load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    except Exception:  # not written yet, or being renamed into place
        return 0


@pytest.mark.slow
def test_torchrun_training_writes_once_and_resumes_after_a_kill(tmp_path, phantom_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--data-dir", str(phantom_dir), "--profile", str(TINY), "--device", "cpu", "--steps", "8",
              "--set", "training.val_fraction=0.34", "--set", "training.log_every_steps=2"]

    straight = tmp_path / "straight"
    done = subprocess.run(_torchrun([*common, "--out", str(straight)]), cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _metrics(straight)
    assert [m["step"] for m in lines] == [2, 4, 6, 8], "rank 0 alone writes: one line per interval"
    assert sorted(p.name for p in (straight / "checkpoints").iterdir()) == ["best.safetensors", "last.pt", "last.safetensors"]
    summary = json.loads((straight / "summary.json").read_text(encoding="utf-8"))
    assert summary["processes"] == 2 and summary["steps"] == 8
    assert len(lines[-1]["val_dice_per_case"]) == 2, "validation split across the ranks and gathered"
    # 4 training cases over 2 processes: a pass is 2 steps
    assert [m["epoch"] for m in lines] == [1, 2, 3, 4]

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(_torchrun([*common, "--out", str(interrupted)]), cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and _step_of(interrupted) < 2:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers, at once
    process.wait()
    assert 2 <= _step_of(interrupted) < 8, "killed mid-run"

    resumed = subprocess.run(_torchrun(["--out", str(interrupted), "--resume", "--data-dir", str(phantom_dir), "--device", "cpu"]),
                             cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [m["step"] for m in _metrics(interrupted)] == [2, 4, 6, 8]
    final = load_checkpoint(interrupted / "checkpoints" / "last.pt")["state_dict"]
    for name, tensor in load_checkpoint(straight / "checkpoints" / "last.pt")["state_dict"].items():
        torch.testing.assert_close(final[name], tensor, msg=name)
