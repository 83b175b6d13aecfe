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
from pydantic import Field, field_validator

from unetr_app.errors import CheckpointError
from unetr_app.training.losses import build_loss
from unetr_app.training.recipes.base import Recipe, RecipeParams, register_recipe, train_outputs
from unetr_app.training.teacher import TEACHER_REFERENCE, load_teacher, teacher_reference

MODES = ("hard", "soft")


class DistillParams(RecipeParams):
    """`recipe.params` of the distill recipe."""

    teacher: str | None = Field(None, description="teacher run folder or checkpoint (--teacher)")
    mode: str = Field("hard", description="one of MODES")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's term")
    temperature: float = Field(3.0, gt=0, description="T of soft distillation")

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        if value not in MODES:
            raise ValueError(f"expected one of {', '.join(MODES)}, got {value!r}")
        return value


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
    Params = DistillParams
    trains_forward_train = True

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"distillation": True}

    @classmethod
    def check(cls, config: Any) -> None:
        load_teacher(cls.parse_params(config.recipe.params).teacher, config)

    def __init__(self, model, config, **params: Any) -> None:
        super().__init__(model, config, **params)
        self.task_loss = build_loss(config.loss)
        self.teacher = load_teacher(self.settings.teacher, config)

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
        return {TEACHER_REFERENCE: self.teacher.reference().to_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """A resumed run must distil from the same teacher it started with."""
        recorded = teacher_reference(state)
        if recorded is not None and recorded.sha256 != self.teacher.sha256:
            raise CheckpointError(
                f"--teacher {self.teacher.path}: differs from the teacher this run started with "
                f"({recorded.path}, sha256 {recorded.sha256[:12]}...); resume with that teacher"
            )
