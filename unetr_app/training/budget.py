"""How long a run trains: the budget in steps, fixed before the first step, and the wall clock.

`training.budget` is steps, epochs (passes x steps per pass) or minutes. A minutes budget is turned
into steps by timing a few real steps, a validation and a checkpoint, then undoing them (the LR
schedule needs the step count before the first real step); the plan and the timing are kept in
the checkpoint, so a resumed run with the same budget ends where an uninterrupted one would.
A few timed steps can be off by a factor of two either way (thread start-up, caches), so a tenth
into the run the plan is redone once from the run's own pace (`replan`), and at every metrics line
the run stops early (`out_of_time`) if the next line would pass the budget.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from typing import TYPE_CHECKING

import torch

from unetr_app import distributed
from unetr_app.config import BudgetConfig
from unetr_app.errors import UsageError
from unetr_app.training.batches import metadata_only_if_needed
from unetr_app.training.state import TrainState, rng_state, set_rng_state

if TYPE_CHECKING:
    from unetr_app.training.loop import Trainer

log = logging.getLogger(__name__)

TIMING_STEPS = 3  # steps timed (after one warm-up step) to turn a minutes budget into steps
REPLAN_SHARE = 0.1  # the share of the planned steps after which a minutes budget is planned again


def budget_steps(budget: BudgetConfig, steps_per_epoch: int, timing: dict[str, float] | None = None,
                 intervals: dict[str, int] | None = None, seconds_spent: float = 0.0) -> int:
    """Optimizer steps for a budget: as given; passes x steps per pass; or as many as fit in the
    minutes left, each step costing `timing["step"]` plus a validation and a checkpoint every
    `intervals[...]` steps and once more at the end."""
    if budget.steps is not None:
        return budget.steps
    if budget.epochs is not None:
        return budget.epochs * steps_per_epoch
    timing, intervals = timing or {}, intervals or {}
    per_step = timing["step"] + sum(timing.get(k, 0.0) / every for k, every in intervals.items() if every)
    at_end = sum(timing.get(k, 0.0) for k, every in intervals.items() if every)
    return int((budget.minutes * 60 - seconds_spent - at_end) / per_step)


def plan(trainer: Trainer, train_loader) -> int:
    """Fix the run's length in steps (kept from the checkpoint when the budget is unchanged)."""
    state, train = trainer.state, trainer.config.training
    if not len(train_loader):
        raise UsageError("the training loader is empty: no training cases (check the dataset and training.val_fraction)")
    budget = train.budget
    if state.total_steps and state.budget == budget.model_dump():
        return state.total_steps
    if budget.minutes is not None and not state.timing:
        state.timing = time_costs(trainer, train_loader)
        state.timing["seconds_before_training"] = state.seconds
    intervals = {"validation": train.val_every_steps if trainer.val_loader is not None else 0,
                 "checkpoint": train.checkpoint_every_steps or train.line_every_steps}
    total = budget_steps(budget, len(train_loader), state.timing, intervals, state.seconds)
    state.total_steps = max(total, state.step, 1)
    state.budget = budget.model_dump()
    log.info("budget: %d optimizer steps (%.1f passes over the training cases)", state.total_steps, state.total_steps / len(train_loader))
    return state.total_steps


def time_costs(trainer: Trainer, loader) -> dict[str, float]:
    """Seconds per step, per validation and per checkpoint, from a few steps that are then undone.
    The slowest process counts."""
    started = time.perf_counter()
    saved = (copy.deepcopy(trainer.recipe.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()), trainer.scaler.state_dict(), rng_state())
    trainer.model.train()
    sync = lambda: _sync(trainer.device)  # noqa: E731
    with metadata_only_if_needed(trainer.config):
        batches = [trainer.to_device(b) for b in itertools.islice(itertools.cycle(loader), TIMING_STEPS + 1)]
        trainer.optimizer_step(batches[0], 0, TIMING_STEPS + 1)  # warm-up: allocation and kernel choice
        costs = {"step": _seconds(sync, lambda: [trainer.optimizer_step(b, i, TIMING_STEPS + 1) for i, b in enumerate(batches[1:], 1)]) / TIMING_STEPS}
    costs["validation"] = _seconds(sync, lambda: trainer.validate(trainer.val_loader)) if trainer.val_loader is not None else 0.0
    probe = trainer.run.timing_probe
    costs["checkpoint"] = _seconds(sync, lambda: trainer.save(probe, with_training_state=True))
    probe.unlink(missing_ok=True)
    weights, optimizer, scaler, rng = saved
    trainer.recipe.load_state_dict(weights)
    trainer.optimizer.load_state_dict(optimizer)
    trainer.scaler.load_state_dict(scaler)
    set_rng_state(rng)
    trainer.state.seconds += time.perf_counter() - started
    everyone = distributed.all_gather(costs, trainer.shard)
    return {key: max(c[key] for c in everyone) for key in costs}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(sync, work) -> float:
    sync()
    clock = time.perf_counter()
    work()
    sync()
    return time.perf_counter() - clock


def replan(trainer: Trainer) -> None:
    """Once, REPLAN_SHARE into a minutes budget, fix the steps again from the seconds the run's own
    steps took (validations and checkpoints included); kept in the checkpoint's timing, so a resumed
    run does not plan a third time. Rank 0 decides for all."""
    minutes, state = trainer.config.training.budget.minutes, trainer.state
    timing = state.timing
    if minutes is None or "seconds_before_training" not in timing or "replanned_at_step" in timing:
        return
    if state.step < max(REPLAN_SHARE * state.total_steps, 1):
        return
    trainer.clock.tick(state)
    pace = (state.seconds - timing["seconds_before_training"]) / state.step
    at_end = timing["validation"] + timing["checkpoint"]
    total = distributed.broadcast_from_main(state.step + int((minutes * 60 - state.seconds - at_end) / pace), trainer.shard)
    log.info("budget: %d optimizer steps at the run's pace of %.3f s per step (planned %d)", max(total, state.step), pace, state.total_steps)
    state.total_steps = max(total, state.step)
    timing["replanned_at_step"] = state.step


def out_of_time(trainer: Trainer) -> bool:
    """A minutes budget is spent, whatever the plan said, when going on to the next metrics line (its
    steps, a validation and a checkpoint at their timed cost) would pass it: a machine that slowed
    down after the timing ends the run early rather than late. Rank 0 decides
    for all; the plan is then cut to the steps done, so a resume with it has nothing left to train."""
    replan(trainer)
    minutes, state = trainer.config.training.budget.minutes, trainer.state
    if minutes is None or not state.timing:
        return False
    trainer.clock.tick(state)
    timing = state.timing
    next_line = trainer.config.training.line_every_steps * timing["step"] + timing["validation"] + timing["checkpoint"]
    late = distributed.broadcast_from_main(state.seconds + next_line > minutes * 60, trainer.shard)
    if late:
        log.warning("stopping at step %d: %.0f s spent of a %.1f-minute budget", state.step, state.seconds, minutes)
        state.total_steps = state.step
    return late


class Clock:
    """Adds the wall time since its last tick to `TrainState.seconds` (training time over sessions)."""

    def __init__(self) -> None:
        self.mark = time.perf_counter()

    def tick(self, state: TrainState) -> None:
        now = time.perf_counter()
        state.seconds += now - self.mark
        self.mark = now
