"""What the hierarchical family (PVT, PVT-v2, Swin, MViTv2, SegFormer) shares.

Every encoder here shrinks the grid in four stages (strides 4, 8, 16, 32), returns those four
channels-first maps from `forward_features`, and describes them in `feature_info`. This module
holds the input-size check those strides impose and the per-stage bookkeeping, so each family
file keeps its blocks and its numbers. Classifier vs segmentation model is `build_for_task`
(segmentation.py), called through `create_hierarchical`, whose default decoder for these
encoders is "unet" (decoders_hierarchical.py).
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from unetr_app.models.layers import check_heads, feature_entry, stochastic_depth_rates, to_tuple
from unetr_app.models.segmentation import build_for_task

STAGE_STRIDES = (4, 8, 16, 32)
DEEPEST_STRIDE = STAGE_STRIDES[-1]  # every axis of an input must be a multiple of it


def check_spatial_size(spatial_size: Sequence[int], stride: int, model: str) -> None:
    """Raise a ValueError unless every axis of `spatial_size` is a multiple of `stride`."""
    size = tuple(int(s) for s in spatial_size)
    if all(s % stride == 0 and s > 0 for s in size):
        return
    nearest = tuple(max(stride, round(s / stride) * stride) for s in size)
    raise ValueError(
        f"{model}: spatial size {size} is not divisible by its deepest stride {stride} on every axis; "
        f"allowed sizes are multiples of {stride} (e.g. {nearest}). Change img_size / roi_size, "
        f"or let sliding-window inference pad the volume."
    )


def stage_drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly over all blocks, split per stage."""
    rates = stochastic_depth_rates(drop_path_rate, sum(depths))
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s : s + d] for s, d in zip(starts, depths)]


def stage_feature_info(widths: Sequence[int], module: str = "stages") -> list[dict[str, Any]]:
    """timm-style feature_info for four stages at strides 4, 8, 16, 32."""
    return [feature_entry(w, r, f"{module}.{i}") for i, (w, r) in enumerate(zip(widths, STAGE_STRIDES))]


def check_stage_config(model: str, num_stages: int = 4, **per_stage: Sequence[Any]) -> None:
    """Raise a ValueError naming the key unless every per-stage list has `num_stages` entries."""
    for key, values in per_stage.items():
        if len(tuple(values)) != num_stages:
            raise ValueError(
                f"{model}: {key} must list one value per stage ({num_stages}), got {list(values)}"
            )


def check_heads_divide(model: str, widths: Sequence[int], num_heads: Sequence[int]) -> None:
    for stage, (width, heads) in enumerate(zip(widths, num_heads)):
        try:
            check_heads(width, heads)
        except ValueError as err:
            raise ValueError(f"{model}, stage {stage + 1}: {err}") from None


def image_size(img_size: Sequence[int] | int | None, spatial_dims: int, model: str) -> tuple[int, ...]:
    """`img_size` as one int per axis, checked against the deepest stride."""
    if img_size is None:
        raise ValueError(
            f"{model} needs img_size (the training ROI, e.g. img_size=[96, 96, 96]): parts of it are sized for it"
        )
    size = to_tuple(img_size, spatial_dims, "img_size")
    check_spatial_size(size, DEEPEST_STRIDE, model)
    return size


def create_hierarchical(
    encoder_cls: type[nn.Module], name: str, overrides: dict[str, Any], **architecture: Any
) -> nn.Module:
    """A registered variant: its `architecture` numbers, overridden by the caller's keys."""
    params = {"decoder": "unet", **architecture, **overrides}
    if params.get("task") == "segmentation" and params["decoder"] == "unet" and params.get("img_size"):
        norm_name = params.get("norm_name", "instance")
        check_trainable_norm(params["img_size"], params.get("spatial_dims", 2), norm_name, name)
    return build_for_task(encoder_cls, model_name=name, **params)


def check_trainable_norm(img_size: Sequence[int] | int, spatial_dims: int, norm_name: Any, model: str) -> None:
    """Instance norm on a single voxel fails only once training starts: say so at build time."""
    if "instance" not in str(norm_name).lower():
        return
    size = to_tuple(img_size, spatial_dims, "img_size")
    if all(s // DEEPEST_STRIDE == 1 for s in size):
        raise ValueError(
            f"{model}: img_size {size} leaves a single voxel at stride {DEEPEST_STRIDE}, where the decoder's "
            f"instance norm cannot train; use at least {2 * DEEPEST_STRIDE} on one axis "
            f"(e.g. {(2 * DEEPEST_STRIDE, *size[1:])}) or norm_name='batch'"
        )
