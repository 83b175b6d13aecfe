"""Budgets in optimizer steps: profiles train the same steps on any dataset size; minutes are timed once."""

from __future__ import annotations

import json
import math
import os

import pytest

from unetr_app.config import BudgetConfig, CONFIG_ROOT, load_run_config
from unetr_app.data.dataset import split_cases
from unetr_app.io.checkpoint import load_checkpoint
from types import SimpleNamespace

from unetr_app.distributed import Shard
from unetr_app.training.budget import budget_steps, replan
from unetr_app.training.state import TrainState

PROFILES = sorted(p.stem for p in (CONFIG_ROOT / "profiles").glob("*.yaml"))


def steps_per_epoch(cases: int, config) -> int:
    """Batches in one pass of the training loader for a dataset of `cases` labelled cases."""
    fake = [{"image": f"case_{i:03d}.nii.gz", "label": ""} for i in range(cases)]
    train, _ = split_cases(fake, config.training.val_fraction, config.training.seed)
    return math.ceil(len(train) / config.training.batch_size)


@pytest.mark.parametrize("profile", PROFILES)
def test_a_profile_trains_the_same_steps_on_16_or_41_cases(profile):
    config = load_run_config("spleen", profile=profile)
    assert config.training.budget.steps is not None, "profiles state step budgets"
    small, full = steps_per_epoch(16, config), steps_per_epoch(41, config)
    assert small < full
    assert budget_steps(config.training.budget, small) == budget_steps(config.training.budget, full) == config.training.budget.steps
    # an epoch budget (--epochs) is what scales with the data instead
    assert budget_steps(BudgetConfig(epochs=25), small) == 25 * small and budget_steps(BudgetConfig(epochs=25), full) == 25 * full


def test_cpu_demo_keeps_the_old_25_epochs_of_33_cases():
    config = load_run_config("spleen", profile="cpu-demo")
    assert steps_per_epoch(41, config) == 33
    assert config.training.budget.steps == 25 * 33 and config.training.val_every_steps == 4 * 33
    assert round(config.schedule.warmup_fraction * config.training.budget.steps) == 33, "one pass of warmup, as before"


def test_scaling_vit_profile_is_cpu_demo_with_the_scaling_vit_optimisation():
    scaling, demo = load_run_config("spleen", profile="scaling-vit"), load_run_config("spleen", profile="cpu-demo")
    assert (scaling.optimizer.name, scaling.schedule.name) == ("adafactor", "warmup_cooldown")
    assert scaling.optimizer.head_weight_decay > 10 * scaling.optimizer.weight_decay > 0
    assert scaling.schedule.warmup_fraction > 0 and scaling.schedule.cooldown_fraction > 0
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k not in ("optimizer", "schedule", "profile")}  # noqa: E731
    assert strip(scaling) == strip(demo)


def test_minutes_become_the_steps_that_fit_with_their_validations_and_checkpoints():
    timing = {"step": 1.0, "validation": 10.0, "checkpoint": 2.0}
    # each step costs 1 s + a fifth of a validation and of a checkpoint; one more of each at the end
    steps = budget_steps(BudgetConfig(minutes=1), 7, timing, {"validation": 5, "checkpoint": 5}, seconds_spent=6.0)
    assert steps == int((60 - 6 - 12) / 3.4) == 12
    assert budget_steps(BudgetConfig(minutes=1), 7, timing, {"validation": 0, "checkpoint": 10}) == int((60 - 2) / 1.2)


def test_a_minutes_budget_is_planned_again_once_from_the_runs_own_pace():
    # the probe said 0.1 s per step (1000 steps in 100 s); the first 100 steps took 20 s (0.2 s each)
    timing = {"step": 0.1, "validation": 3.0, "checkpoint": 1.0, "seconds_before_training": 5.0}
    state = TrainState(step=100, total_steps=1000, timing=timing, seconds=25.0)
    trainer = SimpleNamespace(config=SimpleNamespace(training=SimpleNamespace(budget=BudgetConfig(minutes=100 / 60))),
                              state=state, clock=SimpleNamespace(tick=lambda _: None), shard=Shard())
    replan(trainer)
    assert state.total_steps == 100 + int((100 - 25 - 4) / 0.2) == 455
    assert timing["replanned_at_step"] == 100
    state.step, state.seconds = 200, 45.0
    replan(trainer)
    assert state.total_steps == 455, "planned again only once: a resumed run keeps the plan"


@pytest.mark.slow
def test_a_minutes_budget_is_timed_once_recorded_and_kept(cli, tmp_path, phantom_dir, tiny_profile):
    run = tmp_path / "run"
    minutes = 0.4  # long enough that the probe, a validation and a checkpoint are a small part of it
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--out", run, "--device", "cpu", "--minutes", minutes,
                 "--set", "training.val_fraction=0.34", "--set", "training.val_every_steps=8")
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert 0 < last["step"] == summary["steps"] <= last["total_steps"], "the planned steps, or fewer if the machine slowed down"
    timing = last["training_state"]["state"]["timing"]
    assert timing["step"] > 0 and timing["validation"] > 0 and timing["checkpoint"] > 0
    # resuming with the same budget keeps the recorded step count and timing: no new timing
    again = cli("train", "--out", run, "--resume", "--data-dir", phantom_dir, "--device", "cpu")
    assert again.exit_code == 0, again.output
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["step"] == resumed["total_steps"] == last["total_steps"]
    assert resumed["training_state"]["state"]["timing"] == timing
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        pytest.skip("the machine is oversubscribed: step times change during the run, so the wall-clock bound is not checked")
    assert abs(summary["seconds"] - minutes * 60) <= 0.1 * minutes * 60, summary
