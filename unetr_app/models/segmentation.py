"""Segmentation models: any backbone's `forward_features` read by a decoder chosen by name.

A backbone builds for both tasks through `build_for_task`: for classification it keeps its head;
for segmentation it is built without the classification path (`num_classes=0`) and wrapped with
a decoder from the registry here. Decoders are built from the backbone's `feature_info`
(a list of dicts with `num_chs`, `reduction`, `module`), never from hard-coded indices.

    @register_decoder("unet")
    def unet_decoder(feature_info, *, spatial_dims, in_channels, out_channels, **params) -> nn.Module: ...

A decoder (`StagedDecoder`) has `decode(image, features)`: its stage outputs, shallowest (first
computed, coarsest) first, the last being the deepest stage, whose features the main head reads;
`stage_channels`: their channel counts; `head(deepest)`: the main logits on that stage's grid.
Its `forward(image, features)` is the logits at the image's size. The image goes in because
UNETR convolves it for its full-resolution skip.

Recipe outputs (training recipes choose them by name; the training loop never forks):

    model = create_model("deit_tiny_distilled_patch16", task="segmentation", spatial_dims=3,
                         in_channels=1, out_channels=2, img_size=[96, 96, 96],
                         distillation=True, aux_heads=True)
    outputs = model.forward_train(x)

`forward_train(x)` (every segmentation model; MONAI's nets and the CNNs return only "logits"):
    "logits":         (B, K, *spatial) main logits at the input's size;
    "distill_logits": distillation=True only, same shape: a second head on the deepest decoder
                      features; for DeiT backbones conditioned on the distillation token's final
                      embedding (projected to the decoder's width, added at every position, leaky
                      ReLU, 1x1 conv), so a loss on it trains the token (DeiT, Touvron et al. 2021);
    "aux_logits":     aux_heads=True only: one per shallower decoder stage, shallowest first, each
                      from that stage's 1x1 bottleneck then a 1x1 classifier, at the input's size
                      ("Be Your Own Teacher", Zhang et al., ICCV 2019);
    "hint_features":  aux_heads=True only, aligned with aux_logits: each bottleneck's output
                      (the deepest stage's channel count) resized to the deepest stage's grid;
    "deep_features":  aux_heads=True only: the deepest stage's features (the hints' target).

`forward(x)` in training mode is the main logits; in eval mode with distillation=True it is the
head chosen by `prediction_head`: "average" (the default, DeiT's joint prediction) is the mean of
the two heads' logits, "main" or "distillation" one head alone; otherwise the main logits (aux
heads never predict). The average is taken on logits, not on probabilities: averaging softmaxes
lets a head that still predicts background everywhere halve the other head's foreground
probability, while logits add up the two heads' evidence. Without
the flags no head is built: the modules, forward and state-dict keys are the plain model's. The
"unetr" and "unet" decoders have aux stages; "segformer_mlp" fuses in one stage and refuses.

The "unetr" decoder is MONAI's UNETR decoder (Hatamizadeh et al., WACV 2022) made generic over
the backbone and over any power-of-two patch (`patch_size=8`: a 48^3 window is 6^3 = 216 tokens);
with our `vit_base_patch16` it is MONAI's UNETR parameter for parameter, and MONAI UNETR state
dicts load into it unchanged (see `_accept_monai_unetr_keys`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.blocks.dynunet_block import get_conv_layer
from torch import nn

from unetr_app.errors import ConfigError
from unetr_app.models.layers import check_spatial_dims, conv_layer, resize_to
from unetr_app.registry import Registry

DecoderBuilder = Callable[..., nn.Module]


def _import_decoders() -> None:
    # the modules that define decoders outside this one, listed here rather than found by import order
    from unetr_app.models import decoders_hierarchical, segformer  # noqa: F401


DECODERS: Registry[DecoderBuilder] = Registry("decoder", loader=_import_decoders)


def register_decoder(name: str) -> Callable[[DecoderBuilder], DecoderBuilder]:
    """Register `builder(feature_info, *, spatial_dims, in_channels, out_channels, **params)`."""
    return DECODERS.register(name)


def list_decoders() -> list[str]:
    return DECODERS.list()


def decoder_builder(name: str) -> DecoderBuilder:
    return DECODERS.get(name)


def build_decoder(name: str, feature_info: list[dict], *, spatial_dims: int, in_channels: int,
                  out_channels: int, **params) -> nn.Module:
    return decoder_builder(name)(
        feature_info, spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **params
    )


class SegmentationModel(nn.Module):
    """A backbone (`encoder`) whose `forward_features` feed a decoder: (B, C, *size) -> logits.

    `distill_head` and `aux_heads` (built by `build_for_task` when asked for) add the recipe
    outputs of `forward_train`; see the module docstring.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, distill_head: nn.Module | None = None,
                 aux_heads: nn.Module | None = None, prediction_head: str = "average") -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.distill_head = distill_head
        self.aux_heads = aux_heads
        self.prediction_head = check_prediction_head(prediction_head, distill_head is not None)
        self.feature_info = encoder.feature_info
        self.register_load_state_dict_pre_hook(_accept_monai_unetr_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.distill_head is None or self.training or self.prediction_head == "main":
            return self.decoder(x, self.encoder.forward_features(x))
        outputs = self._outputs(x, aux=False)  # prediction never runs the auxiliary heads
        if self.prediction_head == "distillation":
            return outputs["distill_logits"]
        return (outputs["logits"] + outputs["distill_logits"]) / 2

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        return self._outputs(x, aux=True)

    def _outputs(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        stages, token = self._decode(x)
        size = x.shape[2:]
        outputs = {"logits": resize_to(self.decoder.head(stages[-1]), size)}
        if self.distill_head is not None:
            outputs["distill_logits"] = resize_to(self.distill_head(stages[-1], token), size)
        if aux and self.aux_heads is not None:
            outputs.update(self.aux_heads(stages, size))
        return outputs

    def _decode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """The decoder's stage outputs, and the distillation token's embedding where it conditions a head."""
        if self.distill_head is not None and self.distill_head.token_proj is not None:
            features, token = self.encoder.forward_features_and_token(x)
        else:
            features, token = self.encoder.forward_features(x), None
        return self.decoder.decode(x, features), token


PREDICTION_HEADS = ("average", "main", "distillation")


def check_prediction_head(head: str, has_distill_head: bool) -> str:
    if head not in PREDICTION_HEADS:
        raise ConfigError(f"prediction_head: expected one of {', '.join(PREDICTION_HEADS)}, got {head!r}")
    if head == "distillation" and not has_distill_head:
        raise ConfigError("prediction_head='distillation' needs the distillation head (distillation=True)")
    return head


class StagedDecoder:
    """`forward` of a decoder from its `decode` (stage outputs) and `head` (main logits)."""

    stage_channels: list[int]

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return resize_to(self.head(self.decode(image, features)[-1]), image.shape[2:])


class DistillationHead(nn.Module):
    """A second 1x1-conv output on the deepest decoder features. With `token_dim` (DeiT) the
    distillation token's embedding is projected to the features' width, added at every position
    and passed through a leaky ReLU first, so the head's output depends on (and trains) the token."""

    def __init__(self, spatial_dims: int, channels: int, out_channels: int, token_dim: int = 0) -> None:
        super().__init__()
        self.token_proj = nn.Linear(token_dim, channels) if token_dim else None
        self.act = nn.LeakyReLU(0.01) if token_dim else None
        self.out = conv_layer(spatial_dims)(channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor, token: torch.Tensor | None = None) -> torch.Tensor:
        if self.token_proj is not None:
            bias = self.token_proj(token)  # (B, C) -> broadcast over (B, C, *grid)
            features = self.act(features + bias.reshape(*bias.shape, *(1,) * (features.ndim - 2)))
        return self.out(features)


class AuxiliaryHeads(nn.Module):
    """Self-distillation outputs ("Be Your Own Teacher"): for each shallower decoder stage a 1x1
    bottleneck to the deepest stage's width (the feature hint) and a 1x1 classifier on it."""

    def __init__(self, spatial_dims: int, stage_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        conv, deep = conv_layer(spatial_dims), stage_channels[-1]
        self.bottlenecks = nn.ModuleList(conv(c, deep, kernel_size=1) for c in stage_channels[:-1])
        self.classifiers = nn.ModuleList(conv(deep, out_channels, kernel_size=1) for _ in stage_channels[:-1])

    def forward(self, stages: Sequence[torch.Tensor], size: Sequence[int]) -> dict:
        deep = stages[-1]
        hints = [bottleneck(stage) for bottleneck, stage in zip(self.bottlenecks, stages[:-1])]
        return {
            "aux_logits": [resize_to(classify(h), size) for classify, h in zip(self.classifiers, hints)],
            "hint_features": [resize_to(h, deep.shape[2:]) for h in hints],
            "deep_features": deep,
        }


class MainLogitsOnly:
    """`forward_train` of a segmentation network without recipe heads (MONAI's nets as they are)."""

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self(x)}


def refuse_recipe_heads(model: str, distillation: bool = False, aux_heads: bool = False) -> None:
    """A one-line ConfigError for recipe outputs that `model` (MONAI's net as it is) does not build."""
    for flag, wanted in (("distillation", distillation), ("aux_heads", aux_heads)):
        if wanted:
            raise ConfigError(
                f"{flag}=True is not supported for model {model!r}; use a backbone with our decoders, e.g. "
                f"vit_base_patch16 (UNETR), deit_tiny_distilled_patch16 or pvt_v2_b0"
            )


# MONAI's UNETR names its modules vit.*, encoder1-4.*, decoder2-5.*, out.*
_MONAI_UNETR_DECODER_KEY = re.compile(r"^(encoder[1-4]|decoder[2-5]|out)\.")


def monai_unetr_key(key: str, to_monai: bool) -> str:
    """One state-dict key between our layout (encoder.*, decoder.encoder1.*, ...) and MONAI UNETR's
    (vit.*, encoder1.*, ...): the single mapping that import and export both use."""
    if to_monai:
        if key.startswith("encoder."):
            return "vit." + key[len("encoder."):]
        return key[len("decoder."):] if key.startswith("decoder.") else key
    if key.startswith("vit."):
        return "encoder." + key[len("vit."):]
    return "decoder." + key if _MONAI_UNETR_DECODER_KEY.match(key) else key


def _accept_monai_unetr_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """Rename a MONAI UNETR state dict (vit.*, encoder1.*, ...) in place to our layout (encoder.*,
    decoder.encoder1.*, ...), so published MONAI UNETR checkpoints load with strict=True."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        if local.startswith("vit.") or _MONAI_UNETR_DECODER_KEY.match(local):
            state_dict[prefix + monai_unetr_key(local, to_monai=False)] = state_dict.pop(key)


def build_for_task(
    backbone_cls: Callable[..., nn.Module],
    *,
    task: str = "classification",
    spatial_dims: int = 3,
    in_channels: int | None = None,
    num_classes: int = 1000,
    out_channels: int | None = None,
    decoder: str = "unetr",
    distillation: bool = False,
    aux_heads: bool = False,
    prediction_head: str = "average",
    **params,
) -> nn.Module:
    """Build a backbone as a classifier, or as a segmentation model with the named decoder.

    For segmentation, keys of `params` that the decoder's builder names (e.g. `feature_size`,
    `norm_name` for "unetr") go to the decoder; the rest go to the backbone. `in_channels`
    defaults to 3 in 2D (RGB, as the published models) and 1 in 3D (one scan). `distillation`
    and `aux_heads` add the recipe heads of the module docstring (segmentation only);
    `prediction_head` picks what the eval forward of a distilled model returns.
    """
    check_spatial_dims(spatial_dims)
    in_channels = in_channels or (3 if spatial_dims == 2 else 1)
    if task == "classification":
        _refuse_for_classification(distillation, aux_heads)
        return backbone_cls(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **params)
    if task != "segmentation":
        raise ValueError(f"task must be 'classification' or 'segmentation', got {task!r}")
    if out_channels is None:
        raise ValueError("a segmentation model needs out_channels (the number of labels, background included)")
    builder = decoder_builder(decoder)
    decoder_keys = set(inspect.signature(builder).parameters)
    decoder_params = {k: params.pop(k) for k in list(params) if k in decoder_keys}
    keep_token = distillation and hasattr(backbone_cls, "forward_features_and_token")
    if keep_token:
        params["distillation_token"] = True
    encoder = backbone_cls(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=0, **params)
    head = builder(encoder.feature_info, spatial_dims=spatial_dims, in_channels=in_channels,
                   out_channels=out_channels, **decoder_params)
    token_dim = encoder.feature_info[-1]["num_chs"] if keep_token else 0
    heads = _recipe_heads(head, decoder, spatial_dims, out_channels, distillation, aux_heads, token_dim)
    return SegmentationModel(encoder, head, **heads, prediction_head=prediction_head)


def _recipe_heads(decoder: nn.Module, name: str, spatial_dims: int, out_channels: int, distillation: bool,
                  aux_heads: bool, token_dim: int) -> dict[str, nn.Module]:
    heads = {}
    if distillation:
        heads["distill_head"] = DistillationHead(spatial_dims, decoder.stage_channels[-1], out_channels, token_dim)
    if aux_heads:
        if len(decoder.stage_channels) < 2:
            raise ConfigError(
                f"aux_heads=True needs a decoder with several stages; decoder {name!r} has one "
                f"(use decoder 'unet' or 'unetr')"
            )
        heads["aux_heads"] = AuxiliaryHeads(spatial_dims, decoder.stage_channels, out_channels)
    return heads


def _refuse_for_classification(distillation: bool, aux_heads: bool) -> None:
    if distillation or aux_heads:
        raise ConfigError(
            "distillation and aux_heads are segmentation outputs (task='segmentation'); a DeiT classifier "
            "returns both heads' logits in training with distilled_training=True"
        )


def create_variant(model_cls: Callable[..., nn.Module], name: str, overrides: dict, **numbers) -> nn.Module:
    """The shared body of every registered variant: its numbers, then the caller's overrides."""
    return build_for_task(model_cls, **{**numbers, "model_name": name, **overrides})


# --- the UNETR decoder -----------------------------------------------------------------------


def unetr_stage_factors(feature_info: list[dict], spatial_dims: int) -> list[tuple[int, ...]]:
    """Per-axis upsampling factors of decoder5 .. decoder2 (deepest stage first) for a power-of-two patch.

    As in a U-Net, each of the three finest stages doubles the grid; the deepest stage takes what is
    left of the patch: patch 16 is (2, 2, 2, 2) (MONAI's UNETR), patch 8 is (1, 2, 2, 2) (the deepest
    stage stays on the token grid), patch 32 is (4, 2, 2, 2). A factor 1 is a 1x1 projection.
    """
    reductions = {_per_axis(f["reduction"], spatial_dims) for f in feature_info}
    if len(feature_info) != 4 or len(reductions) != 1:
        raise ValueError(
            f"the unetr decoder needs four features at one resolution (a plain backbone), got reductions "
            f"{[f['reduction'] for f in feature_info]}; use a decoder for hierarchical backbones instead"
        )
    (reduction,) = reductions
    if any(r < 1 or r & (r - 1) for r in reduction):
        raise ValueError(
            f"the unetr decoder doubles the grid stage by stage, so the patch size must be a power of two on "
            f"every axis (allowed: 1, 2, 4, 8, 16, 32, ...); got patch size {reduction}. Use patch_size=8 or 16."
        )
    exponents = [r.bit_length() - 1 for r in reduction]
    finest_first = [tuple(2 if e > i else 1 for e in exponents) for i in range(3)]
    deepest = tuple(2 ** max(e - 3, 0) for e in exponents)
    return [deepest, *finest_first[::-1]]


def _projection_upsampler(in_channels: int, out_channels: int, factors: Sequence[tuple[int, ...]],
                          conv_block: bool, common: dict) -> UnetrPrUpBlock:
    """MONAI's UNETR skip block (one transposed convolution per factor), each layer with its own factor:
    MONAI's block takes one factor for all its layers, so layers that differ are swapped in place."""
    block = UnetrPrUpBlock(in_channels=in_channels, out_channels=out_channels, num_layer=len(factors) - 1, stride=1,
                           upsample_kernel_size=factors[0], conv_block=conv_block, **common)
    for i, factor in enumerate(factors[1:]):
        if factor != factors[0]:
            layer = get_conv_layer(common["spatial_dims"], out_channels, out_channels, kernel_size=factor,
                                   stride=factor, conv_only=True, is_transposed=True)
            if conv_block:
                block.blocks[i][0] = layer
            else:
                block.blocks[i] = layer
    return block


def _per_axis(reduction: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    return (reduction,) * spatial_dims if isinstance(reduction, int) else tuple(reduction)


class UnetrDecoder(StagedDecoder, nn.Module):
    """UNETR's decoder over four same-resolution feature maps (taps z3, z6, z9, z12 in the paper).

    Skips from taps 1-3 are upsampled to the grids of decoder3, decoder4 and decoder5 (1/2, 1/4,
    1/8 of the input for patch 16, 1/2, 1/4 and the token grid 1/8 for patch 8); the image itself
    gives the full-resolution skip (`encoder1`). Its stages are the outputs of decoder5 .. decoder2.
    Any power-of-two patch works (see `unetr_stage_factors`); patch 16 is MONAI's UNETR decoder.
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
        up = unetr_stage_factors(feature_info, spatial_dims)  # decoder5 .. decoder2
        chs = [f["num_chs"] for f in feature_info]
        common = {"spatial_dims": spatial_dims, "kernel_size": 3, "norm_name": norm_name, "res_block": res_block}
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=feature_size, stride=1, **common)
        # the skip of tap i climbs the decoder's own path up to decoder(4 - i)'s grid
        self.encoder2, self.encoder3, self.encoder4 = (
            _projection_upsampler(chs[i], feature_size * 2 ** (i + 1), up[: 3 - i], conv_block, common)
            for i in range(3)
        )
        self.stage_channels = [feature_size * m for m in (8, 4, 2, 1)]  # decoder5 .. decoder2 outputs
        widths = [chs[3], *self.stage_channels]
        self.decoder5, self.decoder4, self.decoder3, self.decoder2 = (
            UnetrUpBlock(in_channels=widths[i], out_channels=widths[i + 1], upsample_kernel_size=up[i], **common)
            for i in range(4)
        )
        self.out = UnetOutBlock(spatial_dims=spatial_dims, in_channels=feature_size, out_channels=out_channels)

    def decode(self, image: torch.Tensor, features: list[torch.Tensor]) -> list[torch.Tensor]:
        tap1, tap2, tap3, last = features
        x5 = self.decoder5(last, self.encoder4(tap3))
        x4 = self.decoder4(x5, self.encoder3(tap2))
        x3 = self.decoder3(x4, self.encoder2(tap1))
        return [x5, x4, x3, self.decoder2(x3, self.encoder1(image))]

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x)


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
