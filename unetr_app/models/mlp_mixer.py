"""MLP-Mixer (Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021), 2D and 3D.

No attention: each block mixes information across tokens with an MLP applied to every channel
(token mixing), then across channels with an MLP applied to every token (channel mixing). The
token-mixing MLP is sized for the number of patches, so the model accepts exactly `img_size`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetr_app.models.layers import (
    TokenBackbone,
    DropPath,
    Mlp,
    PatchEmbed,
    check_divisible,
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

TINY_PARAMS = {"embed_dim": 32, "depth": 2}


class MixerBlock(nn.Module):
    """x + token_mlp over N (per channel), then x + channel_mlp over C (per token)."""

    def __init__(self, dim: int, num_tokens: int, mlp_ratio: tuple[float, float] = (0.5, 4.0), drop=0.0, drop_path=0.0):
        super().__init__()
        tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp_tokens = Mlp(num_tokens, tokens_dim, drop=drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp_channels = Mlp(dim, channels_dim, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, N, C) -> (B, C, N) so the token MLP runs along N
        x = x + self.drop_path(self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2))
        return x + self.drop_path(self.mlp_channels(self.norm2(x)))


class MlpMixer(TokenBackbone, nn.Module):
    """MLP-Mixer over 2D or 3D input of exactly `img_size`.

    Args: as `VisionTransformer`; `mlp_ratio` is (token-mixing, channel-mixing) hidden width
    as multiples of `embed_dim`.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        img_size: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] = 16,
        num_classes: int = 1000,
        embed_dim: int = 512,
        depth: int = 8,
        mlp_ratio: tuple[float, float] = (0.5, 4.0),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        model_name: str = "mixer",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.model_name = model_name
        self.img_size = default_img_size(img_size, spatial_dims)
        self.patch_size = to_tuple(patch_size, spatial_dims, "patch_size")
        check_divisible(self.img_size, self.patch_size, model_name)
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.stem = PatchEmbed(spatial_dims, in_channels, embed_dim, self.patch_size)
        self.blocks = nn.ModuleList(
            MixerBlock(embed_dim, num_patches(self.grid), tuple(mlp_ratio), drop_rate, dpr)
            for dpr in stochastic_depth_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.taps = evenly_spaced_taps(depth)
        self.feature_info = plain_feature_info(embed_dim, self.patch_size, self.taps)
        self.apply(init_vit_weights)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_size(x, self.img_size, self.model_name)
        tokens, states = self.stem(x)[0], []
        for block in self.blocks:
            tokens = block(tokens)
            states.append(tokens)
        return states


@register_model(family="mlp_mixer")
def mixer_s16(**kwargs) -> nn.Module:
    """Mixer-S/16: width 512, 8 blocks, token MLP 256, channel MLP 2048."""
    return create_variant(MlpMixer, "mixer_s16", kwargs, embed_dim=512, depth=8)


@register_model(family="mlp_mixer")
def mixer_b16(**kwargs) -> nn.Module:
    """Mixer-B/16: width 768, 12 blocks, token MLP 384, channel MLP 3072."""
    return create_variant(MlpMixer, "mixer_b16", kwargs, embed_dim=768, depth=12)
