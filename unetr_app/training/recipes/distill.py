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

Semi-supervised (`unlabelled`: folders of scans without labels, `unetr train --recipe distill
--teacher RUN --unlabelled DIR [--unlabelled DIR2]`): on labelled crops the teacher's targets mostly
repeat the label, on scans without one the teacher's term is the only signal. Each step the recipe
draws its own batch of unlabelled crops (`data.unlabelled.UnlabelledCrops`: the scans preprocessed
as `unetr pretrain` does, random `preprocessing.roi_size` crops, `training.num_samples` per scan and
`training.batch_size` scans a step, seeded from `training.seed` + the torchrun rank), runs the student
and the teacher once on labelled and unlabelled crops together, and weighs

    (1 - alpha) task(main, y) + alpha (D_labelled + D_unlabelled) / 2

with D the mode's term above; `distill_unlabelled_loss` reports D_unlabelled. Without unlabelled
folders the loss is the one above, unchanged. A step holds twice the crops (memory, time). The
checkpoint records how many unlabelled batches were drawn, so a resumed run continues the crop
stream exactly. Before the run folder is made, `check` refuses a missing or empty folder, scans
whose channel count is not the task's, and scans that overlap the labelled set (the same file, or
a scan named like one of the dataset's imagesTr).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from pydantic import Field, field_validator

from unetr_app.data.dataset import labelled_cases
from unetr_app.data.manifest import Layout, load_manifest
from unetr_app.data.multicrop import preprocess_scans
from unetr_app.data.unlabelled import UnlabelledCrops, check_unlabelled_folders, unlabelled_scans
from unetr_app.errors import CheckpointError
from unetr_app.models.segmentation import PREDICTION_HEADS
from unetr_app.training.batches import to_channels_last
from unetr_app.training.losses import build_loss
from unetr_app.training.objectives import channel_distillation, hard_distillation, soft_distillation
from unetr_app.training.recipes.base import Recipe, RecipeParams, one_of, register_recipe, train_outputs
from unetr_app.training.teacher import TEACHER_REFERENCE, load_teacher, teacher_reference

MODES = ("soft", "hard", "channel")
UNLABELLED_DRAWS = "unlabelled_draws"  # extra-state entry: unlabelled batches drawn so far


class DistillParams(RecipeParams):
    """`recipe.params` of the distill recipe."""

    teacher: str | None = Field(None, description="teacher run folder or checkpoint (--teacher)")
    mode: str = Field("soft", description="one of MODES")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's term")
    temperature: float = Field(3.0, gt=0, description="T of soft and channel distillation")
    prediction_head: str = Field("average", description="what the trained model predicts: one of PREDICTION_HEADS")
    unlabelled: list[str] = Field(default_factory=list, description="folders of scans without labels (--unlabelled)")

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
    def check(cls, config: Any, dataset: Path | None = None) -> str:
        """A bad teacher, and with `dataset` (the labelled dataset's folder) bad unlabelled folders;
        the line says the teacher's validation Dice."""
        params = cls.parse_params(config.recipe.params)
        teacher = load_teacher(params.teacher, config)
        if params.unlabelled and dataset is not None:
            manifest = load_manifest(config.task.manifest)
            layout = manifest.layout if manifest else Layout()
            labelled = [case["image"] for case in labelled_cases(dataset, manifest)]
            check_unlabelled_folders(params.unlabelled, config.task.in_channels, labelled, dataset / layout.images_train)
        return teacher.describe()

    def __init__(self, model, config, **params: Any) -> None:
        super().__init__(model, config, **params)
        self.task_loss = build_loss(config.loss)
        self.teacher = load_teacher(self.settings.teacher, config)
        self.unlabelled = unlabelled_crops(self.settings.unlabelled, config) if self.settings.unlabelled else None

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """With unlabelled folders, one forward of student and teacher on the labelled crops and this
        step's unlabelled ones together (under DDP a second forward before the backward would not
        be synchronised); the task loss sees the labelled crops only."""
        image, labelled = batch["image"], batch["image"].shape[0]
        if self.unlabelled is not None:
            unlabelled = next(self.unlabelled).to(image.device, image.dtype, non_blocking=True)
            image = to_channels_last(torch.cat([image, unlabelled]))
        outputs = train_outputs(self.model, image)
        teacher_logits = self.teacher(image)
        logits, distill_logits = outputs["logits"], outputs["distill_logits"]
        task = self.task_loss(logits[:labelled], batch["label"])
        p = self.params
        terms = {"distill_loss": distillation_loss(distill_logits[:labelled], teacher_logits[:labelled], p["mode"], p["temperature"],
                                                   self.task_loss)}
        if self.unlabelled is not None:
            terms["distill_unlabelled_loss"] = distillation_loss(distill_logits[labelled:], teacher_logits[labelled:], p["mode"],
                                                                 p["temperature"], self.task_loss)
        alpha = p["alpha"]
        return {
            "loss": (1 - alpha) * task + alpha * sum(terms.values()) / len(terms),
            "output": logits[:labelled],
            "task_loss": task.detach(),
            **{key: term.detach() for key, term in terms.items()},
        }

    def extra_state(self) -> dict[str, Any]:
        state = {TEACHER_REFERENCE: self.teacher.reference().to_dict()}
        if self.unlabelled is not None:
            state[UNLABELLED_DRAWS] = self.unlabelled.draws
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """A resumed run must distil from the same teacher it started with; its unlabelled crops
        continue where they stopped."""
        recorded = teacher_reference(state)
        if recorded is not None and recorded.sha256 != self.teacher.sha256:
            raise CheckpointError(
                f"--teacher {self.teacher.path}: differs from the teacher this run started with "
                f"({recorded.path}, sha256 {recorded.sha256[:12]}...); resume with that teacher"
            )
        if self.unlabelled is not None:
            self.unlabelled.draws = int(state.get(UNLABELLED_DRAWS, 0))


def unlabelled_crops(folders: list[str], config: Any) -> UnlabelledCrops:
    """The crop stream of the scans in `folders`, preprocessed as the task's scans; each torchrun
    rank draws its own crops (its rank joins the seed)."""
    samples = preprocess_scans([scan for folder in folders for scan in unlabelled_scans(folder)], config.preprocessing)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    train = config.training
    return UnlabelledCrops(samples, config.preprocessing.roi_size, train.num_samples, train.batch_size, config.augmentation,
                           train.seed, rank)
