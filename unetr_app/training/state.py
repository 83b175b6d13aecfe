"""What a run carries from step to step and from session to session: counters, the loss-part window,
the random number generators, and the checkpoint that holds them.

A checkpoint's fields (see `checkpoint`): what rebuilds the network (`model`, preprocessing, labels:
`RunConfig.checkpoint_description`), the weights (`state_dict`), the recipe's name, params and typed
state (`recipe.state_dict()`), the counters of `TrainState`, the config, and in last.pt only the
`training_state`: optimizer, AMP scaler, every process's RNG state and `TrainState` in full.
`io/checkpoint.py` decides by type which file each field goes to.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data.utils import set_rnd

from unetr_app import distributed
from unetr_app.distributed import Shard
from unetr_app.errors import CheckpointError
from unetr_app.io.checkpoint import build_checkpoint, load_checkpoint

if TYPE_CHECKING:
    from unetr_app.training.loop import Trainer


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    epoch: int = 0  # passes over the training cases completed (bookkeeping and data seeding)
    epoch_start_step: int = 0  # the step at which the current pass began
    total_steps: int = 0  # the budget in steps, fixed before the first step (a minutes budget: again once, a tenth in)
    budget: dict[str, Any] = field(default_factory=dict)  # the budget total_steps was planned for
    timing: dict[str, float] = field(default_factory=dict)  # a minutes budget's timed seconds per step, validation, checkpoint
    best_val_dice: float = -1.0
    best_step: int = 0
    seconds: float = 0.0  # training time over all sessions of this run
    window: dict[str, float] = field(default_factory=dict)  # loss-part sums since the last metrics line
    window_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def track_best(self, line: dict[str, Any], validating: bool, checkpoint_due: bool) -> bool:
        """Whether this line makes a new best.pt: a higher validation Dice, or without validation the last checkpoint."""
        if "val_dice" in line:
            improved = line["val_dice"] > self.best_val_dice
            if improved:
                self.best_val_dice = line["val_dice"]
        else:
            improved = not validating and checkpoint_due
        if improved:
            self.best_step = self.step
        return improved


class LossWindow:
    """Sums of each scalar loss part since the last metrics line. This session's sums stay on the
    device (no sync per step); those of an earlier session come from the checkpoint (`state.window`)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, parts: dict[str, torch.Tensor], state: TrainState) -> None:
        for name, value in parts.items():
            if name != "output" and isinstance(value, torch.Tensor) and value.numel() == 1:
                total = self.sums.get(name, torch.zeros((), dtype=torch.float64, device=value.device))
                self.sums[name] = total + value.detach().double()
        state.window_steps += 1

    def totals(self, state: TrainState) -> dict[str, float]:
        sums = dict(state.window)
        for name, value in self.sums.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        return sums

    def means(self, state: TrainState, shard: Shard) -> dict[str, float]:
        """Mean of each part over the window's steps and every process; starts a new window."""
        sums = self.totals(state)
        everyone = distributed.all_gather((sums, state.window_steps), shard)
        steps = sum(n for _, n in everyone) or 1
        means = {k: sum(s.get(k, 0.0) for s, _ in everyone) / steps for k in sums}
        self.sums, state.window, state.window_steps = {}, {}, 0
        return means


# --- the checkpoint ------------------------------------------------------------------------------


def checkpoint(trainer: Trainer, with_training_state: bool) -> dict[str, Any]:
    """The trainer's checkpoint dict (every process calls it: it gathers the RNG states)."""
    cfg, state = trainer.config, trainer.state
    data = build_checkpoint(
        # the recipe's heads (distillation=True, aux_heads=True) are part of the network to rebuild
        {**trainer.checkpoint_extras, **cfg.checkpoint_description(trainer.model_kwargs)},
        trainer.model,
        recipe={"name": cfg.recipe.name, "params": dict(cfg.recipe.params), "extra_state": trainer.recipe.extra_state()},
        step=state.step, epoch=state.epoch, total_steps=state.total_steps,
        best_val_dice=state.best_val_dice, best_step=state.best_step, config=cfg.to_dict(),
    )
    if with_training_state:
        saved = asdict(state)
        saved["window"] = trainer.window.totals(state)
        data["training_state"] = {
            "optimizer": trainer.optimizer.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": distributed.all_gather(rng_state(), trainer.shard),
            "state": saved,
        }
    return data


def restore(trainer: Trainer, path: Path) -> list[dict[str, Any]]:
    """Weights, optimizer, scaler, recipe state, counters and history from last.pt; returns every
    process's RNG state, to set when training starts (after the loaders are built)."""
    data = load_checkpoint(path)
    if "training_state" not in data or "state" not in data["training_state"]:
        raise CheckpointError(f"{path}: has no training state of this unetr version (best.pt cannot be resumed; use last.pt)")
    training = data["training_state"]
    trainer.model.load_state_dict(data["state_dict"])
    trainer.optimizer.load_state_dict(training["optimizer"])
    trainer.scaler.load_state_dict(training["scaler"])
    trainer.recipe.load_extra_state(data["recipe"]["extra_state"])
    trainer.state = TrainState(**training["state"])
    return training["rng"]


# --- random numbers ------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python: the same config and seed give the same initial weights."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_epoch(loader, seed: int, epoch: int, rank: int) -> None:
    """Reseed the data pipeline from (seed, epoch, rank): a resumed pass draws what an unbroken one would."""
    seed = seed * 100_003 + epoch + 7_919 * rank
    set_rnd(loader.dataset, seed=seed)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed)
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
