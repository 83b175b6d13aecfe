"""DeiT-style distillation for segmentation (Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021), from a frozen teacher per voxel.

The student is built with a second output head (`distillation=True`): the main head learns the
labels with the configured loss (`loss.name`, DiceCE by default), the distillation head learns the
teacher. With weight `alpha` on the teacher:

    hard (DeiT's default):  (1 - alpha) DiceCE(main, y) + alpha CE(distill, argmax teacher)
    soft:                   (1 - alpha) DiceCE(main, y) + alpha T^2 KL(softmax(teacher/T) || softmax(distill/T))

averaged over voxels (the KL is summed over classes). DeiT uses alpha 1/2 for hard distillation
and T = 3, alpha = 0.1 for soft. At inference the model averages both heads' softmax (its eval
forward), so `unetr predict` needs nothing special.

    recipe: {name: distill, params: {teacher: runs/unet-teacher, mode: hard, alpha: 0.5, temperature: 3.0}}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unetr_app.errors import CheckpointError, ConfigError
from unetr_app.training.losses import build_loss
from unetr_app.training.recipes.base import Recipe, register_recipe
from unetr_app.training.teacher import load_teacher

MODES = ("hard", "soft")


def check_params(recipe: str, given: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in; an unknown key is a config error naming it and the known ones."""
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


def hard_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student's logits against the teacher's per-voxel argmax."""
    return F.cross_entropy(student.float(), teacher.argmax(dim=1))


def soft_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over voxels."""
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return kl.mean() * temperature**2


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, mode: str, temperature: float) -> torch.Tensor:
    if mode == "hard":
        return hard_distillation_loss(student, teacher)
    return soft_distillation_loss(student, teacher, temperature)


@register_recipe
class Distill(Recipe):
    name = "distill"
    needs_teacher = True
    defaults = {"teacher": None, "mode": "hard", "alpha": 0.5, "temperature": 3.0}

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"distillation": True}

    @classmethod
    def check(cls, config: Any) -> None:
        load_teacher(cls._params(dict(config.recipe.params))["teacher"], config)

    @classmethod
    def _params(cls, params: dict[str, Any]) -> dict[str, Any]:
        params = check_params(cls.name, params, cls.defaults)
        if params["mode"] not in MODES:
            raise ConfigError(f"recipe.params.mode: expected one of {', '.join(MODES)}, got {params['mode']!r}")
        return params

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
        distill = distillation_loss(outputs["distill_logits"], teacher_logits, self.params["mode"], self.params["temperature"])
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
