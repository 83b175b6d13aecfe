"""Judging the quality estimates against measured Dice: rank correlation, risk-coverage and AUROC.

The risk-coverage curve (as in Zenk et al. 2024): keep the cases of lowest risk first; at coverage
k/n the selective risk is the mean (1 - Dice) of the k kept cases; AURC is its mean over k. A
perfect ranking has the smallest AURC the Dice values allow; a random one about mean(1 - Dice).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from unetr_app.errors import InputError
from unetr_app.evaluation.metrics import auroc

FAILURE_DICE = 0.5


def spearman(predicted, measured) -> float | None:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(predicted) < 3 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return None
    return float(spearmanr(predicted, measured).statistic)


def risk_coverage(risk, measured) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, selective risk) with cases kept in increasing risk (ties in input order)."""
    order = np.argsort(np.asarray(risk, float), kind="stable")
    loss = 1.0 - np.asarray(measured, float)[order]
    k = np.arange(1, len(loss) + 1)
    return k / len(loss), np.cumsum(loss) / k


def aurc(risk, measured) -> float:
    return float(risk_coverage(risk, measured)[1].mean())


def failure_auroc(risk, measured, threshold: float = FAILURE_DICE) -> float | None:
    """P(risk of a failure (Dice < threshold) > risk of a success); None without both kinds."""
    risk, measured = np.asarray(risk, float), np.asarray(measured, float)
    return auroc(risk, measured < threshold)


def judge(predicted, risk, measured, failure_dice: float = FAILURE_DICE) -> dict:
    """Spearman of predicted against measured Dice (over the cases with a prediction: None where
    absent), AURC of the risk, the best AURC the Dice values allow, and the failure AUROC."""
    measured = np.asarray(measured, float)
    known = np.asarray([p is not None for p in predicted], bool)
    predicted = np.asarray([np.nan if p is None else p for p in predicted], float)
    return {"cases": len(measured), "spearman_predicted_dice": spearman(predicted[known], measured[known]), "aurc": aurc(risk, measured),
            "aurc_best": aurc(-measured, measured), "auroc_failure": failure_auroc(risk, measured, failure_dice),
            "failure_dice": failure_dice, "failures": int((measured < failure_dice).sum())}


def read_qc_table(path: Path) -> dict[str, dict]:
    """{case: {"predicted_dice": float | None, "risk": float, "flag": str}} from a `unetr predict`
    qc.csv; rows without a risk (failed cases) are left out."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or not {"case", "risk"} <= set(reader.fieldnames):
                raise InputError(f"{path}: not a qc.csv (expected the columns case, predicted_dice, risk, flag); write it with `unetr predict`")
            rows = list(reader)
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable qc table ({err}); write it again with `unetr predict`") from None
    table = {}
    for row in rows:
        if not row.get("risk"):
            continue
        try:
            predicted = float(row["predicted_dice"]) if row.get("predicted_dice") else None
            table[row["case"]] = {"predicted_dice": predicted, "risk": float(row["risk"]), "flag": row.get("flag") or ""}
        except ValueError:
            raise InputError(f"{path}: case {row['case']!r} has risk {row['risk']!r} / predicted_dice {row.get('predicted_dice')!r}; "
                             "expected numbers (write it again with `unetr predict`)") from None
    return table


def plot_judgement(path, predicted, risk, measured, title: str = "") -> None:
    """Predicted against measured Dice, and the risk-coverage curve, side by side (a case without
    a predicted Dice is left off the scatter)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unetr_app.io.atomic import atomic_path

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
    known = [(m, p) for m, p in zip(measured, predicted) if p is not None]
    shown_measured, shown_predicted = (np.asarray(v, float) for v in zip(*known)) if known else (np.zeros(0), np.zeros(0))
    left.scatter(shown_measured, shown_predicted, s=18)
    left.plot([0, 1], [0, 1], color="grey", lw=0.8)
    left.set(xlabel="measured Dice", ylabel="predicted Dice", xlim=(0, 1), ylim=(0, 1), title=f"Spearman {_number(spearman(shown_predicted, shown_measured))}")
    coverage, selective = risk_coverage(risk, measured)
    best = risk_coverage(-np.asarray(measured, float), measured)[1]
    right.plot(coverage, selective, label=f"risk (AURC {selective.mean():.3f})")
    right.plot(coverage, best, ls="--", color="grey", label=f"best possible ({best.mean():.3f})")
    right.set(xlabel="coverage (cases kept, lowest risk first)", ylabel="mean 1 - Dice of kept cases", title="risk-coverage")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"
