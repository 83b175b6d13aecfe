"""Summaries and plots of a model comparison, and the paired statistics behind its claims.

A run is a dict with model, budget ("steps": the equal-steps budget, "time": the equal-wall-clock
one), seed, fold, parameters, train_seconds, steps, case_dice {case: Dice on the original grid, last
checkpoint}, case_dice_postprocessed (post-processing decided on the other folds), postprocessing
(that decision, described), seconds_per_scan and history (metrics.jsonl lines).

Every labelled case is scored once per seed (the folds partition the cases), so a model's Dice is
the mean over seeds of its mean over all scored cases; the difference to a reference model is the
mean of per-(seed, case) differences, with a percentile bootstrap interval that resamples seeds and
cases (crossed, with replacement) so both the seed-to-seed and the case-to-case spread widen it.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from unetr_app.errors import UsageError

BUDGETS = ("steps", "time")  # equal steps, equal wall-clock
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

COLUMNS = (
    "model", "parameters", "folds", "seeds", "dice_mean", "dice_seed_std", "dice_fold_std", "diff_to_reference", "diff_low", "diff_high",
    "dice_postprocessed_mean", "postprocessing", "time_dice_mean", "time_dice_seed_std", "time_steps", "time_diff_to_reference",
    "time_diff_low", "time_diff_high", "late_val_gain", "seconds_per_scan", "train_seconds_per_fold", "erf_r50_mm", "fold_dice",
)


# --- paired statistics ------------------------------------------------------------------------


def case_matrix(runs: list[dict], model: str, budget: str = "steps", key: str = "case_dice") -> tuple[list[int], list[str], np.ndarray]:
    """(seeds, cases, Dice[seed, case]) of one model under one budget, seeds and cases sorted."""
    scores: dict[int, dict[str, float]] = {}
    for run in runs:
        if run["model"] == model and run.get("budget", "steps") == budget and run.get(key):
            mine = scores.setdefault(run.get("seed", 0), {})
            overlap = mine.keys() & run[key].keys()
            if overlap:
                raise UsageError(f"{model}: case {sorted(overlap)[0]!r} scored twice under seed {run.get('seed', 0)} (folds overlap)")
            mine.update(run[key])
    cases = sorted(set().union(*scores.values()))
    seeds = sorted(s for s in scores if scores[s].keys() == set(cases))  # a seed with a failed fold is left out, not half-counted
    return seeds, cases, np.array([[scores[s][c] for c in cases] for s in seeds], dtype=float).reshape(len(seeds), len(cases))


def paired_differences(runs: list[dict], model: str, reference: str, budget: str = "steps") -> np.ndarray:
    """model's Dice minus the reference's on the same (seed, case) pairs, matched by seed and case name, never by
    order; [seed, case] over the seeds both models finished."""
    seeds, cases, mine = case_matrix(runs, model, budget)
    ref_seeds, ref_cases, theirs = case_matrix(runs, reference, budget)
    common = sorted(set(seeds) & set(ref_seeds))
    if cases != ref_cases or not common:
        raise UsageError(f"{model} and {reference} were scored on different cases or have no finished seed in common; they cannot be paired")
    return mine[[seeds.index(s) for s in common]] - theirs[[ref_seeds.index(s) for s in common]]


def paired_bootstrap(differences: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """Mean of a [seed, case] matrix of paired differences and its percentile bootstrap interval.
    Each resample draws seeds and cases with replacement; its statistic is the mean over the drawn grid."""
    d = np.atleast_2d(np.asarray(differences, dtype=float))
    n_seeds, n_cases = d.shape
    if n_cases == 0:
        raise ValueError("no paired cases")
    rng = np.random.default_rng(seed)
    seed_weights = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=resamples) / n_seeds
    case_weights = rng.multinomial(n_cases, np.full(n_cases, 1 / n_cases), size=resamples) / n_cases
    means = np.einsum("bs,sc,bc->b", seed_weights, d, case_weights)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "level": level, "seeds": n_seeds, "cases": n_cases}


# --- per-model rows ---------------------------------------------------------------------------


def model_rows(runs: list[dict], extras: dict[str, dict] | None = None, reference: str | None = None) -> list[dict]:
    """One summary per model, in the order models first appear; `extras[model]` adds columns.
    With a `reference` model, each other model gets its paired difference and interval under each budget."""
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        seeds = case_matrix(runs, model, "steps")[0]
        mine = [r for r in runs if r["model"] == model and r.get("budget", "steps") == "steps" and r.get("case_dice") and r.get("seed", 0) in seeds]
        if not mine:
            continue
        row = {"model": model, "parameters": mine[0].get("parameters"), "folds": len({r["fold"] for r in mine}),
               **_scores(runs, model, "steps", "dice"), **_scores(runs, model, "time", "time_dice")}
        by_seed_fold = _fold_means(mine, "case_dice")
        row["dice_fold_std"] = float(np.mean([np.std(list(folds.values())) for folds in by_seed_fold.values()]))
        row["fold_dice"] = " ".join(f"{np.mean([f[k] for f in by_seed_fold.values()]):.4f}" for k in sorted(next(iter(by_seed_fold.values()))))
        if all(r.get("case_dice_postprocessed") for r in mine):
            row["dice_postprocessed_mean"] = float(case_matrix(mine, model, "steps", "case_dice_postprocessed")[2].mean(axis=1).mean())
            row["postprocessing"] = describe_decisions([r.get("postprocessing", "none") for r in mine])
        time_runs = [r for r in runs if r["model"] == model and r.get("budget") == "time" and r.get("steps") is not None]
        row["time_steps"] = _mean([r["steps"] for r in time_runs])
        if reference is not None and model != reference:
            for budget, prefix in (("steps", ""), ("time", "time_")):
                if row.get(f"{prefix}dice_mean") is not None and any(r["model"] == reference and r.get("budget", "steps") == budget and r.get("case_dice") for r in runs):
                    interval = paired_bootstrap(paired_differences(runs, model, reference, budget))
                    row.update({f"{prefix}diff_to_reference": interval["mean"], f"{prefix}diff_low": interval["low"], f"{prefix}diff_high": interval["high"]})
        row["late_val_gain"] = _mean([late_gain(r.get("history") or []) for r in mine])
        row.update({"seconds_per_scan": _mean([r.get("seconds_per_scan") for r in mine]), "train_seconds_per_fold": _mean([r.get("train_seconds") for r in mine])})
        rows.append({**row, **((extras or {}).get(model, {}))})
    return rows


def late_gain(history: list[dict]) -> float | None:
    """Validation Dice at the end minus at 3/4 of the steps (training's own validation, a diagnostic, never
    a score): near 0 when the model had plateaued at this budget, clearly positive when it was still learning."""
    points = [(line["step"], line["val_dice"]) for line in history if line.get("val_dice") is not None and line.get("step") is not None]
    if len(points) < 2:
        return None
    end_step, end = points[-1]
    earlier = [dice for step, dice in points if step <= 0.75 * end_step]
    return float(end - earlier[-1]) if earlier else None


def _scores(runs: list[dict], model: str, budget: str, prefix: str) -> dict:
    if not any(r["model"] == model and r.get("budget", "steps") == budget and r.get("case_dice") for r in runs):
        return {}
    seeds, _, dice = case_matrix(runs, model, budget)
    if not seeds:
        return {}
    per_seed = dice.mean(axis=1)
    return {f"{prefix}_mean": float(per_seed.mean()), f"{prefix}_seed_std": float(np.std(per_seed, ddof=1)) if len(seeds) > 1 else None,
            **({"seeds": len(seeds)} if budget == "steps" else {})}


def _fold_means(runs: list[dict], key: str) -> dict[int, dict[int, float]]:
    means: dict[int, dict[int, float]] = {}
    for r in runs:
        means.setdefault(r.get("seed", 0), {})[r["fold"]] = float(np.mean(list(r[key].values())))
    return means


def describe_decisions(decisions: list[str]) -> str:
    """The post-processing each fold's cases got (decided on the other folds), with how many folds got it."""
    counts = Counter(decisions)
    return "; ".join(f"{name} ({n}/{len(decisions)})" for name, n in counts.most_common())


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


def markdown_table(rows: list[dict], reference: str | None = None, minutes: float | None = None) -> str:
    """The report's table; the equal-time columns appear when some model was trained for `minutes`."""
    with_time = any(r.get("time_dice_mean") is not None for r in rows)
    header = ["model", "parameters", "Dice, last checkpoint (mean +- std over seeds)", "std over folds",
              f"Dice - {reference} [95% paired bootstrap]" if reference else "Dice - reference",
              "after post-processing (nested CV)", "post-processing per fold (decided on the other folds)"]
    if with_time:
        header += [f"Dice at equal time ({minutes:g} min)" if minutes else "Dice at equal time", "steps in that time", f"equal time: Dice - {reference} [95%]"]
    header += ["val Dice gain, last quarter of steps", "s / scan", "train s / fold", "ERF r50 (mm)"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "|".join("---:" if h not in ("post-processing per fold (decided on the other folds)",) else "---" for h in header[1:]) + "|"]
    for r in sorted(rows, key=lambda r: -r["dice_mean"]):
        cells = [r["model"], f"{r['parameters'] / 1e6:.2f} M", _pm(r["dice_mean"], r.get("dice_seed_std")), _fmt(r.get("dice_fold_std"), ".3f"),
                 _diff(r, "", reference), _fmt(r.get("dice_postprocessed_mean"), ".3f"), r.get("postprocessing") or ""]
        if with_time:
            cells += [_pm(r.get("time_dice_mean"), r.get("time_dice_seed_std")), _fmt(r.get("time_steps"), ".0f"), _diff(r, "time_", reference)]
        cells += [_fmt(r.get("late_val_gain"), "+.3f"), _fmt(r.get("seconds_per_scan"), ".2f"), _fmt(r.get("train_seconds_per_fold"), ".0f"), _fmt(r.get("erf_r50_mm"), ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pm(mean, spread) -> str:
    if mean is None:
        return ""
    return f"{mean:.3f}" + ("" if spread is None else f" +- {spread:.3f}")


def _diff(row: dict, prefix: str, reference: str | None) -> str:
    if row["model"] == reference:
        return "reference"
    if row.get(f"{prefix}diff_to_reference") is None:
        return ""
    return f"{row[f'{prefix}diff_to_reference']:+.3f} [{row[f'{prefix}diff_low']:+.3f}, {row[f'{prefix}diff_high']:+.3f}]"


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
        spread = row.get("dice_seed_std") if row.get("dice_seed_std") is not None else row.get("dice_fold_std")
        ax.errorbar(x, row["dice_mean"], yerr=spread, fmt="o", capsize=4)
        ax.annotate(row["model"], (x, row["dice_mean"]), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set(xlabel=label, ylabel="Dice, last checkpoint (+- std over seeds, else folds)", title=f"Dice vs {label}")
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
