"""What frozen patch tokens know: a linear probe of each token's label occupancy.

The cheapest test of what pretraining learned (the linear probe of DINO and MAE, per token as a
segmentation needs it): freeze an encoder, take its patch tokens on labelled scans, and fit a
ridge regression from each token to the fraction of its patch's voxels that carry the label.
Fitted on some scans and scored on others, the probe gives

- `r2`: the held-out coefficient of determination of the occupancy (0 = no better than the fit
  scans' mean occupancy; it can go below 0);
- `auroc`: how well the probe's output ranks the patches mostly inside the label (occupancy at
  least `MAJORITY`) above the rest.

Features are standardised with the fit tokens' mean and spread; the ridge penalty is chosen on the
fit tokens alone, from `PENALTIES`: by leaving one fit case out at a time when the tokens say which
case they come from (tokens of one scan are alike, so a cross-validation that mixes them picks too
small a penalty for a new scan), otherwise by generalised cross-validation (Golub, Heath and Wahba
1979).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from unetr_app.evaluation.metrics import auroc

MAJORITY = 0.5
PENALTIES = tuple(10.0 ** k for k in range(-3, 6))


def patch_occupancy(mask: torch.Tensor, patch: Sequence[int]) -> torch.Tensor:
    """(B, 1, *size) 0/1 mask -> (B, N) fraction of each patch's voxels that are 1, in the token
    order of a patch-embedding convolution (row-major over the patch grid)."""
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[len(patch)]
    return pool(mask.float(), kernel_size=tuple(patch), stride=tuple(patch)).flatten(1)


@dataclass
class RidgeProbe:
    """y = ((x - mean) / scale) @ coef + intercept."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    penalty: float
    gcv: float = math.nan  # its generalised cross-validation score on the fit data

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept


def fit_ridge(features: np.ndarray, targets: np.ndarray, penalties: Sequence[float] = PENALTIES,
              groups: Sequence | None = None) -> RidgeProbe:
    """Ridge regression on standardised features. The penalty: the least squared error over
    leave-one-group-out folds when `groups` (one per row) holds two or more groups, otherwise the
    least GCV(l) = n * RSS(l) / (n - df(l))^2 with df(l) = sum s^2 / (s^2 + l)."""
    x, y = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) < 2:
        raise ValueError(f"need (n, d) features and n >= 2 targets, got {x.shape} and {y.shape}")
    groups = None if groups is None else np.asarray(groups)
    if groups is not None and len(np.unique(groups)) >= 2:
        errors = np.zeros(len(penalties))
        for group in np.unique(groups):
            held = groups == group
            fold = _ridge_path(x[~held], y[~held], penalties)
            errors += [float(((probe.predict(x[held]) - y[held]) ** 2).sum()) for probe in fold]
        penalty = penalties[int(np.argmin(errors))]
    else:
        penalty = None
    path = _ridge_path(x, y, penalties if penalty is None else [penalty])
    return min(path, key=lambda probe: probe.gcv) if penalty is None else path[0]


def _ridge_path(x: np.ndarray, y: np.ndarray, penalties: Sequence[float]) -> list[RidgeProbe]:
    """One standardisation and one SVD, a probe (with its GCV score) per penalty."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant feature stays 0 after centring
    z = (x - mean) / scale
    intercept = float(y.mean())
    centred = y - intercept
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    projected = u.T @ centred
    probes = []
    for penalty in penalties:
        shrink = s**2 / (s**2 + penalty)
        residual = centred - u @ (shrink * projected)
        gcv = len(y) * float(residual @ residual) / max(len(y) - float(shrink.sum()), 1e-12) ** 2
        coef = vt.T @ (s / (s**2 + penalty) * projected)
        probes.append(RidgeProbe(mean, scale, coef, intercept, float(penalty), gcv))
    return probes


def r2_score(predicted: np.ndarray, measured: np.ndarray, reference_mean: float) -> float:
    """1 - SS_res / SS_tot, with SS_tot about `reference_mean` (the fit set's mean, so that a probe
    that predicts the training mean scores exactly 0 on any test set)."""
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    total = float(((measured - reference_mean) ** 2).sum())
    return 1.0 - float(((measured - predicted) ** 2).sum()) / total if total > 0 else math.nan


def probe_scores(fit_features: np.ndarray, fit_occupancy: np.ndarray, test_features: np.ndarray,
                 test_occupancy: np.ndarray, fit_groups: Sequence | None = None) -> dict:
    """Fit on one set of tokens (`fit_groups`: the case of each), score on another:
    {r2, auroc, penalty, fit_tokens, test_tokens, test_positive}."""
    probe = fit_ridge(fit_features, fit_occupancy, groups=fit_groups)
    predicted = probe.predict(test_features)
    positive = np.asarray(test_occupancy) >= MAJORITY
    return {"r2": r2_score(predicted, test_occupancy, probe.intercept), "auroc": auroc(predicted, positive),
            "penalty": probe.penalty, "fit_tokens": int(len(fit_occupancy)), "test_tokens": int(len(test_occupancy)),
            "test_positive": int(positive.sum())}
