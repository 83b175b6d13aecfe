"""From signals to a verdict: flags, a predicted Dice and a risk per case.

The quality model is a ridge regression of Dice on the standardised signals, fitted on a run's
cross-validation predictions (cases whose Dice is known) and kept as RUN/qc_model.json. Two are
fitted, with and without the agreement signal, because agreement exists only when there are
several members or mirrored passes. A flag (an input or mask unlike anything in training) means the
regression is extrapolating: the case's risk is mapped into [FLAG_RISK, 1] and its predicted Dice
into [0, 1 - FLAG_RISK], so flagged cases come first in the queue, ordered by how far outside the
flag limits they lie (or by the regression's risk, where that is higher). Without a fitted model,
predicted Dice is the agreement (when there is one) and risk the worst of the normalised signals.
"""

from __future__ import annotations

import math

import numpy as np

QC_MODEL_NAME = "qc_model.json"
FEATURES = ("agreement", "entropy", "border_fraction", "volume_z", "intensity_distance")
RIDGE = 1.0  # on standardised signals: a handful of validation cases must not give wild slopes
# A signal is used at most this many of the validation cases' SDs from their mean: a few validation
# cases can share an entropy to 1e-3, and a hard case 300 SDs away would drive the line far past
# anything it was fitted on (such a case is for the flags to catch, not the regression).
Z_LIMIT = 3.0
FLAG_RISK = 0.9
LIMITS = {"border_fraction": 0.2, "volume_z": 4.0, "intensity_distance_over_training": 2.0, "intensity_distance": 0.25}
MIN_FIT_CASES = 4
# mirrored passes whose validation Dice is this far below one unmirrored pass's are not worth their
# 8x compute (a model that rarely saw flipped scans in training): the gap is larger than rounding
MIRRORING_MARGIN = 0.005


def mirroring_loss(model: dict | None) -> tuple[float, float] | None:
    """(single-pass, mirrored) validation Dice when `unetr qc` found mirroring lowers it, else None."""
    record = (model or {}).get("mirroring")
    if not record or record["mirrored_dice"] >= record["single_pass_dice"] - MIRRORING_MARGIN:
        return None
    return record["single_pass_dice"], record["mirrored_dice"]


def flags(signals: dict, reference_distances: float | None = None) -> list[str]:
    """Reasons the case lies outside what the model (and the quality model) knows."""
    reasons = list(signals.get("intensity_problems") or [])
    reasons += list(signals.get("geometry_problems") or [])
    border = signals.get("border_fraction")
    if border is not None and border > LIMITS["border_fraction"]:
        reasons.append(f"{border:.0%} of the mask's boundary lies on the scan's edge (organ cut by the field of view?)")
    z = signals.get("volume_z")
    if z is not None and abs(z) > LIMITS["volume_z"]:
        reasons.append(f"mask volume {signals.get('volume_ml', 0):.4g} mL is {abs(z):.1f} SD {'above' if z > 0 else 'below'} the training masks'")
    return reasons


def flag_severity(signals: dict) -> float:
    """How far outside the flag limits a flagged case lies: the largest signal over its limit
    (histogram distance, |volume z|, border fraction), at least 1 (a flag from a check without a
    number: air or fat shares, geometry)."""
    ratios = [signals.get("intensity_excess") or 0.0, abs(signals.get("volume_z") or 0.0) / LIMITS["volume_z"],
              (signals.get("border_fraction") or 0.0) / LIMITS["border_fraction"]]
    return max(1.0, *ratios)


def _row(signals: dict, features: tuple[str, ...]) -> np.ndarray:
    values = []
    for name in features:
        value = signals.get(name)
        values.append(abs(value) if name == "volume_z" else value)
    return np.asarray(values, np.float64)


def fit_quality_model(signals: list[dict], dice: list[float], single_pass: tuple[list[dict], list[float]] | None = None) -> dict | None:
    """Ridge fits of Dice on the signals (one per usable feature set); None with too few cases.

    `single_pass` (the same cases' signals and Dice from one unmirrored pass) gives the fit
    without agreement: a case has no agreement signal exactly when it was predicted in one pass,
    so that fit learns from such masks rather than from mirrored ones."""
    if len(signals) < MIN_FIT_CASES:
        return None
    without_agreement = tuple(f for f in FEATURES if f != "agreement")
    sources = [(FEATURES, signals, dice), (without_agreement, *(single_pass or (signals, dice)))]
    fits = [fit for features, rows, y in sources if (fit := _ridge(features, rows, y)) is not None]
    if not fits:
        return None
    y = np.asarray(dice, np.float64)
    return {"kind": "ridge", "cases": len(signals), "dice_mean": float(y.mean()), "dice_min": float(y.min()), "fits": fits}


def _ridge(features: tuple[str, ...], signals: list[dict], dice: list[float]) -> dict | None:
    if any(s.get(f) is None for s in signals for f in features):
        return None
    y = np.asarray(dice, np.float64)
    X = np.stack([_row(s, features) for s in signals])
    mean, std = X.mean(axis=0), X.std(axis=0)
    std = np.where(std > 1e-9, std, 1.0)
    Z = (X - mean) / std
    coef = np.linalg.solve(Z.T @ Z + RIDGE * np.eye(len(features)), Z.T @ (y - y.mean()))
    return {"features": list(features), "mean": mean.tolist(), "std": std.tolist(), "coef": coef.tolist(), "intercept": float(y.mean())}


def predict_dice(model: dict, signals: dict) -> float | None:
    """The fit whose signals are all present (the fullest first), clipped to [0, 1]."""
    for fit in model["fits"]:
        if all(signals.get(f) is not None for f in fit["features"]):
            z = np.clip((_row(signals, tuple(fit["features"])) - np.asarray(fit["mean"])) / np.asarray(fit["std"]), -Z_LIMIT, Z_LIMIT)
            return float(np.clip(fit["intercept"] + z @ np.asarray(fit["coef"]), 0.0, 1.0))
    return None


def assess(signals: dict, model: dict | None, classes: int) -> dict:
    """{predicted_dice, risk, flag} for one case's signals."""
    reasons = flags(signals)
    if model is not None and (estimate := predict_dice(model, signals)) is not None:
        predicted = estimate
        risk = 1.0 - estimate
    else:
        predicted = signals.get("agreement")
        risk = fallback_risk(signals, classes)
    if reasons:  # above every unflagged case; among flagged ones, the further outside the riskier
        share = max(float(np.clip(risk, 0, 1)), 1.0 - 1.0 / flag_severity(signals))
        risk = FLAG_RISK + (1.0 - FLAG_RISK) * share
        predicted = None if predicted is None else (1.0 - FLAG_RISK) * (1.0 - share)
    return {"predicted_dice": None if predicted is None else round(predicted, 4), "risk": round(float(np.clip(risk, 0, 1)), 4), "flag": "; ".join(reasons)}


def fallback_risk(signals: dict, classes: int) -> float:
    """The worst of the signals, each scaled to 0..1: disagreement, entropy / ln C, border fraction,
    |volume z| / (2 x its flag limit)."""
    parts = [signals.get("entropy", 0.0) / math.log(max(classes, 2)), signals.get("border_fraction") or 0.0]
    if signals.get("agreement") is not None:
        parts.append(1.0 - signals["agreement"])
    if signals.get("volume_z") is not None:
        parts.append(min(1.0, abs(signals["volume_z"]) / (2 * LIMITS["volume_z"])))
    return float(max(parts))
