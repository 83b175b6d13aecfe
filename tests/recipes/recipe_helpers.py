"""Helpers for recipe tests: the tiny run config, a teacher checkpoint, a stand-in student, a batch."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unetr_app.config import load_run_config
from unetr_app.io.checkpoint import save_checkpoint
from unetr_app.models import create_model

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny.yaml"


def tiny_config(model: str | None = None, **overrides):
    return load_run_config("spleen", model=model, profile=str(TINY), overrides=overrides)


def write_teacher(path: Path, config=None) -> Path:
    """A teacher checkpoint as a finished run writes it: registry name + kwargs, weights, preprocessing, labels."""
    config = config or tiny_config()
    torch.manual_seed(0)
    model = create_model(config.model.name, **config.model_kwargs())
    save_checkpoint(path, {**config.checkpoint_description(), "state_dict": model.state_dict(), "best_val_dice": 0.5, "best_step": 1})
    return path


class StandInStudent(nn.Module):
    """The forward_train contract of a segmentation model with a distillation head and aux heads,
    in a few convolutions: logits, distill_logits, aux_logits (input size), hint_features and
    deep_features (on the deepest stage's grid and channels)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 2, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv3d(in_channels, width, 3, padding=1)
        self.deep = nn.Conv3d(width, width, 3, padding=1)
        self.head = nn.Conv3d(width, out_channels, 1)
        self.distill_head = nn.Conv3d(width, out_channels, 1)
        self.aux_head = nn.Conv3d(width, out_channels, 1)
        self.hint = nn.Conv3d(width, width, 1)

    def forward_train(self, x: torch.Tensor) -> dict:
        shallow = torch.relu(self.stem(x))
        deep = torch.relu(self.deep(shallow))
        return {
            "logits": self.head(deep),
            "distill_logits": self.distill_head(deep),
            "aux_logits": [self.aux_head(shallow)],
            "hint_features": [self.hint(shallow)],
            "deep_features": deep,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)["logits"]


def batch(seed: int = 0, size: int = 32, n: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 1, size, size, size, generator=generator)
    label = (image > 0.5).float()
    return {"image": image, "label": label}
