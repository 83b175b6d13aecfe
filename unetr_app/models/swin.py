"""Swin Transformer (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows", ICCV 2021) and SwinUNETR (Hatamizadeh et al., "Swin UNETR", BrainLes 2021).

Attention inside local windows whose grid shifts by half a window every other block, and patch
merging (concatenate each 2x2(x2) neighbourhood, LayerNorm, linear to twice the width) between
stages. The blocks are MONAI's (monai.networks.nets.swin_unetr), which serve 2D and 3D.

- `swin_t` / `swin_s` / `swin_b`: the ImageNet configurations as backbones. MONAI's own
  SwinTransformer merges at the *end* of every stage (its last stage ends at stride 64 with a
  16x-wide merge), so the stages are assembled here from MONAI's PatchEmbed, PatchMerging and
  BasicLayer in the reference order: merge at the *start* of stages 2-4, giving features at
  strides 4, 8, 16, 32 and the reference's parameter count.
- `swin_unetr`: MONAI's SwinUNETR as it is (segmentation only), so its checkpoints load.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from monai.networks.blocks.patchembedding import PatchEmbed
from monai.networks import nets
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging
from monai.utils import ensure_tuple_rep
from torch import nn

from unetr_app.models.hierarchical import (
    DEEPEST_STRIDE,
    check_heads_divide,
    check_spatial_size,
    check_stage_config,
    check_trainable_norm,
    create_hierarchical,
    image_size,
    stage_drop_path_rates,
    stage_feature_info,
)
from unetr_app.models.layers import classifier_head
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import MainLogitsOnly, refuse_recipe_heads


class SwinUNETR(MainLogitsOnly, nets.SwinUNETR):
    """MONAI's SwinUNETR with `forward_train` (same modules, same state-dict keys)."""


class SwinStage(nn.Module):
    """[patch merging: halve the grid, double the width] -> MONAI BasicLayer (shifted-window blocks).

    Channels-first in and out; MONAI's PatchMerging works channels-last, hence the moves.
    """

    def __init__(
        self, spatial_dims: int, dim: int, depth: int, num_heads: int, window_size: Sequence[int], *,
        merge: bool, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
        drop_path: Sequence[float], use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.merge = PatchMerging(dim // 2, nn.LayerNorm, spatial_dims) if merge else None
        self.blocks = BasicLayer(
            dim=dim, depth=depth, num_heads=num_heads, window_size=window_size, drop_path=list(drop_path),
            mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop, attn_drop=attn_drop,
            norm_layer=nn.LayerNorm, downsample=None, use_checkpoint=use_checkpoint,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merge is not None:
            x = self.merge(x.movedim(1, -1)).movedim(-1, 1)
        return self.blocks(x.contiguous())


class SwinTransformer(nn.Module):
    """Swin backbone and classifier: patch embedding (patch 4, LayerNorm), four stages, LayerNorm,
    global average pooling, linear head (none when `num_classes=0`).

    `forward_features` returns four channels-first maps at strides 4, 8, 16, 32 (the last one
    normed), described by `feature_info`. Windows larger than a grid shrink to it (MONAI's rule);
    grids that windows do not divide are padded inside each block.
    """

    def __init__(
        self,
        *,
        spatial_dims: int = 3,
        in_channels: int = 1,
        img_size: Sequence[int] | int | None = None,
        num_classes: int = 1000,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: Sequence[int] | int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        model_name: str = "swin",
    ) -> None:
        super().__init__()
        self.model_name = model_name
        widths = [embed_dim * 2**i for i in range(4)]
        check_stage_config(model_name, depths=depths, num_heads=num_heads)
        check_heads_divide(model_name, widths, num_heads)
        if img_size is not None:
            image_size(img_size, spatial_dims, model_name)
        self.patch_embed = PatchEmbed(
            patch_size=4, in_chans=in_channels, embed_dim=embed_dim, norm_layer=nn.LayerNorm, spatial_dims=spatial_dims
        )
        self.pos_drop = nn.Dropout(drop_rate)
        window = ensure_tuple_rep(window_size, spatial_dims)
        rates = stage_drop_path_rates(depths, drop_path_rate)
        self.stages = nn.ModuleList(
            SwinStage(
                spatial_dims, widths[i], depths[i], num_heads[i], window, merge=i > 0, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate, drop_path=rates[i],
                use_checkpoint=use_checkpoint,
            )
            for i in range(4)
        )
        self.norm = nn.LayerNorm(widths[-1])
        self.feature_info = stage_feature_info(widths)
        self.num_features = widths[-1]
        self.head = classifier_head(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_spatial_size(x.shape[2:], DEEPEST_STRIDE, self.model_name)
        x = self.pos_drop(self.patch_embed(x))  # (B, C, *grid) at stride 4
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        features[-1] = self.norm(features[-1].movedim(1, -1)).movedim(-1, 1)
        return features

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1].flatten(2).mean(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_swin(name: str, overrides: dict[str, Any], **architecture: Any) -> nn.Module:
    return create_hierarchical(SwinTransformer, name, overrides, **architecture)


@register_model(family="swin")
def swin_t(**kwargs: Any) -> nn.Module:
    """Swin-T (28.3 M at 224², 1000 classes): width 96, depths 2-2-6-2, window 7."""
    return _create_swin("swin_t", kwargs, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))


@register_model(family="swin")
def swin_s(**kwargs: Any) -> nn.Module:
    """Swin-S (49.6 M at 224², 1000 classes): width 96, depths 2-2-18-2, window 7."""
    return _create_swin("swin_s", kwargs, embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))


@register_model(family="swin")
def swin_b(**kwargs: Any) -> nn.Module:
    """Swin-B (87.8 M at 224², 1000 classes): width 128, depths 2-2-18-2, window 7."""
    return _create_swin("swin_b", kwargs, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))


@register_model(family="swin", tasks=("segmentation",))
def swin_unetr(
    *,
    task: str = "segmentation",
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    img_size: Sequence[int] | int | None = None,
    feature_size: int = 48,
    depths: Sequence[int] = (2, 2, 2, 2),
    num_heads: Sequence[int] = (3, 6, 12, 24),
    window_size: int = 7,
    norm_name: str = "instance",
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    dropout_path_rate: float = 0.0,
    use_checkpoint: bool = False,
    use_v2: bool = False,
    distillation: bool = False,
    aux_heads: bool = False,
    prediction_head: str = "main",  # a distilled model's choice; refused with distillation=True below
) -> nn.Module:
    """MONAI SwinUNETR as it is (patch 2, window 7, feature_size 48): segmentation only."""
    refuse_recipe_heads("swin_unetr", distillation, aux_heads)
    if img_size is not None:
        image_size(img_size, spatial_dims, "swin_unetr")
        check_trainable_norm(img_size, spatial_dims, norm_name, "swin_unetr")
    return SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, depths=depths, num_heads=num_heads,
        window_size=window_size, feature_size=feature_size, norm_name=norm_name, drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate, dropout_path_rate=dropout_path_rate, use_checkpoint=use_checkpoint,
        spatial_dims=spatial_dims, use_v2=use_v2,
    )
