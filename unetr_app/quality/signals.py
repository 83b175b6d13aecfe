"""Per-case quality signals, each a pure function of masks, probabilities or intensities.

Agreement (mean pairwise Dice between ensemble members or mirrored passes) is the strongest
failure detector in Zenk et al.'s comparison of segmentation failure detection (2024); the others
catch what agreement cannot: a confident model on an organ cut by the field of view (border
fraction), a mask whose size no training case had (volume z-score), a scan unlike the training
scans (intensity distribution distance) and a grid the model was never meant to see (geometry).
"""

from __future__ import annotations

import itertools
import math

import numpy as np

EPS = 1e-12


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; two empty masks agree perfectly (1)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def pairwise_agreement(label_maps: list[np.ndarray], values: list[int] | None = None) -> float | None:
    """Mean pairwise Dice between label maps (ensemble members or mirrored passes), averaged over
    the foreground label `values` (default: every nonzero value any map holds); None for one map."""
    if len(label_maps) < 2:
        return None
    if values is None:
        values = sorted({int(v) for m in label_maps for v in np.unique(m)} - {0}) or [1]
    scores = [dice(a == v, b == v) for v in values for a, b in itertools.combinations(label_maps, 2)]
    return float(np.mean(scores))


def foreground_entropy(probabilities: np.ndarray) -> float:
    """Mean entropy (nats) of the class distribution over the voxels predicted as foreground
    (foreground probability at least 1/2), `probabilities` of shape (classes, *spatial); 0 when none.
    A uniform map over C classes gives ln C."""
    p = np.asarray(probabilities, np.float64)
    foreground = (1.0 - p[0]) >= 0.5
    if not foreground.any():
        return 0.0
    q = p[:, foreground]
    return float(-(q * np.log(np.clip(q, EPS, 1.0))).sum(axis=0).mean())


def voxel_entropy(probabilities: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-voxel entropy of the class distribution over `axis`, divided by ln C: 0 where one class
    is certain, 1 where all C are equally likely (float32)."""
    p = np.clip(np.asarray(probabilities, np.float32), EPS, 1.0)
    classes = p.shape[axis]
    return (-(p * np.log(p)).sum(axis=axis) / math.log(max(classes, 2))).astype(np.float32)


def border_fraction(mask: np.ndarray) -> float:
    """Share of the mask's boundary voxels (a 6-neighbour outside the mask or outside the grid)
    that lie on the grid's outer faces: 0 for an organ inside the field of view, high when cut by it."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    padded = np.pad(mask, 1, constant_values=False)
    inner = np.ones_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            inner &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(mask.ndim))]
    boundary = mask & ~inner
    on_face = np.zeros_like(mask)
    for axis in range(mask.ndim):
        index = [slice(None)] * mask.ndim
        for end in (0, -1):
            index[axis] = end
            on_face[tuple(index)] = True
    return float((boundary & on_face).sum() / boundary.sum())


def volume_zscore(volume_ml: float, training_ml: list[float]) -> float | None:
    """How many standard deviations of log volume the mask lies from the training masks of that
    label (log: organ volumes are skewed); None without at least two training volumes."""
    reference = np.log1p(np.asarray([v for v in training_ml if v is not None], np.float64))
    if reference.size < 2:
        return None
    spread = max(float(reference.std(ddof=1)), 0.05)  # near-identical training volumes: about 5% in volume
    return float((math.log1p(max(volume_ml, 0.0)) - reference.mean()) / spread)


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Normalised histogram over fixed `edges`, values beyond them counted in the end bins."""
    counts = np.bincount(np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2), minlength=len(edges) - 1)
    total = counts.sum()
    return counts / total if total else counts.astype(np.float64)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2: 0 identical, 1 disjoint) between two histograms."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / max(p.sum(), EPS), q / max(q.sum(), EPS)
    m = 0.5 * (p + q)

    def kl(a):
        keep = a > 0
        return float((a[keep] * np.log2(a[keep] / m[keep])).sum())

    return math.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0))


def geometry_problems(spacing, axis_directions: np.ndarray, training_spacings: list[list[float]]) -> list[str]:
    """Reasons a scan's grid is suspicious: a spacing far outside the training spacings (a factor 3
    beyond their range, e.g. mm stored as cm), or axes oblique by more than 30 degrees (a header
    whose orientation is probably wrong)."""
    problems = []
    spacing = np.asarray(spacing, np.float64)
    if training_spacings:
        known = np.asarray(training_spacings, np.float64)
        low, high = known.min(axis=0) / 3.0, known.max(axis=0) * 3.0
        for axis, (s, lo, hi) in enumerate(zip(spacing, low, high)):
            if not lo <= s <= hi:
                problems.append(f"spacing {s:.3g} mm on axis {axis} is far from the training spacings ({lo * 3:.3g}-{hi / 3:.3g} mm)")
    directions = np.asarray(axis_directions, np.float64)
    cosines = np.abs(directions / np.maximum(np.linalg.norm(directions, axis=0), EPS)).max(axis=0)
    if cosines.min() < math.cos(math.radians(30)):
        problems.append(f"axes oblique by {math.degrees(math.acos(float(cosines.min()))):.0f} degrees to the patient axes")
    return problems
