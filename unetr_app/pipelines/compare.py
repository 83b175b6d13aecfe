"""`unetr compare`: which model, and how good. Every model trains on the same cross-validation
folds, with the same seeds and budget; then each is judged on cases that chose nothing for it.

The recipe:
1. check the request and resolve every model's config (a bad name, `--seeds 0` or a `--reference`
   that is not among the models stops here, before any work) and the dataset's folds;
2. train each (budget, seed, model, fold) as an ordinary run folder in a subprocess (`unetr train
   --fold k --resume`): EXP/<model>/fold_<k> for the first seed, EXP/<model>/seed_<s>/fold_<k> for
   the others, and under EXP/<model>/equal_time/ for the `--minutes` runs beside a steps budget.
   Finished runs are skipped, a killed one resumes from its last checkpoint, `processes` run at once;
3. per run: predict its validation cases with its LAST checkpoint (the best one was chosen on those
   very cases) on their original grids: Dice per case, seconds per scan;
4. per (model, budget, seed): each fold's cases get the post-processing decided on the other folds'
   cases (nested cross-validation), reported beside the raw Dice; per model: the effective receptive
   field;
5. write EXP/comparison.csv, EXP/report.md and the plots: mean and spread over seeds, and each
   model's paired difference to the `--reference` model with a bootstrap interval.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from unetr_app.pipelines.postprocess import run_labels, validation_cases
from unetr_app.pipelines.scheduling import GpuPool, visible_gpus
from unetr_app.config import DEFAULT_PROFILE, load_run_config, parse_overrides
from unetr_app.data.dataset import find_dataset_dir, labelled_cases
from unetr_app.data.manifest import load_manifest
from unetr_app.data.splits import load_or_make_splits
from unetr_app.data.transforms import IMAGE
from unetr_app.device import resolve_device
from unetr_app.errors import UsageError
from unetr_app.evaluation.comparison import (
    markdown_table, model_rows, plot_case_dice, plot_dice_against, plot_learning_curves, plot_receptive_field_overview, to_csv,
)
from unetr_app.evaluation.postprocess import Postprocessing, ValidationCase, case_dice, decide_postprocessing
from unetr_app.evaluation.receptive_field import effective_receptive_field, plot_receptive_field, radius_of_mass
from unetr_app.inference.batch import OutputOptions, predict_cases
from unetr_app.inference.predictor import PredictSettings, Predictor
from unetr_app.io.atomic import atomic_path, atomic_write_text
from unetr_app.io.checkpoint import load_model
from unetr_app.io.run_dir import RunDir
from unetr_app.io.scans import read_volume, source_for

log = logging.getLogger(__name__)
REQUEST_FILE = "compare.json"
SCORED_FOLDER = "compare_last"  # RUN/: the last checkpoint's predictions of the validation cases
NESTED_FILE = "nested_postprocessing.json"  # EXP/<model>/[equal_time/][seed_<s>/]: each fold's decision from the other folds
EQUAL_TIME_FOLDER = "equal_time"


@dataclass(frozen=True)
class CompareRequest:
    task: str
    models: tuple[str, ...]
    out: Path
    folds: int = 3
    steps: int | None = None
    minutes: float | None = None  # alone: the budget; beside steps or epochs: an equal-wall-clock second set of runs
    epochs: int | None = None
    profile: str = DEFAULT_PROFILE
    data_dir: Path | None = None
    processes: int | None = None  # default: one run per visible GPU, else 1
    device: str = "auto"
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, for every model
    receptive_field: bool = True
    seeds: int = 1  # runs per (model, fold), seeds training.seed, +1, ...: the same seeds for every model
    reference: str | None = None  # the model the others are differenced against; default: the first

    def budget(self) -> dict:
        return {k: v for k, v in (("steps", self.steps), ("minutes", self.minutes), ("epochs", self.epochs)) if v is not None}

    def budgets(self) -> dict[str, dict]:
        """{"steps": the equal-steps budget (empty: the profile's), "time": {"minutes": M}} as far as given."""
        steps = {k: v for k, v in (("steps", self.steps), ("epochs", self.epochs)) if v is not None}
        if not steps and self.minutes is not None:
            return {"steps": {"minutes": self.minutes}}  # one budget, and it is a time: every run gets the same minutes
        return {"steps": steps, **({"time": {"minutes": self.minutes}} if self.minutes is not None else {})}

    @property
    def reference_model(self) -> str:
        return model_label(self.reference or self.models[0])


@dataclass
class RunResult:
    model: str
    fold: int
    run_dir: str
    seed: int = 0
    budget: str = "steps"  # steps (equal steps, or the only budget) | time (equal wall-clock, beside steps)
    status: str = "pending"  # already done | new | resumed | failed
    error: str = ""
    parameters: int | None = None
    train_seconds: float | None = None
    steps: int | None = None
    best_val_dice: float | None = None  # training's record only: never the reported score
    case_dice: dict[str, float] = field(default_factory=dict)  # last checkpoint, original grids
    case_dice_postprocessed: dict[str, float] = field(default_factory=dict)  # decided on the other folds
    postprocessing: str = ""
    seconds_per_scan: float | None = None
    history: list[dict] = field(default_factory=list)
    config: str = ""  # what `--model` gets: a registered name or a configs/models YAML


def model_label(name: str) -> str:
    """A model's folder and name in the report: its registered name, or its YAML file's stem."""
    return Path(name).stem if Path(name).suffix in (".yaml", ".yml") else name


def check_request(request: CompareRequest) -> None:
    """Bad combinations, one line each, before anything is read or written."""
    if len(set(request.models)) != len(request.models) or not request.models:
        raise UsageError(f"--models {','.join(request.models)!r}: give each model once")
    if request.seeds < 1:
        raise UsageError(f"--seeds {request.seeds}: give 1 or more (each model trains once per seed and fold)")
    if request.steps is not None and request.epochs is not None:
        raise UsageError("--steps and --epochs: give one of them (and --minutes for an equal-wall-clock column beside it)")
    labels = [model_label(m) for m in request.models]
    if request.reference is not None and model_label(request.reference) not in labels:
        raise UsageError(f"--reference {request.reference!r} is not among --models {','.join(request.models)}; name one of {', '.join(labels)}")


def plan_runs(request: CompareRequest, n_folds: int, base_seed: int) -> list[RunResult]:
    """Every run of the comparison: budgets, then seeds, then models, then folds (the first seed of
    every model is done before the next seed starts)."""
    runs = []
    for budget in request.budgets():
        for index in range(request.seeds):
            seed = base_seed + index
            for name in request.models:
                folder = request.out / model_label(name) / (EQUAL_TIME_FOLDER if budget == "time" else "") / (f"seed_{seed}" if index else "")
                runs += [RunResult(model_label(name), fold, str(folder / f"fold_{fold}"), seed=seed, budget=budget, config=name) for fold in range(n_folds)]
    return runs


def run_compare(request: CompareRequest, on_event=None) -> dict:
    """Train, judge and report every model; returns {"runs": [RunResult], "rows": [summary rows], ...}."""
    say = on_event or (lambda message: log.info(message))
    check_request(request)
    configs = {name: load_run_config(request.task, name, request.profile, parse_overrides(list(request.overrides))) for name in request.models}
    first = next(iter(configs.values()))
    dataset = find_dataset_dir(first.task, request.data_dir)
    splits, splits_file = load_or_make_splits(dataset, labelled_cases(dataset, load_manifest(first.task.manifest)), request.folds)
    _record_request(request, dataset, splits_file)

    runs = plan_runs(request, len(splits), first.training.seed)
    line_every = {model_label(name): config.training.line_every_steps for name, config in configs.items()}
    say(f"{len(runs)} runs ({len(request.models)} models x {len(splits)} folds x {request.seeds} seeds x {len(request.budgets())} budgets) "
        f"in {request.out}; folds from {splits_file}")
    gpus = visible_gpus(request.device)
    pool = GpuPool(request.processes or max(1, len(gpus)), gpus)
    pool.map(lambda run: _train(run, request, dataset, say, pool, line_every[run.model]), runs)
    for run in runs:
        if run.status != "failed":
            _judge(run, request.device, say)
    extras = {}
    for name in map(model_label, request.models):
        model_runs = [r for r in runs if r.model == name]
        if all(r.status != "failed" for r in model_runs):
            for group in _groups(model_runs):
                _nested_postprocess(group, say)
            if request.receptive_field:
                extras[name] = {"erf_r50_mm": _receptive_field(request.out, model_runs[0], say)}
    rows = write_report(request, [asdict(r) for r in runs], extras, splits_file)
    return {"runs": runs, "rows": rows, "dataset": str(dataset), "splits": str(splits_file)}


def _groups(runs: list[RunResult]) -> list[list[RunResult]]:
    """A model's runs by (budget, seed): one set of folds each."""
    groups: dict[tuple[str, int], list[RunResult]] = {}
    for run in runs:
        groups.setdefault((run.budget, run.seed), []).append(run)
    return list(groups.values())


# --- training ---------------------------------------------------------------------------------


def _train(run: RunResult, request: CompareRequest, dataset: Path, say, pool: GpuPool, line_every: int) -> RunResult:
    run_dir = RunDir(run.run_dir)
    if run_dir.is_finished:
        run.status = "already done"
        return _read_training(run)
    run.status = "resumed" if run_dir.last.is_file() else "new"
    say(f"{describe_run(run)}: {'resuming' if run.status == 'resumed' else 'training'}")
    run_dir.path.mkdir(parents=True, exist_ok=True)
    returncode = pool.run(train_command(run, request, dataset, line_every), run_dir.train_log)
    if returncode != 0 or not run_dir.is_finished:
        run.status, run.error = "failed", _last_line(run_dir.train_log)
        say(f"{describe_run(run)}: failed ({run.error}); see {run_dir.train_log}")
        return run
    say(f"{describe_run(run)}: done")
    return _read_training(run)


def describe_run(run: RunResult) -> str:
    """How the progress lines name a run: `unetr fold 1`, `unetr seed 1 fold 0 (equal time)`."""
    seed = "" if Path(run.run_dir).parent.name != f"seed_{run.seed}" else f" seed {run.seed}"
    return f"{run.model}{seed} fold {run.fold}" + (" (equal time)" if run.budget == "time" else "")


def train_command(run: RunResult, request: CompareRequest, dataset: Path, line_every: int = 1) -> list[str]:
    command = [sys.executable, "-m", "unetr_app", "train", "--data-dir", str(dataset), "--out", run.run_dir, "--device", request.device]
    for key, value in request.budgets()[run.budget].items():
        command += [f"--{key}", str(value)]
    if RunDir(run.run_dir).is_started:  # a killed run continues as it was recorded
        return [*command, "--resume"]
    command += ["--task", request.task, "--model", run.config, "--profile", request.profile, "--fold", str(run.fold), "--folds", str(request.folds)]
    for pair in (*request.overrides, f"training.seed={run.seed}"):
        command += ["--set", pair]
    if run.budget == "time":  # the minutes go to training: no validation (nothing is selected on it) to eat into them
        command += ["--set", "training.val_every_steps=0", "--set", f"training.log_every_steps={line_every}"]
    return command


def _read_training(run: RunResult) -> RunResult:
    run_dir = RunDir(run.run_dir)
    summary = run_dir.read_summary()
    run.parameters, run.train_seconds, run.best_val_dice = summary.get("parameters"), summary.get("seconds"), summary.get("best_val_dice")
    run.steps = summary.get("steps")
    run.history = run_dir.read_metrics()
    return run


# --- judging ----------------------------------------------------------------------------------


def _judge(run: RunResult, device: str, say) -> None:
    """Dice per validation case (original grid) of the last checkpoint and seconds per scan; kept in RUN/compare_scores.json."""
    results = RunDir(run.run_dir).compare_scores
    if not results.is_file():
        say(f"{describe_run(run)}: predicting its validation cases with the last checkpoint")
        seconds = [r.seconds for r in _predict_with_last(Path(run.run_dir), device) if r.seconds]
        labels = run_labels(Path(run.run_dir))
        dice = {c.name: case_dice(c.prediction, c.reference, labels) for c in scored_cases(Path(run.run_dir))}
        atomic_write_text(results, json.dumps({"checkpoint": "last", "case_dice": dice, "seconds_per_scan": float(np.mean(seconds)) if seconds else None}, indent=2))
    data = json.loads(results.read_text(encoding="utf-8"))
    run.case_dice, run.seconds_per_scan = data["case_dice"], data["seconds_per_scan"]


def _predict_with_last(run_dir: Path, device: str) -> list:
    """The run's validation cases through its last checkpoint (no test-time augmentation, no post-processing)."""
    split = RunDir(run_dir).read_split()
    cases = [source_for(c["image"]) for c in split["validation"]]
    torch_device = resolve_device(device)
    predictor = Predictor(load_model(RunDir(run_dir).last, torch_device), PredictSettings(device=torch_device, tta=False))
    out = run_dir / SCORED_FOLDER
    out.mkdir(exist_ok=True)
    return predict_cases(predictor, cases, OutputOptions(out), show_progress=False)


def scored_cases(run_dir: Path) -> list[ValidationCase]:
    """A run's last-checkpoint predictions paired with their references."""
    return validation_cases(run_dir, Path(run_dir) / SCORED_FOLDER)


def nested_decisions(cases_by_fold: dict[int, list[ValidationCase]], labels: dict[str, int]) -> dict[int, tuple[Postprocessing, list[dict]]]:
    """Each fold's post-processing and the trials that chose it, decided on the other folds' cases
    only: its own cases choose nothing."""
    return {fold: decide_postprocessing([c for other, cases in cases_by_fold.items() if other != fold for c in cases], labels) for fold in cases_by_fold}


def _nested_postprocess(runs: list[RunResult], say) -> None:
    """Post-processed Dice of one (model, budget, seed)'s folds; cached beside the fold folders."""
    target = Path(runs[0].run_dir).parent / NESTED_FILE
    if not target.is_file():
        say(f"{describe_run(runs[0]).replace(f' fold {runs[0].fold}', '')}: post-processing each fold as decided on the other folds")
        labels = run_labels(Path(runs[0].run_dir))
        cases = {run.fold: scored_cases(Path(run.run_dir)) for run in runs}
        decisions = nested_decisions(cases, labels)
        # the trials (mean Dice of the other folds before and after each step) show by how much a step won
        record = {str(fold): {"decision": steps.to_dict(), "described": describe(steps),
                              "case_dice": {c.name: case_dice(steps.apply(c.prediction, c.spacing), c.reference, labels) for c in cases[fold]},
                              "trials_on_other_folds": trials}
                  for fold, (steps, trials) in decisions.items()}
        atomic_write_text(target, json.dumps(record, indent=2) + "\n")
    record = json.loads(target.read_text(encoding="utf-8"))
    for run in runs:
        run.case_dice_postprocessed, run.postprocessing = record[str(run.fold)]["case_dice"], record[str(run.fold)]["described"]


def describe(steps: Postprocessing) -> str:
    guards = steps.largest_component_guard_mm3
    parts = [f"largest component of label {v}" + (f", and any other >= {guards[v] / 1000:.3g} mL" if v in guards else "") for v in steps.largest_component]
    parts += [f"label {v}: drop < {mm3:g} mm3" for v, mm3 in steps.min_volume_mm3.items()]
    return "; ".join(parts) or "none"


def _receptive_field(out: Path, run: RunResult, say, max_scans: int = 4) -> float:
    """ERF of the model's first run (last checkpoint) over (up to `max_scans` of) its validation scans; cached in EXP/receptive_fields/."""
    target = out / "receptive_fields" / f"{run.model}.npz"
    if not target.is_file():
        say(f"{run.model}: measuring the effective receptive field")
        loaded = load_model(RunDir(run.run_dir).last, "cpu")
        predictor = Predictor(loaded, PredictSettings(device=torch.device("cpu")))
        split = RunDir(run.run_dir).read_split()
        sources = [source_for(c["image"]) for c in split["validation"][:max_scans]]
        images = (predictor.prepare(read_volume(source))[IMAGE].as_tensor() for source in sources)
        erf = effective_receptive_field(loaded.model, images, loaded.preprocessing.roi_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.savez_compressed(handle, erf=erf, spacing=np.asarray(loaded.preprocessing.spacing))
    saved = np.load(target)
    plot_receptive_field(saved["erf"], saved["spacing"], run.model, target.with_suffix(".png"))
    return radius_of_mass(saved["erf"], saved["spacing"])


def write_report(request: CompareRequest, runs: list[dict], extras: dict[str, dict], splits_file: Path) -> list[dict]:
    """comparison.csv, report.md and the plots in EXP; returns the per-model rows."""
    out = request.out
    reference = request.reference_model
    rows = model_rows(runs, extras, reference=reference)
    if not rows:
        return rows
    atomic_write_text(out / "comparison.csv", to_csv(rows))
    steps_runs = [r for r in runs if r.get("budget", "steps") == "steps"]
    plot_dice_against(rows, "parameters", "parameters (millions)", out / "dice_vs_parameters.png", log_x=True)
    plot_dice_against(rows, "seconds_per_scan", "inference seconds per scan", out / "dice_vs_seconds.png")
    plot_learning_curves(steps_runs, out / "learning_curves.png")
    plot_case_dice(steps_runs, out / "per_case_dice.png")
    fields = {r["model"]: np.load(out / "receptive_fields" / f"{r['model']}.npz")["erf"] for r in rows if (out / "receptive_fields" / f"{r['model']}.npz").is_file()}
    if fields:
        plot_receptive_field_overview(fields, out / "receptive_fields.png")
    atomic_write_text(out / "report.md", _markdown(request, rows, runs, splits_file, bool(fields)))
    return rows


def _markdown(request: CompareRequest, rows: list[dict], runs: list[dict], splits_file: Path, with_fields: bool) -> str:
    budgets = request.budgets()
    steps_budget = ", ".join(f"{k} {v}" for k, v in budgets["steps"].items()) or "the profile's budget"
    seeds = sorted({r.get("seed", 0) for r in runs})
    failed = [f"{r['model']} seed {r.get('seed', 0)} fold {r['fold']}{' (equal time)' if r.get('budget') == 'time' else ''}: {r['error']}"
              for r in runs if r["status"] == "failed"]
    reference = request.reference_model
    time_line = ""
    if "time" in budgets:
        time_line = (f" Beside it, every model also trained for {request.minutes:g} minutes of wall clock per run (equal time; "
                     "no validation during those runs, so the minutes go to training; 'steps in that time' is the mean it reached).")
    lines = [
        f"# Model comparison: {request.task}",
        "",
        f"{len(rows)} models, {request.folds}-fold cross-validation (folds: `{splits_file}`), profile `{request.profile}`, "
        f"budget per run: {steps_budget}; {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}), "
        f"the same seeds for every model.{time_line}",
        "",
        "How the scores were made, so that no scored case chose anything for its model:",
        "",
        "- **Checkpoint: the last one.** Each run is scored with the weights it ended with; the best-validation checkpoint "
        "is not used, since it was picked on the very cases being scored.",
        "- **Dice**: mean foreground Dice of each validation case on its original grid (no test-time augmentation); every "
        "labelled case is scored once per seed (the folds partition the cases); a model's Dice is the mean over seeds of "
        "its mean over all cases, +- the standard deviation over seeds (with more than one seed); 'std over folds' is the "
        "spread of the fold means.",
        "- **Post-processing: nested cross-validation, beside the raw score.** Each fold's cases get the post-processing "
        "decided on the other folds' cases only; the raw Dice stays the headline. "
        "(EXP/<model>/postprocessing.json, for `unetr predict`, is decided by training on all folds and is not used here.)",
        f"- **Differences to the reference `{reference}`**: per (seed, case) pairs, the same cases and seeds for both models; "
        f"the interval is a 95% percentile bootstrap resampling seeds and cases with replacement ({10_000:,} resamples, "
        "fixed RNG seed). An interval that excludes 0 is a difference these cases and seeds support.",
        "- **Plateau check**: 'val Dice gain, last quarter of steps' is training's own validation Dice at the end minus at "
        "3/4 of the steps (mean over runs; a diagnostic, not a score): clearly above 0, the model was still learning "
        "and the ranking is one of speed at this budget.",
        "",
        markdown_table(rows, reference=reference, minutes=request.minutes if "time" in budgets else None),
        "",
        "![Dice vs parameters](dice_vs_parameters.png) ![Dice vs inference time](dice_vs_seconds.png)",
        "",
        "![Learning curves](learning_curves.png)",
        "",
        "![Per-case Dice](per_case_dice.png)",
    ]
    if with_fields:
        lines += ["", "Effective receptive field (gradient of the central output voxel's foreground logits w.r.t. the input, "
                  "averaged over validation scans of fold 0, last checkpoint; ERF r50 is the radius holding half of its mass):", "",
                  "![Receptive fields](receptive_fields.png)", ""]
        lines += [f"![{r['model']}](receptive_fields/{r['model']}.png)" for r in rows]
    if failed:
        lines += ["", "Failed runs:", *[f"- {line}" for line in failed]]
    return "\n".join(lines) + "\n"


# --- bookkeeping ------------------------------------------------------------------------------


def _record_request(request: CompareRequest, dataset: Path, splits_file: Path) -> None:
    """An experiment keeps its budget and folds: rerunning with other ones would mix incomparable runs."""
    recorded = {"task": request.task, "profile": request.profile, "folds": request.folds, "budget": request.budget(), "overrides": list(request.overrides)}
    path = request.out / REQUEST_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = [k for k in recorded if before.get(k) != recorded[k]]
        if changed:
            key = changed[0]
            raise UsageError(f"{request.out} was made with {key} {before.get(key)!r}, not {recorded[key]!r}; rerun with the same options or choose another --out")
        models = list(dict.fromkeys([*before.get("models", []), *request.models]))
    else:
        models = list(request.models)
    request.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({**recorded, "models": models, "dataset": str(dataset), "splits": str(splits_file), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.is_file() else []
    return lines[-1][:200] if lines else "no output"
