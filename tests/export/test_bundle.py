"""`unetr export --format monai-bundle`: MONAI's own runner, in a fresh process, predicts what
`unetr predict` predicts, on each scan's own grid."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

# the keys the MONAI bundle specification requires in configs/metadata.json
REQUIRED_METADATA = {"version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                     "task", "description", "authors", "copyright", "network_data_format"}
TENSOR_FORMAT_KEYS = {"type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range",
                      "is_patch_data", "channel_def"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.slow
def test_bundle_runs_in_monai_and_matches_unetr_predict(cli, trained_run, phantom_dir, tmp_path):
    bundle = tmp_path / "spleen_unetr"
    result = cli("export", trained_run, bundle, "--format", "monai-bundle")
    assert result.exit_code == 0, result.output
    for name in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "LICENSE", "docs/README.md"):
        assert (bundle / name).is_file(), name
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert REQUIRED_METADATA <= metadata.keys()
    assert TENSOR_FORMAT_KEYS <= metadata["network_data_format"]["inputs"]["image"].keys()
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "spleen"}
    assert json.loads((bundle / "configs" / "inference.json").read_text(encoding="utf-8"))["network_def"]["_target_"] == "monai.networks.nets.UNETR"

    scans = phantom_dir / "imagesTs"
    env = {**os.environ, "PYTHONPATH": ""}  # MONAI alone: the bundle must not need this project's code
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--dataset_dir", str(scans), "--output_dir", str(tmp_path / "bundle_out")],
        cwd=bundle, env=env, capture_output=True, text=True, encoding="utf-8", timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert cli("predict", scans, tmp_path / "predict_out", "-c", trained_run, "--device", "cpu", "--quiet").exit_code == 0

    cases = sorted(p.name.removesuffix(".nii.gz") for p in scans.glob("*.nii.gz"))
    assert len(cases) == 2
    for case in cases:
        scan = nib.load(scans / f"{case}.nii.gz")
        ours = nib.load(tmp_path / "predict_out" / f"{case}.nii.gz")
        theirs = nib.load(tmp_path / "bundle_out" / f"{case}_seg.nii.gz")
        assert theirs.shape == scan.shape, case
        np.testing.assert_allclose(theirs.affine, scan.affine, atol=1e-4)
        a, b = np.asarray(ours.dataobj) > 0, np.asarray(theirs.dataobj) > 0
        assert a.sum() > 0 and b.sum() > 0, "the trained model finds something to compare"
        assert dice(a, b) >= 0.99, (case, dice(a, b))


def test_a_model_monai_lacks_ships_its_code_in_the_bundle(cli, tmp_path):
    """A plain ViT with our own blocks: the bundle's scripts/ builds it without unetr installed."""
    from unetr_app.io.checkpoint import load_model

    from .conftest import build_checkpoint

    kwargs = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32],
              "embed_dim": 64, "num_heads": 2, "mlp_ratio": 2.0, "feature_size": 8}
    checkpoint = build_checkpoint(tmp_path / "vit.pt", "vit_base_patch16", kwargs)
    assert cli("export", checkpoint, tmp_path / "bundle").exit_code == 0
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch; sys.modules['unetr_app'] = None; sys.path.insert(0, '.')\n"  # unetr unimportable
        "from monai.bundle import ConfigParser\n"
        "parser = ConfigParser(); parser.read_config('configs/inference.json')\n"
        "net = parser.get_parsed_content('network_def')\n"
        "net.load_state_dict(torch.load('models/model.pt', weights_only=True), strict=True)\n"
        f"torch.save(net.eval()(torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)).detach(), {str(tmp_path / 'y.pt')!r})\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path / "bundle", capture_output=True, text=True, encoding="utf-8", timeout=300,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    with torch.inference_mode():
        torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), load_model(checkpoint).model(x), rtol=0, atol=1e-6)
