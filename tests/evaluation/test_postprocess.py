"""Post-processing decided on validation predictions: kept when it helps, dropped when it hurts."""

from __future__ import annotations

import numpy as np

from unetr_app.evaluation.postprocess import Postprocessing, ValidationCase, decide_postprocessing

LABELS = {"background": 0, "spleen": 1}
SPACING = (2.0, 2.0, 2.0)  # 8 mm3 per voxel


def _box(shape, lo, hi, value=1, into=None):
    out = np.zeros(shape, np.uint8) if into is None else into.copy()
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = value
    return out


def organ(shape=(40, 40, 40)):
    return _box(shape, (10, 10, 10), (22, 22, 22))  # 1728 voxels, one piece


def test_stray_blobs_are_removed_when_that_helps():
    reference = organ()
    prediction = _box(reference.shape, (32, 32, 32), (35, 35, 35), into=reference)  # + a 27-voxel blob far away
    cases = [ValidationCase(f"c{i}", prediction, reference, SPACING) for i in range(3)]
    steps, trials = decide_postprocessing(cases, LABELS, min_volumes_mm3=(100.0,))
    assert steps.largest_component == (1,)
    assert steps.min_volume_mm3 == {}  # nothing left to remove once the largest component is kept: no gain, dropped
    assert [t["kept"] for t in trials] == [True, False]
    assert trials[0]["dice_after"] == 1.0 > trials[0]["dice_before"]
    np.testing.assert_array_equal(steps.apply(prediction, SPACING), reference)


def test_largest_component_is_dropped_when_the_organ_has_two_pieces():
    reference = _box((40, 40, 40), (30, 30, 30), (36, 36, 36), into=organ())  # a true second piece, 216 voxels = 1728 mm3
    prediction = reference.copy()
    prediction[21, 21, 21] = 0  # not perfect, but every piece is found
    cases = [ValidationCase("c", prediction, reference, SPACING)]
    steps, trials = decide_postprocessing(cases, LABELS, min_volumes_mm3=(10000.0,))
    assert steps.is_identity
    assert not any(t["kept"] for t in trials)
    assert all(t["dice_after"] < t["dice_before"] for t in trials)  # both hurt: each drops the true second piece


def test_the_best_helping_volume_threshold_is_chosen():
    reference = _box((40, 40, 40), (30, 30, 30), (36, 36, 36), into=organ())  # second true piece: 1728 mm3
    prediction = _box(reference.shape, (2, 30, 2), (5, 33, 5), into=reference)  # false blob: 27 voxels = 216 mm3
    cases = [ValidationCase("c", prediction, reference, SPACING)]
    steps, trials = decide_postprocessing(cases, LABELS, min_volumes_mm3=(100.0, 1000.0, 10000.0))
    assert steps.largest_component == ()  # would drop the true second piece
    assert steps.min_volume_mm3 == {1: 1000.0}  # removes the blob (216 mm3) and keeps the piece (1728 mm3)
    assert [t["kept"] for t in trials] == [False, False, True, False]


def test_apply_measures_volumes_in_mm3():
    labels = _box((20, 20, 20), (2, 2, 2), (4, 4, 4))  # 8 voxels
    steps = Postprocessing(min_volume_mm3={1: 100.0})
    assert steps.apply(labels, (2.0, 2.0, 2.0)).sum() == 0  # 64 mm3 < 100: removed
    assert steps.apply(labels, (3.0, 3.0, 3.0)).sum() == 8  # 216 mm3: kept
    assert Postprocessing.from_dict(steps.to_dict()) == steps
    two_labels = _box((20, 20, 20), (10, 10, 10), (12, 12, 12), value=2, into=labels)
    kept = Postprocessing(largest_component=(1,)).apply(two_labels, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(kept, two_labels)  # other labels are never touched


def test_largest_component_spares_organ_sized_pieces_as_nnunet_v1_guards():
    """Decided on cases with a stray blob, 'largest component' is guarded by the smallest largest
    component seen (the organ): on a new scan where a false positive outgrows the organ, the organ stays."""
    reference = organ()
    with_blob = _box(reference.shape, (32, 32, 32), (35, 35, 35), into=reference)  # + a 27-voxel stray blob
    steps, _ = decide_postprocessing([ValidationCase("c", with_blob, reference, SPACING)], LABELS, min_volumes_mm3=())
    assert steps.largest_component == (1,)
    assert steps.largest_component_guard_mm3 == {1: 1728 * 8.0}  # the organ's predicted volume, in mm3
    new_scan = _box(reference.shape, (0, 25, 0), (14, 40, 40), into=reference)  # a false positive larger than the organ
    new_scan = _box(reference.shape, (32, 2, 32), (34, 4, 34), into=new_scan)  # and an 8-voxel stray blob
    kept = steps.apply(new_scan, SPACING)
    assert (kept[10:22, 10:22, 10:22] == 1).all()  # the organ survives
    assert kept[32:34, 2:4, 32:34].sum() == 0  # the small blob does not
    assert kept[0:14, 25:40, 0:40].all()  # the largest component (the false positive) is kept, as before
    unguarded = Postprocessing.from_dict({"largest_component": [1], "min_volume_mm3": {}})  # a decision written before the guard
    assert unguarded.apply(new_scan, SPACING)[10:22, 10:22, 10:22].sum() == 0  # applies as it was measured
    assert Postprocessing.from_dict(steps.to_dict()) == steps
