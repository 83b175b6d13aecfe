"""The default recipe: the model's logits against the labels with the configured loss (DiceCE)."""

from __future__ import annotations

from typing import Any

import torch

from unetr_app.training.recipes.base import Recipe, register_recipe


@register_recipe
class Supervised(Recipe):
    name = "supervised"

    def __init__(self, model, config, **params: Any) -> None:
        super().__init__(model, config, **params)
        from monai.losses import DiceCELoss

        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        output = self.model(batch["image"])
        return {"loss": self.loss_fn(output, batch["label"]), "output": output}
