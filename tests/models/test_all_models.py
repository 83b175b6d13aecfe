"""Every registered model, whichever family registered it: classifier and segmentation model in
2D and 3D on small non-square/non-cubic inputs (shape, backward, every parameter trained), and
`feature_info` agreeing with what `forward_features` returns; a segmentation model's
`forward_train` giving the forward's logits.

Tiny widths come from the family module's `TINY_PARAMS` (the plain family defines them) or, for
families without one, from `FALLBACK_TINY` below, so a new family is covered as soon as it is
registered. Variants that differ only in the widths and depths the tiny settings replace build
the same tiny network; each such network runs once (the others are skipped, naming it).
"""

from __future__ import annotations

import sys

import pytest
import torch

from unetr_app.models import create_model, get_model_entry, list_models

FALLBACK_TINY = {
    "unetr": {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 2},
    "pvt": {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1]},
    "pvt_v2": {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1]},
    "segformer": {"embed_dims": [8, 16, 32, 64], "num_heads": [1, 2, 2, 4], "depths": [1, 1, 1, 1]},
    "swin": {"embed_dim": 8, "num_heads": [1, 2, 2, 4], "depths": [2, 1, 1, 1]},
    "mvitv2": {"embed_dim": 8, "num_heads": 1, "depths": [1, 2, 1, 1]},
}
SPECIAL_TINY = {  # models whose own signature differs from their family's
    "swin_unetr": {"feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]},
    **{name: {"channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 1} for name in ("unet", "unet_small")},
    **{name: {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]} for name in ("segresnet", "segresnet_small")},
    **{name: {"base_filters": 4, "max_filters": 16} for name in ("dynunet", "dynunet_small")},
}
SIZES = {2: (32, 64), 3: (32, 64, 32)}  # multiples of 32 (the deepest hierarchical stride), not square/cubic


def tiny_params(name: str, task: str) -> dict:
    entry = get_model_entry(name)
    if name in SPECIAL_TINY:
        return dict(SPECIAL_TINY[name])
    params = dict(getattr(sys.modules[entry.builder.__module__], "TINY_PARAMS", None) or FALLBACK_TINY[entry.family])
    if task == "segmentation" and entry.family != "unetr":
        params.update({"decoder_dim": 16} if name.startswith("segformer") else {"feature_size": 4})
    return params


def cases() -> list:
    found = []
    for name in list_models():
        entry = get_model_entry(name)
        if entry.family == "test":  # stand-ins other test modules register, not models users get
            continue
        found += [pytest.param(name, d, t, id=f"{name}-{d}d-{t}") for d in entry.spatial_dims for t in entry.tasks]
    return found


_RUN: dict[tuple, str] = {}  # (architecture, spatial_dims, task) -> the name that ran it


def build(name: str, spatial_dims: int, task: str) -> torch.nn.Module:
    size = SIZES[spatial_dims]
    kwargs = {"spatial_dims": spatial_dims, "in_channels": 2 if spatial_dims == 2 else 1, "img_size": list(size), **tiny_params(name, task)}
    if task == "classification":
        return create_model(name, task=task, num_classes=5, **kwargs)
    return create_model(name, task=task, out_channels=3, **kwargs)


@pytest.mark.parametrize("name, spatial_dims, task", cases())
def test_forward_backward_and_feature_info(name, spatial_dims, task):
    torch.manual_seed(0)
    size = SIZES[spatial_dims]
    model = build(name, spatial_dims, task)
    ran_by = _RUN.setdefault((repr(model), spatial_dims, task), name)
    if ran_by != name:
        pytest.skip(f"same tiny network as {ran_by}")
    batch, channels = (2, 2) if spatial_dims == 2 else (1, 1)  # 3D convolutions dominate the time
    x = torch.randn(batch, channels, *size)
    out = model(x)
    expected = (batch, 5) if task == "classification" else (batch, 3, *size)
    assert tuple(out.shape) == expected
    out.square().mean().backward()
    if task == "segmentation":  # the recipe interface: forward_train's main logits are the forward's
        with torch.no_grad():
            model.eval()
            assert torch.equal(model.forward_train(x)["logits"], model(x))
    if hasattr(model, "feature_info"):  # our backbones and segmentation models (not MONAI's nets)
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert not unused, f"parameters that get no gradient: {unused}"
        backbone = getattr(model, "encoder", model)
        with torch.no_grad():
            features = backbone.forward_features(x)
        assert len(features) == len(backbone.feature_info) >= 1
        for feature, info in zip(features, backbone.feature_info):
            reduction = info["reduction"]
            reduction = (reduction,) * spatial_dims if isinstance(reduction, int) else tuple(reduction)
            assert tuple(feature.shape) == (batch, info["num_chs"], *(s // r for s, r in zip(size, reduction)))
            backbone.get_submodule(info["module"])  # raises if feature_info names no module
