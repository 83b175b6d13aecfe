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

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, field_validator

from unetr_app.errors import CheckpointError
from unetr_app.models.segmentation import PREDICTION_HEADS
from unetr_app.training.losses import build_loss
from unetr_app.training.objectives import channel_distillation, hard_distillation, soft_distillation
from unetr_app.training.recipes.base import Recipe, RecipeParams, one_of, register_recipe, train_outputs
from unetr_app.training.teacher import TEACHER_REFERENCE, load_teacher, teacher_reference

MODES = ("soft", "hard", "channel")


class DistillParams(RecipeParams):
    """`recipe.params` of the distill recipe."""

    teacher: str | None = Field(None, description="teacher run folder or checkpoint (--teacher)")
    mode: str = Field("soft", description="one of MODES")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's term")
    temperature: float = Field(3.0, gt=0, description="T of soft and channel distillation")
    prediction_head: str = Field("average", description="what the trained model predicts: one of PREDICTION_HEADS")

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, value: str) -> str:
        return one_of(value, MODES)

    @field_validator("prediction_head")
    @classmethod
    def _known_head(cls, value: str) -> str:
        return one_of(value, PREDICTION_HEADS)


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
    Params = DistillParams
    trains_forward_train = True

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"distillation": True, "prediction_head": cls.parse_params(params).prediction_head}

    @classmethod
    def check(cls, config: Any) -> str:
        return load_teacher(cls.parse_params(config.recipe.params).teacher, config).describe()

    def __init__(self, model, config, **params: Any) -> None:
        super().__init__(model, config, **params)
        self.task_loss = build_loss(config.loss)
        self.teacher = load_teacher(self.settings.teacher, config)

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
        return {TEACHER_REFERENCE: self.teacher.reference().to_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """A resumed run must distil from the same teacher it started with."""
        recorded = teacher_reference(state)
        if recorded is not None and recorded.sha256 != self.teacher.sha256:
            raise CheckpointError(
                f"--teacher {self.teacher.path}: differs from the teacher this run started with "
                f"({recorded.path}, sha256 {recorded.sha256[:12]}...); resume with that teacher"
            )
