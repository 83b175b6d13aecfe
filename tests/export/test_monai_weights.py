"""MONAI weights both ways: MONAI's UNETR / SwinUNETR load our export with strict=True and compute
the same logits; `unetr predict` takes MONAI's state dicts and says which keys it loaded."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import UNETR, SwinUNETR

from unetr_app.io.checkpoint import load_model

from .conftest import TINY_UNETR, build_checkpoint

# our plain ViT + "unetr" decoder, in MONAI's blocks: MONAI's UNETR under other key names
VIT_UNETR = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32],
             "embed_dim": 64, "num_heads": 2, "mlp_ratio": 2.0, "feature_size": 8, "monai_compatible": True, "qkv_bias": False}
SWIN_UNETR = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32],
              "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": "batch"}


def same_logits(checkpoint, monai_model) -> None:
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        torch.testing.assert_close(monai_model.eval()(x), load_model(checkpoint).model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs", "monai_class"), [
    ("unetr", TINY_UNETR, UNETR), ("vit_base_patch16", VIT_UNETR, UNETR), ("swin_unetr", SWIN_UNETR, SwinUNETR),
])
def test_monai_loads_our_export_strictly_and_computes_the_same(cli, tmp_path, name, kwargs, monai_class):
    checkpoint = build_checkpoint(tmp_path / f"{name}.pt", name, kwargs)
    result = cli("export", checkpoint, tmp_path / "out", "--format", "monai-state-dict")
    assert result.exit_code == 0, result.output
    network = json.loads((tmp_path / "out" / "network.json").read_text(encoding="utf-8"))
    assert network.pop("_target_") == f"monai.networks.nets.{monai_class.__name__}"
    monai_model = monai_class(**network)
    monai_model.load_state_dict(torch.load(tmp_path / "out" / "model.pt", weights_only=True), strict=True)
    same_logits(checkpoint, monai_model)


def test_a_model_without_monai_equivalent_gets_one_line(cli, tmp_path):
    checkpoint = build_checkpoint(tmp_path / "vit.pt", "vit_base_patch16", {**VIT_UNETR, "monai_compatible": False})
    result = cli("export", checkpoint, tmp_path / "out", "--format", "monai-state-dict")
    assert result.exit_code == 2
    assert "not MONAI's UNETR" in result.output and "monai_compatible" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_predict_takes_a_monai_state_dict_and_reports_its_keys(cli, tmp_path, phantom_dir, tiny_profile):
    torch.manual_seed(5)
    monai_model = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2)
    weights = {f"module.{k}": v for k, v in monai_model.state_dict().items()}  # as saved from DDP,
    weights["module.contrastive_head.weight"] = torch.ones(64)  # plus a pretraining head the model lacks
    torch.save({"epoch": 10, "state_dict": weights}, tmp_path / "monai_model.pt")  # as research code saves it
    scan = sorted((phantom_dir / "imagesTs").glob("*.nii.gz"))[0]

    result = cli("predict", scan, tmp_path / "from_monai", "-c", tmp_path / "monai_model.pt", "--profile", tiny_profile,
                 "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "weights: 194 loaded, 0 missing, 1 unexpected (contrastive_head.weight)" in result.output

    # the same weights as our own checkpoint give the same mask
    ours = build_checkpoint(tmp_path / "ours.pt", "unetr", TINY_UNETR)
    from unetr_app.io.checkpoint import load_checkpoint, save_checkpoint

    data = load_checkpoint(ours)
    data["state_dict"] = monai_model.state_dict()
    save_checkpoint(ours, data)
    assert cli("predict", scan, tmp_path / "from_ours", "-c", ours, "--device", "cpu", "--quiet").exit_code == 0
    case = scan.name.removesuffix(".nii.gz")
    a = np.asarray(nib.load(tmp_path / "from_monai" / f"{case}.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "from_ours" / f"{case}.nii.gz").dataobj)
    np.testing.assert_array_equal(a, b)


def test_a_bare_state_dict_needs_a_model_and_must_fill_it(cli, tmp_path, phantom_dir, tiny_profile):
    monai_model = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2)
    weights = monai_model.state_dict()
    torch.save(weights, tmp_path / "full.pt")
    scan = sorted((phantom_dir / "imagesTs").glob("*.nii.gz"))[0]
    result = cli("predict", scan, tmp_path / "a", "-c", tmp_path / "full.pt", "--device", "cpu")
    assert result.exit_code == 1 and "--task, --model, --profile" in result.output

    torch.save({k: v for k, v in weights.items() if not k.startswith("out.")}, tmp_path / "partial.pt")
    result = cli("predict", scan, tmp_path / "b", "-c", tmp_path / "partial.pt", "--profile", tiny_profile, "--device", "cpu")
    assert result.exit_code == 1 and "2 missing (out.conv.conv.weight, out.conv.conv.bias)" in result.output


def test_a_bare_state_dict_for_a_multi_channel_task_is_built_with_its_channels(tmp_path):
    from unetr_app.pipelines.predict import PredictRequest, _fallback

    described = _fallback(PredictRequest(input=tmp_path, output_dir=tmp_path / "out", checkpoint=tmp_path / "w.pth", task="prostate", profile="cpu-prostate"))
    assert described["in_channels"] == described["model"]["kwargs"]["in_channels"] == 2  # not the 1 a missing key defaulted to
    assert described["modality"] == "MRI" and described["labels"]["transition_zone"] == 2
