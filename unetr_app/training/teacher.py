"""A frozen teacher for distillation, loaded from a unetr run folder or checkpoint.

The teacher is untrusted input like any checkpoint (read with weights_only=True by
`unetr_app.io.checkpoint.load_model`). It must see the data exactly as the student does: same
orientation, spacing, intensity window, ROI and labels; anything else is a one-line error that
names both values. The student's checkpoint records the teacher's path and sha256, not its weights.

The teacher is deliberately not an `nn.Module` attribute of the recipe: then it is not in the
recipe's parameters (so not in the optimizer), not in DDP, not in the recipe's state_dict, and a
`recipe.train()` cannot switch it out of eval mode.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetr_app.errors import CheckpointError, UsageError
from unetr_app.io.checkpoint import LoadedModel, load_model, resolve_checkpoint_path

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

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        if _device_of(self.model) != image.device:
            self.model.to(image.device)
        return self.model(image).float()

    def record(self) -> dict[str, Any]:
        """What the student's checkpoint keeps about its teacher."""
        return {"path": str(self.path), "sha256": self.sha256, "model": self.name}


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
