"""Shared n-D building blocks for the transformer family: one implementation serves 2D and 3D.

Layout convention: channels-first grids `(B, C, *grid)` between modules, tokens `(B, N, C)`
inside them with the grid size kept beside. `grid_to_tokens` / `tokens_to_grid` convert.

Module names follow MONAI's ViT blocks (`attn.qkv`, `attn.out_proj`, `mlp.linear1`,
`mlp.linear2`, `norm1`, `norm2`) so MONAI ViT/UNETR checkpoints map onto ours unchanged.

Other model files import from here; keep the public names and signatures stable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

SPATIAL_DIMS = (2, 3)


# --- argument checks -------------------------------------------------------------------------


def check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in SPATIAL_DIMS:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def to_tuple(value: int | Sequence[int], spatial_dims: int, name: str) -> tuple[int, ...]:
    """An int repeated per axis, or a sequence of exactly `spatial_dims` ints."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    values = tuple(int(v) for v in value)
    if len(values) != spatial_dims:
        raise ValueError(f"{name} needs {spatial_dims} values for spatial_dims={spatial_dims}, got {tuple(value)}")
    return values


def check_divisible(img_size: Sequence[int], patch_size: Sequence[int], model: str) -> None:
    """Every axis of `img_size` must be a multiple of the patch size on that axis."""
    if any(s % p for s, p in zip(img_size, patch_size)):
        nearest = tuple(max(p, round(s / p) * p) for s, p in zip(img_size, patch_size))
        raise ValueError(
            f"{model}: img_size {tuple(img_size)} must be a multiple of the patch size {tuple(patch_size)} on "
            f"every axis (allowed: multiples of {tuple(patch_size)}, e.g. {nearest})"
        )


def check_input_size(x: torch.Tensor, img_size: Sequence[int], model: str) -> None:
    """Models with a learned position embedding or token-mixing MLP accept only their built size."""
    got = tuple(x.shape[2:])
    if got != tuple(img_size):
        raise ValueError(
            f"{model} was built for inputs of size {tuple(img_size)}, got {got}; rebuild it with "
            f"img_size={list(got)} or crop/resize the input (allowed: exactly {tuple(img_size)})"
        )


def check_input_multiple(x: torch.Tensor, patch_size: Sequence[int], model: str) -> None:
    """Size-agnostic models accept any input whose axes are multiples of the patch size."""
    got = tuple(x.shape[2:])
    if any(s % p for s, p in zip(got, patch_size)):
        nearest = tuple(max(p, round(s / p) * p) for s, p in zip(got, patch_size))
        raise ValueError(
            f"{model}: input size {got} must be a multiple of the patch size {tuple(patch_size)} on every axis "
            f"(allowed: multiples of {tuple(patch_size)}, e.g. {nearest}); crop or pad the input"
        )


def check_heads(dim: int, num_heads: int) -> None:
    if num_heads < 1 or dim % num_heads:
        allowed = [h for h in range(1, min(dim, 64) + 1) if dim % h == 0]
        raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads} (allowed num_heads: {allowed})")


# --- layer factories and shape helpers -------------------------------------------------------


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    return Conv[Conv.CONV, spatial_dims]


def batch_norm_layer(spatial_dims: int) -> type[nn.Module]:
    return Norm[Norm.BATCH, spatial_dims]


def grid_to_tokens(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, C, *grid) -> tokens (B, N, C) and the grid size."""
    return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


def tokens_to_grid(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """tokens (B, N, C) -> (B, C, *grid)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


INTERPOLATION = {2: "bilinear", 3: "trilinear"}


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, *grid) -> (B, C, *size), (bi/tri)linear; unchanged if already that size."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.interpolate(x, size=size, mode=INTERPOLATION[len(size)], align_corners=False)


def evenly_spaced_taps(depth: int, count: int = 4) -> list[int]:
    """Block indices whose outputs feed a decoder: every depth/count-th block and the last one.

    For depth 12 this is [3, 6, 9, 11], the hidden states MONAI's UNETR reads (the paper's
    z3, z6, z9, z12 counted from the embedding), so our UNETR matches MONAI's output exactly.
    """
    return [depth * k // count for k in range(1, count)] + [depth - 1]


def feature_entry(num_chs: int, reduction: int | Sequence[int], module: str) -> dict:
    """One `feature_info` item; `reduction` is an int when the same on every axis."""
    if not isinstance(reduction, int):
        reduction = tuple(int(r) for r in reduction)
        if len(set(reduction)) == 1:
            reduction = reduction[0]
    return {"num_chs": int(num_chs), "reduction": reduction, "module": module}


def classifier_head(dim: int, num_classes: int) -> nn.Module:
    """Linear classifier; `num_classes=0` gives a backbone without a head."""
    return nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


def init_vit_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit norms (the ViT/DeiT recipe)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --- blocks ----------------------------------------------------------------------------------


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample (Huang et al., 2016)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear -> GELU -> Linear, with MONAI's MLPBlock parameter names."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, drop: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(in_features, hidden_features)
        self.fn = nn.GELU()
        self.linear2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.linear2(self.drop(self.fn(self.linear1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C), with MONAI's SABlock parameter names."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # (B, N, 3C) -> 3 x (B, heads, N, C/heads)
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.out_proj(x.transpose(1, 2).reshape(batch, tokens, dim)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Convolutional patch embedding for 2D or 3D input: (B, C, *size) -> tokens (B, N, D) + grid.

    `stride` defaults to `patch_size` (non-overlapping patches); set a smaller stride and
    `padding` for overlapping embeddings (PVT v2, SegFormer).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        embed_dim: int,
        patch_size: int | Sequence[int] = 16,
        stride: int | Sequence[int] | None = None,
        padding: int | Sequence[int] = 0,
        norm: bool = False,
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.patch_size = to_tuple(patch_size, spatial_dims, "patch_size")
        self.stride = to_tuple(stride if stride is not None else self.patch_size, spatial_dims, "stride")
        self.proj = conv_layer(spatial_dims)(
            in_channels, embed_dim, kernel_size=self.patch_size, stride=self.stride,
            padding=to_tuple(padding, spatial_dims, "padding"),
        )
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        tokens, grid = grid_to_tokens(self.proj(x))
        return self.norm(tokens), grid


def stochastic_depth_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Linearly increasing drop-path rate per block, 0 for the first."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


def num_patches(grid: Sequence[int]) -> int:
    return math.prod(grid)


class TokenBackbone:
    """`forward_features`, `forward_head` and `forward` of the single-scale token backbones
    (ViT, DeiT, divided attention, MLP-Mixer). A subclass provides `hidden_states(x)` (one
    (B, P + N, D) tensor per block), `norm`, `head`, `taps`, `grid` and `num_prefix_tokens`."""

    num_prefix_tokens = 0

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four evenly spaced block outputs as (B, D, *grid) maps; the last one normed."""
        return self.tokens_to_maps(self.forward_taps(x))

    def forward_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The tapped block outputs as tokens (B, P + N, D), prefix tokens included; the last normed."""
        states = self.hidden_states(x)
        return [states[i] for i in self.taps[:-1]] + [self.norm(states[-1])]

    def tokens_to_maps(self, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Drop the prefix tokens: (B, P + N, D) -> (B, D, *grid) each."""
        return [tokens_to_grid(t[:, self.num_prefix_tokens:], self.grid) for t in taps]

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = tokens[:, 0] if self.num_prefix_tokens else tokens.mean(dim=1)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.norm(self.hidden_states(x)[-1]))
