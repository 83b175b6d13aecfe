"""Masked image modelling: patchify's order, the mask, the loss's hand values, a network that
cannot see what it must reconstruct, `unetr pretrain --method masked` and fine-tuning from it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import TINY_MASKED
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.models import create_model
from unetr_app.models.attention_maps import find_token_encoder
from unetr_app.training.objectives import masked_reconstruction_loss, patchify, random_token_mask
from unetr_app.training.recipes.masked import MaskedImageNetwork


@pytest.mark.parametrize("size,patch", [((4, 6), (2, 3)), ((4, 4, 8), (2, 2, 4))])
def test_patchify_matches_the_patch_embedding_convolutions_token_order(size, patch):
    # a convolution with kernel = stride = patch and one-hot filters copies each patch's voxels into
    # its channels: its flattened output is the patch embedding's token order
    torch.manual_seed(0)
    channels, n = 2, math.prod(patch)
    x = torch.randn(3, channels, *size)
    conv = (torch.nn.Conv2d if len(size) == 2 else torch.nn.Conv3d)(channels, channels * n, patch, stride=patch, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels * n).reshape(channels * n, channels, *patch))
    expected = conv(x).flatten(2).transpose(1, 2)
    assert torch.allclose(patchify(x, patch), expected)


def test_patchify_refuses_a_size_the_patch_does_not_divide():
    with pytest.raises(ValueError, match="not a multiple"):
        patchify(torch.zeros(1, 1, 5, 4), (2, 2))


def test_random_token_mask_masks_exactly_the_ratio_per_sample_and_differs_between_samples():
    mask = random_token_mask(4, 216, 0.6, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (4, 216)
    assert mask.sum(dim=1).tolist() == [130] * 4  # round(0.6 * 216)
    assert not torch.equal(mask[0], mask[1])
    assert random_token_mask(1, 4, 0.99).sum() == 3 and random_token_mask(1, 4, 0.01).sum() == 1  # never all, never none


def test_masked_reconstruction_loss_hand_values():
    target = torch.tensor([[[0.0, 2.0], [1.0, 1.0], [4.0, 0.0]]])  # 3 patches of 2 voxels
    prediction = torch.tensor([[[1.0, 2.0], [9.0, 9.0], [4.0, 3.0]]])
    mask = torch.tensor([[True, False, True]])  # patch 1's large error is not masked: it does not count
    assert masked_reconstruction_loss(prediction, target, mask, "l1").item() == pytest.approx((0.5 + 1.5) / 2)
    assert masked_reconstruction_loss(prediction, target, mask, "l2").item() == pytest.approx((0.5 + 4.5) / 2)
    assert masked_reconstruction_loss(target, target, mask).item() == 0.0
    # MAE's target: patch (0, 2) standardised is (-1, 1); (4, 0) is (1, -1)
    normalised = torch.tensor([[[-1.0, 1.0], [0.0, 0.0], [1.0, -1.0]]])
    assert masked_reconstruction_loss(normalised, target, mask, normalise_target=True).item() == pytest.approx(0.0, abs=1e-5)


def _network(seed: int = 0) -> MaskedImageNetwork:
    torch.manual_seed(seed)
    model = create_model("unetr", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2, img_size=[32, 32, 32],
                         feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2)
    return MaskedImageNetwork(find_token_encoder(model), in_channels=1).eval()


def test_the_network_cannot_see_the_voxels_it_must_reconstruct():
    network = _network()
    x = torch.randn(1, 1, 32, 32, 32)
    mask = torch.zeros(1, 8, dtype=torch.bool)  # 2^3 tokens of 16^3 voxels
    mask[0, 0] = True  # token 0 is the corner patch [0:16, 0:16, 0:16]
    changed_masked, changed_visible = x.clone(), x.clone()
    changed_masked[..., :16, :16, :16] += 5.0
    changed_visible[..., 16:, 16:, 16:] += 5.0
    with torch.no_grad():
        reference = network(x, mask)
        assert reference.shape == (1, 8, 16**3)
        assert torch.allclose(network(changed_masked, mask), reference, atol=1e-5), "masked content must not leak"
        assert not torch.allclose(network(changed_visible, mask), reference, atol=1e-3)


def test_pretraining_with_the_masked_objective_and_fine_tuning_from_it(cli, tmp_path, phantom_dir, tiny_profile, pretrained_masked):
    summary = json.loads((pretrained_masked / "summary.json").read_text(encoding="utf-8"))
    assert summary["method"] == "masked" and summary["steps"] == 2 and summary["final_loss"] > 0
    state = load_checkpoint(pretrained_masked / "checkpoints" / "last.pt")["state_dict"]
    assert "mask_token" in state and "head.weight" in state
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--device", "cpu", "--steps", "1",
                 "--out", tmp_path / "fine", "--init-from", pretrained_masked, "--freeze-encoder")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "fine" / "init.json").read_text(encoding="utf-8"))
    assert record["init"]["missing"] == [] and {"mask_token", "head.weight"} <= set(record["init"]["unexpected"])
    trained = load_checkpoint(tmp_path / "fine" / "checkpoints" / "last.pt")["state_dict"]
    for key, value in state.items():
        if key.startswith("encoder."):
            assert torch.equal(trained["vit." + key[len("encoder."):]], value), key


def test_masked_recipe_bad_params_and_method_are_one_line_errors(cli, tmp_path, phantom_dir):
    result = cli("pretrain", phantom_dir / "imagesTr", "--method", "masked", "--profile", TINY_MASKED,
                 "--set", "recipe.params.loss=l3", "--out", tmp_path / "r")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "recipe.params.loss" in errors[0] and "l1, l2" in errors[0]
    result = cli("pretrain", phantom_dir / "imagesTr", "--method", "maskd", "--out", tmp_path / "r2")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "'maskd'" in errors[0] and "masked" in errors[0]
    assert "Traceback" not in result.output


def test_train_refuses_a_self_supervised_recipe_in_one_line(cli, tmp_path, phantom_dir, tiny_profile):
    result = cli("train", "--data-dir", phantom_dir, "--profile", tiny_profile, "--device", "cpu", "--steps", "1",
                 "--recipe", "masked", "--out", tmp_path / "r")
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "unetr pretrain" in errors[0] and "Traceback" not in result.output


def test_a_masked_pretraining_run_resumes_exactly(cli, tmp_path, phantom_dir, pretrained_masked):
    first = cli("pretrain", phantom_dir / "imagesTr", "--method", "masked", "--profile", TINY_MASKED, "--device", "cpu",
                "--out", tmp_path / "split", "--steps", "1")
    assert first.exit_code == 0, first.output
    resumed = cli("pretrain", "--resume", "--method", "masked", "--out", tmp_path / "split", "--steps", "2", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    whole = load_checkpoint(pretrained_masked / "checkpoints" / "last.pt")["state_dict"]
    parts = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["state_dict"]
    for key, value in whole.items():  # the masks drawn after the resume are the ones drawn without it
        assert torch.allclose(value, parts[key], atol=1e-6), key
