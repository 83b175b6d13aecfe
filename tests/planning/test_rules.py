"""Known answers for each planning rule on hand-made fingerprints (values computed by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from unetr_app.planning import rules


def test_isotropic_spacing_is_the_median():
    spacings = [[1.0, 1.0, 1.0], [0.8, 0.8, 0.8], [1.2, 1.2, 1.2]]
    assert rules.target_spacing(spacings, [[200, 200, 200]] * 3) == [1.0, 1.0, 1.0]


def test_anisotropic_spacing_takes_the_10th_percentile_when_slices_are_few():
    spacings = [[0.8, 0.8, 5.0]] * 9 + [[0.8, 0.8, 3.0]]
    few = [[320, 320, 20]] * 10  # 20 slices x 3 < 320: the coarse axis is treated separately
    assert rules.target_spacing(spacings, few) == [0.8, 0.8, 4.8]  # sorted [3, 5 x 9]: 3 + 0.9 x 2
    many = [[320, 320, 200]] * 10  # 200 x 3 >= 320: the median stays
    assert rules.target_spacing(spacings, many) == [0.8, 0.8, 5.0]
    assert rules.target_spacing([[0.8, 0.8, 5.0]] * 10, few) == [0.8, 0.8, 5.0]  # all alike: 10th percentile = median


def test_ct_clips_to_foreground_percentiles_and_mr_is_z_scored_per_image():
    ct = {"modality": "CT", "percentile_00_5": -57.0, "percentile_99_5": 240.0, "mean": 99.5, "std": 41.0}
    assert rules.normalisation(ct) == {"scheme": "CT", "clip": [-57.0, 240.0], "mean": 99.5, "std": 41.0}
    assert rules.normalisation({**ct, "modality": "MRI"}) == {"scheme": "zscore_per_image"}


def test_dynunet_kernels_and_strides_for_an_anisotropic_spacing():
    topology = rules.pooling([0.8, 0.8, 4.0], [192, 192, 40])
    # z (5x coarser) is not pooled and gets 1-voxel kernels until x/y reach 3.2 mm (within 2x of 4 mm)
    assert topology.strides == [[1, 1, 1], [2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert topology.kernels == [[3, 3, 1], [3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    assert topology.pools == [5, 5, 3] and topology.patch == [192, 192, 40]
    assert rules.pooling([1.0, 1.0, 1.0], [100, 100, 100]).patch == [112, 112, 112]  # 100-50-25-13-7: 4 pools, padded to 16


def test_patch_and_batch_under_two_memory_budgets():
    spacing, median = [1.0, 1.0, 1.0], [300, 300, 300]
    start = rules.initial_patch(spacing, median)
    assert start == [256, 256, 256]
    units = lambda p: rules.unet_units(rules.pooling(spacing, p), 1, 2)  # noqa: E731
    divisor = lambda p: rules.pooling(spacing, p).divisor  # noqa: E731
    big = rules.fit_patch(start, median, units, rules.reference_units(8), divisor)
    small = rules.fit_patch(start, median, units, rules.reference_units(4), divisor)
    assert 2 * units(big) <= rules.reference_units(8) and 2 * units(small) <= rules.reference_units(4)
    assert np.prod(small) < np.prod(big) < 256**3
    # batch: round(reference / estimate x 2), at most 5% of the dataset's voxels, at least 2
    assert rules.batch_size(1e8, 5.6e8, [100, 100, 100], 1e9) == 6
    assert rules.batch_size(1e8, 5.6e8, [100, 100, 100], 6e7) == 3
    assert rules.batch_size(1e8, 5.6e8, [100, 100, 100], 1e7) == 2


def test_median_shape_in_physical_space():
    assert rules.median_shape_at([2.0, 2.0, 4.0], [[1.0, 1.0, 4.0]] * 3, [[200, 100, 30]] * 3) == [100, 50, 30]


def test_cpu_grid_coarsens_until_the_window_covers_a_quarter():
    spacing = rules.coarsen_until_covered([1.0, 1.0, 1.0], [[1.0, 1.0, 1.0]], [[200, 200, 200]], 48**3)
    assert np.prod(rules.median_shape_at(spacing, [[1.0, 1.0, 1.0]], [[200, 200, 200]])) * 0.25 <= 48**3
    assert 2.4 < spacing[0] < 2.7 and spacing[0] == spacing[2]  # (200/s)^3 / 4 <= 48^3: s >= 2.63 / 1.03 step


def test_cpu_grid_grows_the_finer_axes_to_isotropic_before_the_coarse_one():
    # 1.6 x 1.6 x 3 mm over 320 x 320 x 240 mm: nnU-Net's rule (all axes together below 2x) would end near
    # 3.2 x 3.2 x 6 mm; growing x and y first reaches an isotropic grid and then grows it as a whole
    spacings, shapes = [[1.6, 1.6, 3.0]], [[200, 200, 80]]
    spacing = rules.coarsen_until_covered([1.6, 1.6, 3.0], spacings, shapes, 48**3)
    assert np.prod(rules.median_shape_at(spacing, spacings, shapes)) * 0.25 <= 48**3
    assert max(spacing) / min(spacing) < rules.SPACING_STEP  # isotropic to within one step
    assert 3.0 < spacing[2] < 4.2  # the slice axis grew only after x and y caught up (not to 6 mm)
    # a grid that already covers enough is left alone, anisotropic or not
    assert rules.coarsen_until_covered([0.8, 0.8, 4.0], [[0.8, 0.8, 4.0]], [[120, 120, 24]], 48**3) == [0.8, 0.8, 4.0]


@pytest.mark.parametrize("roi, patch, enough", [
    ([96, 96, 96], 16, True),  # UNETR as published: 6x6x6 = 216 tokens
    ([48, 48, 48], 16, False),  # cpu-demo: 27 tokens
    ([32, 32, 32], 16, False),  # tests' tiny window: 2x2x2
    ([48, 48, 48], 8, True),  # Primus-sized tokens: 216
    ([128, 128, 16], 8, True),  # 16x16x2 = 512
    ([256, 256, 8], 8, False),  # one token along z
])
def test_token_rule(roi, patch, enough):
    assert rules.enough_tokens(roi, patch) is enough
