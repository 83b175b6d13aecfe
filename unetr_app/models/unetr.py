"""UNETR: a ViT encoder with a skip-connected CNN decoder (Hatamizadeh et al., WACV 2022).

MONAI's implementation as it is, so published MONAI UNETR checkpoints load unchanged.
"""

from __future__ import annotations

from monai.networks import nets

from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import MainLogitsOnly, refuse_recipe_heads


class UNETR(MainLogitsOnly, nets.UNETR):
    """MONAI's UNETR with `forward_train` (same modules, same state-dict keys). For distillation
    or auxiliary heads, build UNETR on our ViT instead: `vit_base_patch16` (decoder "unetr")."""


@register_model(family="unetr", spatial_dims=(2, 3), tasks=("segmentation",))
def unetr(
    *,
    task: str = "segmentation",
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    img_size=(96, 96, 96),
    feature_size: int = 16,
    hidden_size: int = 768,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    proj_type: str = "conv",
    norm_name: str = "instance",
    res_block: bool = True,
    dropout_rate: float = 0.0,
    qkv_bias: bool = False,
    distillation: bool = False,
    aux_heads: bool = False,
    prediction_head: str = "main",  # a distilled model's choice; refused with distillation=True below
):
    """MONAI UNETR (ViT-B/16 encoder, 12 blocks, taps after blocks 3, 6, 9, 12)."""
    refuse_recipe_heads("unetr", distillation, aux_heads)
    _check_divisible(img_size, patch=16)
    return UNETR(
        in_channels=in_channels,
        out_channels=out_channels,
        img_size=tuple(img_size),
        feature_size=feature_size,
        hidden_size=hidden_size,
        mlp_dim=mlp_dim,
        num_heads=num_heads,
        proj_type=proj_type,
        norm_name=norm_name,
        res_block=res_block,
        dropout_rate=dropout_rate,
        spatial_dims=spatial_dims,
        qkv_bias=qkv_bias,
    )


def _check_divisible(img_size, patch: int) -> None:
    bad = [s for s in img_size if int(s) % patch]
    if bad:
        raise ValueError(
            f"UNETR img_size {tuple(img_size)} must be divisible by its patch size {patch} on every axis "
            f"(allowed: multiples of {patch}, e.g. {tuple(max(patch, round(s / patch) * patch) for s in img_size)})"
        )
