"""The UNETR decoder for any power-of-two patch: patch 8 gives a 48^3 window 6^3 = 216 tokens.

Known answers: output shapes for patch 8 and 16 in 2D and 3D; each stage's grid; the patch-8
decoder's parameter count added up module by module; patch 16 keeps MONAI's factors (2 at every
stage); a patch that is not a power of two is a one-line error naming the allowed sizes.
"""

from __future__ import annotations

import pytest
import torch

from unetr_app.models import create_model
from unetr_app.models.segmentation import unetr_stage_factors

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "feature_size": 4}


def build(patch, spatial_dims: int, size, **params) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("vit_tiny_patch16", task="segmentation", spatial_dims=spatial_dims, in_channels=1,
                        out_channels=3, img_size=list(size), patch_size=patch, **{**TINY, **params})


@pytest.mark.parametrize("patch", [8, 16])
@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 64)), (3, (32, 48, 16))])
def test_logits_have_the_input_size(patch, spatial_dims, size):
    model = build(patch, spatial_dims, size)
    with torch.no_grad():
        assert model(torch.randn(2, 1, *size)).shape == (2, 3, *size)


def test_a_48_cube_at_patch_8_has_216_tokens_and_the_deepest_stage_stays_on_the_token_grid():
    model = build(8, 3, (48, 48, 48))
    assert model.encoder.grid == (6, 6, 6)
    x = torch.randn(1, 1, 48, 48, 48)
    with torch.no_grad():
        stages = model.decoder.decode(x, model.encoder.forward_features(x))
    assert [s.shape[2:] for s in stages] == [(6, 6, 6), (12, 12, 12), (24, 24, 24), (48, 48, 48)]
    assert [s.shape[1] for s in stages] == [32, 16, 8, 4]  # 8, 4, 2, 1 x feature_size


def test_the_patch_8_decoder_has_its_hand_counted_parameters():
    # 3D, 1 -> 3 channels, feature F = 4, token width H = 32; convs have no bias except the output's,
    # instance norm has no weights; factors (1, 2, 2, 2): a factor-1 "upsampling" is a 1x1 convolution
    F, H, k3, up2 = 4, 32, 27, 8

    def res(cin, cout):  # UnetResBlock: two 3^3 convs, a 1x1 shortcut when the widths differ
        return cin * cout * k3 + cout * cout * k3 + (cin * cout if cin != cout else 0)

    encoder1 = res(1, F)
    encoder2 = H * 2 * F + 2 * (2 * F * 2 * F * up2 + res(2 * F, 2 * F))  # tap 1: x1, x2, x2 to 1/2
    encoder3 = H * 4 * F + (4 * F * 4 * F * up2 + res(4 * F, 4 * F))  # tap 2: x1, x2 to 1/4
    encoder4 = H * 8 * F  # tap 3: x1, stays on the token grid
    decoder5 = H * 8 * F + res(16 * F, 8 * F)
    decoder4 = 8 * F * 4 * F * up2 + res(8 * F, 4 * F)
    decoder3 = 4 * F * 2 * F * up2 + res(4 * F, 2 * F)
    decoder2 = 2 * F * F * up2 + res(2 * F, F)
    out = F * 3 + 3
    expected = encoder1 + encoder2 + encoder3 + encoder4 + decoder5 + decoder4 + decoder3 + decoder2 + out
    assert expected == 145_439
    decoder = build(8, 3, (32, 32, 32)).decoder
    assert sum(p.numel() for p in decoder.parameters()) == expected


@pytest.mark.parametrize("patch, factors", [
    (1, [1, 1, 1, 1]), (2, [1, 1, 1, 2]), (4, [1, 1, 2, 2]), (8, [1, 2, 2, 2]),
    (16, [2, 2, 2, 2]), (32, [4, 2, 2, 2]),
])
def test_the_three_finest_stages_double_and_the_deepest_takes_the_rest(patch, factors):
    info = [{"num_chs": 8, "reduction": patch, "module": f"blocks.{i}"} for i in range(4)]
    assert unetr_stage_factors(info, spatial_dims=3) == [(f, f, f) for f in factors]


@pytest.mark.parametrize("patch", [2, 4, 32])
def test_other_powers_of_two_give_logits_at_the_input_size(patch):
    size = (64, 64)
    with torch.no_grad():
        assert build(patch, 2, size)(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_an_anisotropic_patch_upsamples_each_axis_by_its_own_factors():
    size = (32, 32, 16)
    model = build((16, 16, 8), 3, size)
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_a_patch_that_is_not_a_power_of_two_names_the_allowed_sizes():
    with pytest.raises(ValueError, match=r"patch size must be a power of two.*allowed: 1, 2, 4, 8, 16.*\(12, 12, 12\)"):
        build(12, 3, (24, 24, 24))
