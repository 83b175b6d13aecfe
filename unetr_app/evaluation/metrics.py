"""Dice, Hausdorff distance and normalized surface Dice for one label of one case, in millimetres.

MONAI computes them; this module only fixes what MONAI leaves as NaN: two empty masks agree
perfectly (Dice 1, distance 0, surface Dice 1), and a distance to an empty mask is undefined (None).
`auroc` is MONAI's ROC AUC, None where only one kind of case is present.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_roc_auc, compute_surface_dice


def label_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    tolerance_mm: float = 2.0,
    percentile: float | None = 95,
) -> dict[str, float | None]:
    """Metrics of the binary masks `pred` and `ref` (same grid; `spacing` in mm per axis)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "hd95_mm": 0.0, "nsd": 1.0}
    if not pred.any() or not ref.any():
        return {"dice": 0.0, "hd95_mm": None, "nsd": 0.0}
    y_pred = torch.from_numpy(pred)[None, None].float()  # (batch 1, class 1, *spatial)
    y = torch.from_numpy(ref)[None, None].float()
    spacing = [float(s) for s in spacing]
    dice = compute_dice(y_pred, y, include_background=True)
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own internal use of a deprecated argument
        warnings.simplefilter("ignore", FutureWarning)
        distance = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=percentile, spacing=spacing)
        nsd = compute_surface_dice(y_pred, y, class_thresholds=[tolerance_mm], include_background=True, spacing=spacing)
    return {"dice": _number(dice), "hd95_mm": _number(distance), "nsd": _number(nsd)}


def case_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing, labels: dict[str, int], tolerance_mm: float = 2.0
) -> dict[str, dict[str, float | None]]:
    """`label_metrics` for every foreground label {name: value} of a label map."""
    return {
        name: label_metrics(pred == value, ref == value, spacing, tolerance_mm)
        for name, value in sorted(labels.items(), key=lambda item: item[1])
        if value != 0
    }


def _number(value: torch.Tensor) -> float | None:
    number = float(value.reshape(-1)[0])
    return None if math.isnan(number) or math.isinf(number) else number


def auroc(scores, positive) -> float | None:
    """P(score of a positive > score of a negative), ties counted half; None without both kinds."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return float(compute_roc_auc(torch.from_numpy(scores), torch.from_numpy(positive.astype(np.int64))))
