"""Self-distillation with auxiliary decoder heads ("Be Your Own Teacher", Zhang et al., ICCV 2019),
and deep supervision alone as its control.

The model is built with `aux_heads=True`: each shallower decoder stage gets its own segmentation
head (upsampled to the input size) and a 1x1 bottleneck that maps its features onto the deepest
stage's channels and grid (the "hint"). The deepest head is the teacher of the shallower ones,
inside one network and one training run. With w_i the weight of head i (i = 0 the deepest,
full-resolution head; i = 1, 2, 3 the heads at 1/2, 1/4, 1/8 of its grid), by `mode`:

    byot (default):    (1 - alpha) * sum_i w_i DiceCE(head_i, y)            (the configured loss.name)
                       + alpha * sum_{i>0} w_i T^2 KL(softmax(deepest/T) || softmax(head_i/T))
                       + feature_weight * sum_{i>0} w_i mean (hint_i - deep_features)^2
    deep_supervision:  sum_i w_i DiceCE(head_i, y): labels only, no KL and no hint (the control
                       that tells what the teacher terms add over the extra heads)

with the deepest head's logits and features detached where they act as the teacher (the deepest
head learns from the labels only). Prediction uses the deepest head alone (the model's eval forward).

`weights`: "halving" (default) is w_i = 1/2^i normalised to sum 1; "nnunet" is the same with the
coarsest head's weight 0 (nnU-Net's deep supervision); "equal" is w_i = 1, the paper's plain sum.

Parameters: the paper uses alpha 0.3 and T 3; its public re-implementation defaults to alpha 0.1,
T 3 and a feature weight of 1e-6 on a squared distance summed over every element. We average the
feature term over elements instead, so the weight does not depend on the crop size, and use 0.03.
Defaults: alpha 0.3, T 3 (the paper's).

    recipe: {name: self_distill, params: {mode: byot, weights: halving, alpha: 0.3, temperature: 3.0}}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from unetr_app.training.losses import at_least_float32, build_loss
from unetr_app.training.objectives import deep_supervision_weights, soft_distillation
from unetr_app.training.recipes.base import Recipe, RecipeParams, one_of, register_recipe, train_outputs

MODES = ("byot", "deep_supervision")
WEIGHTS = ("halving", "nnunet", "equal")


def feature_hint_loss(hint: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between an aux stage's hint and the (detached) deepest features."""
    if hint.shape != target.shape:
        raise ValueError(
            f"self_distill: a hint feature has shape {tuple(hint.shape)} but the deepest features have "
            f"{tuple(target.shape)}; the model's hint bottleneck must map to the deepest stage's channels and grid"
        )
    return F.mse_loss(at_least_float32(hint), at_least_float32(target))


def head_weights(scheme: str, heads: int) -> list[float]:
    """w_i of `heads` heads, the deepest (full-resolution) head first (see the module docstring)."""
    if scheme == "equal":
        return [1.0] * heads
    return deep_supervision_weights(heads, coarsest_zero=scheme == "nnunet")


def self_distillation_loss(
    outputs: dict[str, Any],
    label: torch.Tensor,
    task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    alpha: float,
    temperature: float,
    feature_weight: float,
    weights: Sequence[float] | None = None,
    mode: str = "byot",
) -> dict[str, torch.Tensor]:
    """The total loss and its parts from a `forward_train` dict (see the module docstring).

    `weights`: one per head, the deepest first (None: all 1). The parts are weighted as in the loss,
    except `task_loss`, the deepest head's unweighted task loss."""
    deepest, aux = outputs["logits"], list(outputs["aux_logits"])
    hints, deep_features = list(outputs["hint_features"]), outputs["deep_features"].detach()
    if not aux or len(hints) != len(aux):
        raise ValueError(
            f"self_distill: the model gave {len(aux)} auxiliary heads and {len(hints)} hint features; "
            "it needs at least one head and one hint per head (build it with aux_heads=True)"
        )
    weights = list(weights) if weights is not None else [1.0] * (len(aux) + 1)
    if len(weights) != len(aux) + 1:
        raise ValueError(f"self_distill: {len(weights)} head weights for {len(aux) + 1} heads")
    deep_weight, aux_weights = weights[0], weights[1:][::-1]  # aux heads come shallowest (coarsest) first
    deep_task = task_loss(deepest, label)
    aux_task = torch.stack([w * task_loss(logits, label) for w, logits in zip(aux_weights, aux)]).sum()
    labels_only = deep_weight * deep_task + aux_task
    if mode == "deep_supervision":
        return {"loss": labels_only, "task_loss": deep_task, "aux_task_loss": aux_task}
    teacher = deepest.detach()
    kd = torch.stack([w * soft_distillation(logits, teacher, temperature) for w, logits in zip(aux_weights, aux)]).sum()
    hint = torch.stack([w * feature_hint_loss(h, deep_features) for w, h in zip(aux_weights, hints)]).sum()
    loss = (1 - alpha) * labels_only + alpha * kd + feature_weight * hint
    return {"loss": loss, "task_loss": deep_task, "aux_task_loss": aux_task, "kd_loss": kd, "hint_loss": hint}


class SelfDistillParams(RecipeParams):
    """`recipe.params` of the self_distill recipe."""

    alpha: float = Field(0.3, ge=0, le=1, description="weight of the deepest head's teaching")
    temperature: float = Field(3.0, gt=0)
    feature_weight: float = Field(0.03, ge=0, description="weight of the feature hints")
    mode: str = Field("byot", description="one of MODES")
    weights: str = Field("halving", description="head weights: one of WEIGHTS")

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        return one_of(value, MODES)

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value: str) -> str:
        return one_of(value, WEIGHTS)


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
        weights = head_weights(p["weights"], len(outputs["aux_logits"]) + 1)
        parts = self_distillation_loss(outputs, batch["label"], self.task_loss, p["alpha"], p["temperature"],
                                       p["feature_weight"], weights, p["mode"])
        logged = {name: value.detach() for name, value in parts.items() if name != "loss"}
        return {"loss": parts["loss"], "output": outputs["logits"], **logged}
