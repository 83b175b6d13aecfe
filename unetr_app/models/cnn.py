"""Convolutional segmentation networks, MONAI's as they are: teachers for distillation and baselines.

- `unet`: MONAI's residual UNet (Kerfoot et al. 2018, after Ronneberger et al. 2015) with the
  numbers of MONAI's spleen tutorial: channels 16-32-64-128-256, strides 2, two residual units
  per level, batch norm.
- `segresnet`: SegResNet (Myronenko, "3D MRI brain tumor segmentation using autoencoder
  regularization", BraTS 2018) without the VAE branch: 32 initial filters, 1-2-2-4 residual blocks
  down, 1-1-1 up, group norm (8 groups).
- `dynunet`: MONAI's DynUNet planned as nnU-Net plans its U-Net (Isensee et al., Nature Methods
  2021): 3x3(x3) kernels, every axis halved while it keeps at least 4 voxels at the bottleneck,
  32 filters doubling per level up to 320 (3D) or 512 (2D), instance norm, leaky ReLU, no
  residual blocks. The strides therefore follow `img_size` (the training ROI).

Each has a `_small` variant sized for CPU runs. The classes subclass MONAI's without renaming
anything, so a state dict of ours loads into MONAI's class with the same arguments and back.
Distillation and auxiliary heads are not built for these networks (they are the teachers).

    >>> create_model("dynunet", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
    ...              img_size=[128, 128, 128])   # nnU-Net 3d_fullres: 6 levels, 32..320 filters
    >>> create_model("unet_small", task="segmentation", spatial_dims=2, in_channels=1, out_channels=3,
    ...              img_size=[64, 64])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from monai.networks import nets
from torch import nn

from unetr_app.models.hierarchical import check_spatial_size
from unetr_app.models.layers import check_spatial_dims, to_tuple
from unetr_app.models.registry import register_model
from unetr_app.models.segmentation import MainLogitsOnly, refuse_recipe_heads

NNUNET_MIN_EDGE = 4  # nnU-Net keeps at least 4 voxels per axis at the bottleneck
NNUNET_MAX_FILTERS = {2: 512, 3: 320}


class UNet(MainLogitsOnly, nets.UNet):
    """MONAI's UNet with `forward_train`."""


class SegResNet(MainLogitsOnly, nets.SegResNet):
    """MONAI's SegResNet with `forward_train`."""


class DynUNet(MainLogitsOnly, nets.DynUNet):
    """MONAI's DynUNet with `forward_train`."""


def nnunet_strides(img_size: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-level strides: 1 at the first level, then 2 on every axis that keeps >= 4 voxels."""
    size, strides = list(img_size), [(1,) * len(img_size)]
    while True:
        step = tuple(2 if s % 2 == 0 and s // 2 >= NNUNET_MIN_EDGE else 1 for s in size)
        if all(v == 1 for v in step):
            return strides
        strides.append(step)
        size = [s // v for s, v in zip(size, step)]


def nnunet_filters(levels: int, base: int, max_filters: int) -> list[int]:
    return [min(base * 2**i, max_filters) for i in range(levels)]


def _cnn_size(img_size: Any, spatial_dims: int, stride: int, model: str) -> tuple[int, ...] | None:
    """`img_size` per axis, checked against the network's total stride (None: not given)."""
    check_spatial_dims(spatial_dims)
    if img_size is None:
        return None
    size = to_tuple(img_size, spatial_dims, "img_size")
    check_spatial_size(size, stride, model)
    return size


def _create_unet(name: str, overrides: dict[str, Any], **numbers: Any) -> nn.Module:
    params = _common(name, {**numbers, **overrides})
    strides = params["strides"]
    _cnn_size(params.pop("img_size"), params["spatial_dims"], math.prod(strides), name)
    return UNet(**params)


def _create_segresnet(name: str, overrides: dict[str, Any], **numbers: Any) -> nn.Module:
    params = _common(name, {**numbers, **overrides})
    _cnn_size(params.pop("img_size"), params["spatial_dims"], 2 ** (len(params["blocks_down"]) - 1), name)
    return SegResNet(**params)


def _create_dynunet(name: str, overrides: dict[str, Any], **numbers: Any) -> nn.Module:
    params = _common(name, {**numbers, **overrides})
    spatial_dims, base_filters = params["spatial_dims"], params.pop("base_filters")
    max_filters = params.pop("max_filters", None) or NNUNET_MAX_FILTERS[spatial_dims]
    size = _cnn_size(params.pop("img_size"), spatial_dims, 1, name)
    if size is None:
        raise ValueError(f"{name} needs img_size (the training ROI, e.g. img_size=[96, 96, 96]) to plan its strides")
    strides = params.pop("strides", None) or nnunet_strides(size)  # given: a plan's (nnU-Net's spacing-aware rule)
    kernels = params.pop("kernel_size", None) or [3] * len(strides)
    if len(strides) < 2 or len(kernels) != len(strides):
        raise ValueError(f"{name}: img_size {size} is too small to downsample (use at least 8 voxels on one axis), "
                         f"or kernel_size has {len(kernels)} levels for {len(strides)} strides")
    filters = nnunet_filters(len(strides), base_filters, max_filters)
    return DynUNet(kernel_size=kernels, strides=strides, upsample_kernel_size=strides[1:],
                   filters=params.pop("filters", filters), **params)


def _common(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Drop the keys every registered builder receives but a MONAI CNN does not take."""
    task = params.pop("task", "segmentation")
    if task != "segmentation":
        raise ValueError(f"{name} is a segmentation network; got task {task!r}")
    refuse_recipe_heads(name, params.pop("distillation", False), params.pop("aux_heads", False))
    params.pop("prediction_head", None)  # a distilled model's choice; distillation=True was refused above
    params.setdefault("img_size", None)
    params.setdefault("spatial_dims", 3)
    return params


@register_model(family="cnn", tasks=("segmentation",))
def unet(**kwargs: Any) -> nn.Module:
    """MONAI UNet, spleen-tutorial numbers: channels 16-256, 4 strides of 2, 2 residual units, batch norm."""
    return _create_unet("unet", kwargs, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                        num_res_units=2, norm="batch")


@register_model(family="cnn", tasks=("segmentation",))
def unet_small(**kwargs: Any) -> nn.Module:
    """MONAI UNet for CPU runs: channels 8-64, 3 strides of 2, 1 residual unit, batch norm."""
    return _create_unet("unet_small", kwargs, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1,
                        norm="batch")


@register_model(family="cnn", tasks=("segmentation",))
def segresnet(**kwargs: Any) -> nn.Module:
    """SegResNet as published (Myronenko 2018): 32 initial filters, blocks 1-2-2-4 down, 1-1-1 up."""
    return _create_segresnet("segresnet", kwargs, init_filters=32, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))


@register_model(family="cnn", tasks=("segmentation",))
def segresnet_small(**kwargs: Any) -> nn.Module:
    """SegResNet for CPU runs: 8 initial filters, blocks 1-1-1-1 down, 1-1-1 up."""
    return _create_segresnet("segresnet_small", kwargs, init_filters=8, blocks_down=(1, 1, 1, 1),
                             blocks_up=(1, 1, 1))


@register_model(family="cnn", tasks=("segmentation",))
def dynunet(**kwargs: Any) -> nn.Module:
    """DynUNet planned like nnU-Net: strides from img_size, 32 filters doubling to 320 (3D) / 512 (2D)."""
    return _create_dynunet("dynunet", kwargs, base_filters=32)


@register_model(family="cnn", tasks=("segmentation",))
def dynunet_small(**kwargs: Any) -> nn.Module:
    """DynUNet for CPU runs: nnU-Net's strides, 8 filters doubling to at most 64."""
    return _create_dynunet("dynunet_small", kwargs, base_filters=8, max_filters=64)
