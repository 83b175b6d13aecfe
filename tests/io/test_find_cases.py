"""How a folder of scans becomes cases: nnU-Net channel files join their case, numbered cases do not."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from unetr_app.io.scans import MAX_CHANNELS, find_cases


def _write(folder, names):
    folder.mkdir(exist_ok=True)
    for name in names:
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), folder / f"{name}.nii.gz")


def test_nnunet_channel_files_are_one_case_with_channels_in_order(tmp_path):
    _write(tmp_path / "in", ["brain_0001", "brain_0000", "brain_0002", "other"])
    cases = find_cases(tmp_path / "in")
    assert [c.name for c in cases] == ["brain", "other"]
    assert [p.name for p in cases[0].channel_paths] == ["brain_0000.nii.gz", "brain_0001.nii.gz", "brain_0002.nii.gz"]
    assert cases[1].channel_paths == ()


def test_more_numbered_files_than_any_scan_has_channels_are_separate_cases(tmp_path):
    names = [f"spleen_{k:04d}" for k in range(MAX_CHANNELS + 4)]
    _write(tmp_path / "in", names)
    cases = find_cases(tmp_path / "in")
    assert [c.name for c in cases] == names  # each keeps its number, _0000 included
    assert all(c.channel_paths == () for c in cases)
