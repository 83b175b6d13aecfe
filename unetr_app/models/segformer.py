"""SegFormer (Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", NeurIPS 2021).

- The Mix Transformer encoder (`mit_b0` ... `mit_b5`): overlapping patch merging, efficient
  self-attention with reduction ratios 8-4-2-1, Mix-FFN (a depthwise 3x3 conv in the MLP instead
  of position embeddings). It is PVT-v2's architecture with MLP ratio 4 in every stage, so it is
  built from pvt_v2.py's class; registered as backbones (classifier head or UNet decoder).
- The all-MLP decoder (`segformer_b0` ... `segformer_b5`): each stage's map is projected to one
  width by a linear layer, upsampled to stride 4, concatenated, fused by a 1x1 conv + BatchNorm
  + ReLU, and classified by a 1x1 conv. The logits are then upsampled to the input's size.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv, Norm
from torch import nn

from unetr_app.models.hierarchical import create_hierarchical
from unetr_app.models.layers import INTERPOLATION, grid_to_tokens, tokens_to_grid
from unetr_app.models.pvt_v2 import B1_TO_B5_WIDTHS, PyramidVisionTransformerV2
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import StagedDecoder, register_decoder


@register_decoder("segformer_mlp")
class SegFormerHead(StagedDecoder, nn.Module):
    """All-MLP decoder over four feature maps described by `feature_info`.

    Args:
        feature_info: the encoder's stages (num_chs per stage), finest first.
        spatial_dims: 2 or 3.
        in_channels: image channels (unused: this decoder reads only the features).
        out_channels: classes.
        decoder_dim: the common width (256 for B0/B1, 768 for B2-B5).
        decoder_dropout: before the classifier (0.1 in the reference).
    """

    def __init__(
        self, feature_info: Sequence[dict], *, spatial_dims: int, in_channels: int, out_channels: int,
        decoder_dim: int = 256, decoder_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.mode = INTERPOLATION[spatial_dims]
        self.stage_channels = [decoder_dim]  # one fused stage at stride 4
        self.linear_c = nn.ModuleList(nn.Linear(info["num_chs"], decoder_dim) for info in feature_info)
        conv = Conv[Conv.CONV, spatial_dims]
        self.fuse = conv(decoder_dim * len(feature_info), decoder_dim, 1, bias=False)
        self.norm = Norm[Norm.BATCH, spatial_dims](decoder_dim)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(decoder_dropout)
        self.classifier = conv(decoder_dim, out_channels, 1)

    def decode(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        finest = features[0].shape[2:]
        projected = []
        for linear, feature in zip(self.linear_c, features):
            tokens, grid = grid_to_tokens(feature)
            x = tokens_to_grid(linear(tokens), grid)  # (B, E, *grid)
            projected.append(F.interpolate(x, size=finest, mode=self.mode, align_corners=False))
        x = self.fuse(torch.cat(projected[::-1], dim=1))  # coarsest first, as the reference concatenates
        return [self.dropout(self.act(self.norm(x)))]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)  # at stride 4; `forward` upsamples to the input's size


def _create_mit(name: str, overrides: dict[str, Any], **architecture: Any) -> nn.Module:
    # PVT-v2's heads and reduction ratios, with MLP ratio 4 in every stage
    architecture = {"num_heads": (1, 2, 5, 8), "mlp_ratios": (4, 4, 4, 4), "sr_ratios": (8, 4, 2, 1), **architecture}
    return create_hierarchical(PyramidVisionTransformerV2, name, overrides, **architecture)


def _create_segformer(name: str, overrides: dict[str, Any], decoder_dim: int, **architecture: Any) -> nn.Module:
    return _create_mit(name, {"decoder": "segformer_mlp", "decoder_dim": decoder_dim, **overrides}, **architecture)



@register_model(family="segformer")
def mit_b0(**kwargs: Any) -> nn.Module:
    """Mix Transformer B0 (SegFormer encoder, 3.3 M without head): widths 32-64-160-256, depths 2-2-2-2."""
    return _create_mit("mit_b0", kwargs, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2))


@register_model(family="segformer")
def mit_b1(**kwargs: Any) -> nn.Module:
    """Mix Transformer B1 (13.2 M without head): widths 64-128-320-512, depths 2-2-2-2."""
    return _create_mit("mit_b1", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(2, 2, 2, 2))


@register_model(family="segformer")
def mit_b2(**kwargs: Any) -> nn.Module:
    """Mix Transformer B2 (24.2 M without head): widths 64-128-320-512, depths 3-4-6-3."""
    return _create_mit("mit_b2", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 6, 3))


@register_model(family="segformer")
def mit_b3(**kwargs: Any) -> nn.Module:
    """Mix Transformer B3 (44.1 M without head): widths 64-128-320-512, depths 3-4-18-3."""
    return _create_mit("mit_b3", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 18, 3))


@register_model(family="segformer")
def mit_b4(**kwargs: Any) -> nn.Module:
    """Mix Transformer B4 (60.8 M without head): widths 64-128-320-512, depths 3-8-27-3."""
    return _create_mit("mit_b4", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 8, 27, 3))


@register_model(family="segformer")
def mit_b5(**kwargs: Any) -> nn.Module:
    """Mix Transformer B5 (81.4 M without head): widths 64-128-320-512, depths 3-6-40-3."""
    return _create_mit("mit_b5", kwargs, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 6, 40, 3))


@register_model(family="segformer", tasks=("segmentation",))
def segformer_b0(**kwargs: Any) -> nn.Module:
    """SegFormer-B0 (3.8 M with 150 classes): mit_b0 + all-MLP decoder of width 256."""
    return _create_segformer("segformer_b0", kwargs, 256, embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2))


@register_model(family="segformer", tasks=("segmentation",))
def segformer_b1(**kwargs: Any) -> nn.Module:
    """SegFormer-B1 (13.7 M with 150 classes): mit_b1 + all-MLP decoder of width 256."""
    return _create_segformer("segformer_b1", kwargs, 256, embed_dims=B1_TO_B5_WIDTHS, depths=(2, 2, 2, 2))


@register_model(family="segformer", tasks=("segmentation",))
def segformer_b2(**kwargs: Any) -> nn.Module:
    """SegFormer-B2 (27.5 M with 150 classes): mit_b2 + all-MLP decoder of width 768."""
    return _create_segformer("segformer_b2", kwargs, 768, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 6, 3))


@register_model(family="segformer", tasks=("segmentation",))
def segformer_b3(**kwargs: Any) -> nn.Module:
    """SegFormer-B3 (47.3 M with 150 classes): mit_b3 + all-MLP decoder of width 768."""
    return _create_segformer("segformer_b3", kwargs, 768, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 4, 18, 3))


@register_model(family="segformer", tasks=("segmentation",))
def segformer_b4(**kwargs: Any) -> nn.Module:
    """SegFormer-B4 (64.1 M with 150 classes): mit_b4 + all-MLP decoder of width 768."""
    return _create_segformer("segformer_b4", kwargs, 768, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 8, 27, 3))


@register_model(family="segformer", tasks=("segmentation",))
def segformer_b5(**kwargs: Any) -> nn.Module:
    """SegFormer-B5 (84.7 M with 150 classes): mit_b5 + all-MLP decoder of width 768."""
    return _create_segformer("segformer_b5", kwargs, 768, embed_dims=B1_TO_B5_WIDTHS, depths=(3, 6, 40, 3))
