"""Training reads every format prediction reads, through the one reader (io.scans): the phantom
stored as MetaImage (.mha) or as DICOM series folders trains exactly like the NIfTI original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.predict.test_dicom import write_dicom_series
from unetr_app.config import load_run_config
from unetr_app.data.dataset import labelled_cases
from unetr_app.data.manifest import load_manifest

pytestmark = pytest.mark.slow
CASES = 3  # two to train on, one to validate


def _copy_as(phantom_dir: Path, root: Path, kind: str) -> Path:
    """The first CASES training cases of the phantom, images stored as `kind` ("nifti", "mha" or
    "dicom"), listed in dataset.json as MSD lists them."""
    description = json.loads((phantom_dir / "dataset.json").read_text(encoding="utf-8"))
    entries = description["training"][:CASES]
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for entry in entries:
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        source = phantom_dir / entry["image"]
        shutil.copy(phantom_dir / entry["label"], root / entry["label"])
        if kind == "nifti":
            image = f"imagesTr/{name}.nii.gz"
            shutil.copy(source, root / image)
        elif kind == "mha":
            image = f"imagesTr/{name}.mha"
            sitk.WriteImage(_sitk_copy(source), str(root / image))
        else:
            image = f"imagesTr/{name}"
            scan = sitk.ReadImage(str(source))
            array = np.swapaxes(sitk.GetArrayFromImage(scan), 0, 2)
            write_dicom_series(array, scan.GetSpacing(), scan.GetOrigin(), scan.GetDirection(), root / image)
        training.append({"image": image, "label": entry["label"]})
    (root / "dataset.json").write_text(json.dumps({**description, "training": training, "numTraining": CASES}))
    return root


def _sitk_copy(path: Path) -> sitk.Image:
    """The NIfTI's voxels and exact geometry (its sform, as nibabel reads it) as a SimpleITK image;
    SimpleITK's own NIfTI reader would take the float32 quaternion (qform) instead, 1e-7 mm off."""
    nifti = nib.load(path)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ nifti.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.swapaxes(np.asanyarray(nifti.dataobj), 0, 2))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(lps[:3, 3].tolist())
    return image


def _first_line_loss(data_dir: Path, run_dir: Path, tiny_profile: Path) -> float:
    from unetr_app.pipelines.train import train

    overrides = {"training": {"budget": {"steps": 2}, "log_every_steps": 2, "val_fraction": 0.34, "cache_rate": 0.0}}
    config = load_run_config("spleen", profile=str(tiny_profile), overrides=overrides)
    train(config, run_dir, data_dir=data_dir, device="cpu")
    return json.loads((run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[0])["loss"]


def test_mha_and_dicom_copies_train_like_nifti(phantom_dir, tmp_path, tiny_profile):
    losses = {}
    for kind in ("nifti", "mha", "dicom"):
        data = _copy_as(phantom_dir, tmp_path / kind / "Task09_Spleen", kind)
        cases = labelled_cases(data, load_manifest("spleen"))
        assert [c["case"] for c in cases] == [f"spleen_{i}" for i in range(1, CASES + 1)]
        losses[kind] = _first_line_loss(data, tmp_path / kind / "run", tiny_profile)
    assert losses["mha"] == pytest.approx(losses["nifti"], rel=1e-6), losses
    assert losses["dicom"] == pytest.approx(losses["nifti"], rel=1e-6), losses
