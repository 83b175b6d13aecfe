"""The default recipe: the model's logits against the labels with the configured loss (`loss.name`)."""

from __future__ import annotations

from typing import Any

import torch

from unetr_app.training.losses import build_loss
from unetr_app.training.recipes.base import Recipe, register_recipe


@register_recipe
class Supervised(Recipe):
    name = "supervised"

    def __init__(self, model, config, **params: Any) -> None:
        super().__init__(model, config, **params)  # it takes no params: any is an error naming it
        self.loss_fn = build_loss(config.loss)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        output = self.model(batch["image"])
        return {"loss": self.loss_fn(output, batch["label"]), "output": output}
