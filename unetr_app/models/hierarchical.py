"""What the hierarchical family (PVT, PVT-v2, Swin, MViTv2, SegFormer) shares.

Every encoder here shrinks the grid in four stages (strides 4, 8, 16, 32), returns those four
channels-first maps from `forward_features`, and describes them in `feature_info`. This module
holds the input-size check those strides impose and the one builder that turns an encoder class
into a classifier or a segmentation model, so each family file keeps only its numbers.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from unetr_app.models.segmentation import SegmentationModel, build_decoder

STAGE_STRIDES = (4, 8, 16, 32)


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
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s : s + d] for s, d in zip(starts, depths)]


def stage_feature_info(widths: Sequence[int], module: str = "stages") -> list[dict[str, Any]]:
    """timm-style feature_info for four stages at strides 4, 8, 16, 32."""
    return [
        {"num_chs": int(w), "reduction": r, "module": f"{module}.{i}"}
        for i, (w, r) in enumerate(zip(widths, STAGE_STRIDES))
    ]


def build_hierarchical(
    encoder_cls: type[nn.Module],
    *,
    task: str = "classification",
    spatial_dims: int = 3,
    in_channels: int = 1,
    img_size: Sequence[int] | int = 96,
    num_classes: int = 1000,
    out_channels: int = 2,
    decoder: str = "unet",
    decoder_params: dict[str, Any] | None = None,
    **encoder_params: Any,
) -> nn.Module:
    """A classifier (encoder with its own head) or a segmentation model (headless encoder + decoder).

    `decoder` names a registered decoder ("unet" by default; SegFormer passes "segformer_mlp");
    `decoder_params` go to it unchanged (e.g. {"feature_size": 16}).
    """
    img_size = _as_size(img_size, spatial_dims)
    if task == "classification":
        return encoder_cls(
            spatial_dims=spatial_dims, in_channels=in_channels, img_size=img_size,
            num_classes=num_classes, **encoder_params,
        )
    encoder = encoder_cls(
        spatial_dims=spatial_dims, in_channels=in_channels, img_size=img_size, num_classes=0, **encoder_params
    )
    head = build_decoder(
        decoder, feature_info=encoder.feature_info, spatial_dims=spatial_dims,
        in_channels=in_channels, out_channels=out_channels, **(decoder_params or {}),
    )
    return SegmentationModel(encoder, head)


def _as_size(img_size: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    if isinstance(img_size, int):
        return (img_size,) * spatial_dims
    size = tuple(int(s) for s in img_size)
    if len(size) != spatial_dims:
        raise ValueError(
            f"img_size {size} has {len(size)} axes but spatial_dims is {spatial_dims}; "
            f"give one size per axis or a single int"
        )
    return size


def tokens_to_grid(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C, *grid) channels-first map."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, *grid)


def grid_to_tokens(feature_map: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, *grid) channels-first map -> (B, N, C) tokens and the grid size beside them."""
    return feature_map.flatten(2).transpose(1, 2), tuple(feature_map.shape[2:])


def check_stage_config(model: str, num_stages: int = 4, **per_stage: Sequence[Any]) -> None:
    """Raise a ValueError naming the key unless every per-stage list has `num_stages` entries."""
    for key, values in per_stage.items():
        if len(tuple(values)) != num_stages:
            raise ValueError(
                f"{model}: {key} must list one value per stage ({num_stages}), got {list(values)}"
            )


def check_heads_divide(model: str, widths: Sequence[int], num_heads: Sequence[int]) -> None:
    for width, heads in zip(widths, num_heads):
        if width % heads:
            raise ValueError(
                f"{model}: stage width {width} is not divisible by its {heads} attention heads; "
                f"choose embed_dims that are multiples of num_heads (widths {list(widths)}, heads {list(num_heads)})"
            )
