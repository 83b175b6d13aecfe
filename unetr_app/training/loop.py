"""The training loop, the same for every recipe: one optimizer step per batch until the budget is spent.

Each step: the batch goes to the device as plain channels-last tensors, `parts = recipe(batch)`,
backward on `parts["loss"]` (AMP on CUDA, optional gradient clipping), the optimizer steps at the
schedule's LR, then `recipe.after_step(step, total)`. Every `training.log_every_steps` (default: at
each validation) a metrics line holds the mean of each loss part; every `val_every_steps` the model
is scored; last.pt is written every `checkpoint_every_steps` (default: with each line) and best.pt
when the validation Dice improves (without validation, best is the last). A run resumed mid-epoch
replays the epoch's first batches without training on them, so it draws what one never stopped would.

Beside it: budget.py (the budget in steps, the wall clock), validation.py (Dice), state.py (the
checkpoint's fields, the loss-part window, RNG), batches.py (to the device), io/run_dir.py (files).
Under torchrun the recipe wraps its trainable model for DDP; rank 0 alone writes files.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unetr_app.config import RunConfig
from unetr_app.device import mixed_precision
from unetr_app.distributed import Shard
from unetr_app.errors import UnetrError
from unetr_app.io.checkpoint import save_checkpoint
from unetr_app.io.run_dir import RunDir
from unetr_app.training import budget, state as run_state
from unetr_app.training.batches import metadata_only_if_needed, to_device
from unetr_app.training.optim import Schedule, build_optimizer, parameter_groups, remember_initial_lr
from unetr_app.training.recipes import Recipe, build_recipe, model_arguments
from unetr_app.training.progress import SilentReporter
from unetr_app.training.records import RunRecords
from unetr_app.training.state import LossWindow, TrainState
from unetr_app.training.validation import Validation


class TrainingInterrupted(UnetrError):
    exit_code = 130


class Trainer:
    """Trains `recipe.model` (a model passed alone gets the config's recipe) until the budget is spent."""

    def __init__(self, config: RunConfig, model: nn.Module, device: torch.device, run_dir: Path, reporter=None,
                 shard: Shard = Shard(), checkpoint_extras: dict[str, Any] | None = None, model_kwargs: dict[str, Any] | None = None):
        self.config, self.device, self.shard, self.run = config, device, shard, RunDir(run_dir)
        self.run_dir = self.run.path
        self.recipe = model if isinstance(model, Recipe) else build_recipe(config.recipe.name, model, config, config.recipe.params)
        self.model_kwargs = model_kwargs if model_kwargs is not None else model_arguments(config, type(self.recipe))  # what rebuilds the network
        # channels-last 3D convolutions are part of the training step's measured CPU speed-up
        # (benchmarks/results/train_throughput_cpu.json); prediction, measured alone, gained nothing from them on CPU
        self.model = self.recipe.model.to(device, memory_format=torch.channels_last_3d)
        self.recipe.to(device)
        extra = [(f"recipe.{n}", p) for n, p in self.recipe.named_parameters() if p.requires_grad and not n.startswith("model.")]
        self.extra_params = [p for _, p in extra]
        self.trainable = [p for p in self.model.parameters() if p.requires_grad] + self.extra_params
        self.optimizer = build_optimizer(parameter_groups(self.model, config.optimizer, extra), config.optimizer)
        remember_initial_lr(self.optimizer)
        self.precision = mixed_precision(device, config.training.amp, config.training.cpu_amp)
        self.scaler = self.precision.scaler()
        self.validation = Validation(config, device, self.precision, shard)
        self.state, self.window, self.clock = TrainState(), LossWindow(), budget.Clock()
        self.records = RunRecords(self.run)
        self.reporter = reporter if (reporter and shard.is_main) else SilentReporter()
        self.checkpoint_extras = dict(checkpoint_extras or {})
        self.val_loader = None
        self.out_of_time = False
        self._restored_rng: list[dict[str, Any]] | None = None
        if shard.distributed:
            self.recipe.distribute([device.index] if device.type == "cuda" else None)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.config.schedule, self.state.total_steps)

    def fit(self, train_loader, val_loader=None) -> TrainState:
        self.val_loader = val_loader if self.config.training.val_every_steps else None
        self.steps_per_epoch = len(train_loader)
        budget.plan(self, train_loader)
        if self._restored_rng:  # after plan(): its timing probe must not advance the generators
            run_state.set_rng_state(self._restored_rng[self.shard.rank % len(self._restored_rng)])
            self._restored_rng = None
        if self.shard.is_main:
            self.records.restart_metrics(self.state.history)
        self.reporter.start(first_step=self.state.step, total_steps=self.state.total_steps)
        self.clock = budget.Clock()
        try:
            while not self.finished:
                self._run_epoch(train_loader)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted at step {self.state.step}; the last checkpoint is {self.run.last}; "
                f"continue with `unetr train --resume --out {self.run_dir}`"
            ) from None
        finally:
            self.reporter.stop()
        return self.state

    @property
    def finished(self) -> bool:
        return self.state.step >= self.state.total_steps or self.out_of_time

    def _run_epoch(self, loader) -> None:
        epoch = self.state.epoch + 1
        run_state.seed_epoch(loader, self.config.training.seed, epoch, self.shard.rank)
        done = self.state.step - self.state.epoch_start_step  # batches of this pass trained before a resume
        self.model.train()
        with metadata_only_if_needed(self.config):
            for batch in itertools.islice(loader, done, None):
                self.train_step(batch)
                self.reporter.step_done()
                self._after_step()
                if self.finished:
                    return
        self.state.epoch, self.state.epoch_start_step = epoch, self.state.step

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch; returns the recipe's parts."""
        parts = self.optimizer_step(self.to_device(batch), self.state.step, self.state.total_steps)
        self.state.step += 1
        self.window.add(parts, self.state)
        return parts

    def optimizer_step(self, batch: dict[str, Any], step: int, total: int) -> dict[str, torch.Tensor]:
        Schedule(self.config.schedule, total).apply(self.optimizer, step)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast(self.device):
            parts = self.recipe(batch)
        self.scaler.scale(parts["loss"]).backward()
        self.recipe.average_gradients(self.extra_params, self.shard)
        if self.config.training.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.trainable, self.config.training.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.recipe.after_step(step + 1, total)
        return parts

    def to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return to_device(batch, self.device)

    def validate(self, loader) -> dict[str, float]:
        return self.validation(self.model, loader)

    def _after_step(self) -> None:
        train, step = self.config.training, self.state.step
        if step % train.line_every_steps == 0 and budget.out_of_time(self):
            self.out_of_time = True
        last = self.finished
        validate = self.val_loader is not None and (last or step % train.val_every_steps == 0)
        line_due = validate or last or step % train.line_every_steps == 0
        checkpoint_due = last or (step % train.checkpoint_every_steps == 0 if train.checkpoint_every_steps else line_due)
        line = self._metrics_line(validate) if line_due else None
        improved = line is not None and self.state.track_best(line, self.val_loader is not None, checkpoint_due)
        if checkpoint_due:
            self.clock.tick(self.state)
            self.save(self.run.last, with_training_state=True)
        if improved:
            self.save(self.run.best, with_training_state=False)
        if line is not None:
            # checkpoint first, then the metrics line: the checkpoint's history is the truth on resume
            if self.shard.is_main:
                self.records.append_metrics(line)
            self.reporter.line_done(line, self.state)

    def _metrics_line(self, validate: bool) -> dict[str, Any]:
        line: dict[str, Any] = {
            "step": self.state.step,
            "epoch": round(self.state.step / max(self.steps_per_epoch, 1), 3),
            "lr": self.config.optimizer.lr * self.schedule.factor(self.state.step),
            **self.window.means(self.state, self.shard),
        }
        if validate:
            per_case = self.validate(self.val_loader)
            line["val_dice"] = float(np.mean(list(per_case.values()))) if per_case else float("nan")
            line["val_dice_per_case"] = per_case
        self.clock.tick(self.state)
        line["seconds"] = round(self.state.seconds, 2)
        self.state.history.append(line)
        return line

    def save(self, path: Path, with_training_state: bool) -> None:
        data = run_state.checkpoint(self, with_training_state)  # every process: it gathers the RNG states
        if self.shard.is_main:
            save_checkpoint(path, data)

    def restore(self, path: Path) -> None:
        """Everything but the RNG state from last.pt; the RNG state is set when fit() starts."""
        self._restored_rng = run_state.restore(self, path)
