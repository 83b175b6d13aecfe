"""Batches on their way to the network: plain tensors (no MONAI metadata), on the device, channels-last."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from monai.data import MetaTensor, get_track_meta, set_track_meta


def as_plain_tensor(x: torch.Tensor) -> torch.Tensor:
    """Drop MONAI metadata: every op on a MetaTensor pays for a metadata dispatch."""
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last_3d) if x.ndim == 5 else x


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Every tensor (or list of tensors) of a batch on `device`; the image channels-last."""
    moved = {key: _move(value, device) for key, value in batch.items()}
    if "image" in moved:  # self-supervised batches carry crops under other names
        moved["image"] = to_channels_last(moved["image"])
    return moved


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return as_plain_tensor(value).to(device, non_blocking=True)
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(_move(v, device) for v in value)
    return value


@contextlib.contextmanager
def metadata_only_if_needed(config):
    """Fully cached data needs no metadata: random crops and the network run faster on plain tensors."""
    previous = get_track_meta()
    set_track_meta(config.training.cache_rate < 1.0)
    try:
        yield
    finally:
        set_track_meta(previous)
