"""What the widget reports about a mask: label volumes, Dice against a reference, the slice to show."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def label_volumes_ml(labels: np.ndarray, voxel_ml: float, values) -> dict[int, float]:
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=max(values, default=0) + 1)
    return {int(value): float(counts[value]) * voxel_ml for value in values}


def dice(prediction: np.ndarray, reference: np.ndarray, value: int) -> float | None:
    """Dice of one label; None when the label is in neither mask (nothing to compare)."""
    pred, ref = prediction == value, reference == value
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def largest_region_slice(labels: np.ndarray) -> int | None:
    """Index along axis 0 of the slice with the most voxels of the largest connected foreground
    region; None for an empty mask."""
    regions, count = ndimage.label(labels > 0)
    if count == 0:
        return None
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    largest = regions == int(np.argmax(sizes))
    return int(np.argmax(largest.sum(axis=(1, 2))))
