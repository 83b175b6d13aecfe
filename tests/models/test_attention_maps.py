"""`unetr attention`: maps on the scan's exact grid, one per head; clear errors for bad input."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.recipes.dino_helpers import oblique_scan, pretrain_checkpoint, tiny_model, write_checkpoint


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    return oblique_scan(tmp_path_factory.mktemp("scan") / "oblique_0000.nii.gz")


@pytest.mark.parametrize("name", ["vit_tiny_patch16", "unetr"])
def test_maps_come_back_on_the_scans_exact_grid(cli, tmp_path, scan, name):
    ckpt = write_checkpoint(tmp_path / "seg.pt", name, tiny_model(name).state_dict())
    result = cli("attention", ckpt, scan, tmp_path / "out")
    assert result.exit_code == 0, result.output
    heads = {"vit_tiny_patch16": 3, "unetr": 2}[name]
    source = nib.load(scan)
    for head in range(1, heads + 1):
        path = tmp_path / "out" / f"oblique_attention_head{head}.nii.gz"
        saved = nib.load(path)
        assert saved.shape == source.shape
        np.testing.assert_allclose(saved.affine, source.affine, atol=1e-5)
        assert saved.get_data_dtype() == np.float32
        data = saved.get_fdata()
        assert data.min() >= 0 and data.max() > 0
        # the grid's corners lie outside the body's crop: nothing was computed there
        assert all(data[i, j, k] == 0 for i in (0, -1) for j in (0, -1) for k in (0, -1))
        ours, theirs = sitk.ReadImage(str(path)), sitk.ReadImage(str(scan))
        np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)
        np.testing.assert_allclose(ours.GetSpacing(), theirs.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-4)
    assert not (tmp_path / "out" / f"oblique_attention_head{heads + 1}.nii.gz").exists()
    assert (tmp_path / "out" / "oblique_attention.png").stat().st_size > 0


def test_existing_maps_need_overwrite(cli, tmp_path, scan):
    ckpt = write_checkpoint(tmp_path / "seg.pt", "vit_tiny_patch16", tiny_model("vit_tiny_patch16").state_dict())
    assert cli("attention", ckpt, scan, tmp_path / "out").exit_code == 0
    again = cli("attention", ckpt, scan, tmp_path / "out")
    assert again.exit_code != 0 and "--overwrite" in again.output and len(again.output.strip().splitlines()) == 1
    assert cli("attention", ckpt, scan, tmp_path / "out", "--overwrite").exit_code == 0


def test_a_model_without_attention_layers_is_a_one_line_error(cli, tmp_path, scan):
    ckpt = write_checkpoint(tmp_path / "conv.pt", "convmixer_768_32", tiny_model("convmixer_768_32").state_dict())
    result = cli("attention", ckpt, scan, tmp_path / "out")
    assert result.exit_code != 0
    assert "no attention layers" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_pretraining_run_gives_the_class_tokens_attention(cli, tmp_path, scan):
    path, _ = pretrain_checkpoint(tmp_path, "vit_small_patch16")
    result = cli("attention", path, scan, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "class token" in result.output
    saved = nib.load(tmp_path / "out" / "oblique_attention_head2.nii.gz")
    assert saved.shape == nib.load(scan).shape
