"""A PNG per case for a quick look: the axial slice through the largest predicted region, with the
mask outlined on the scan (radiological convention: the patient's right on the left)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from unetr_app.io.atomic import atomic_path


def axial_slice_through_largest_region(mask: np.ndarray) -> int:
    """Index along the last (superior) axis of an RAS-ordered mask; the middle slice if empty."""
    components, count = ndimage.label(mask > 0)
    if count == 0:
        return mask.shape[2] // 2
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (1 + int(np.argmax(sizes)))
    per_slice = largest.sum(axis=(0, 1))
    return int(np.argmax(per_slice))


def write_preview(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    target: Path,
    title: str,
    window: tuple[float, float] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    # reorder voxels to RAS so the last axis is inferior -> superior whatever the input's orientation
    ornt = nib.orientations.io_orientation(affine)
    image = nib.orientations.apply_orientation(image, ornt)
    labels = nib.orientations.apply_orientation(labels, ornt)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)[ornt[:, 0].astype(int)]
    z = axial_slice_through_largest_region(labels)
    low, high = window if window is not None else np.percentile(image, (1, 99))

    figure, axes = plt.subplots(figsize=(6, 6 * image.shape[1] * spacing[1] / (image.shape[0] * spacing[0])))
    axes.imshow(image[:, :, z].T, cmap="gray", vmin=low, vmax=high, origin="lower", aspect=spacing[1] / spacing[0])
    for value in np.unique(labels[:, :, z]):
        if value:
            axes.contour((labels[:, :, z] == value).T, levels=[0.5], colors=[plt.cm.tab10(int(value) % 10)], linewidths=1.2)
    axes.invert_xaxis()
    axes.set_title(f"{title}  (axial slice {z})", fontsize=9)
    axes.axis("off")
    with atomic_path(target) as tmp:
        figure.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(figure)
