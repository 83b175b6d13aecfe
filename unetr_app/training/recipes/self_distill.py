"""Self-distillation with auxiliary decoder heads ("Be Your Own Teacher", Zhang et al., ICCV 2019).

The model is built with `aux_heads=True`: each shallower decoder stage gets its own segmentation
head (upsampled to the input size) and a 1x1 bottleneck that maps its features onto the deepest
stage's channels and grid (the "hint"). The deepest head is the teacher of the shallower ones,
inside one network and one training run:

    loss = (1 - alpha) * sum over all heads i of DiceCE(head_i, y)      (the configured loss.name)
         + alpha * sum over aux heads i of T^2 KL(softmax(deepest/T) || softmax(head_i/T))
         + feature_weight * sum over aux heads i of mean (hint_i - deep_features)^2

with the deepest head's logits and features detached where they act as the teacher (the deepest
head learns from the labels only). Prediction uses the deepest head alone (the model's eval forward).

Defaults: alpha 0.3 and T 3 follow the paper and its public re-implementation. The paper's
feature term is a summed squared L2 distance with a tiny weight (the re-implementation uses 1e-6 on
a sum over every element); we average over elements instead, so the weight does not depend on the
crop size, and use 0.03.

    recipe: {name: self_distill, params: {alpha: 0.3, temperature: 3.0, feature_weight: 0.03}}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from unetr_app.training.losses import build_loss
from unetr_app.training.recipes.base import Recipe, RecipeParams, register_recipe, train_outputs
from unetr_app.training.recipes.distill import soft_distillation_loss


def feature_hint_loss(hint: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between an aux stage's hint and the (detached) deepest features."""
    if hint.shape != target.shape:
        raise ValueError(
            f"self_distill: a hint feature has shape {tuple(hint.shape)} but the deepest features have "
            f"{tuple(target.shape)}; the model's hint bottleneck must map to the deepest stage's channels and grid"
        )
    return F.mse_loss(hint.float(), target.float())


def self_distillation_loss(
    outputs: dict[str, Any],
    label: torch.Tensor,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    alpha: float,
    temperature: float,
    feature_weight: float,
) -> dict[str, torch.Tensor]:
    """The total loss and its parts from a `forward_train` dict (see the module docstring)."""
    deepest, aux = outputs["logits"], list(outputs["aux_logits"])
    hints, deep_features = list(outputs["hint_features"]), outputs["deep_features"].detach()
    if not aux or len(hints) != len(aux):
        raise ValueError(
            f"self_distill: the model gave {len(aux)} auxiliary heads and {len(hints)} hint features; "
            "it needs at least one head and one hint per head (build it with aux_heads=True)"
        )
    teacher = deepest.detach()
    deep_task = task_loss(deepest, label)
    aux_task = torch.stack([task_loss(logits, label) for logits in aux]).sum()
    kd = torch.stack([soft_distillation_loss(logits, teacher, temperature) for logits in aux]).sum()
    hint = torch.stack([feature_hint_loss(h, deep_features) for h in hints]).sum()
    loss = (1 - alpha) * (deep_task + aux_task) + alpha * kd + feature_weight * hint
    return {"loss": loss, "task_loss": deep_task, "aux_task_loss": aux_task, "kd_loss": kd, "hint_loss": hint}


class SelfDistillParams(RecipeParams):
    """`recipe.params` of the self_distill recipe."""

    alpha: float = Field(0.3, ge=0, le=1, description="weight of the deepest head's teaching")
    temperature: float = Field(3.0, gt=0)
    feature_weight: float = Field(0.03, ge=0, description="weight of the feature hints")


@register_recipe
class SelfDistill(Recipe):
    name = "self_distill"
    Params = SelfDistillParams
    trains_forward_train = True

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"aux_heads": True}

    def __init__(self, model, config, **params: Any) -> None:
        super().__init__(model, config, **params)
        self.task_loss = build_loss(config.loss)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        outputs = train_outputs(self.model, batch["image"])
        p = self.params
        parts = self_distillation_loss(outputs, batch["label"], self.task_loss, p["alpha"], p["temperature"], p["feature_weight"])
        logged = {name: value.detach() for name, value in parts.items() if name != "loss"}
        return {"loss": parts["loss"], "output": outputs["logits"], **logged}
