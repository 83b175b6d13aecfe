"""Divided space-time attention (Bertasius et al., "Is Space-Time Attention All You Need for
Video Understanding?", ICML 2021: TimeSformer), for videos and volumes.

Each block attends first along one axis (time for a clip; the slice axis, the first spatial
axis, for a volume), then within each slice, then applies the MLP. Costs grow with
N * (T + HW) instead of N^2 for joint attention. The class token joins only the within-slice
attention: it is copied to every slice and the copies' updates are averaged.

`timesformer_base_divided` takes clips as (B, C, T, H, W) with patches of 1x16x16; the
`vit_*_patch16_divided` variants take 2D images or 3D volumes with 16-voxel patches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetr_app.models.layers import (
    TokenBackbone,
    Attention,
    DropPath,
    Mlp,
    PatchEmbed,
    check_divisible,
    check_heads,
    check_input_size,
    check_spatial_dims,
    classifier_head,
    evenly_spaced_taps,
    init_vit_weights,
    num_patches,
    stochastic_depth_rates,
    to_tuple,
)
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import create_variant
from unetr_app.models.vit import default_img_size, plain_feature_info

TINY_PARAMS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


class DividedBlock(nn.Module):
    """Attention along the first grid axis, then within each slice, then the MLP.

    Tokens are (B, P + T*S, C): P prefix tokens (0 or 1), then T slices of S tokens each.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.temporal_norm1 = nn.LayerNorm(dim)
        self.temporal_attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.temporal_fc = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, slices: int, num_prefix: int) -> torch.Tensor:
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        batch, tokens, dim = patches.shape
        per_slice = tokens // slices
        # along the slice axis: (B, T*S, C) -> (B*S, T, C)
        along = patches.reshape(batch, slices, per_slice, dim).transpose(1, 2).reshape(-1, slices, dim)
        update = self.temporal_fc(self.temporal_attn(self.temporal_norm1(along)))
        update = update.reshape(batch, per_slice, slices, dim).transpose(1, 2).reshape(batch, tokens, dim)
        patches = patches + self.drop_path(update)
        # within each slice: (B, T*S, C) -> (B*T, P + S, C), the prefix copied to every slice
        within = patches.reshape(batch * slices, per_slice, dim)
        if num_prefix:
            within = torch.cat([prefix.repeat_interleave(slices, dim=0), within], dim=1)
        update = self.attn(self.norm1(within)).reshape(batch, slices, num_prefix + per_slice, dim)
        prefix_update = update[:, :, :num_prefix].mean(dim=1)
        update = torch.cat([prefix_update, update[:, :, num_prefix:].reshape(batch, tokens, dim)], dim=1)
        x = torch.cat([prefix, patches], dim=1) + self.drop_path(update)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class DividedViT(TokenBackbone, nn.Module):
    """ViT with divided attention over 2D or 3D input of exactly `img_size`.

    Position embedding: one learned vector per within-slice position (and the class token),
    plus one per slice (`time_embed`), as in TimeSformer. Args as `VisionTransformer`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 3,
        img_size: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        model_name: str = "divided",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_heads(embed_dim, num_heads)
        self.model_name = model_name
        self.img_size = default_img_size(img_size, spatial_dims)
        self.patch_size = to_tuple(patch_size, spatial_dims, "patch_size")
        check_divisible(self.img_size, self.patch_size, model_name)
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_prefix_tokens = 1 if num_classes > 0 else 0
        self.patch_embed = PatchEmbed(spatial_dims, in_channels, embed_dim, self.patch_size)
        if self.num_prefix_tokens:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + num_patches(self.grid[1:]), embed_dim))
        self.time_embed = nn.Parameter(torch.zeros(1, self.grid[0], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            DividedBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, dpr)
            for dpr in stochastic_depth_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.taps = evenly_spaced_taps(depth)
        self.feature_info = plain_feature_info(embed_dim, self.patch_size, self.taps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_vit_weights)
        for block in list(self.blocks)[1:]:  # as TimeSformer: later blocks start as spatial-only
            nn.init.zeros_(block.temporal_fc.weight)
            nn.init.zeros_(block.temporal_fc.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.img_size, self.model_name)
        patches = self.patch_embed(x)[0]  # (B, T*S, C), slice-major
        batch, dim = patches.shape[0], patches.shape[-1]
        # within-slice position (1, 1, S, C) + slice position (1, T, 1, C)
        position = self.pos_embed[:, self.num_prefix_tokens:].unsqueeze(1) + self.time_embed.unsqueeze(2)
        patches = patches + position.reshape(1, -1, dim)  # (1, T, S, C) -> (1, T*S, C)
        if self.num_prefix_tokens:
            cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
            patches = torch.cat([cls, patches], dim=1)
        return self.pos_drop(patches)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, states = self.embed(x), []
        for block in self.blocks:
            tokens = block(tokens, self.grid[0], self.num_prefix_tokens)
            states.append(tokens)
        return states


@register_model(family="divided", spatial_dims=(3,))
def timesformer_base_divided(**kwargs) -> nn.Module:
    """TimeSformer (divided space-time) base: clips (B, C, 8, 224, 224), patches 1x16x16."""
    return create_variant(DividedViT, "timesformer_base_divided", kwargs, spatial_dims=3, in_channels=3,
                          img_size=(8, 224, 224), patch_size=(1, 16, 16), embed_dim=768, depth=12, num_heads=12)


@register_model(family="divided")
def vit_tiny_patch16_divided(**kwargs) -> nn.Module:
    """ViT-Ti/16 with divided attention (slice axis, then within slices)."""
    return create_variant(DividedViT, "vit_tiny_patch16_divided", kwargs, embed_dim=192, depth=12, num_heads=3)


@register_model(family="divided")
def vit_small_patch16_divided(**kwargs) -> nn.Module:
    """ViT-S/16 with divided attention (slice axis, then within slices)."""
    return create_variant(DividedViT, "vit_small_patch16_divided", kwargs, embed_dim=384, depth=12, num_heads=6)


@register_model(family="divided")
def vit_base_patch16_divided(**kwargs) -> nn.Module:
    """ViT-B/16 with divided attention (slice axis, then within slices)."""
    return create_variant(DividedViT, "vit_base_patch16_divided", kwargs, embed_dim=768, depth=12, num_heads=12)
