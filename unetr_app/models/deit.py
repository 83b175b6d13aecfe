"""DeiT with distillation (Touvron et al., "Training data-efficient image transformers &
distillation through attention", ICML 2021), 2D and 3D.

A ViT with a second prefix token, the distillation token, read by its own head. Hard-label
distillation trains the class head on the labels and the distillation head on the teacher's
argmax; at inference the two heads' outputs are averaged. In training mode with
`distilled_training=True` the forward returns both heads' logits so the loss can tell them apart.

For segmentation the class token and both heads are not built. With `distillation=True` the
backbone keeps its distillation token through the blocks (`distillation_token=True`) and
`forward_features_and_token` returns its final embedding beside the feature maps; the
segmentation model's distillation head is conditioned on it (segmentation.py). Without it the
segmentation backbone is a ViT.
"""

from __future__ import annotations

import torch
from torch import nn

from unetr_app.models.layers import classifier_head
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import create_variant
from unetr_app.models.vit import VisionTransformer

TINY_PARAMS = {"embed_dim": 32, "depth": 2, "num_heads": 2}


class DistilledVisionTransformer(VisionTransformer):
    """ViT + distillation token and head. Same arguments as `VisionTransformer`, plus
    `distilled_training`: return (class logits, distillation logits) in training mode, and
    `distillation_token`: keep the distillation token in a backbone (`num_classes=0`)."""

    num_prefix_tokens_per_class = 2

    def __init__(self, *args, distilled_training: bool = False, distillation_token: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.distilled_training = distilled_training
        embed_dim = self.norm.normalized_shape[0]
        if distillation_token and not self.num_prefix_tokens:  # a backbone: the distillation token alone
            self.num_prefix_tokens = 1
            self.prefix_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.prefix_pos_embed, std=0.02)
        if self.num_prefix_tokens:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.dist_token, std=0.02)

    def _make_heads(self, embed_dim: int, num_classes: int) -> None:
        self.head = classifier_head(embed_dim, num_classes)
        if num_classes > 0:
            self.head_dist = classifier_head(embed_dim, num_classes)

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        tokens = [self.cls_token, self.dist_token] if self.num_classes > 0 else [self.dist_token]
        return (torch.cat(tokens, dim=1) + self.prefix_pos_embed).expand(batch, -1, -1)  # (B, P, D)

    def forward_features_and_token(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """`forward_features` and the distillation token's final (normed) embedding (B, D)."""
        if not self.num_prefix_tokens:
            raise ValueError(f"{self.model_name} was built without its distillation token (distillation_token=False)")
        taps = self.forward_taps(x)
        return self.tokens_to_maps(taps), taps[-1][:, self.num_prefix_tokens - 1]

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.num_prefix_tokens:
            return self.head(tokens.mean(dim=1))
        logits, logits_dist = self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])
        if self.distilled_training and self.training:
            return logits, logits_dist
        return (logits + logits_dist) / 2


@register_model(family="deit")
def deit_tiny_distilled_patch16(**kwargs) -> nn.Module:
    """DeiT-Ti/16 distilled: width 192, 12 blocks, 3 heads."""
    return create_variant(DistilledVisionTransformer, "deit_tiny_distilled_patch16", kwargs,
                      embed_dim=192, depth=12, num_heads=3)


@register_model(family="deit")
def deit_small_distilled_patch16(**kwargs) -> nn.Module:
    """DeiT-S/16 distilled: width 384, 12 blocks, 6 heads."""
    return create_variant(DistilledVisionTransformer, "deit_small_distilled_patch16", kwargs,
                      embed_dim=384, depth=12, num_heads=6)


@register_model(family="deit")
def deit_base_distilled_patch16(**kwargs) -> nn.Module:
    """DeiT-B/16 distilled: width 768, 12 blocks, 12 heads."""
    return create_variant(DistilledVisionTransformer, "deit_base_distilled_patch16", kwargs,
                      embed_dim=768, depth=12, num_heads=12)
