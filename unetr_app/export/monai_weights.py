"""Our models as MONAI networks: which MONAI class and arguments, and the weights in MONAI's key names.

`unetr` and `swin_unetr` are MONAI's classes already. A plain ViT backbone with the "unetr" decoder
(`vit_base_patch16`, ... with `monai_compatible=True`: MONAI's transformer blocks, 12 of them,
patch 16, no class token) is MONAI's UNETR under other key names; `monai_unetr_key` renames them.
Equivalence is not assumed: the MONAI network must load the renamed weights with strict=True and give
the same logits as ours on one input, or the export stops with a one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from unetr_app.errors import UsageError
from unetr_app.io.checkpoint import LoadedModel
from unetr_app.models.segmentation import SegmentationModel, UnetrDecoder, monai_unetr_key

# registry name -> (MONAI class path, kwargs the registry takes but MONAI's class does not)
MONAI_CLASSES = {
    "unetr": ("monai.networks.nets.UNETR", ("task",)),
    "swin_unetr": ("monai.networks.nets.SwinUNETR", ("task", "img_size")),
}
CHECK_TOLERANCE = 1e-4  # same weights, same operations: only float summation order may differ


class NotMonaiEquivalent(UsageError):
    """The model has no MONAI counterpart that computes the same function."""


@dataclass(frozen=True)
class MonaiNetwork:
    target: str  # e.g. "monai.networks.nets.UNETR"
    kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    def build(self) -> nn.Module:
        from monai.bundle import ConfigParser

        return ConfigParser({"net": {"_target_": self.target, **self.kwargs}}).get_parsed_content("net")


def monai_network(loaded: LoadedModel, check: bool = True) -> MonaiNetwork:
    """The MONAI class, arguments and state dict equivalent to `loaded`; raises NotMonaiEquivalent."""
    model = loaded.model
    if loaded.name in MONAI_CLASSES:
        target, dropped = MONAI_CLASSES[loaded.name]
        kwargs = {k: v for k, v in loaded.kwargs.items() if k not in dropped}
        state_dict = dict(model.state_dict())
    elif isinstance(model, SegmentationModel) and isinstance(model.decoder, UnetrDecoder):
        target, kwargs = "monai.networks.nets.UNETR", _unetr_kwargs(loaded)
        state_dict = {monai_unetr_key(k, to_monai=True): v for k, v in model.state_dict().items()}
    else:
        raise NotMonaiEquivalent(
            f"model {loaded.name!r} has no MONAI equivalent (MONAI has UNETR and SwinUNETR: models unetr, "
            f"swin_unetr, or a plain ViT with monai_compatible=True and the unetr decoder); export it as "
            f"--format monai-bundle, torchscript or onnx instead"
        )
    network = MonaiNetwork(target, _json_ready(kwargs), {k: v.detach().cpu() for k, v in state_dict.items()})
    if check:
        _check_same_function(loaded, network)
    return network


def _unetr_kwargs(loaded: LoadedModel) -> dict[str, Any]:
    """MONAI UNETR's arguments read off the built model; refuse what MONAI's UNETR cannot express."""
    from monai.networks.blocks import TransformerBlock

    encoder, decoder, kwargs = loaded.model.encoder, loaded.model.decoder, loaded.kwargs
    block = encoder.blocks[0] if hasattr(encoder, "blocks") else None
    reasons = []
    if not isinstance(block, TransformerBlock):
        reasons.append("its transformer blocks are not MONAI's (build it with monai_compatible=True)")
    if getattr(encoder, "num_prefix_tokens", 1) or len(getattr(encoder, "blocks", ())) != 12:
        reasons.append("MONAI's UNETR has exactly 12 blocks and no class token")
    if tuple(getattr(encoder, "patch_size", ())) != (16,) * len(getattr(encoder, "patch_size", (0,))):
        reasons.append("MONAI's UNETR uses patch size 16")
    if reasons:
        raise NotMonaiEquivalent(f"model {loaded.name!r} is not MONAI's UNETR: {'; '.join(reasons)}")
    return {
        "in_channels": kwargs.get("in_channels", 1),
        "out_channels": kwargs["out_channels"],
        "img_size": list(encoder.img_size),
        "feature_size": decoder.encoder1.layer.conv1.conv.out_channels,
        "hidden_size": encoder.norm.normalized_shape[0],
        "mlp_dim": block.mlp.linear1.out_features,
        "num_heads": block.attn.num_heads,
        "proj_type": "conv",
        "norm_name": kwargs.get("norm_name", "instance"),
        "conv_block": kwargs.get("conv_block", True),
        "res_block": kwargs.get("res_block", True),
        "dropout_rate": kwargs.get("drop_rate", 0.0),
        "spatial_dims": kwargs.get("spatial_dims", 3),
        "qkv_bias": block.attn.qkv.bias is not None,
    }


def _check_same_function(loaded: LoadedModel, network: MonaiNetwork) -> None:
    monai_model = network.build()
    try:
        monai_model.load_state_dict(network.state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise NotMonaiEquivalent(f"model {loaded.name!r}: MONAI's {network.target} does not load its weights ({first})") from None
    device = next(loaded.model.parameters()).device
    size = loaded.preprocessing.roi_size
    x = torch.randn(1, network.kwargs.get("in_channels", 1), *size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        ours, theirs = loaded.model.eval()(x).float(), monai_model.to(device).eval()(x).float()
    difference = float((ours - theirs).abs().max())
    if difference > CHECK_TOLERANCE:
        raise NotMonaiEquivalent(
            f"model {loaded.name!r}: MONAI's {network.target} loads its weights but computes another function "
            f"(max logit difference {difference:.2e})"
        )


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value
