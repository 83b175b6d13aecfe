"""The UNet-style decoder for pyramid encoders (PVT, PVT-v2, Swin, MViTv2, Mix Transformer).

Built from MONAI's blocks in the way SwinUNETR fuses its encoder: every stage's map goes through a
residual conv block (UnetResBlock) to the decoder's width for that level, then transposed-conv
up-blocks (UnetrUpBlock) climb from the coarsest stage to the finest, each concatenating the next
finer level; a last up-block jumps from the finest stage (stride 4) to full resolution, where it
meets a conv stem run on the image itself, so boundaries come from full-resolution pixels rather
than from stride-4 tokens. Sizes come from the encoder's `feature_info`, not from fixed indices.

    decoder = build_decoder("unet", encoder.feature_info, spatial_dims=3,
                            in_channels=1, out_channels=2, feature_size=16)
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetrUpBlock
from torch import nn

from unetr_app.models.segmentation import StagedDecoder, register_decoder


@register_decoder("unet")
class UNetDecoder(StagedDecoder, nn.Module):
    """Fuse a pyramid of feature maps and a full-resolution stem into per-voxel logits.

    Args:
        feature_info: the encoder's stages, finest first (num_chs, reduction per stage).
        spatial_dims: 2 or 3.
        in_channels: image channels (the stem reads the image).
        out_channels: classes.
        feature_size: decoder width at the finest stage and at full resolution; it doubles per
            coarser stage (16 -> 16, 32, 64, 128 for four stages).
        norm_name: MONAI norm name for the conv blocks ("instance", "batch", ...).
        res_block: residual conv blocks inside the up-blocks.

    Its stages (for auxiliary heads) are the up-blocks' outputs, coarse to fine, and last the
    full-resolution one the main head reads.
    """

    def __init__(
        self, feature_info: Sequence[dict], *, spatial_dims: int, in_channels: int, out_channels: int,
        feature_size: int = 16, norm_name: str | tuple = "instance", res_block: bool = True,
    ) -> None:
        super().__init__()
        widths = [feature_size * 2**i for i in range(len(feature_info))]
        self.stem = UnetResBlock(spatial_dims, in_channels, feature_size, 3, 1, norm_name)
        self.laterals = nn.ModuleList(
            UnetResBlock(spatial_dims, info["num_chs"], width, 3, 1, norm_name)
            for info, width in zip(feature_info, widths)
        )
        self.ups = nn.ModuleList(
            UnetrUpBlock(
                spatial_dims, widths[i + 1], widths[i], 3,
                upsample_kernel_size=feature_info[i + 1]["reduction"] // feature_info[i]["reduction"],
                norm_name=norm_name, res_block=res_block,
            )
            for i in range(len(feature_info) - 1)
        )
        self.up_to_stem = UnetrUpBlock(
            spatial_dims, widths[0], feature_size, 3, upsample_kernel_size=feature_info[0]["reduction"],
            norm_name=norm_name, res_block=res_block,
        )
        self.out = UnetOutBlock(spatial_dims, feature_size, out_channels)
        self.stage_channels = widths[-2::-1] + [feature_size]  # up-block outputs coarse -> fine, then full size

    def decode(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x, stages = self.laterals[-1](features[-1]), []
        for level in reversed(range(len(self.ups))):  # coarse -> fine
            x = self.ups[level](x, self.laterals[level](features[level]))
            stages.append(x)
        return stages + [self.up_to_stem(x, self.stem(image))]  # stride 4 -> full resolution

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)
