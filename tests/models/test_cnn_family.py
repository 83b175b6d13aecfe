"""The CNN family (MONAI's UNet, SegResNet, DynUNet): teachers and baselines.

Known answers: each registered network has MONAI's own network's parameter count for the same
arguments, and a state dict moves between ours and MONAI's class with strict loading and
identical outputs; DynUNet's plan reproduces nnU-Net's published 3d_fullres and 2d plans (six
stages of 32-320 filters for a 128³ patch, eight of 32-512 for 512²).
"""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks import nets

from unetr_app.errors import ConfigError
from unetr_app.models import create_model, get_model_entry, list_models
from unetr_app.models.cnn import nnunet_filters, nnunet_strides

CNNS = ["dynunet", "dynunet_small", "segresnet", "segresnet_small", "unet", "unet_small"]


def monai_reference(name: str, spatial_dims: int, img_size, in_channels: int = 1, out_channels: int = 2):
    """MONAI's network with the arguments each registered variant documents."""
    common = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels}
    if name == "unet":
        return nets.UNet(**common, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
    if name == "unet_small":
        return nets.UNet(**common, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1, norm="batch")
    if name == "segresnet":
        return nets.SegResNet(**common, init_filters=32, blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
    if name == "segresnet_small":
        return nets.SegResNet(**common, init_filters=8, blocks_down=(1, 1, 1, 1), blocks_up=(1, 1, 1))
    strides = nnunet_strides(img_size)
    base, top = (32, 320 if spatial_dims == 3 else 512) if name == "dynunet" else (8, 64)
    return nets.DynUNet(**common, kernel_size=[3] * len(strides), strides=strides, upsample_kernel_size=strides[1:],
                        filters=nnunet_filters(len(strides), base, top))


def ours(name: str, spatial_dims: int, img_size, **kwargs):
    return create_model(name, task="segmentation", spatial_dims=spatial_dims, in_channels=1, out_channels=2,
                        img_size=list(img_size), **kwargs)


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_the_family_is_registered_for_segmentation_in_2d_and_3d():
    assert [n for n in list_models() if get_model_entry(n).family == "cnn"] == CNNS
    assert all(get_model_entry(n).tasks == ("segmentation",) and get_model_entry(n).spatial_dims == (2, 3) for n in CNNS)


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("spatial_dims, img_size", [(3, (96, 96, 96)), (2, (64, 96))])
def test_parameter_count_equals_monais_network(name, spatial_dims, img_size):
    with torch.device("meta"):
        assert count(ours(name, spatial_dims, img_size)) == count(monai_reference(name, spatial_dims, img_size))


@pytest.mark.parametrize("name", ["unet_small", "segresnet_small", "dynunet_small"])
def test_state_dict_loads_into_monais_class_and_gives_the_same_output(name):
    torch.manual_seed(0)
    size = (32, 48, 32)
    model = ours(name, 3, size).eval()
    reference = monai_reference(name, 3, size).eval()
    reference.load_state_dict(model.state_dict())  # strict: no key renamed
    model.load_state_dict(reference.state_dict())
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 2, *size)
        assert torch.equal(out, reference(x))
        assert set(model.forward_train(x)) == {"logits"}


def test_dynunet_plans_like_nnunet():
    # nnU-Net 3d_fullres for a 128³ patch: 6 stages, strides 1 then 2 x5, 32..320 filters
    assert nnunet_strides((128, 128, 128)) == [(1, 1, 1)] + [(2, 2, 2)] * 5
    assert nnunet_filters(6, 32, 320) == [32, 64, 128, 256, 320, 320]
    # nnU-Net 2d for 512²: 8 stages, 32..512 filters, bottleneck 4x4
    assert nnunet_strides((512, 512)) == [(1, 1)] + [(2, 2)] * 7
    assert nnunet_filters(8, 32, 512) == [32, 64, 128, 256, 512, 512, 512, 512]
    # an axis stops halving once it would drop below 4 voxels (or is odd)
    assert nnunet_strides((32, 64, 20)) == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1), (1, 2, 1)]
    with torch.device("meta"):
        assert ours("dynunet", 3, (128, 128, 128)).filters == [32, 64, 128, 256, 320, 320]


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("flag", ["distillation", "aux_heads"])
def test_recipe_heads_are_refused_in_one_line(name, flag):
    with pytest.raises(ConfigError, match=rf"^{flag}=True is not supported for model '{name}'[^\n]*$"):
        ours(name, 2, (64, 64), **{flag: True})
    with torch.device("meta"):
        ours(name, 2, (64, 64), **{flag: False})  # the default, passed explicitly, builds


@pytest.mark.parametrize("name, size, stride", [("unet", (96, 100, 96), 16), ("segresnet_small", (36, 40), 8)])
def test_sizes_the_strides_do_not_divide_are_refused_with_the_allowed_sizes(name, size, stride):
    with pytest.raises(ConfigError, match=rf"multiples of {stride}"):
        ours(name, len(size), size)


def test_dynunet_needs_img_size_to_plan():
    with pytest.raises(ConfigError, match="needs img_size"):
        create_model("dynunet", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2)


def test_models_list_shows_the_family_with_params_and_flops(cli):
    result = cli("models", "list", "segresnet*", "--size", "32,32,32", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert set(rows) == {"segresnet", "segresnet_small"}
    for name, row in rows.items():
        assert row["family"] == "cnn" and row["flops"] > 0
        assert row["params"] == count(monai_reference(name, 3, (32, 32, 32)))


@pytest.mark.parametrize("name", ["dynunet_small"])
def test_trains_as_a_teacher_through_unetr_train_and_reloads(name, cli, tmp_path, phantom_dir, tiny_profile):
    from unetr_app.io.checkpoint import load_model

    run = tmp_path / "run"
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--model", name, "--out", run,
                 "--device", "cpu", "--epochs", 1, "--set", "training.val_fraction=0.34")
    assert result.exit_code == 0, result.output
    loaded = load_model(run)
    assert loaded.name == name and isinstance(loaded.model, nets.DynUNet)
    with torch.no_grad():
        assert loaded.model(torch.rand(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
