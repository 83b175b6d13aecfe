"""The training loop, the same for every recipe: one optimizer step per batch until the budget is spent.

Each step: the batch goes to the device as plain (channels-last) tensors, `parts = recipe(batch)`,
backward on `parts["loss"]` (AMP on CUDA, optional gradient clipping), the optimizer steps at the
schedule's LR, then `recipe.after_step(step, total)`. Every `log_every_steps` a metrics line records
the mean of each loss part; every `val_every_steps` the model's plain forward is scored with
sliding-window Dice; `last.pt` is written every `checkpoint_every_steps` and `best.pt` when the
validation Dice improves (without validation, best is the last).

The budget is fixed in steps before the first step (a minutes budget is timed first) and recorded,
so a resumed run ends where an uninterrupted one would. Each epoch reseeds the data pipeline from
(seed, epoch, rank), and a run resumed mid-epoch replays the epoch's first batches without training
on them: it draws the same crops and augmentations as one that was never stopped.

Under torchrun, DistributedDataParallel wraps only `recipe.model`; rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor, get_track_meta, set_track_meta
from monai.data.utils import set_rnd
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from torch import nn

from unetr_app import distributed
from unetr_app.config import BudgetConfig, RunConfig
from unetr_app.distributed import Shard
from unetr_app.errors import CheckpointError, UnetrError, UsageError
from unetr_app.io.checkpoint import load_checkpoint, save_checkpoint
from unetr_app.training.optim import Schedule, build_optimizer, parameter_groups, remember_initial_lr
from unetr_app.training.recipes import Recipe, build_recipe
from unetr_app.training.records import RunRecords

log = logging.getLogger(__name__)

TIMING_STEPS = 3  # steps timed (after one warm-up step) to turn a minutes budget into steps


class TrainingInterrupted(UnetrError):
    exit_code = 130


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    epoch: int = 0  # passes over the training cases completed (bookkeeping and data seeding)
    epoch_start_step: int = 0  # the step at which the current pass began
    total_steps: int = 0  # the budget in steps, fixed before the first step
    budget: dict[str, Any] = field(default_factory=dict)  # the budget total_steps was planned for
    timing: dict[str, float] = field(default_factory=dict)  # a minutes budget's timed seconds per step, validation, checkpoint
    best_val_dice: float = -1.0
    best_step: int = 0
    seconds: float = 0.0  # training time over all sessions of this run
    window: dict[str, float] = field(default_factory=dict)  # loss-part sums since the last metrics line
    window_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains `recipe.model` (a model passed alone gets the config's recipe) until the budget is spent."""

    def __init__(self, config: RunConfig, model: nn.Module, device: torch.device, run_dir: Path, reporter=None,
                 shard: Shard = Shard(), checkpoint_extras: dict[str, Any] | None = None):
        self.config, self.device, self.run_dir, self.shard = config, device, Path(run_dir), shard
        self.recipe = model if isinstance(model, Recipe) else build_recipe(config.recipe.name, model, config, config.recipe.params)
        # channels-last 3D convolutions run 1.4-1.8x faster on CPU here (oneDNN); same numbers on GPU
        self.model = self.recipe.model.to(device, memory_format=torch.channels_last_3d)
        self.recipe.to(device)
        extra = [(f"recipe.{n}", p) for n, p in self.recipe.named_parameters() if p.requires_grad and not n.startswith("model.")]
        self.extra_params = [p for _, p in extra]
        self.trainable = [p for p in self.model.parameters() if p.requires_grad] + self.extra_params
        self.optimizer = build_optimizer(parameter_groups(self.model, config.optimizer, extra), config.optimizer)
        remember_initial_lr(self.optimizer)
        self.amp = config.training.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
        self.state = TrainState()
        self.records = RunRecords(self.run_dir)
        self.reporter = reporter if (reporter and shard.is_main) else _SilentReporter()
        self.checkpoint_extras = dict(checkpoint_extras or {})
        self.val_loader = None
        self._window: dict[str, torch.Tensor] = {}
        self._restored_rng: list[dict[str, Any]] | None = None
        self._out_of_time = False
        if shard.distributed:
            ids = [device.index] if device.type == "cuda" else None
            # some models hold parameters their forward never uses (MONAI UNETR's cross-attention
            # norms); without this DDP would wait for their gradients and never average the others
            self.recipe.model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.config.schedule, self.state.total_steps)

    # --- the loop -------------------------------------------------------------------------

    def fit(self, train_loader, val_loader=None) -> TrainState:
        self.val_loader = val_loader if self.config.training.val_every_steps else None
        self.plan(train_loader)
        self._restore_rng()
        if self.shard.is_main:
            self.records.restart_metrics(self.state.history)
        self.reporter.start(first_step=self.state.step, total_steps=self.state.total_steps)
        self._clock = time.perf_counter()
        try:
            while not self._finished():
                self._run_epoch(train_loader)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted at step {self.state.step}; the last checkpoint is "
                f"{self.run_dir / 'checkpoints' / 'last.pt'}; continue with `unetr train --resume --out {self.run_dir}`"
            ) from None
        finally:
            self.reporter.stop()
        return self.state

    def _finished(self) -> bool:
        return self.state.step >= self.state.total_steps or self._out_of_time

    def _run_epoch(self, loader) -> None:
        epoch = self.state.epoch + 1
        self._seed_epoch(epoch, loader)
        done = self.state.step - self.state.epoch_start_step  # batches of this pass trained before a resume
        self.model.train()
        with self.metadata_only_if_needed():
            for batch in itertools.islice(loader, done, None):
                self.train_step(batch)
                self.reporter.step_done()
                self._after_step()
                if self._finished():
                    return
        self.state.epoch, self.state.epoch_start_step = epoch, self.state.step

    def train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One optimizer step on one batch; returns the recipe's parts."""
        parts = self._optimizer_step(self._to_device(batch), self.state.step, self.state.total_steps)
        self.state.step += 1
        self._accumulate(parts)
        return parts

    def _optimizer_step(self, batch: dict[str, Any], step: int, total: int) -> dict[str, torch.Tensor]:
        Schedule(self.config.schedule, total).apply(self.optimizer, step)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, enabled=self.amp):
            parts = self.recipe(batch)
        self.scaler.scale(parts["loss"]).backward()
        self._average_extra_gradients()
        if self.config.training.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.trainable, self.config.training.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.recipe.after_step(step + 1, total)
        return parts

    def _average_extra_gradients(self) -> None:
        """DDP averages the model's gradients; trainable parts of the recipe outside it are averaged here."""
        if not self.shard.distributed:
            return
        for param in self.extra_params:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad /= self.shard.world_size

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        moved = {key: _move(value, self.device) for key, value in batch.items()}
        if "image" in moved:  # self-supervised batches carry crops under other names
            moved["image"] = to_channels_last(moved["image"])
        return moved

    def _accumulate(self, parts: dict[str, torch.Tensor]) -> None:
        for name, value in parts.items():
            if name != "output" and isinstance(value, torch.Tensor) and value.numel() == 1:
                total = self._window.get(name, torch.zeros((), dtype=torch.float64, device=value.device))
                self._window[name] = total + value.detach().double()
        self.state.window_steps += 1

    def _window_sums(self) -> dict[str, float]:
        """This session's sums plus those restored from the checkpoint (a resume mid-interval)."""
        sums = dict(self.state.window)
        for name, value in self._window.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        return sums

    # --- lines, validation and checkpoints ------------------------------------------------

    def _after_step(self) -> None:
        train, step = self.config.training, self.state.step
        if step % train.line_every_steps == 0:
            self._check_time()
        last = self._finished()
        validate = self.val_loader is not None and (last or step % train.val_every_steps == 0)
        line_due = validate or last or step % train.line_every_steps == 0
        checkpoint_due = last or (step % train.checkpoint_every_steps == 0 if train.checkpoint_every_steps else line_due)
        line = self._metrics_line(validate) if line_due else None
        improved = line is not None and self._track_best(line, checkpoint_due)
        if checkpoint_due:
            self._tick()
            self.save(self.run_dir / "checkpoints" / "last.pt", with_training_state=True)
        if improved:
            self.save(self.run_dir / "checkpoints" / "best.pt", with_training_state=False)
        if line is not None:
            # checkpoint first, then the metrics line: the checkpoint's history is the truth on resume
            if self.shard.is_main:
                self.records.append_metrics(line)
            self.reporter.line_done(line, self.state)

    def _metrics_line(self, validate: bool) -> dict[str, Any]:
        means = self._window_means()
        line: dict[str, Any] = {
            "step": self.state.step,
            "epoch": round(self.state.step / max(self._steps_per_epoch, 1), 3),
            "lr": self.config.optimizer.lr * self.schedule.factor(self.state.step),
            **means,
        }
        if validate:
            per_case = self.validate(self.val_loader)
            line["val_dice"] = float(np.mean(list(per_case.values()))) if per_case else float("nan")
            line["val_dice_per_case"] = per_case
        self._tick()
        line["seconds"] = round(self.state.seconds, 2)
        self.state.history.append(line)
        return line

    def _window_means(self) -> dict[str, float]:
        """Mean of each loss part since the last line, over steps and processes; restarts the window."""
        sums = self._window_sums()
        everyone = distributed.all_gather((sums, self.state.window_steps), self.shard)
        steps = sum(n for _, n in everyone) or 1
        means = {k: sum(s.get(k, 0.0) for s, _ in everyone) / steps for k in sums}
        self._window, self.state.window, self.state.window_steps = {}, {}, 0
        return means

    def _track_best(self, line: dict[str, Any], checkpoint_due: bool) -> bool:
        if "val_dice" in line:
            improved = line["val_dice"] > self.state.best_val_dice
            if improved:
                self.state.best_val_dice = line["val_dice"]
        else:
            improved = self.val_loader is None and checkpoint_due  # without validation, best is the last
        if improved:
            self.state.best_step = self.state.step
        return improved

    @torch.no_grad()
    def validate(self, loader) -> dict[str, float]:
        """Mean foreground Dice per validation case (this process's share, gathered from all)."""
        self.model.eval()
        scores: dict[str, float] = {}
        with self.metadata_only_if_needed():
            for batch in loader:
                scores.update(self._validate_batch(batch))
        self.model.train()
        return {name: score for part in distributed.all_gather(scores, self.shard) for name, score in part.items()}

    def _validate_batch(self, batch) -> dict[str, float]:
        inference, classes = self.config.inference, self.config.task.out_channels
        image = as_plain_tensor(batch["image"]).to(self.device)
        with torch.autocast(self.device.type, enabled=self.amp):
            logits = sliding_window_inference(
                image, self.config.preprocessing.roi_size, inference.sw_batch_size, lambda window: self.model(to_channels_last(window)),
                overlap=inference.overlap, mode=inference.blend_mode,
            )
        prediction = _one_hot(logits.argmax(dim=1, keepdim=True), classes)
        truth = _one_hot(as_plain_tensor(batch["label"]).to(self.device), classes)
        dice = self.dice(prediction, truth)  # (batch, classes without background)
        return {name: float(row.mean()) for name, row in zip(batch["case"], dice)}

    @contextlib.contextmanager
    def metadata_only_if_needed(self):
        """Fully cached data needs no metadata: random crops and the network run faster on plain tensors."""
        previous = get_track_meta()
        set_track_meta(self.config.training.cache_rate < 1.0)
        try:
            yield
        finally:
            set_track_meta(previous)

    # --- the budget -----------------------------------------------------------------------

    def plan(self, train_loader) -> int:
        """Fix the run's length in steps (kept from the checkpoint when the budget is unchanged)."""
        self._steps_per_epoch = len(train_loader)
        if not self._steps_per_epoch:
            raise UsageError("the training loader is empty: no training cases (check the dataset and training.val_fraction)")
        budget = self.config.training.budget
        if self.state.total_steps and self.state.budget == budget.model_dump():
            return self.state.total_steps
        if budget.minutes is not None and not self.state.timing:
            self.state.timing = self._time_costs(train_loader)
        train = self.config.training
        intervals = {"validation": train.val_every_steps if self.val_loader is not None else 0,
                     "checkpoint": train.checkpoint_every_steps or train.line_every_steps}
        total = budget_steps(budget, len(train_loader), self.state.timing, intervals, self.state.seconds)
        self.state.total_steps = max(total, self.state.step, 1)
        self.state.budget = budget.model_dump()
        log.info("budget: %d optimizer steps (%.1f passes over the training cases)", self.state.total_steps, self.state.total_steps / max(len(train_loader), 1))
        return self.state.total_steps

    def _time_costs(self, loader) -> dict[str, float]:
        """Seconds per step, per validation and per checkpoint, from a few steps that are then undone
        (the schedule needs the step count before the first real step). The slowest process counts."""
        started = time.perf_counter()
        weights, optimizer, scaler = copy.deepcopy(self.recipe.state_dict()), copy.deepcopy(self.optimizer.state_dict()), self.scaler.state_dict()
        rng = _rng_state()
        self.model.train()
        with self.metadata_only_if_needed():
            batches = [self._to_device(b) for b in itertools.islice(itertools.cycle(loader), TIMING_STEPS + 1)]
            self._optimizer_step(batches[0], 0, TIMING_STEPS + 1)  # warm-up: allocation and kernel choice
            costs = {"step": self._seconds(lambda: [self._optimizer_step(b, i, TIMING_STEPS + 1) for i, b in enumerate(batches[1:], 1)]) / TIMING_STEPS}
        costs["validation"] = self._seconds(lambda: self.validate(self.val_loader)) if self.val_loader is not None else 0.0
        probe = self.run_dir / "checkpoints" / ".timing.pt"
        costs["checkpoint"] = self._seconds(lambda: self.save(probe, with_training_state=True))
        probe.unlink(missing_ok=True)
        self.recipe.load_state_dict(weights)
        self.optimizer.load_state_dict(optimizer)
        self.scaler.load_state_dict(scaler)
        _set_rng_state(rng)
        self.state.seconds += time.perf_counter() - started
        everyone = distributed.all_gather(costs, self.shard)
        return {key: max(c[key] for c in everyone) for key in costs}

    def _seconds(self, work) -> float:
        self._sync()
        clock = time.perf_counter()
        work()
        self._sync()
        return time.perf_counter() - clock

    def _check_time(self) -> None:
        """A minutes budget stops early, whatever the plan said, when going on to the next metrics line
        (its steps, a validation and a checkpoint at their timed cost) would pass 110% of it: the
        machine got slower than when it was timed. Rank 0 decides for all."""
        minutes, timing = self.config.training.budget.minutes, self.state.timing
        if minutes is None or not timing:
            return
        self._tick()
        next_line = self.config.training.line_every_steps * timing["step"] + timing["validation"] + timing["checkpoint"]
        late = distributed.broadcast_from_main(self.state.seconds + next_line > 1.1 * minutes * 60, self.shard)
        if late and not self._out_of_time:
            log.warning("stopping at step %d: %.0f s spent of a %.1f-minute budget", self.state.step, self.state.seconds, minutes)
            self._out_of_time = True
            self.state.total_steps = self.state.step  # the budget is spent: a resume with it has nothing left to train

    def _tick(self) -> None:
        now = time.perf_counter()
        self.state.seconds += now - self._clock
        self._clock = now

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # --- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, with_training_state: bool) -> dict[str, Any]:
        cfg = self.config
        data: dict[str, Any] = {
            **self.checkpoint_extras,
            # the recipe's heads (distillation=True, aux_heads=True) are part of the network to rebuild
            **cfg.checkpoint_description({**cfg.model_kwargs(), **type(self.recipe).model_kwargs(dict(cfg.recipe.params))}),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "recipe": {"name": cfg.recipe.name, "params": dict(cfg.recipe.params), "extra_state": self.recipe.extra_state()},
            "step": self.state.step,
            "epoch": self.state.epoch,
            "total_steps": self.state.total_steps,
            "best_val_dice": self.state.best_val_dice,
            "best_step": self.state.best_step,
            "config": cfg.to_dict(),
        }
        if with_training_state:
            state = asdict(self.state)
            state["window"] = self._window_sums()
            data["training_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": distributed.all_gather(_rng_state(), self.shard),
                "state": state,
            }
        return data

    def save(self, path: Path, with_training_state: bool) -> None:
        data = self.checkpoint(with_training_state)  # every process: it gathers the RNG states
        if self.shard.is_main:
            save_checkpoint(path, data)

    def restore(self, path: Path) -> None:
        """Weights, optimizer, scaler, recipe state, counters and history from last.pt; RNG when fit() starts."""
        data = load_checkpoint(path)
        if "training_state" not in data or "state" not in data["training_state"]:
            raise CheckpointError(f"{path}: has no training state of this unetr version (best.pt cannot be resumed; use last.pt)")
        training = data["training_state"]
        self.model.load_state_dict(data["state_dict"])
        self.optimizer.load_state_dict(training["optimizer"])
        self.scaler.load_state_dict(training["scaler"])
        self.recipe.load_extra_state(data["recipe"]["extra_state"])
        self.state = TrainState(**training["state"])
        self._restored_rng = training["rng"]

    def _restore_rng(self) -> None:
        if self._restored_rng:
            _set_rng_state(self._restored_rng[self.shard.rank % len(self._restored_rng)])
            self._restored_rng = None

    def _seed_epoch(self, epoch: int, loader) -> None:
        seed = self.config.training.seed * 100_003 + epoch + 7_919 * self.shard.rank
        set_rnd(loader.dataset, seed=seed)
        if getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(seed)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)


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


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return as_plain_tensor(value).to(device, non_blocking=True)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(_move(v, device) for v in value)
    return value


def as_plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata: every op on a MetaTensor pays for a metadata dispatch."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), classes).movedim(-1, 1).float()


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python: the same config and seed give the same initial weights."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _SilentReporter:
    def start(self, **_): ...
    def step_done(self): ...
    def line_done(self, line, state): ...
    def stop(self): ...


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
