"""Validation during training: mean foreground Dice per validation case, with the model's plain
forward run by the same sliding-window core that `unetr predict` uses (`models/sliding_window.py`)
at the run's `inference` settings (overlap, windows per batch, blending) and `preprocessing.roi_size`.
"""

from __future__ import annotations

import torch
from monai.metrics import DiceMetric
from torch import nn

from unetr_app import distributed
from unetr_app.config import RunConfig
from unetr_app.device import MixedPrecision
from unetr_app.distributed import Shard
from unetr_app.models.sliding_window import SlidingWindow
from unetr_app.training.batches import as_plain_tensor, metadata_only_if_needed


class Validation:
    """`validation(model, loader)` -> {case: Dice}: this process's share, gathered from all."""

    def __init__(self, config: RunConfig, device: torch.device, precision: MixedPrecision, shard: Shard = Shard()) -> None:
        inference = config.inference
        self.config, self.device, self.shard, self.classes = config, device, shard, config.task.out_channels
        # the model trains channels-last, so its windows go channels-last too
        self.window = SlidingWindow(config.preprocessing.roi_size, inference.sw_batch_size, inference.overlap, inference.blend_mode,
                                    amp=precision.enabled, amp_dtype=precision.dtype, memory_format=torch.channels_last_3d)
        self.dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)

    @torch.no_grad()
    def __call__(self, model: nn.Module, loader) -> dict[str, float]:
        model.eval()
        scores: dict[str, float] = {}
        with metadata_only_if_needed(self.config):
            for batch in loader:
                scores.update(self.score(model, batch))
        model.train()
        return {name: score for part in distributed.all_gather(scores, self.shard) for name, score in part.items()}

    def score(self, model: nn.Module, batch) -> dict[str, float]:
        image = as_plain_tensor(batch["image"]).to(self.device)
        logits = self.window(model, image)
        prediction = _one_hot(logits.argmax(dim=1, keepdim=True), self.classes)
        truth = _one_hot(as_plain_tensor(batch["label"]).to(self.device), self.classes)
        dice = self.dice(prediction, truth)  # (batch, classes without background)
        return {name: float(row.mean()) for name, row in zip(batch["case"], dice)}


def _one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), classes).movedim(-1, 1).float()
