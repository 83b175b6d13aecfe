"""Summaries and plots of a model comparison: one row per model from its cross-validation runs.

A run is a dict with model, fold, parameters, train_seconds, case_dice {case: Dice on the original
grid}, case_dice_postprocessed, seconds_per_scan and history (metrics.jsonl lines). A fold's score
is the mean Dice over its validation cases; a model's is the mean +- std over folds.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

COLUMNS = (
    "model", "parameters", "folds", "dice_mean", "dice_std", "dice_postprocessed_mean", "dice_postprocessed_std",
    "postprocessing", "seconds_per_scan", "train_seconds_per_fold", "erf_r50_mm", "fold_dice",
)


def model_rows(runs: list[dict], extras: dict[str, dict] | None = None) -> list[dict]:
    """One summary per model, in the order models first appear; `extras[model]` adds columns."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = sorted((r for r in runs if r["model"] == model and r.get("case_dice")), key=lambda r: r["fold"])
        if not mine:
            continue
        fold_dice = [float(np.mean(list(r["case_dice"].values()))) for r in mine]
        fold_pp = [float(np.mean(list(r["case_dice_postprocessed"].values()))) for r in mine if r.get("case_dice_postprocessed")]
        rows.append({
            "model": model,
            "parameters": mine[0].get("parameters"),
            "folds": len(mine),
            "dice_mean": float(np.mean(fold_dice)),
            "dice_std": float(np.std(fold_dice)),
            "dice_postprocessed_mean": float(np.mean(fold_pp)) if fold_pp else None,
            "dice_postprocessed_std": float(np.std(fold_pp)) if fold_pp else None,
            "seconds_per_scan": _mean([r.get("seconds_per_scan") for r in mine]),
            "train_seconds_per_fold": _mean([r.get("train_seconds") for r in mine]),
            "fold_dice": " ".join(f"{d:.4f}" for d in fold_dice),
            **((extras or {}).get(model, {})),
        })
    return rows


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    return buffer.getvalue()


def _cell(value):
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else value)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | parameters | Dice (mean +- std over folds) | after post-processing | post-processing | s / scan | train s / fold | ERF r50 (mm) |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r["dice_mean"]):
        pp = "" if r.get("dice_postprocessed_mean") is None else f"{r['dice_postprocessed_mean']:.3f} +- {r['dice_postprocessed_std']:.3f}"
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['dice_mean']:.3f} +- {r['dice_std']:.3f} | {pp} | {r.get('postprocessing') or 'none'} "
            f"| {_fmt(r.get('seconds_per_scan'), '.2f')} | {_fmt(r.get('train_seconds_per_fold'), '.0f')} | {_fmt(r.get('erf_r50_mm'), '.0f')} |"
        )
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


# --- plots ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def plot_dice_against(rows: list[dict], key: str, label: str, path: Path, log_x: bool = False) -> Path:
    """Dice (mean +- std over folds) against `key` (parameters, seconds per scan), one labelled point per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for row in rows:
        x = row.get(key)
        if x is None:
            continue
        x = x / 1e6 if key == "parameters" else x
        ax.errorbar(x, row["dice_mean"], yerr=row["dice_std"], fmt="o", capsize=4)
        ax.annotate(row["model"], (x, row["dice_mean"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set(xlabel=label, ylabel="validation Dice (mean +- std over folds)", title=f"Dice vs {label}")
    if log_x:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_learning_curves(runs: list[dict], path: Path) -> Path:
    """Training loss and validation Dice over training, mean over folds, one line per model."""
    plt = _pyplot()
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in dict.fromkeys(r["model"] for r in runs):
        histories = [r["history"] for r in runs if r["model"] == model and r.get("history")]
        if not histories:
            continue
        loss_key = "loss" if any("loss" in line for h in histories for line in h) else "train_loss"
        for ax, key, style in ((ax_loss, loss_key, "-"), (ax_dice, "val_dice", "o-")):
            xs, ys = _mean_curve(histories, key)
            if xs:
                ax.plot(xs, ys, style, label=model, markersize=3)
    x_name = "step" if any("step" in line for r in runs for line in r.get("history", [])) else "epoch"
    ax_loss.set(xlabel=x_name, ylabel="training loss", title="Training loss (mean over folds)")
    ax_dice.set(xlabel=x_name, ylabel="validation Dice", title="Validation Dice (mean over folds)", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    ax_dice.legend(fontsize=8)
    return _save(fig, path)


def _mean_curve(histories: list[list[dict]], key: str) -> tuple[list, list]:
    x_key = "step" if any("step" in line for h in histories for line in h) else "epoch"
    points: dict[float, list[float]] = {}
    for history in histories:
        for line in history:
            if line.get(key) is not None and line.get(x_key) is not None:
                points.setdefault(line[x_key], []).append(line[key])
    xs = sorted(points)
    return xs, [float(np.mean(points[x])) for x in xs]


def plot_case_dice(runs: list[dict], path: Path) -> Path:
    """Every validation case's Dice (original grid), one column per model; a bar marks the mean."""
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(models)), 4.5))
    rng = np.random.default_rng(0)
    for i, model in enumerate(models):
        scores = [d for r in runs if r["model"] == model for d in r.get("case_dice", {}).values()]
        if scores:
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(scores)), scores, s=14, alpha=0.7)
            ax.hlines(np.mean(scores), i - 0.3, i + 0.3, color="black")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set(ylabel="Dice per validation case", title="Per-case Dice (every fold's validation cases)", ylim=(0, 1.02))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_receptive_field_overview(fields: dict[str, np.ndarray], path: Path) -> Path:
    """The axial central slice of every model's ERF side by side, on one scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(fields), figsize=(2.6 * len(fields), 2.9), squeeze=False)
    for ax, (model, erf) in zip(axes[0], fields.items()):
        ax.imshow(np.sqrt(erf[:, :, erf.shape[2] // 2].T), origin="lower", cmap="magma", vmin=0, vmax=1)
        ax.set(title=model, xticks=[], yticks=[])
    fig.suptitle("Effective receptive fields (axial centre slice, sqrt |gradient|)")
    return _save(fig, path)
