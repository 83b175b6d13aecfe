"""ConvMixer (Trockman & Kolter, "Patches Are All You Need?", TMLR 2023), 2D and 3D.

A patch convolution, then blocks of depthwise convolution with a large kernel (spatial mixing,
residual) and pointwise convolution (channel mixing), each followed by GELU and batch norm. It
keeps the patch grid's resolution throughout and accepts any input that is a multiple of the
patch size. The published models use patch 7; the UNETR decoder needs patch 16, which the
segmentation model uses by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unetr_app.models.layers import (
    batch_norm_layer,
    check_input_multiple,
    check_spatial_dims,
    classifier_head,
    conv_layer,
    evenly_spaced_taps,
    feature_entry,
    to_tuple,
)
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import create_variant

# Patch 16 so tests can use the same input sizes as the other families.
TINY_PARAMS = {"embed_dim": 32, "depth": 2, "kernel_size": 3, "patch_size": 16}
SEGMENTATION_PATCH_SIZE = 16  # the UNETR decoder upsamples 2x four times


class ConvMixerBlock(nn.Module):
    """x + BN(GELU(depthwise(x))), then BN(GELU(pointwise(.)))."""

    def __init__(self, spatial_dims: int, dim: int, kernel_size: int) -> None:
        super().__init__()
        conv, norm = conv_layer(spatial_dims), batch_norm_layer(spatial_dims)
        self.depthwise = nn.Sequential(conv(dim, dim, kernel_size, groups=dim, padding="same"), nn.GELU(), norm(dim))
        self.pointwise = nn.Sequential(conv(dim, dim, 1), nn.GELU(), norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(x + self.depthwise(x))


class ConvMixer(nn.Module):
    """ConvMixer-D/depth over 2D or 3D input; channels-first maps throughout.

    Args: `embed_dim` (D), `depth`, `kernel_size` (depthwise kernel), `patch_size`;
    `patch_size=None` is 7 for classification (the published models) and 16 for segmentation.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        img_size: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | None = None,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 32,
        kernel_size: int = 7,
        model_name: str = "convmixer",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        self.model_name = model_name
        patch_size = patch_size or (7 if num_classes > 0 else SEGMENTATION_PATCH_SIZE)
        self.patch_size = to_tuple(patch_size, spatial_dims, "patch_size")
        conv, norm = conv_layer(spatial_dims), batch_norm_layer(spatial_dims)
        self.stem = nn.Sequential(
            conv(in_channels, embed_dim, self.patch_size, stride=self.patch_size), nn.GELU(), norm(embed_dim)
        )
        self.blocks = nn.ModuleList(ConvMixerBlock(spatial_dims, embed_dim, kernel_size) for _ in range(depth))
        self.head = classifier_head(embed_dim, num_classes)
        self.taps = evenly_spaced_taps(depth)
        self.feature_info = [feature_entry(embed_dim, self.patch_size, f"blocks.{i}") for i in self.taps]

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input_multiple(x, self.patch_size, self.model_name)
        x, states = self.stem(x), []
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return states

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Four evenly spaced block outputs, (B, D, *grid)."""
        states = self.hidden_states(x)
        return [states[i] for i in self.taps]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(x)[-1].flatten(2).mean(dim=2))


@register_model(family="convmixer")
def convmixer_768_32(**kwargs) -> nn.Module:
    """ConvMixer-768/32: width 768, 32 blocks, kernel 7, patch 7."""
    return create_variant(ConvMixer, "convmixer_768_32", kwargs, embed_dim=768, depth=32, kernel_size=7)


@register_model(family="convmixer")
def convmixer_1536_20(**kwargs) -> nn.Module:
    """ConvMixer-1536/20: width 1536, 20 blocks, kernel 9, patch 7."""
    return create_variant(ConvMixer, "convmixer_1536_20", kwargs, embed_dim=1536, depth=20, kernel_size=9)
