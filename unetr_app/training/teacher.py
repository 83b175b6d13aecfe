"""A frozen teacher for distillation, loaded from a unetr run folder or checkpoint.

The teacher is untrusted input like any checkpoint (read with weights_only=True by
`unetr_app.io.checkpoint.load_model`). It must see the data exactly as the student does: same
orientation, spacing, intensity window, ROI and labels; anything else is a one-line error that
names both values. The student's checkpoint records the teacher's path and sha256, not its weights.

A recipe's checkpoint state keeps two kinds of teacher entry, never mixed: `teacher` holds a
teacher's weights (DINO's EMA teacher, which `train --init-from RUN --init-key teacher` loads),
`teacher_reference` where a frozen teacher came from (`TeacherReference`: path and sha256, distill).

The teacher is deliberately not an `nn.Module` attribute of the recipe: then it is not in the
recipe's parameters (so not in the optimizer), not in DDP, not in the recipe's state_dict, and a
`recipe.train()` cannot switch it out of eval mode.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetr_app.errors import CheckpointError, UsageError
from unetr_app.io.checkpoint import LoadedModel, load_model, resolve_checkpoint_path

TEACHER_WEIGHTS = "teacher"  # extra-state entry: a teacher's weights (names -> tensors)
TEACHER_REFERENCE = "teacher_reference"  # extra-state entry: a TeacherReference as a dict


@dataclass(frozen=True)
class TeacherReference:
    """Where a frozen teacher came from: enough to check that a resumed run uses the same one."""

    path: str
    sha256: str
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def teacher_weights(extra_state: dict[str, Any] | None) -> dict[str, torch.Tensor] | None:
    """A recipe state's teacher weights, or None when it keeps none."""
    value = (extra_state or {}).get(TEACHER_WEIGHTS)
    if isinstance(value, dict) and value and all(isinstance(v, torch.Tensor) for v in value.values()):
        return dict(value)
    return None


def teacher_reference(extra_state: dict[str, Any] | None) -> TeacherReference | None:
    """A recipe state's teacher reference, or None. Runs from before the entry had its own name
    kept the reference under `teacher`."""
    state = extra_state or {}
    value = state.get(TEACHER_REFERENCE)
    if value is None and isinstance(state.get(TEACHER_WEIGHTS), dict) and "sha256" in state[TEACHER_WEIGHTS]:
        value = state[TEACHER_WEIGHTS]
    if not isinstance(value, dict) or not value:
        return None
    return TeacherReference(str(value.get("path")), str(value.get("sha256")), value.get("model"))


# preprocessing that must agree between teacher and student (the labels must agree too)
_PREPROCESSING_KEYS = ("orientation", "spacing", "intensity_window", "roi_size")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class FrozenTeacher:
    """A network in eval mode without gradients; calling it gives logits on the input's device."""

    def __init__(self, loaded: LoadedModel, sha256: str) -> None:
        self.model: nn.Module = loaded.model.eval().requires_grad_(False)
        self.name = loaded.name
        self.path = loaded.path
        self.sha256 = sha256
        self.val_dice, self.best_step = loaded.best_val_dice, loaded.best_step

    def describe(self) -> str:
        """The line printed before a student trains: what it distils from and how good that is."""
        return f"teacher {self.name} ({self.path}): validation Dice {self.val_dice:.4f} at step {self.best_step}"

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        if _device_of(self.model) != image.device:
            self.model.to(image.device)
        return self.model(image).float()

    def reference(self) -> TeacherReference:
        """What the student's checkpoint keeps about its teacher."""
        return TeacherReference(str(self.path), self.sha256, self.name)


def load_teacher(path: str | Path | None, config: Any, device: str | torch.device = "cpu") -> FrozenTeacher:
    """Load and check a teacher for a student trained with `config` (a RunConfig)."""
    if path is None or str(path).strip() == "":
        raise UsageError(
            "recipe distill needs a teacher: pass --teacher RUN_DIR (a finished unetr run or its .pt checkpoint), "
            "or set recipe.params.teacher"
        )
    try:
        checkpoint = resolve_checkpoint_path(Path(path).expanduser()).resolve()
        loaded = load_model(checkpoint, device)
    except CheckpointError as err:
        raise CheckpointError(f"--teacher: {err}") from None
    check_compatible(loaded, config)
    if loaded.best_val_dice is None:
        raise UsageError(
            f"--teacher {checkpoint}: its validation Dice is missing (the run never validated), so nothing says the "
            f"teacher is stronger than the student; train the teacher with validation (training.val_fraction > 0)"
        )
    return FrozenTeacher(loaded, file_sha256(checkpoint))


def check_compatible(teacher: LoadedModel, config: Any) -> None:
    """The teacher must preprocess and label like the student; the first difference is the error."""
    student = config.preprocessing
    for key in _PREPROCESSING_KEYS:
        theirs, ours = _plain(getattr(teacher.preprocessing, key)), _plain(getattr(student, key))
        if theirs != ours:
            raise UsageError(
                f"--teacher {teacher.path}: its preprocessing.{key} {theirs} differs from the student's {ours}; "
                f"use a teacher trained with the student's preprocessing, or set preprocessing.{key}={theirs}"
            )
    if dict(teacher.labels) != dict(config.task.labels):
        raise UsageError(
            f"--teacher {teacher.path}: its labels {dict(teacher.labels)} differ from the student's "
            f"{dict(config.task.labels)}; use a teacher trained on the same task"
        )


def _plain(value: Any) -> Any:
    return [float(v) for v in value] if isinstance(value, (tuple, list)) else value


def _device_of(module: nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")
