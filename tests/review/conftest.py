"""Tiny review folders (scans, predictions, references) and a display for the viewer tests.

Qt aborts the whole process when it has no display, so a display is found (or a private Xvfb
started) here, before any test creates a QApplication; without one the viewer tests skip.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unetr_app.errors import UsageError
from unetr_app.review.display import ensure_display

try:
    DISPLAY = ensure_display()
except UsageError as err:
    DISPLAY, NO_DISPLAY_REASON = None, str(err)
else:
    NO_DISPLAY_REASON = ""

needs_display = pytest.mark.skipif(DISPLAY is None, reason=f"no display: {NO_DISPLAY_REASON}")

SHAPE = (24, 20, 10)  # file order (i, j, k)
SPACING = (0.9, 0.8, 2.5)
# LPS storage, as DICOM-derived CT often is: i runs to the patient's left, j to posterior
LPS_AFFINE = np.array([[-0.9, 0, 0, 10.5], [0, -0.8, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])
ORGAN = (slice(12, 18), slice(6, 12), slice(3, 7))  # the "spleen" box of the reference, 6*6*4 voxels


@dataclass
class ReviewFolders:
    images: Path
    predictions: Path
    labels: Path
    corrections: Path
    names: list[str]


def ct_scan(shape=SHAPE, seed=0) -> np.ndarray:
    """Air around an elliptic body of soft tissue, a brighter organ; int16 Hounsfield units."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    body = (i**2 + j**2 < 0.9)[..., None].repeat(shape[2], axis=2)
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 5, shape)
    hu[ORGAN] = 120.0
    return hu.astype(np.int16)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def make_review_folders(root: Path, cases: int = 3, affine: np.ndarray = LPS_AFFINE, report: bool = True) -> ReviewFolders:
    """`cases` scans; each prediction is the reference organ shifted by one voxel along i."""
    folders = ReviewFolders(root / "imagesTs", root / "pred", root / "labelsTs", root / "pred_corrections", [])
    for folder in (folders.images, folders.predictions, folders.labels):
        folder.mkdir(parents=True)
    for index in range(1, cases + 1):
        name = f"spleen_{index}"
        reference = np.zeros(SHAPE, np.uint8)
        reference[ORGAN] = 1
        write_nifti(folders.images / f"{name}.nii.gz", ct_scan(seed=index), affine)
        write_nifti(folders.labels / f"{name}.nii.gz", reference, affine)
        write_nifti(folders.predictions / f"{name}.nii.gz", np.roll(reference, 1, axis=0), affine)
        folders.names.append(name)
    if report:
        (folders.predictions / "predict_report.json").write_text(json.dumps({"labels": {"background": 0, "spleen": 1}}))
    return folders


@pytest.fixture
def review_folders(tmp_path) -> ReviewFolders:
    return make_review_folders(tmp_path)
