"""PVT (Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction
without Convolutions", ICCV 2021).

The first pyramid transformer: four stages of non-overlapping patch embedding (patch 4, then 2)
with a learned position embedding per stage, and spatial-reduction attention (keys and values
from the grid shrunk by a strided conv with kernel = stride = sr_ratio) so that attention at
stride 4 stays affordable. The classifier reads a class token that joins the last stage.

The position embeddings are sized for `img_size`; another input size interpolates them
(bilinear in 2D, trilinear in 3D), as the reference does for detection. Blocks are PVT-v2's
with a plain MLP (see pvt_v2.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unetr_app.models.hierarchical import (
    DEEPEST_STRIDE,
    check_heads_divide,
    check_spatial_size,
    check_stage_config,
    create_hierarchical,
    image_size,
    stage_drop_path_rates,
    stage_feature_info,
)
from unetr_app.models.pvt_v2 import PyramidBlock
from unetr_app.models.layers import PatchEmbed, classifier_head, grid_to_tokens, init_vit_weights, tokens_to_grid
from unetr_app.models.registry import register_model


def resize_pos_embed(pos_embed: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """(1, N, C) position embedding laid out on `grid` -> (1, N', C) on `new_grid`."""
    if tuple(grid) == tuple(new_grid):
        return pos_embed
    mode = "bilinear" if len(grid) == 2 else "trilinear"
    resized = F.interpolate(tokens_to_grid(pos_embed, grid), size=tuple(new_grid), mode=mode, align_corners=False)
    return grid_to_tokens(resized)[0]


class PvtStage(nn.Module):
    """Non-overlapping patch embedding + position embedding, then spatial-reduction blocks.

    With `class_token=True` (the classifier's last stage) a learned token is prepended to the
    grid's tokens before the blocks: the output is (B, 1 + N, C) in that case, (B, N, C) otherwise.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, dim: int, depth: int, *, patch_size: int,
        grid_size: Sequence[int], num_heads: int, mlp_ratio: float, sr_ratio: int, qkv_bias: bool,
        drop: float, attn_drop: float, drop_path: Sequence[float], class_token: bool = False,
    ) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.patch_embed = PatchEmbed(spatial_dims, in_channels, dim, patch_size, norm=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        self.num_prefix_tokens = int(class_token)
        num_tokens = math.prod(self.grid_size) + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop)
        self.blocks = nn.ModuleList(
            PyramidBlock(
                spatial_dims, dim, num_heads, mlp_ratio, sr_ratio, depthwise_conv=False, qkv_bias=qkv_bias,
                drop=drop, attn_drop=attn_drop, drop_path=drop_path[i],
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        x, grid = self.patch_embed(x)
        prefix = self.num_prefix_tokens
        x = x + resize_pos_embed(self.pos_embed[:, prefix:], self.grid_size, grid)
        if self.cls_token is not None:
            cls = (self.cls_token + self.pos_embed[:, :prefix]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
        x = self.pos_drop(x)
        for block in self.blocks:  # the plain MLP and sr_ratio 1 let the class token ride along
            x = block(x, grid)
        return x, grid


class PyramidVisionTransformer(nn.Module):
    """PVT-v1: four `PvtStage`s (widths `embed_dims`), a final LayerNorm, and a classifier on the
    class token (built only when `num_classes > 0`).

    `forward_features` returns four channels-first maps at strides 4, 8, 16, 32 (the last one
    normed), described by `feature_info`.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | int | None = None,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        model_name: str = "pvt",
    ) -> None:
        super().__init__()
        self.model_name = model_name
        check_stage_config(
            model_name, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
            mlp_ratios=mlp_ratios, sr_ratios=sr_ratios,
        )
        check_heads_divide(model_name, embed_dims, num_heads)
        img_size = image_size(img_size, spatial_dims, model_name)
        if num_classes > 0 and sr_ratios[3] != 1:
            raise ValueError(
                f"{model_name}: the classifier's class token joins the last stage, whose sr_ratio must be 1 "
                f"(got sr_ratios {list(sr_ratios)}); use sr_ratios ending in 1, or num_classes=0 for a backbone"
            )
        rates = stage_drop_path_rates(depths, drop_path_rate)
        widths = [in_channels, *embed_dims]
        self.stages = nn.ModuleList(
            PvtStage(
                spatial_dims, widths[i], widths[i + 1], depths[i], patch_size=4 if i == 0 else 2,
                grid_size=[s // (4 * 2**i) for s in img_size], num_heads=num_heads[i], mlp_ratio=mlp_ratios[i],
                sr_ratio=sr_ratios[i], qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=rates[i], class_token=(i == 3 and num_classes > 0),
            )
            for i in range(4)
        )
        self.norm = nn.LayerNorm(embed_dims[-1], eps=1e-6)
        self.feature_info = stage_feature_info(embed_dims)
        self.num_features = int(embed_dims[-1])
        self.head = classifier_head(self.num_features, num_classes)
        self.apply(init_vit_weights)

    def _forward_tokens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Four feature maps, and the normed last-stage tokens (class token first if built)."""
        check_spatial_size(x.shape[2:], DEEPEST_STRIDE, self.model_name)
        features = []
        for stage in self.stages[:3]:
            tokens, grid = stage(x)
            x = tokens_to_grid(tokens, grid)
            features.append(x)
        last = self.stages[3]
        tokens, grid = last(x)
        tokens = self.norm(tokens)
        features.append(tokens_to_grid(tokens[:, last.num_prefix_tokens :], grid))
        return features, tokens

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self._forward_tokens(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features, tokens = self._forward_tokens(x)
        if self.stages[3].num_prefix_tokens:
            return self.head(tokens[:, 0])
        return features[-1].flatten(2).mean(-1)  # headless: pooled features


def _create_pvt(name: str, overrides: dict[str, Any], **architecture: Any) -> nn.Module:
    return create_hierarchical(PyramidVisionTransformer, name, overrides, **architecture)


@register_model(family="pvt")
def pvt_tiny(**kwargs: Any) -> nn.Module:
    """PVT-Tiny (13.2 M at 224², 1000 classes): widths 64-128-320-512, depths 2-2-2-2."""
    return _create_pvt("pvt_tiny", kwargs, depths=(2, 2, 2, 2))


@register_model(family="pvt")
def pvt_small(**kwargs: Any) -> nn.Module:
    """PVT-Small (24.5 M at 224², 1000 classes): widths 64-128-320-512, depths 3-4-6-3."""
    return _create_pvt("pvt_small", kwargs, depths=(3, 4, 6, 3))
