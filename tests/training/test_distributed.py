"""Training under torch.distributed (gloo on CPU): two processes take the step one process takes.
The torchrun runs end to end (kill, resume, restart) are in tests/distributed/test_torchrun.py."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unetr_app.config import load_run_config, parse_overrides
from unetr_app.distributed import Shard
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
