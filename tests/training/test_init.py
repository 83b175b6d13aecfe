"""`train --init-from`: the encoder comes from a pretraining run, a training run or a MONAI state dict."""

from __future__ import annotations

import pytest
import torch

from tests.recipes.dino_helpers import pretrain_checkpoint, tiny_model
from unetr_app.errors import UsageError
from unetr_app.training.init import freeze_encoder, init_encoder


@pytest.mark.parametrize("name", ["vit_small_patch16", "unetr"])
@pytest.mark.parametrize("key", ["teacher", "student"])
def test_pretrained_encoder_loads_with_no_missing_key(tmp_path, name, key):
    path, recipe = pretrain_checkpoint(tmp_path, name)
    model = tiny_model(name, seed=2)
    report = init_encoder(model, path, key, name)
    assert report.missing == [] and report.key == key
    encoder = model.encoder if name != "unetr" else model.vit
    assert len(report.loaded) == len(encoder.state_dict())
    source = (recipe.teacher if key == "teacher" else recipe.model).encoder.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in encoder.state_dict().items())
    assert {"cls_token"} <= set(report.unexpected) and all(k.startswith(("head.", "cls_token")) for k in report.unexpected)


def test_another_architecture_is_refused_in_one_line(tmp_path):
    path, _ = pretrain_checkpoint(tmp_path, "vit_small_patch16")
    model = tiny_model("vit_tiny_patch16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UsageError, match="architecture mismatch") as err:
        init_encoder(model, path, "teacher", "vit_tiny_patch16")
    assert "\n" not in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_monai_unetr_state_dict_file_loads_its_vit(tmp_path):
    from monai.networks.nets import UNETR

    torch.manual_seed(3)
    monai = UNETR(1, 2, (32, 32, 32), feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2)
    torch.save({"state_dict": monai.state_dict()}, tmp_path / "unetr_monai.pt")
    for name in ("unetr",):
        model = tiny_model(name)
        report = init_encoder(model, tmp_path / "unetr_monai.pt", "teacher", name)
        assert report.prefix == "vit." and report.missing == []
        assert torch.equal(model.vit.blocks[0].attn.qkv.weight, monai.vit.blocks[0].attn.qkv.weight)
        assert any(k.startswith("decoder5.") for k in report.unexpected)


def test_freeze_encoder_trains_only_the_decoder():
    model = tiny_model("vit_small_patch16")
    trained = freeze_encoder(model, "vit_small_patch16")
    assert trained == sum(p.numel() for p in model.decoder.parameters())
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    decoder_before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.randn(1, 1, 32, 32, 32)).mean().backward()
    optimizer.step()
    assert all(torch.equal(v, encoder_before[k]) for k, v in model.encoder.state_dict().items())
    assert any(not torch.equal(v, decoder_before[k]) for k, v in model.decoder.state_dict().items() if v.is_floating_point())


def test_swin_unetr_self_supervised_backbone_weights_load(tmp_path):
    """MONAI's self-supervised Swin UNETR weights: {"state_dict": {"module.<swinViT key>": ...}}."""
    from unetr_app.models import create_model

    def swin(seed):
        torch.manual_seed(seed)
        return create_model("swin_unetr", spatial_dims=3, in_channels=1, out_channels=2, img_size=[64, 64, 64],
                            feature_size=12, depths=(1, 1, 1, 1))

    source = swin(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.swinViT.state_dict().items()}}, tmp_path / "ssl.pt")
    model = swin(1)
    report = init_encoder(model, tmp_path / "ssl.pt", "teacher", "swin_unetr")
    assert report.prefix == "" and report.missing == [] and report.unexpected == []
    assert all(torch.equal(v, source.swinViT.state_dict()[k]) for k, v in model.swinViT.state_dict().items())
