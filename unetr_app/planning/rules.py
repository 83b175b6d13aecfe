"""nnU-Net's planning rules (Isensee et al., Nature Methods 2021; v2's planner) as pure functions of
a fingerprint's numbers, plus the token rule this product adds for transformers.

All spacings, shapes and patches are in RAS axis order (x, y, z), as training resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

ANISO_THRESHOLD = 3.0  # an axis this much coarser than the finest is treated separately
REFERENCE_VOLUME = 256**3  # the first patch has this many voxels, shaped by 1/spacing
MIN_FEATURE_EDGE = 4  # pool an axis only while its feature map keeps >= 2 x this many voxels
REFERENCE_UNITS = 5.6e8  # nnU-Net's feature-map estimate that fits 8 GB at batch size 2
REFERENCE_GB = 8.0
REFERENCE_BATCH = 2
MAX_DATASET_SHARE = 0.05  # one batch covers at most 5% of the dataset's voxels
MIN_BATCH = 2
LOWRES_COVERAGE = 0.25  # a patch covering less of the median image than this calls for a coarser grid
SPACING_STEP = 1.03  # nnU-Net's factor per step when coarsening the grid
CT_PERCENTILES = ("percentile_00_5", "percentile_99_5")

# Transformers: a window must hold enough tokens for attention to have something to relate.
MIN_TOKENS = 216  # UNETR's published window: 96^3 voxels in 16^3 patches = a 6x6x6 grid
MIN_TOKENS_PER_AXIS = 2
TOKEN_PATCHES = (8, 16)  # preferred first: Primus (nnU-Net's transformer, 2025) uses 8^3-voxel tokens


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> list[float]:
    """The median spacing per axis; an axis more than 3x coarser than the finest, whose median
    voxel count times 3 is still below the smallest other axis's, takes the 10th percentile of its
    spacings instead (but never finer than the other axes)."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, axis=0)
    size = np.median(shapes, axis=0)
    coarse = int(np.argmax(target))
    others = [a for a in range(3) if a != coarse]
    anisotropic = target[coarse] > ANISO_THRESHOLD * min(target[others])
    few_slices = size[coarse] * ANISO_THRESHOLD < min(size[others])
    if anisotropic and few_slices:
        target[coarse] = max(float(np.percentile(spacings[:, coarse], 10)), max(target[others]) + 1e-5)
    return [round(float(s), 5) for s in target]


def normalisation(channel: dict) -> dict:
    """CT: clip to the foreground's 0.5 / 99.5 percentiles (pooled over cases), then the foreground
    mean and std; every other modality: z-score per image."""
    if channel["modality"] == "CT":
        low, high = (float(channel[k]) for k in CT_PERCENTILES)
        return {"scheme": "CT", "clip": [low, high], "mean": float(channel["mean"]), "std": float(channel["std"])}
    return {"scheme": "zscore_per_image"}


def median_shape_at(spacing: Sequence[float], spacings: np.ndarray, shapes: np.ndarray) -> list[int]:
    """The median image's shape once resampled to `spacing` (from each case's physical extent)."""
    extent = np.asarray(shapes, float) * np.asarray(spacings, float)
    return [int(round(v)) for v in np.median(extent / np.asarray(spacing, float), axis=0)]


def initial_patch(spacing: Sequence[float], median_shape: Sequence[int], volume: float = REFERENCE_VOLUME) -> list[int]:
    """A patch of `volume` voxels shaped like a cube in millimetres, clipped to the median shape."""
    inverse = 1.0 / np.asarray(spacing, float)
    shaped = inverse * (volume / np.prod(inverse)) ** (1 / 3)
    return [int(min(round(p), m)) for p, m in zip(shaped, median_shape)]


@dataclass(frozen=True)
class Topology:
    """A U-Net's shape for a patch: per level, the conv kernel and the stride into it."""

    kernels: list[list[int]]
    strides: list[list[int]]
    patch: list[int]  # padded to a multiple of 2^(pools per axis)

    @property
    def pools(self) -> list[int]:
        return [sum(1 for s in self.strides if s[a] == 2) for a in range(len(self.patch))]

    @property
    def divisor(self) -> list[int]:
        return [2**p for p in self.pools]


def pooling(spacing: Sequence[float], patch: Sequence[int], min_edge: int = MIN_FEATURE_EDGE) -> Topology:
    """nnU-Net's topology: pool an axis while its feature map is >= 2 * min_edge voxels and its
    current spacing is within 2x of the finest; a lone axis pools only while >= 3 * min_edge. An
    axis gets 3-voxel kernels once its spacing is within 2x of the finest (1 before that)."""
    spacing, size = [float(s) for s in spacing], [float(p) for p in patch]
    kernel = [1] * len(spacing)
    kernels, strides = [], [[1] * len(spacing)]
    while True:
        finest = min(spacing)
        axes = [a for a in range(len(size)) if size[a] >= 2 * min_edge and spacing[a] / finest < 2]
        if not axes or (len(axes) == 1 and size[axes[0]] < 3 * min_edge):
            break
        kernel = [3 if k == 3 or spacing[a] / finest < 2 else 1 for a, k in enumerate(kernel)]
        kernels.append(list(kernel))
        strides.append([2 if a in axes else 1 for a in range(len(size))])
        for a in axes:
            spacing[a] *= 2
            size[a] = math.ceil(size[a] / 2)
    kernels.append([3] * len(spacing))
    pools = [sum(1 for s in strides if s[a] == 2) for a in range(len(size))]
    padded = [int(math.ceil(p / 2**n) * 2**n) for p, n in zip(patch, pools)]
    return Topology(kernels, strides, padded)


def unet_filters(levels: int, base: int = 32, max_filters: int = 320) -> list[int]:
    return [min(base * 2**i, max_filters) for i in range(levels)]


def unet_units(topology: Topology, in_channels: int, out_channels: int, base: int = 32, max_filters: int = 320) -> float:
    """nnU-Net's memory estimate for one sample: the summed size of every conv's output feature map
    (two convs per encoder level, a transposed conv and two convs per decoder level, the head)."""
    filters = unet_filters(len(topology.strides), base, max_filters)
    voxels, size = [], np.asarray(topology.patch, float)
    for stride in topology.strides:
        size = np.ceil(size / np.asarray(stride))
        voxels.append(float(np.prod(size)))
    encoder = sum(2 * f * v for f, v in zip(filters, voxels))
    decoder = sum(3 * f * v for f, v in zip(filters[:-1], voxels[:-1]))
    return in_channels * voxels[0] + encoder + decoder + out_channels * voxels[0]


def unetr_units(roi: Sequence[int], patch: int, in_channels: int, out_channels: int, feature_size: int, hidden: int,
                mlp: int, heads: int, layers: int = 12) -> float:
    """The same estimate for UNETR: per transformer block the token activations (attention
    projections, norms and the MLP) and the attention matrices (heads x tokens^2, scores and
    softmax), plus the CNN decoder's feature maps (about 7 F x voxels at full resolution, 2F, 4F, 8F
    at 1/2, 1/4, 1/8)."""
    voxels, tokens = float(np.prod(roi)), token_count(roi, patch)
    blocks = layers * (tokens * (6 * hidden + 2 * mlp) + 2 * heads * tokens**2)
    decoder = sum(7 * feature_size * 2**level * voxels / 8**level for level in range(4))
    return in_channels * voxels + blocks + decoder + out_channels * voxels


def reference_units(memory_gb: float) -> float:
    """The estimate a batch of REFERENCE_BATCH may reach on a device with `memory_gb`."""
    return REFERENCE_UNITS * memory_gb / REFERENCE_GB


def fit_patch(patch: Sequence[int], median_shape: Sequence[int], units: Callable[[list[int]], float], budget: float,
              divisor: Callable[[list[int]], list[int]]) -> list[int]:
    """nnU-Net's shrinking: while a batch of 2 would exceed the budget, take one divisibility step
    off the axis whose patch is largest relative to the median image."""
    patch = [int(p) for p in patch]
    while REFERENCE_BATCH * units(patch) > budget:
        step = divisor(patch)
        ratios = [p / m if p > s else 0.0 for p, m, s in zip(patch, median_shape, step)]
        axis = int(np.argmax(ratios))
        if ratios[axis] == 0.0:
            break  # every axis is down to one divisibility step
        patch[axis] -= step[axis]
    return patch


def batch_size(units_per_sample: float, budget: float, patch: Sequence[int], dataset_voxels: float) -> int:
    """round(reference / estimate x 2), at most 5% of the dataset's voxels per batch, at least 2."""
    by_memory = round(budget / (units_per_sample * REFERENCE_BATCH) * REFERENCE_BATCH)
    by_dataset = round(dataset_voxels * MAX_DATASET_SHARE / float(np.prod(patch)))
    return max(min(by_memory, by_dataset), MIN_BATCH)


def coarsen_until_covered(spacing: Sequence[float], spacings: np.ndarray, shapes: np.ndarray, window_voxels: float,
                          coverage: float = LOWRES_COVERAGE) -> list[float]:
    """A coarser grid, grown 3% a step, until a window of `window_voxels` covers `coverage` of the
    median image: nnU-Net's 3d_lowres rule, except that the finer axes grow first until the grid is
    isotropic, and only then all together. nnU-Net grows all axes together once none is more than
    2x finer than the coarsest; with a window fixed in voxels (a CPU's compute budget) that stretches
    an already coarse slice axis, and the window's extent along it, for nothing (1.6 x 1.6 x 3 mm
    would end near 3.2 x 3.2 x 6 mm, where growing x and y first ends near 4 mm isotropic)."""
    spacing = np.asarray(spacing, float)
    while np.prod(median_shape_at(spacing, spacings, shapes)) * coverage > window_voxels:
        fine = spacing * SPACING_STEP <= spacing.max()
        spacing = np.where(fine, spacing * SPACING_STEP, spacing) if fine.any() else spacing * SPACING_STEP
    return [round(float(s), 4) for s in spacing]


def token_count(roi: Sequence[int], patch: int) -> int:
    return int(np.prod([r // patch for r in roi]))


def enough_tokens(roi: Sequence[int], patch: int) -> bool:
    """The token rule: a window holds at least MIN_TOKENS tokens and MIN_TOKENS_PER_AXIS per axis."""
    return token_count(roi, patch) >= MIN_TOKENS and all(r // patch >= MIN_TOKENS_PER_AXIS for r in roi)


def round_to(patch: Sequence[int], multiple: int, ceiling: Sequence[int] | None = None) -> list[int]:
    """Each axis to the nearest multiple (at least one), not above `ceiling` rounded up."""
    out = []
    for a, p in enumerate(patch):
        value = max(multiple, int(round(p / multiple)) * multiple)
        if ceiling is not None:
            value = min(value, max(multiple, int(math.ceil(ceiling[a] / multiple)) * multiple))
        out.append(value)
    return out


def window_for(spacing: Sequence[float], median_shape: Sequence[int], voxels: float, multiple: int) -> list[int]:
    """A window of about `voxels` voxels shaped like a cube in mm, clipped to the median image,
    each axis a multiple of `multiple` (a ViT's patch, a U-Net's 2^pools)."""
    return round_to(initial_patch(spacing, median_shape, voxels), multiple, ceiling=median_shape)
