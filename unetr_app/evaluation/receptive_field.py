"""The effective receptive field of a segmentation network (Luo et al., NeurIPS 2016, as the
SegFormer paper shows it): the magnitude of the gradient of the central output voxel's foreground
logits with respect to the input, averaged over scans. A convolutional network's is a compact blob
that grows slowly with depth; self-attention can spread it over the whole window from the first layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def center_window(image: torch.Tensor, roi_size) -> torch.Tensor:
    """The `roi_size` window around the centre of a (C, *spatial) image, padded with its minimum: (1, C, *roi)."""
    pads, slices = [], [slice(None)]
    for size, roi in zip(image.shape[1:], roi_size):
        start = (size - roi) // 2
        slices.append(slice(max(start, 0), max(start, 0) + roi))
        short = max(roi - size, 0)
        pads.append((short // 2, short - short // 2))
    window = image[tuple(slices)]
    flat = [amount for pair in reversed(pads) for amount in pair]  # F.pad wants the last axis first
    return F.pad(window, flat, value=float(image.min()))[None]


def effective_receptive_field(model: nn.Module, images: Iterable[torch.Tensor], roi_size) -> np.ndarray:
    """Mean |d(sum of foreground logits at the centre)/d input| over `images`, scaled to max 1: shape `roi_size`."""
    model.eval()
    total = None
    centre = tuple(s // 2 for s in roi_size)
    for image in images:
        window = center_window(image.float(), roi_size).requires_grad_(True)
        logits = model(window)  # (1, classes, *roi)
        logits[(0, slice(1, None), *centre)].sum().backward()
        grad = window.grad.abs().sum(dim=1)[0].detach()
        total = grad if total is None else total + grad
        model.zero_grad(set_to_none=True)
    if total is None:
        raise ValueError("no images to measure the receptive field on")
    return (total / total.max().clamp_min(1e-12)).numpy()


def radius_of_mass(erf: np.ndarray, spacing, fraction: float = 0.5) -> float:
    """Radius (mm) of the sphere around the centre holding `fraction` of the gradient mass."""
    grid = np.meshgrid(*[(np.arange(n) - n // 2) * s for n, s in zip(erf.shape, spacing)], indexing="ij")
    distance = np.sqrt(sum(g**2 for g in grid)).ravel()
    order = np.argsort(distance)
    cumulative = np.cumsum(erf.ravel()[order])
    return float(distance[order][np.searchsorted(cumulative, fraction * cumulative[-1])])


def plot_receptive_field(erf: np.ndarray, spacing, title: str, path: Path) -> Path:
    """Three central slices (axial, coronal, sagittal) of the ERF, square-root scaled so the tails show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre = [n // 2 for n in erf.shape]
    views = (("axial", erf[:, :, centre[2]], (spacing[0], spacing[1])), ("coronal", erf[:, centre[1], :], (spacing[0], spacing[2])), ("sagittal", erf[centre[0], :, :], (spacing[1], spacing[2])))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, (name, plane, (sx, sy)) in zip(axes, views):
        extent = (0, plane.shape[0] * sx, 0, plane.shape[1] * sy)
        ax.imshow(np.sqrt(plane.T), origin="lower", cmap="magma", vmin=0, vmax=1, extent=extent)
        ax.set(title=name, xlabel="mm", yticks=[])
    r50 = radius_of_mass(erf, spacing)
    fig.suptitle(f"{title}: effective receptive field (sqrt |gradient|; 50% of mass within {r50:.0f} mm)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
