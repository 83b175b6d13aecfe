"""What the widget reports about a mask: label volumes, Dice against a reference, the slice to show.

Masks of a CT are tens of millions of voxels and these run on every case change and paint stroke,
so each is one pass over the mask where it can be.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_counts(labels: np.ndarray) -> dict[int, int]:
    """{value: voxel count} of every value present, background included."""
    if labels.dtype == np.uint8:  # the usual mask: one bincount pass, no sort
        counts = np.bincount(labels.reshape(-1), minlength=256)
        return {int(v): int(counts[v]) for v in np.flatnonzero(counts)}
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def label_volumes_ml(counts: dict[int, int], voxel_ml: float, values) -> dict[int, float]:
    return {int(value): counts.get(int(value), 0) * voxel_ml for value in values}


def dice(prediction: np.ndarray, reference: np.ndarray, value: int) -> float | None:
    """Dice of one label; None when the label is in neither mask (nothing to compare)."""
    pred, ref = prediction == value, reference == value
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return None
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def largest_region_slice(labels: np.ndarray) -> int | None:
    """Index along axis 0 of the slice with the most voxels of the largest connected foreground
    region; None for an empty mask. Labels only the foreground's bounding box."""
    foreground = labels > 0
    box = _bounding_box(foreground)
    if box is None:
        return None
    regions, _count = ndimage.label(foreground[box])
    sizes = np.bincount(regions.reshape(-1))
    sizes[0] = 0
    largest = regions == int(np.argmax(sizes))
    return box[0].start + int(np.argmax(largest.sum(axis=(1, 2))))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)
