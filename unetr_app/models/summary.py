"""Size and cost of registered models: parameters and FLOPs at a given input, without weights.

Models are built on PyTorch's meta device, so even the largest costs no memory or time; FLOPs are
counted by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as 2 FLOPs; papers
that quote "FLOPs" for ViT-B/16 at 224² as 17.6 G count multiply-adds, i.e. half our number).
A model whose code cannot run on the meta device is measured on the CPU instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from unetr_app.models.registry import create_model, get_model_entry


@dataclass(frozen=True)
class ModelSummary:
    name: str
    family: str
    spatial_dims: tuple[int, ...]
    tasks: tuple[str, ...]
    params: int | None
    flops: int | None
    input_size: tuple[int, ...]
    task: str
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def model_kwargs(task: str, size: Sequence[int], in_channels: int, classes: int) -> dict:
    """`create_model` arguments for one input size; `classes` is out_channels or num_classes."""
    kwargs = {"spatial_dims": len(size), "in_channels": in_channels, "img_size": list(size)}
    kwargs["out_channels" if task == "segmentation" else "num_classes"] = classes
    return kwargs


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def summarize(name: str, size: Sequence[int], task: str = "segmentation", in_channels: int = 1,
              classes: int = 2, flops: bool = True) -> ModelSummary:
    """Parameters (and FLOPs for one input of `size`) of `name` built for `task` at that size."""
    entry = get_model_entry(name)
    task = task if task in entry.tasks else entry.tasks[0]
    base = {"name": name, "family": entry.family, "spatial_dims": entry.spatial_dims, "tasks": entry.tasks,
            "input_size": tuple(size), "task": task}
    if len(size) not in entry.spatial_dims:
        return ModelSummary(**base, params=None, flops=None, error=f"{len(size)}D not supported")
    kwargs = model_kwargs(task, size, in_channels, classes)
    try:
        return ModelSummary(**base, **_measure(name, task, kwargs, (1, in_channels, *size), flops, "meta"))
    except (ValueError, TypeError, RuntimeError) as err:
        if isinstance(err, ValueError):  # the model cannot take this size: say why
            return ModelSummary(**base, params=None, flops=None, error=str(err).splitlines()[0])
    try:  # code that reads tensor values (e.g. .item()) cannot run on meta tensors
        return ModelSummary(**base, **_measure(name, task, kwargs, (1, in_channels, *size), flops, "cpu"))
    except (ValueError, TypeError, RuntimeError) as err:
        return ModelSummary(**base, params=None, flops=None, error=str(err).splitlines()[0])


def _measure(name: str, task: str, kwargs: dict, shape: tuple[int, ...], flops: bool, device: str) -> dict:
    with torch.device(device):
        model = create_model(name, task=task, **kwargs).eval()
        params = sum(p.numel() for p in model.parameters())
        return {"params": params, "flops": count_flops(model, torch.zeros(shape)) if flops else None}
