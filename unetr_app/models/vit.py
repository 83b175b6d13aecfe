"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021), 2D and 3D.

Patch embedding is MONAI's `PatchEmbeddingBlock` (conv patches + learned position embedding);
the class token keeps its own position embedding beside it. Block parameter names are MONAI's,
so with `monai_compatible=True` (MONAI's `TransformerBlock`, no class token, `qkv_bias=False`)
the UNETR built on `vit_base_patch16` is MONAI's UNETR key for key.

    >>> create_model("vit_tiny_patch16", spatial_dims=2, in_channels=3, img_size=224, num_classes=1000)
    >>> create_model("vit_base_patch16", task="segmentation", spatial_dims=3, in_channels=1,
    ...              out_channels=2, img_size=(96, 96, 96), feature_size=16)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import PatchEmbeddingBlock
from monai.networks.blocks import TransformerBlock as MonaiTransformerBlock
from torch import nn

from unetr_app.models.layers import (
    TokenBackbone,
    TransformerBlock,
    check_divisible,
    check_heads,
    check_input_size,
    check_spatial_dims,
    classifier_head,
    evenly_spaced_taps,
    feature_entry,
    init_vit_weights,
    stochastic_depth_rates,
    to_tuple,
)
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import create_variant

DEFAULT_IMG_SIZE = {2: 224, 3: 96}
# Small enough for tests and CPU smoke runs (not a recipe).
TINY_PARAMS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def default_img_size(img_size, spatial_dims: int) -> tuple[int, ...]:
    return to_tuple(DEFAULT_IMG_SIZE[spatial_dims] if img_size is None else img_size, spatial_dims, "img_size")


def plain_feature_info(embed_dim: int, reduction, taps: Sequence[int], last: str = "norm") -> list[dict]:
    """`feature_info` of a single-scale backbone: every tap has the patch grid's resolution."""
    return [feature_entry(embed_dim, reduction, f"blocks.{i}") for i in taps[:-1]] + [
        feature_entry(embed_dim, reduction, last)
    ]


class VisionTransformer(TokenBackbone, nn.Module):
    """ViT over 2D images or 3D volumes: (B, C, *img_size) -> logits, or four feature maps.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        img_size: input size the position embedding is built for; every axis a multiple of patch_size.
        patch_size: patch edge (int or one per axis).
        num_classes: classifier outputs; 0 builds a backbone without class token or head.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer width, blocks, heads, MLP ratio.
        drop_rate, drop_path_rate: dropout and stochastic depth.
        monai_compatible: use MONAI's TransformerBlock (it carries an unused `norm_cross_attn`
            LayerNorm) so MONAI ViT/UNETR checkpoints load with strict=True.
        model_name: the registered name, for error messages.
    """

    num_prefix_tokens_per_class = 1  # the class token; DeiT adds a distillation token

    def __init__(
        self,
        spatial_dims: int = 2,
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
        monai_compatible: bool = False,
        model_name: str = "vit",
    ) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        check_heads(embed_dim, num_heads)
        self.model_name = model_name
        self.img_size = default_img_size(img_size, spatial_dims)
        self.patch_size = to_tuple(patch_size, spatial_dims, "patch_size")
        check_divisible(self.img_size, self.patch_size, model_name)
        self.grid = tuple(s // p for s, p in zip(self.img_size, self.patch_size))
        self.num_classes = num_classes
        self.num_prefix_tokens = self.num_prefix_tokens_per_class if num_classes > 0 else 0

        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels, img_size=self.img_size, patch_size=self.patch_size, hidden_size=embed_dim,
            num_heads=num_heads, proj_type="conv", pos_embed_type="learnable", dropout_rate=drop_rate,
            spatial_dims=spatial_dims,
        )
        if self.num_prefix_tokens:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.prefix_pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens, embed_dim))
            nn.init.trunc_normal_(self.prefix_pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
        self.blocks = nn.ModuleList(
            self._make_block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, dpr, monai_compatible)
            for dpr in stochastic_depth_rates(drop_path_rate, depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self._make_heads(embed_dim, num_classes)
        self.taps = evenly_spaced_taps(depth)
        self.feature_info = plain_feature_info(embed_dim, self.patch_size, self.taps)
        self.blocks.apply(init_vit_weights)

    @staticmethod
    def _make_block(dim, num_heads, mlp_ratio, qkv_bias, drop, drop_path, monai_compatible) -> nn.Module:
        if monai_compatible:
            return MonaiTransformerBlock(dim, int(dim * mlp_ratio), num_heads, drop, qkv_bias=qkv_bias)
        return TransformerBlock(dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop=drop, drop_path=drop_path)

    def _make_heads(self, embed_dim: int, num_classes: int) -> None:
        self.head = classifier_head(embed_dim, num_classes)

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        """Class (and distillation) tokens with their position embedding: (B, P, D)."""
        return (self.cls_token + self.prefix_pos_embed).expand(batch, -1, -1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *img_size) -> tokens (B, P + N, D), position embedding added."""
        check_input_size(x, self.img_size, self.model_name)
        tokens = self.patch_embedding(x)
        if self.num_prefix_tokens:
            tokens = torch.cat([self.prefix_tokens(x.shape[0]), tokens], dim=1)
        return tokens

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens, states = self.embed(x), []
        for block in self.blocks:
            tokens = block(tokens)
            states.append(tokens)
        return states


@register_model(family="vit")
def vit_tiny_patch16(**kwargs) -> nn.Module:
    """ViT-Ti/16: width 192, 12 blocks, 3 heads."""
    return create_variant(VisionTransformer, "vit_tiny_patch16", kwargs, embed_dim=192, depth=12, num_heads=3)


@register_model(family="vit")
def vit_small_patch16(**kwargs) -> nn.Module:
    """ViT-S/16: width 384, 12 blocks, 6 heads."""
    return create_variant(VisionTransformer, "vit_small_patch16", kwargs, embed_dim=384, depth=12, num_heads=6)


@register_model(family="vit")
def vit_base_patch16(**kwargs) -> nn.Module:
    """ViT-B/16: width 768, 12 blocks, 12 heads (UNETR's encoder)."""
    return create_variant(VisionTransformer, "vit_base_patch16", kwargs, embed_dim=768, depth=12, num_heads=12)
