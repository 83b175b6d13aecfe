"""Distillation for segmentation from a frozen teacher, DeiT-style (Touvron et al., "Training
data-efficient image transformers & distillation through attention", ICML 2021) with the
dense-prediction objectives in place of DeiT's classification ones.

The student is built with a second output head (`distillation=True`): the main head learns the
labels with the configured loss (`loss.name`, DiceCE by default), the distillation head learns the
teacher. With weight `alpha` on the teacher, by `mode`:

    soft (default):  (1 - alpha) DiceCE(main, y) + alpha T^2 KL(softmax(teacher/T) || softmax(distill/T))
                     per voxel (summed over classes, averaged over voxels)
    hard:            (1 - alpha) DiceCE(main, y) + alpha DiceCE(distill, argmax teacher): the task loss
                     on the teacher's masks (cross-entropy alone settles on background when the
                     foreground is a few percent of the voxels)
    channel:         (1 - alpha) DiceCE(main, y) + alpha T^2 mean over classes of KL between the
                     teacher's and the student's spatial softmax of that class channel (channel-wise
                     distillation, Shu et al., ICCV 2021; their segmentation runs use T = 4)

The terms are in `unetr_app.training.objectives`. DeiT uses alpha 1/2 for hard distillation and
T = 3, alpha = 0.1 for soft. alpha = 0 keeps the distillation head but trains it on nothing: the
control arm that measures what the extra head alone does. On labelled crops a teacher's argmax is
only a noisier copy of the label; soft targets carry what the label does not (the teacher's
uncertainty at boundaries).

`prediction_head` picks what the trained model predicts (its eval forward, so `unetr predict`
needs nothing special): "average" (the mean of both heads' logits, DeiT's joint prediction),
"main" or "distillation".

    recipe: {name: distill, params: {teacher: runs/unet-teacher, mode: soft, alpha: 0.5, temperature: 3.0}}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from unetr_app.errors import CheckpointError, ConfigError
from unetr_app.models.segmentation import PREDICTION_HEADS
from unetr_app.training.losses import build_loss
from unetr_app.training.objectives import channel_distillation, hard_distillation, soft_distillation
from unetr_app.training.recipes.base import Recipe, register_recipe
from unetr_app.training.teacher import load_teacher

MODES = ("soft", "hard", "channel")


def check_params(recipe: str, given: dict[str, Any], defaults: dict[str, Any],
                 choices: dict[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Defaults filled in; an unknown key, or a value outside its `choices`, is a config error naming
    the key, the value and what is allowed."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"recipe.params.{unknown[0]}: not a parameter of recipe {recipe!r}; known: {', '.join(sorted(defaults))}"
        )
    params = {**defaults, **given}
    for key, value in params.items():
        if isinstance(defaults[key], float) and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"recipe.params.{key}: expected a number >= 0, got {value!r}")
    if not 0 <= params.get("alpha", 0) <= 1:
        raise ConfigError(f"recipe.params.alpha: expected a weight in [0, 1], got {params['alpha']!r}")
    if params.get("temperature", 1) <= 0:
        raise ConfigError(f"recipe.params.temperature: expected a number > 0, got {params['temperature']!r}")
    for key, allowed in (choices or {}).items():
        if params[key] not in allowed:
            raise ConfigError(f"recipe.params.{key}: expected one of {', '.join(allowed)}, got {params[key]!r}")
    return params


def train_outputs(model: nn.Module, image: torch.Tensor) -> dict[str, Any]:
    """`forward_train(image)` called through `model(...)`, so that a DistributedDataParallel
    wrapper runs it as its forward (and synchronises the gradients of every head)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    inner.forward = inner.forward_train  # an instance attribute shadows the class's forward
    try:
        return model(image)
    finally:
        del inner.forward


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str, temperature: float,
                      task_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The teacher's term of `mode` (see the module docstring) on the student's distillation logits."""
    if mode == "hard":
        return hard_distillation(student, teacher, task_loss)
    if mode == "channel":
        return channel_distillation(student, teacher, temperature)
    return soft_distillation(student, teacher, temperature)


@register_recipe
class Distill(Recipe):
    name = "distill"
    needs_teacher = True
    defaults = {"teacher": None, "mode": "soft", "alpha": 0.5, "temperature": 3.0, "prediction_head": "average"}

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"distillation": True, "prediction_head": params.get("prediction_head", cls.defaults["prediction_head"])}

    @classmethod
    def check(cls, config: Any) -> None:
        load_teacher(cls._params(dict(config.recipe.params))["teacher"], config)

    @classmethod
    def _params(cls, params: dict[str, Any]) -> dict[str, Any]:
        return check_params(cls.name, params, cls.defaults, {"mode": MODES, "prediction_head": PREDICTION_HEADS})

    def __init__(self, model, config, **params: Any) -> None:
        params = self._params(params)
        super().__init__(model, config, **params)
        self.task_loss = build_loss(config.loss)
        self.teacher = load_teacher(params["teacher"], config)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = batch["image"]
        outputs = train_outputs(self.model, image)
        teacher_logits = self.teacher(image)
        task = self.task_loss(outputs["logits"], batch["label"])
        p = self.params
        distill = distillation_loss(outputs["distill_logits"], teacher_logits, p["mode"], p["temperature"], self.task_loss)
        alpha = self.params["alpha"]
        return {
            "loss": (1 - alpha) * task + alpha * distill,
            "output": outputs["logits"],
            "task_loss": task.detach(),
            "distill_loss": distill.detach(),
        }

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.record()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """A resumed run must distil from the same teacher it started with."""
        recorded = (state or {}).get("teacher")
        if recorded and recorded.get("sha256") != self.teacher.sha256:
            raise CheckpointError(
                f"--teacher {self.teacher.path}: differs from the teacher this run started with "
                f"({recorded.get('path')}, sha256 {str(recorded.get('sha256'))[:12]}...); resume with that teacher"
            )
