"""PVT-v2 (Wang et al., "PVT v2: Improved Baselines with Pyramid Vision Transformer", CVMJ 2022).

A four-stage pyramid (strides 4, 8, 16, 32). What v2 changes over PVT-v1:
- overlapping patch embedding: a strided convolution whose kernel is wider than its stride
  (7/4 for the first stage, 3/2 after), so neighbouring patches share pixels;
- a depthwise 3x3 (3x3x3) convolution inside the feed-forward, which carries enough position
  to drop the position embeddings, so any input size works;
- the linear variant (`pvt_v2_b2_li`) pools keys/values to a fixed 7-per-axis grid, so the
  attention cost grows linearly with the number of tokens.

The same blocks make SegFormer's Mix Transformer encoder (see segformer.py). One class serves
2D and 3D through `spatial_dims`:

    create_model("pvt_v2_b0", spatial_dims=2, in_channels=3, img_size=224, num_classes=1000)
    create_model("pvt_v2_b0", task="segmentation", spatial_dims=3, in_channels=1,
                 out_channels=2, img_size=(96, 64, 128))
"""

from __future__ import annotations

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
    PatchEmbed,
    classifier_head,
    grid_to_tokens,
    init_vit_weights,
    tokens_to_grid,
)
from unetr_app.models.registry import register_model


class PyramidMlp(nn.Module):
    """Feed-forward on tokens: Linear -> [ReLU] -> [depthwise 3^n conv on the grid] -> GELU -> Linear.

    PVT-v1 uses the plain form (`depthwise_conv=False`); PVT-v2 and SegFormer's Mix-FFN add the
    depthwise conv; the linear variant adds the ReLU.
    """

    def __init__(
        self, spatial_dims: int, dim: int, hidden_dim: int, depthwise_conv: bool = True,
        linear: bool = False, drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.relu = nn.ReLU() if linear else nn.Identity()
        self.dwconv = (
            Conv[Conv.CONV, spatial_dims](hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
            if depthwise_conv else None
        )
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        if self.dwconv is not None:
            x, _ = grid_to_tokens(self.dwconv(tokens_to_grid(x, grid)))
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class SpatialReductionAttention(nn.Module):
    """Multi-head attention whose keys and values come from a smaller grid.

    - `sr_ratio > 1` (PVT-v1/v2, SegFormer): a conv with kernel = stride = sr_ratio shrinks the
      grid by sr_ratio per axis before the key/value projection, then LayerNorm.
    - `linear=True` (PVT-v2-li): adaptive average pooling to `pool_size` per axis, a 1x1 conv,
      LayerNorm and GELU: a fixed number of keys whatever the input size.
    - otherwise plain attention over all tokens.
    """

    def __init__(
        self, spatial_dims: int, dim: int, num_heads: int, sr_ratio: int = 1, linear: bool = False,
        qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0, pool_size: int = 7,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        conv = Conv[Conv.CONV, spatial_dims]
        if linear:
            self.reduce = nn.Sequential(Pool[Pool.ADAPTIVEAVG, spatial_dims](pool_size), conv(dim, dim, 1))
        elif sr_ratio > 1:
            self.reduce = conv(dim, dim, sr_ratio, stride=sr_ratio)
        else:
            self.reduce = None
        self.norm = nn.LayerNorm(dim) if self.reduce is not None else None
        self.act = nn.GELU() if linear else nn.Identity()

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        q = rearrange(self.q(x), "b n (h d) -> b h n d", h=self.num_heads)
        source = x
        if self.reduce is not None:
            source, _ = grid_to_tokens(self.reduce(tokens_to_grid(x, grid)))  # (B, M, C), M << N
            source = self.act(self.norm(source))
        k, v = rearrange(self.kv(source), "b m (two h d) -> two b h m d", two=2, h=self.num_heads)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(rearrange(x, "b h n d -> b n (h d)")))


class PyramidBlock(nn.Module):
    """Pre-norm transformer block: spatial-reduction attention, then the (depthwise-conv) MLP."""

    def __init__(
        self, spatial_dims: int, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int,
        linear: bool = False, depthwise_conv: bool = True, qkv_bias: bool = True,
        drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(
            spatial_dims, dim, num_heads, sr_ratio, linear, qkv_bias, attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = PyramidMlp(spatial_dims, dim, int(dim * mlp_ratio), depthwise_conv, linear, drop)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class PyramidStage(nn.Module):
    """Overlapping patch embedding (the stage's downsampling), blocks, LayerNorm -> channels-first map."""

    def __init__(
        self, spatial_dims: int, in_channels: int, dim: int, depth: int, *, patch_size: int, stride: int,
        num_heads: int, mlp_ratio: float, sr_ratio: int, linear: bool, qkv_bias: bool,
        drop: float, attn_drop: float, drop_path: Sequence[float],
    ) -> None:
        super().__init__()
        # overlapping: kernel wider than stride, padded so the grid is exactly size / stride
        self.downsample = PatchEmbed(
            spatial_dims, in_channels, dim, patch_size, stride, padding=patch_size // 2, norm=True
        )
        self.blocks = nn.ModuleList(
            PyramidBlock(
                spatial_dims, dim, num_heads, mlp_ratio, sr_ratio, linear=linear, qkv_bias=qkv_bias,
                drop=drop, attn_drop=attn_drop, drop_path=drop_path[i],
            )
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.downsample(x)
        for block in self.blocks:
            x = block(x, grid)
        return tokens_to_grid(self.norm(x), grid)


class PyramidVisionTransformerV2(nn.Module):
    """PVT-v2 / Mix Transformer encoder with an optional linear classifier on the pooled last stage.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        img_size: checked against the deepest stride (32); the model itself has no size-bound parameter.
        num_classes: classifier outputs; 0 builds no head (a backbone for a decoder).
        embed_dims, depths, num_heads, mlp_ratios, sr_ratios: one value per stage.
        linear: PVT-v2-li attention (pooled keys/values) and ReLU in the MLP.

    `forward_features` returns four channels-first maps at strides 4, 8, 16, 32, described
    by `feature_info`.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | int | None = None,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        linear: bool = False,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        model_name: str = "pvt_v2",
    ) -> None:
        super().__init__()
        self.model_name = model_name
        check_stage_config(
            model_name, embed_dims=embed_dims, depths=depths, num_heads=num_heads,
            mlp_ratios=mlp_ratios, sr_ratios=sr_ratios,
        )
        check_heads_divide(model_name, embed_dims, num_heads)
        if img_size is not None:
            image_size(img_size, spatial_dims, model_name)
        rates = stage_drop_path_rates(depths, drop_path_rate)
        widths = [in_channels, *embed_dims]
        self.stages = nn.ModuleList(
            PyramidStage(
                spatial_dims, widths[i], widths[i + 1], depths[i],
                patch_size=7 if i == 0 else 3, stride=4 if i == 0 else 2,
                num_heads=num_heads[i], mlp_ratio=mlp_ratios[i], sr_ratio=sr_ratios[i], linear=linear,
                qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i],
            )
            for i in range(4)
        )
        self.feature_info = stage_feature_info(embed_dims)
        self.num_features = int(embed_dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = classifier_head(self.num_features, num_classes)
        self.apply(init_vit_weights)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_spatial_size(x.shape[2:], DEEPEST_STRIDE, self.model_name)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = features[-1].flatten(2).mean(-1)  # global average over the last grid
        return self.head(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_pvt_v2(name: str, overrides: dict[str, Any], **architecture: Any) -> nn.Module:
    return create_hierarchical(PyramidVisionTransformerV2, name, overrides, **architecture)


B1_TO_B5_WIDTHS = (64, 128, 320, 512)


@register_model(family="pvt_v2")
def pvt_v2_b0(**kwargs: Any) -> nn.Module:
    """PVT-v2-B0 (3.7 M at 224², 1000 classes): widths 32-64-160-256, depths 2-2-2-2."""
    return _create_pvt_v2("pvt_v2_b0", kwargs, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2))


@register_model(family="pvt_v2")
def pvt_v2_b1(**kwargs: Any) -> nn.Module:
    """PVT-v2-B1 (14.0 M): widths 64-128-320-512, depths 2-2-2-2."""
    return _create_pvt_v2("pvt_v2_b1", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(2, 2, 2, 2))


@register_model(family="pvt_v2")
def pvt_v2_b2(**kwargs: Any) -> nn.Module:
    """PVT-v2-B2 (25.4 M): widths 64-128-320-512, depths 3-4-6-3."""
    return _create_pvt_v2("pvt_v2_b2", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 6, 3))


@register_model(family="pvt_v2")
def pvt_v2_b2_li(**kwargs: Any) -> nn.Module:
    """PVT-v2-B2-Li (22.6 M): B2 with keys/values pooled to 7 per axis (linear attention cost)."""
    return _create_pvt_v2("pvt_v2_b2_li", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 6, 3), linear=True)


@register_model(family="pvt_v2")
def pvt_v2_b3(**kwargs: Any) -> nn.Module:
    """PVT-v2-B3 (45.2 M): widths 64-128-320-512, depths 3-4-18-3."""
    return _create_pvt_v2("pvt_v2_b3", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 18, 3))


@register_model(family="pvt_v2")
def pvt_v2_b4(**kwargs: Any) -> nn.Module:
    """PVT-v2-B4 (62.6 M): widths 64-128-320-512, depths 3-8-27-3."""
    return _create_pvt_v2("pvt_v2_b4", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 8, 27, 3))


@register_model(family="pvt_v2")
def pvt_v2_b5(**kwargs: Any) -> nn.Module:
    """PVT-v2-B5 (82.0 M): widths 64-128-320-512, depths 3-6-40-3, MLP ratio 4 everywhere."""
    return _create_pvt_v2(
        "pvt_v2_b5", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)
    )
