"""Segmentation models: any backbone's `forward_features` read by a decoder chosen by name.

A backbone builds for both tasks through `build_for_task`: for classification it keeps its head;
for segmentation it is built without the classification path (`num_classes=0`) and wrapped with
a decoder from the registry here. Decoders are built from the backbone's `feature_info`
(a list of dicts with `num_chs`, `reduction`, `module`), never from hard-coded indices.

    @register_decoder("unet")
    def unet_decoder(feature_info, *, spatial_dims, in_channels, out_channels, **params) -> nn.Module: ...

A decoder's `forward(image, features)` takes the input image (UNETR convolves it for its
full-resolution skip) and the list of feature maps, and returns logits at the image's size.

The "unetr" decoder is MONAI's UNETR decoder (Hatamizadeh et al., WACV 2022) made generic over
the backbone; with our `vit_base_patch16` it is MONAI's UNETR parameter for parameter, and MONAI
UNETR state dicts load into it unchanged (see `_accept_monai_unetr_keys`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from unetr_app.errors import ConfigError
from unetr_app.models.layers import check_spatial_dims

DecoderBuilder = Callable[..., nn.Module]
_DECODERS: dict[str, DecoderBuilder] = {}


def register_decoder(name: str) -> Callable[[DecoderBuilder], DecoderBuilder]:
    """Register `builder(feature_info, *, spatial_dims, in_channels, out_channels, **params)`."""

    def decorator(builder: DecoderBuilder) -> DecoderBuilder:
        if name in _DECODERS:
            raise ValueError(f"decoder name {name!r} is already registered by {_DECODERS[name].__module__}")
        _DECODERS[name] = builder
        return builder

    return decorator


def list_decoders() -> list[str]:
    return sorted(_DECODERS)


def decoder_builder(name: str) -> DecoderBuilder:
    if name not in _DECODERS:
        raise ValueError(f"unknown decoder {name!r}; registered decoders: {', '.join(list_decoders())}")
    return _DECODERS[name]


def build_decoder(name: str, feature_info: list[dict], *, spatial_dims: int, in_channels: int,
                  out_channels: int, **params) -> nn.Module:
    return decoder_builder(name)(
        feature_info, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **params
    )


class SegmentationModel(nn.Module):
    """A backbone (`encoder`) whose `forward_features` feed a decoder: (B, C, *size) -> logits."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.feature_info = encoder.feature_info
        self.register_load_state_dict_pre_hook(_accept_monai_unetr_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(x, self.encoder.forward_features(x))


class MainLogitsOnly:
    """`forward_train` of a segmentation network without recipe heads (MONAI's nets as they are)."""

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self(x)}


def refuse_recipe_heads(model: str, distillation: bool = False, aux_heads: bool = False) -> None:
    """A one-line ConfigError for recipe outputs that `model` does not build."""
    for flag, wanted in (("distillation", distillation), ("aux_heads", aux_heads)):
        if wanted:
            raise ConfigError(
                f"{flag}=True is not supported for model {model!r}; use a ViT-family model "
                f"(e.g. vit_tiny_patch16, deit_tiny_distilled_patch16) or a hierarchical one (e.g. pvt_v2_b0)"
            )


# MONAI's UNETR names its modules vit.*, encoder1-4.*, decoder2-5.*, out.*
_MONAI_UNETR_DECODER_KEY = re.compile(r"^(encoder[1-4]|decoder[2-5]|out)\.")


def _accept_monai_unetr_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Rename a MONAI UNETR state dict (vit.*, encoder1.*, ...) in place to our layout (encoder.*,
    decoder.encoder1.*, ...), so published MONAI UNETR checkpoints load with strict=True."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        if local.startswith("vit."):
            state_dict[prefix + "encoder." + local[4:]] = state_dict.pop(key)
        elif _MONAI_UNETR_DECODER_KEY.match(local):
            state_dict[prefix + "decoder." + local] = state_dict.pop(key)


def build_for_task(
    backbone_cls: Callable[..., nn.Module],
    *,
    task: str = "classification",
    spatial_dims: int = 3,
    in_channels: int | None = None,
    num_classes: int = 1000,
    out_channels: int | None = None,
    decoder: str = "unetr",
    **params,
) -> nn.Module:
    """Build a backbone as a classifier, or as a segmentation model with the named decoder.

    For segmentation, keys of `params` that the decoder's builder names (e.g. `feature_size`,
    `norm_name` for "unetr") go to the decoder; the rest go to the backbone. `in_channels`
    defaults to 3 in 2D (RGB, as the published models) and 1 in 3D (one scan).
    """
    check_spatial_dims(spatial_dims)
    in_channels = in_channels or (3 if spatial_dims == 2 else 1)
    if task == "classification":
        return backbone_cls(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **params)
    if task != "segmentation":
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    if out_channels is None:
        raise ValueError("a segmentation model needs out_channels (the number of labels, background included)")
    builder = decoder_builder(decoder)
    decoder_keys = set(inspect.signature(builder).parameters)
    decoder_params = {k: params.pop(k) for k in list(params) if k in decoder_keys}
    encoder = backbone_cls(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=0, **params)
    head = builder(encoder.feature_info, spatial_dims=spatial_dims, in_channels=in_channels,
                   out_channels=out_channels, **decoder_params)
    return SegmentationModel(encoder, head)


def create_variant(model_cls: Callable[..., nn.Module], name: str, overrides: dict, **numbers) -> nn.Module:
    """The shared body of every registered variant: its numbers, then the caller's overrides."""
    return build_for_task(model_cls, **{**numbers, "model_name": name, **overrides})


# --- the UNETR decoder -----------------------------------------------------------------------


def _unetr_upsample_factors(feature_info: list[dict], spatial_dims: int) -> tuple[int, ...]:
    """UNETR upsamples four times by the same factor, so each axis' reduction must be f**4."""
    reductions = {_per_axis(f["reduction"], spatial_dims) for f in feature_info}
    if len(feature_info) != 4 or len(reductions) != 1:
        raise ValueError(
            f"the unetr decoder needs four features at one resolution (a plain backbone), got reductions "
            f"{[f['reduction'] for f in feature_info]}; use a decoder for hierarchical backbones instead"
        )
    (reduction,) = reductions
    factors = tuple(round(r ** 0.25) for r in reduction)
    if any(f**4 != r for f, r in zip(factors, reduction)):
        raise ValueError(
            f"the unetr decoder upsamples by the same factor four times, so the patch size must be a fourth "
            f"power on every axis (allowed: 1, 16, 81, 256); got patch size {reduction}. Use patch_size=16."
        )
    return factors


def _per_axis(reduction: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    return (reduction,) * spatial_dims if isinstance(reduction, int) else tuple(reduction)


class UnetrDecoder(nn.Module):
    """UNETR's decoder over four same-resolution feature maps (taps z3, z6, z9, z12 in the paper).

    Skips from taps 1-3 are upsampled to 1/2, 1/4, 1/8 of the input size, the last tap sits at
    1/16 (for patch 16); the image itself gives the full-resolution skip (`encoder1`).
    """

    def __init__(
        self,
        feature_info: list[dict],
        *,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        feature_size: int = 16,
        norm_name: str | tuple = "instance",
        conv_block: bool = True,
        res_block: bool = True,
    ) -> None:
        super().__init__()
        up = _unetr_upsample_factors(feature_info, spatial_dims)
        chs = [f["num_chs"] for f in feature_info]
        common = {"spatial_dims": spatial_dims, "kernel_size": 3, "norm_name": norm_name, "res_block": res_block}
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=feature_size, stride=1, **common)
        self.encoder2, self.encoder3, self.encoder4 = (
            UnetrPrUpBlock(in_channels=chs[i], out_channels=feature_size * 2 ** (i + 1), num_layer=2 - i, stride=1,
                           upsample_kernel_size=up, conv_block=conv_block, **common)
            for i in range(3)
        )
        widths = [feature_size * m for m in (1, 2, 4, 8)]  # decoder2 .. decoder5 outputs
        self.decoder5 = UnetrUpBlock(in_channels=chs[3], out_channels=widths[3], upsample_kernel_size=up, **common)
        self.decoder4 = UnetrUpBlock(in_channels=widths[3], out_channels=widths[2], upsample_kernel_size=up, **common)
        self.decoder3 = UnetrUpBlock(in_channels=widths[2], out_channels=widths[1], upsample_kernel_size=up, **common)
        self.decoder2 = UnetrUpBlock(in_channels=widths[1], out_channels=widths[0], upsample_kernel_size=up, **common)
        self.out = UnetOutBlock(spatial_dims=spatial_dims, in_channels=feature_size, out_channels=out_channels)

    def forward(self, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        tap1, tap2, tap3, last = features
        x = self.decoder5(last, self.encoder4(tap3))
        x = self.decoder4(x, self.encoder3(tap2))
        x = self.decoder3(x, self.encoder2(tap1))
        return self.out(self.decoder2(x, self.encoder1(image)))


@register_decoder("unetr")
def unetr_decoder(
    feature_info: list[dict],
    *,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    feature_size: int = 16,
    norm_name: str | tuple = "instance",
    conv_block: bool = True,
    res_block: bool = True,
) -> nn.Module:
    return UnetrDecoder(feature_info, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                        feature_size=feature_size, norm_name=norm_name, conv_block=conv_block, res_block=res_block)
