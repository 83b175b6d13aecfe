"""Known answers for every quality signal on hand-made masks, probabilities and scans."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from unetr_app.data.fingerprint import compute_fingerprint, intensity_warnings
from unetr_app.io.scans import read_volume, source_for
from unetr_app.quality.case import intensity_check
from unetr_app.quality.reference import compute_reference
from unetr_app.quality.signals import (
    border_fraction, dice, foreground_entropy, geometry_problems, histogram, js_distance, pairwise_agreement, volume_zscore,
)


def test_dice_and_pairwise_agreement_known_values():
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    a[:2] = 1  # 32 voxels
    b[1:3] = 1  # 32 voxels, 16 shared: Dice 0.5
    assert dice(a, b) == pytest.approx(0.5)
    assert pairwise_agreement([a, a, b]) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert pairwise_agreement([a]) is None
    assert pairwise_agreement([np.zeros_like(a), np.zeros_like(a)]) == 1.0  # both empty: agree


def test_pairwise_agreement_averages_labels():
    a = np.zeros((4, 4, 4), np.uint8)
    a[:2], a[2:] = 1, 2
    b = a.copy()
    b[2:] = 0  # label 1 identical (1.0), label 2 missing in b (0.0)
    assert pairwise_agreement([a, b], [1, 2]) == pytest.approx(0.5)


def test_entropy_of_uniform_and_certain_maps():
    assert foreground_entropy(np.full((2, 3, 3, 3), 0.5)) == pytest.approx(math.log(2))
    assert foreground_entropy(np.full((3, 3, 3, 3), 1 / 3)) == pytest.approx(math.log(3))
    certain = np.zeros((2, 3, 3, 3))
    certain[1] = 1.0
    assert foreground_entropy(certain) == pytest.approx(0.0, abs=1e-9)
    background = np.zeros((2, 3, 3, 3))
    background[0] = 1.0
    assert foreground_entropy(background) == 0.0  # nothing predicted: no foreground voxels


def test_border_fraction_known_values():
    mask = np.zeros((10, 10, 10), bool)
    mask[3:7, 3:7, 3:7] = True
    assert border_fraction(mask) == 0.0  # inside the field of view
    mask[:] = False
    mask[0:2, 3:7, 3:7] = True  # 32 voxels, all on the boundary (2 thick), 16 on the face x = 0
    assert border_fraction(mask) == pytest.approx(0.5)
    mask[:] = False
    mask[9] = True  # one face: every boundary voxel on the edge
    assert border_fraction(mask) == 1.0
    assert border_fraction(np.zeros((4, 4, 4), bool)) == 0.0


def test_volume_zscore_in_log_space():
    training = [np.expm1(1.0), np.expm1(3.0)]  # log1p volumes 1 and 3: mean 2, SD sqrt(2)
    assert volume_zscore(np.expm1(2.0), training) == pytest.approx(0.0)
    assert volume_zscore(np.expm1(2.0 + 2 * math.sqrt(2)), training) == pytest.approx(2.0)
    assert volume_zscore(5.0, [5.0]) is None


def test_histogram_and_js_distance():
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    assert histogram(np.array([0.5, 1.5, 1.5, 9.0]), edges).tolist() == [0.25, 0.5, 0.25]
    assert js_distance([1, 0], [1, 0]) == 0.0
    assert js_distance([1, 0], [0, 1]) == pytest.approx(1.0)


def test_geometry_problems():
    assert geometry_problems([1.0, 1.0, 5.0], np.eye(3), [[0.8, 0.8, 5.0], [1.0, 1.0, 3.0]]) == []
    assert "spacing" in geometry_problems([10.0, 1.0, 5.0], np.eye(3), [[0.8, 0.8, 5.0]])[0]  # cm read as mm
    tilt = math.radians(45)
    rotated = np.array([[math.cos(tilt), -math.sin(tilt), 0], [math.sin(tilt), math.cos(tilt), 0], [0, 0, 1]])
    assert "oblique by 45" in geometry_problems([1.0, 1.0, 1.0], rotated, [])[0]


def _training(phantom_dir):
    data = json.loads((phantom_dir / "dataset.json").read_text())
    return [{"image": str(phantom_dir / c["image"]), "label": str(phantom_dir / c["label"])} for c in data["training"]]


def _mr_like(phantom_dir, out):
    """An MR-like scan: air ~0-20, soft tissue ~108, fat bright ~240, values 0-700, median ~108."""
    ct = nib.load(phantom_dir / json.loads((phantom_dir / "dataset.json").read_text())["training"][0]["image"])
    hu = np.asarray(ct.dataobj, np.float32)
    body = np.argwhere(hu > -500)
    low, high = body.min(axis=0), body.max(axis=0) + 1
    hu = hu[low[0]:high[0], low[1]:high[1], low[2]:high[2]]  # the field of view on the body, like a real MR
    rng = np.random.default_rng(0)
    mr = np.where(hu < -500, 10.0, np.where(hu < -30, 240.0, np.where(hu < 200, 108.0, 290.0)))
    mr = np.clip(mr + rng.normal(0, 20, mr.shape), 0, 700).astype(np.float32)
    mr[0, 0, 0] = 700.0
    nib.save(nib.Nifti1Image(mr, ct.affine @ np.diag([1, 1, 1, 1.0])), out)
    return read_volume(source_for(out)), mr


def test_mr_scan_given_to_a_ct_model_is_flagged_by_distributions_not_by_the_range(phantom_dir, tmp_path):
    cases = _training(phantom_dir)
    fingerprint = compute_fingerprint(cases, {"CT": "CT"})
    reference = compute_reference(cases, {"background": 0, "spleen": 1}, ["CT"], fingerprint)
    volume, mr = _mr_like(phantom_dir, tmp_path / "mr.nii.gz")
    assert 80 <= float(np.median(mr)) <= 140 and mr.min() >= 0 and mr.max() <= 700
    assert intensity_warnings(volume, fingerprint) == []  # the range check misses it
    distance, excess, problems = intensity_check(volume, reference)
    assert problems, "an MR scan given to a CT model must be flagged"
    assert excess > 1 and any("intensity histogram" in p for p in problems)  # past its limit, as the flag says
    assert any("air" in p for p in problems) and any("fat" in p for p in problems)
    own = read_volume(source_for(cases[1]["image"]))
    own_distance, own_excess, own_problems = intensity_check(own, reference)
    assert own_problems == [] and own_distance < distance and own_excess < 1  # a training-like CT passes
