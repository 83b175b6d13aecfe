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


def test_the_bundle_carries_the_post_processing_predict_applies(cli, tmp_path):
    from monai.bundle import ConfigParser

    from tests.predict.predict_helpers import echo_checkpoint
    from unetr_app.evaluation.postprocess import Postprocessing

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = echo_checkpoint(run / "checkpoints", spacing=(2.0, 2.0, 2.0), classes=3)
    steps = Postprocessing(largest_component=(2,), min_volume_mm3={1: 100.0})
    (run / "postprocessing.json").write_text(json.dumps(steps.to_dict()), encoding="utf-8")
    assert cli("export", checkpoint, tmp_path / "bundle").exit_code == 0

    parser = ConfigParser()
    parser.read_config(str(tmp_path / "bundle" / "configs" / "inference.json"))
    transforms = parser.get("postprocessing")["transforms"]
    ours = [t for t in transforms if t["_target_"] == "KeepLargestConnectedComponentd"]
    assert [t["applied_labels"] for t in ours] == [[2]]
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 2
    labels[12:14, 12:14, 12:14] = 2  # a stray component of label 2
    labels[14, 14, 14] = 2  # touching the one above only at a corner: 26-connected, one component
    labels[10:12, 2:4, 2:4] = 1
    keep = ConfigParser({"t": ours[0]}).get_parsed_content("t")
    monai_result = np.asarray(keep({"pred": torch.from_numpy(labels[None])})["pred"][0])
    np.testing.assert_array_equal(monai_result, Postprocessing(largest_component=(2,)).apply(labels, (2.0, 2.0, 2.0)))
    readme = (tmp_path / "bundle" / "docs" / "README.md").read_text(encoding="utf-8")
    assert "largest component of labels [2]" in readme and "100 mm3 of label 1" in readme

    # the guard (organ-sized components kept too) has no MONAI transform: the README says how predict differs
    guarded = Postprocessing(largest_component=(2,), largest_component_guard_mm3={2: 500.0})
    (run / "postprocessing.json").write_text(json.dumps(guarded.to_dict()), encoding="utf-8")
    assert cli("export", checkpoint, tmp_path / "guarded").exit_code == 0
    readme = (tmp_path / "guarded" / "docs" / "README.md").read_text(encoding="utf-8")
    assert "largest component of labels [2]" in readme and "other components of at least 500 mm3 of label 2" in readme
