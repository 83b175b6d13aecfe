"""Choosing the torch device from `--device auto|cpu|cuda`."""

from __future__ import annotations

import torch

from unetr_app.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"--device {name!r}: expected auto, cpu or cuda")
