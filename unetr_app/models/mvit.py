"""MViTv2 (Li et al., "MViTv2: Improved Multiscale Vision Transformers for Classification and
Detection", CVPR 2022).

Pooling attention: queries, keys and values are each pooled by a strided depthwise conv (per
head) before attention, so the first block of a stage halves the grid (query stride 2) while
keys/values are pooled harder in early stages (stride 4, 2, 1, 1). Two v2 additions:
- decomposed relative position: the bias between a query and a key is the query dotted with one
  learned embedding per axis of their offset (h, w[, d]), summed over axes;
- residual pooling: the pooled query is added back to the attention output.

n-D here: the pooling convs, the skip max-pool and the relative-position tables are built per
axis from `spatial_dims`, so 3D volumes with different sizes per axis work. The tables are sized
for `img_size` (as in the reference); another input size interpolates them linearly.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.layers import Conv, Pool
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
from unetr_app.models.layers import (
    DropPath,
    Mlp,
    PatchEmbed,
    classifier_head,
    grid_to_tokens,
    init_vit_weights,
    tokens_to_grid,
)
from unetr_app.models.registry import register_model
_AXES = "xyz"


def _pooled_size(grid: Sequence[int], stride: int) -> tuple[int, ...]:
    # kernel 3, padding 1: ceil(n / stride) per axis
    return tuple(math.ceil(n / stride) for n in grid)


def _relative_offsets(q_len: int, k_len: int, table: torch.Tensor) -> torch.Tensor:
    """(q_len, k_len, C) embeddings of each query-key offset along one axis.

    When queries and keys have different lengths, the shorter side's positions are stretched to
    the longer one's spacing (MViTv2's rule). A table built for another size is interpolated.
    """
    needed = 2 * max(q_len, k_len) - 1
    if table.shape[0] != needed:
        table = F.interpolate(table.t()[None], size=needed, mode="linear")[0].t()
    q_scale, k_scale = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=table.device)[:, None] * q_scale
    k_pos = torch.arange(k_len, device=table.device)[None, :] * k_scale
    return table[(q_pos - k_pos + (k_len - 1) * k_scale).long()]


def add_decomposed_rel_pos(
    attn: torch.Tensor, q: torch.Tensor, q_grid: Sequence[int], k_grid: Sequence[int], tables: nn.ParameterList
) -> torch.Tensor:
    """attn (B, H, Nq, Nk) + sum over axes of q . rel_pos_axis[offset along that axis]."""
    dims = len(q_grid)
    q_axes = _AXES[:dims]
    r_q = q.reshape(*q.shape[:2], *q_grid, q.shape[-1])  # (B, H, *q_grid, C)
    attn = attn.view(*attn.shape[:2], *q_grid, *k_grid)
    for axis, table in enumerate(tables):
        offsets = _relative_offsets(q_grid[axis], k_grid[axis], table)  # (q_axis, k_axis, C)
        bias = torch.einsum(f"bh{q_axes}c,{q_axes[axis]}kc->bh{q_axes}k", r_q, offsets)
        k_shape = [1] * dims
        k_shape[axis] = k_grid[axis]
        attn = attn + bias.reshape(*bias.shape[:-1], *k_shape)
    return attn.reshape(*attn.shape[:2], math.prod(q_grid), math.prod(k_grid))


class PoolingAttention(nn.Module):
    """Multi-head pooling attention with decomposed relative position and residual pooling."""

    def __init__(
        self, spatial_dims: int, dim: int, dim_out: int, num_heads: int, grid_size: Sequence[int],
        q_stride: int = 1, kv_stride: int = 1, kernel_size: int = 3, qkv_bias: bool = True,
        residual_pooling: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_stride, self.kv_stride = q_stride, kv_stride
        self.residual_pooling = residual_pooling
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        conv = Conv[Conv.CONV, spatial_dims]
        pad = kernel_size // 2

        def pool(stride: int) -> nn.Module:  # depthwise over each head's channels, shared by heads
            return conv(head_dim, head_dim, kernel_size, stride=stride, padding=pad, groups=head_dim, bias=False)

        self.pool_q, self.pool_k, self.pool_v = pool(q_stride), pool(kv_stride), pool(kv_stride)
        self.norm_q, self.norm_k, self.norm_v = (nn.LayerNorm(head_dim, eps=1e-6) for _ in range(3))
        q_grid, kv_grid = _pooled_size(grid_size, q_stride), _pooled_size(grid_size, kv_stride)
        self.rel_pos = nn.ParameterList(
            nn.Parameter(torch.zeros(2 * max(q, k) - 1, head_dim)) for q, k in zip(q_grid, kv_grid)
        )
        for table in self.rel_pos:
            nn.init.trunc_normal_(table, std=0.02)

    def _pool(self, x: torch.Tensor, grid: Sequence[int], pool: nn.Module, norm: nn.Module):
        batch = x.shape[0]
        x = tokens_to_grid(x.flatten(0, 1), grid)  # (B*H, head_dim, *grid)
        x, pooled_grid = grid_to_tokens(pool(x))
        return norm(x.unflatten(0, (batch, self.num_heads))), pooled_grid  # (B, H, M, head_dim)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        q, q_grid = self._pool(q, grid, self.pool_q, self.norm_q)
        k, k_grid = self._pool(k, grid, self.pool_k, self.norm_k)
        v, _ = self._pool(v, grid, self.pool_v, self.norm_v)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(attn, q, q_grid, k_grid, self.rel_pos).softmax(dim=-1)
        out = attn @ v
        if self.residual_pooling:
            out = out + q
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), q_grid


class MultiScaleBlock(nn.Module):
    """Pooling attention + MLP. The first block of a stage widens (dim -> dim_out) and, with
    q_stride 2, halves the grid; its shortcut is max-pooled (and projected) to match."""

    def __init__(
        self, spatial_dims: int, dim: int, dim_out: int, num_heads: int, grid_size: Sequence[int], *,
        q_stride: int, kv_stride: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
        residual_pooling: bool = True, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.shortcut_proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.shortcut_pool = (
            Pool[Pool.MAX, spatial_dims](q_stride + 1, stride=q_stride, padding=(q_stride + 1) // 2)
            if q_stride > 1 else None
        )
        self.attn = PoolingAttention(
            spatial_dims, dim, dim_out, num_heads, grid_size, q_stride, kv_stride,
            qkv_bias=qkv_bias, residual_pooling=residual_pooling,
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        x_norm = self.norm1(x)
        # as in the reference: when the width changes, the shortcut is projected from the normed x
        shortcut = x if self.shortcut_proj is None else self.shortcut_proj(x_norm)
        if self.shortcut_pool is not None:
            shortcut, _ = grid_to_tokens(self.shortcut_pool(tokens_to_grid(shortcut, grid)))
        x, grid = self.attn(x_norm, grid)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x))), grid


class MultiScaleStage(nn.Module):
    """`depth` blocks; the first one changes width and (for stages after the first) halves the grid."""

    def __init__(
        self, spatial_dims: int, dim: int, dim_out: int, depth: int, num_heads: int,
        grid_size: Sequence[int], *, q_stride: int, kv_stride: int, drop_path: Sequence[float], **block_args: Any,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for i in range(depth):
            self.blocks.append(
                MultiScaleBlock(
                    spatial_dims, dim if i == 0 else dim_out, dim_out, num_heads, grid_size,
                    q_stride=q_stride if i == 0 else 1, kv_stride=kv_stride, drop_path=drop_path[i], **block_args,
                )
            )
            if i == 0:
                grid_size = _pooled_size(grid_size, q_stride)
        self.grid_size = tuple(grid_size)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
        for block in self.blocks:
            x, grid = block(x, grid)
        return x, grid


class MultiscaleVisionTransformerV2(nn.Module):
    """MViTv2: conv patch embedding (kernel 7, stride 4), four pooling-attention stages, LayerNorm,
    average pooling and a linear classifier (none when `num_classes=0`).

    Widths double per stage from `embed_dim`, heads double from `num_heads`; the first stage
    pools keys/values by `kv_stride` per axis and later stages by `kv_stride` divided by the
    grid's shrinkage (4, 2, 1, 1 by default). `forward_features` returns four channels-first
    maps at strides 4, 8, 16, 32 (the last one normed), described by `feature_info`.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | int | None = None,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (1, 2, 5, 2),
        num_heads: int = 1,
        mlp_ratio: float = 4.0,
        kv_stride: int = 4,
        qkv_bias: bool = True,
        residual_pooling: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        model_name: str = "mvitv2",
    ) -> None:
        super().__init__()
        self.model_name = model_name
        check_stage_config(model_name, depths=depths)
        img_size = image_size(img_size, spatial_dims, model_name)
        widths = [embed_dim * 2**i for i in range(4)]
        heads = [num_heads * 2**i for i in range(4)]
        check_heads_divide(model_name, widths, heads)
        self.patch_embed = PatchEmbed(spatial_dims, in_channels, embed_dim, 7, stride=4, padding=3)
        grid = tuple(s // 4 for s in img_size)
        rates = stage_drop_path_rates(depths, drop_path_rate)
        self.stages = nn.ModuleList()
        stage_kv_stride = kv_stride
        for i in range(4):
            q_stride = 1 if i == 0 else 2
            # keys/values stay on one grid (stride 16 with kv_stride 4) until the queries pass it
            stage_kv_stride = max(stage_kv_stride // q_stride, 1)
            stage = MultiScaleStage(
                spatial_dims, widths[max(i - 1, 0)], widths[i], depths[i], heads[i], grid,
                q_stride=q_stride, kv_stride=stage_kv_stride, drop_path=rates[i],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, residual_pooling=residual_pooling,
            )
            grid = stage.grid_size
            self.stages.append(stage)
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.feature_info = stage_feature_info(widths)
        self.num_features = widths[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = classifier_head(self.num_features, num_classes)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_spatial_size(x.shape[2:], DEEPEST_STRIDE, self.model_name)
        x, grid = self.patch_embed(x)  # (B, N, C) at stride 4
        features = []
        for i, stage in enumerate(self.stages):
            x, grid = stage(x, grid)
            features.append(tokens_to_grid(self.norm(x) if i == 3 else x, grid))
        return features

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = features[-1].flatten(2).mean(-1)
        return self.head(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_mvitv2(name: str, overrides: dict[str, Any], **architecture: Any) -> nn.Module:
    return create_hierarchical(MultiscaleVisionTransformerV2, name, overrides, **architecture)


@register_model(family="mvitv2")
def mvitv2_tiny(**kwargs: Any) -> nn.Module:
    """MViTv2-T (24.2 M at 224², 1000 classes): widths 96-192-384-768, depths 1-2-5-2."""
    return _create_mvitv2("mvitv2_tiny", kwargs, embed_dim=96, depths=(1, 2, 5, 2))


@register_model(family="mvitv2")
def mvitv2_small(**kwargs: Any) -> nn.Module:
    """MViTv2-S (34.9 M at 224², 1000 classes): widths 96-192-384-768, depths 1-2-11-2."""
    return _create_mvitv2("mvitv2_small", kwargs, embed_dim=96, depths=(1, 2, 11, 2))
