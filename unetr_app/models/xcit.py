"""XCiT: Cross-Covariance Image Transformers (El-Nouby et al., NeurIPS 2021), 2D and 3D.

Three pieces per block: cross-covariance attention (attention between channels, with queries
and keys L2-normalised along the tokens and a learned temperature per head: linear in the number
of tokens), local patch interaction (two depthwise convolutions on the token grid), and an MLP,
each scaled by a learned per-channel gain. A convolutional patch stem and a Fourier position
encoding make the model size-agnostic: any input whose axes are multiples of the patch size.
Two class-attention layers (CaiT) pool the tokens into the class token for the classifier; a
segmentation backbone does not build them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unetr_app.models.layers import (
    DropPath,
    Mlp,
    batch_norm_layer,
    check_heads,
    check_input_multiple,
    check_spatial_dims,
    classifier_head,
    conv_layer,
    evenly_spaced_taps,
    grid_to_tokens,
    init_vit_weights,
    stochastic_depth_rates,
    tokens_to_grid,
)
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import create_variant
from unetr_app.models.vit import plain_feature_info

TINY_PARAMS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


class ConvPatchEmbed(nn.Module):
    """log2(patch) stride-2 3x3 convolutions with batch norm, widths D/2^k ... D."""

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        steps = int(math.log2(patch_size))
        if 2**steps != patch_size or steps < 1:
            raise ValueError(f"XCiT patch_size must be a power of two (allowed: 2, 4, 8, 16, 32), got {patch_size}")
        conv, norm = conv_layer(spatial_dims), batch_norm_layer(spatial_dims)
        widths = [in_channels] + [embed_dim // 2 ** (steps - 1 - i) for i in range(steps)]
        layers: list[nn.Module] = []
        for i in range(steps):
            layers += [conv(widths[i], widths[i + 1], 3, stride=2, padding=1, bias=False), norm(widths[i + 1])]
            if i < steps - 1:
                layers.append(nn.GELU())
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        return grid_to_tokens(self.proj(x))


class FourierPositionEncoding(nn.Module):
    """Sine/cosine of each token's normalised coordinate per axis, projected to the width."""

    def __init__(self, spatial_dims: int, embed_dim: int, hidden_dim: int = 32, temperature: float = 10000.0):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.token_projection = nn.Linear(hidden_dim * spatial_dims, embed_dim)

    def forward(self, grid: Sequence[int], device: torch.device) -> torch.Tensor:
        """(1, N, D) for a grid, flattened in the same order as the tokens."""
        freqs = self.temperature ** (2 * (torch.arange(self.hidden_dim, device=device) // 2) / self.hidden_dim)
        axes = [torch.arange(1, n + 1, device=device, dtype=torch.float32) / (n + 1e-6) * 2 * math.pi for n in grid]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid), 1)
        angles = coords / freqs  # (N, axes, hidden)
        encoding = torch.stack([angles[..., 0::2].sin(), angles[..., 1::2].cos()], dim=-1).flatten(1)
        return self.token_projection(encoding).unsqueeze(0)


class CrossCovarianceAttention(nn.Module):
    """Attention between channels: softmax(temperature * q_hat k_hat^T) v, per head."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_drop: float = 0.0) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # (B, N, 3C) -> 3 x (B, heads, C/heads, N)
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)  # (B, heads, C/h, C/h)
        x = (attn @ v).permute(0, 3, 1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.out_proj(x))


class LocalPatchInteraction(nn.Module):
    """Depthwise conv -> GELU -> batch norm -> depthwise conv on the token grid."""

    def __init__(self, spatial_dims: int, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        conv = conv_layer(spatial_dims)
        self.conv1 = conv(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.bn = batch_norm_layer(spatial_dims)(dim)
        self.conv2 = conv(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = self.conv2(self.bn(self.act(self.conv1(tokens_to_grid(x, grid)))))
        return grid_to_tokens(x)[0]


class XCABlock(nn.Module):
    def __init__(self, spatial_dims, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, drop_path=0.0, eta=1.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CrossCovarianceAttention(dim, num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.norm3 = nn.LayerNorm(dim)
        self.local_mp = LocalPatchInteraction(spatial_dims, dim)
        self.gamma3 = nn.Parameter(eta * torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.gamma3 * self.local_mp(self.norm3(x), grid))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x)))


class ClassAttention(nn.Module):
    """Only the class token queries; keys and values come from every token (CaiT)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        heads = lambda t: t.reshape(batch, t.shape[1], self.num_heads, -1).transpose(1, 2)  # noqa: E731
        cls = F.scaled_dot_product_attention(heads(self.q(x[:, :1])), heads(self.k(x)), heads(self.v(x)))
        return self.out_proj(cls.transpose(1, 2).reshape(batch, 1, dim))  # (B, 1, C)


class ClassAttentionBlock(nn.Module):
    """Updates the class token from all tokens; patch tokens pass through (normed if tokens_norm)."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0, eta=1.0, tokens_norm=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.drop_path = DropPath(drop_path)
        self.tokens_norm = tokens_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.drop_path(self.gamma1 * torch.cat([self.attn(normed), normed[:, 1:]], dim=1))
        x = self.norm2(x) if self.tokens_norm else torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + self.drop_path(torch.cat([cls, x[:, 1:]], dim=1))

    def extra_repr(self) -> str:
        return f"tokens_norm={self.tokens_norm}"


class XCiT(nn.Module):
    """XCiT over 2D or 3D input of any size that is a multiple of `patch_size`.

    Args: as `VisionTransformer`, plus `cls_attn_layers` (class-attention layers before the
    classifier), `eta` (initial per-channel gain of each branch) and `tokens_norm` (norm all
    tokens, not only the class token, in the class-attention layers). `img_size` is accepted for
    a uniform interface and checked for divisibility only.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        img_size: int | Sequence[int] | None = None,
        patch_size: int = 16,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        cls_attn_layers: int = 2,
        eta: float = 1.0,
        tokens_norm: bool = False,
        model_name: str = "xcit",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.model_name = model_name
        self.patch_size = (patch_size,) * spatial_dims
        self.patch_embed = ConvPatchEmbed(spatial_dims, in_channels, embed_dim, patch_size)
        self.pos_embed = FourierPositionEncoding(spatial_dims, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(
            XCABlock(spatial_dims, embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, dpr, eta)
            for dpr in stochastic_depth_rates(drop_path_rate, depth)
        )
        if num_classes > 0:  # the class token and its attention layers serve only the classifier
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.cls_token, std=0.02)
            self.cls_attn_blocks = nn.ModuleList(
                ClassAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, eta=eta, tokens_norm=tokens_norm)
                for _ in range(cls_attn_layers)
            )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.num_classes = num_classes
        self.taps = evenly_spaced_taps(depth)
        self.feature_info = plain_feature_info(embed_dim, patch_size, self.taps)
        self.apply(init_vit_weights)

    def hidden_states(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, ...]]:
        check_input_multiple(x, self.patch_size, self.model_name)
        tokens, grid = self.patch_embed(x)
        tokens = self.pos_drop(tokens + self.pos_embed(grid, x.device))
        states = []
        for block in self.blocks:
            tokens = block(tokens, grid)
            states.append(tokens)
        return states, grid

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four evenly spaced block outputs as (B, D, *grid) maps; the last one normed."""
        states, grid = self.hidden_states(x)
        taps = [states[i] for i in self.taps[:-1]] + [self.norm(states[-1])]
        return [tokens_to_grid(t, grid) for t in taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.hidden_states(x)[0][-1]
        if self.num_classes == 0:
            return self.norm(tokens).mean(dim=1)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.cls_attn_blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


@register_model(family="xcit")
def xcit_nano_12_p16(**kwargs) -> nn.Module:
    """XCiT-N12/16: width 128, 12 blocks, 4 heads."""
    return create_variant(XCiT, "xcit_nano_12_p16", kwargs, embed_dim=128, depth=12, num_heads=4, eta=1.0, tokens_norm=False)


@register_model(family="xcit")
def xcit_small_12_p16(**kwargs) -> nn.Module:
    """XCiT-S12/16: width 384, 12 blocks, 8 heads."""
    return create_variant(XCiT, "xcit_small_12_p16", kwargs, embed_dim=384, depth=12, num_heads=8, eta=1.0, tokens_norm=True)
