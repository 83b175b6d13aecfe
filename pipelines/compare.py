"""`unetr compare`: which model, and how good. Every model trains on the same cross-validation
folds, with the same seed and budget; then each is judged on its validation cases.

The recipe:
1. resolve every model's config (a bad name stops here, before any work) and the dataset's folds;
2. train each (model, fold) as an ordinary run folder EXP/<model>/fold_<k> in a subprocess
   (`unetr train --fold k --resume`): finished runs are skipped, a killed one resumes from its
   last checkpoint, `processes` of them run at once (on several GPUs, each run on one of them);
3. per run: predict its validation cases on their original grids (Dice per case, seconds per scan);
4. per model, once its last fold is done: decide post-processing on the pooled validation
   predictions (EXP/<model>/postprocessing.json) and measure the effective receptive field;
5. write EXP/comparison.csv, EXP/report.md and the plots.
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

from pipelines.postprocess import predict_validation, run_labels, run_postprocess, validation_cases
from pipelines.scheduling import GpuPool, visible_gpus
from unetr_app.config import DEFAULT_PROFILE, load_run_config, parse_overrides
from unetr_app.data.dataset import find_dataset_dir, labelled_cases
from unetr_app.data.manifest import load_manifest
from unetr_app.data.splits import load_or_make_splits
from unetr_app.errors import UsageError
from unetr_app.data.transforms import IMAGE
from unetr_app.evaluation.comparison import (
    markdown_table, model_rows, plot_case_dice, plot_dice_against, plot_learning_curves, plot_receptive_field_overview, to_csv,
)
from unetr_app.evaluation.postprocess import Postprocessing, case_dice
from unetr_app.evaluation.receptive_field import effective_receptive_field, plot_receptive_field, radius_of_mass
from unetr_app.inference.predictor import PredictSettings, Predictor
from unetr_app.io.atomic import atomic_path, atomic_write_text
from unetr_app.io.checkpoint import load_model
from unetr_app.io.run_dir import CV_RESULTS_FILE, RunDir
from unetr_app.io.scans import read_volume, source_for

log = logging.getLogger(__name__)
REQUEST_FILE = "compare.json"
RESULTS_FILE = CV_RESULTS_FILE  # spelled in io/run_dir.py with the run folder's other files


@dataclass(frozen=True)
class CompareRequest:
    task: str
    models: tuple[str, ...]
    out: Path
    folds: int = 3
    steps: int | None = None
    minutes: float | None = None
    epochs: int | None = None
    profile: str = DEFAULT_PROFILE
    data_dir: Path | None = None
    processes: int | None = None  # default: one run per visible GPU, else 1
    device: str = "auto"
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, for every model
    receptive_field: bool = True

    def budget(self) -> dict:
        return {k: v for k, v in (("steps", self.steps), ("minutes", self.minutes), ("epochs", self.epochs)) if v is not None}


@dataclass
class RunResult:
    model: str
    fold: int
    run_dir: str
    status: str = "pending"  # already done | new | resumed | failed
    error: str = ""
    parameters: int | None = None
    train_seconds: float | None = None
    best_val_dice: float | None = None
    case_dice: dict[str, float] = field(default_factory=dict)  # on the original grids
    case_dice_postprocessed: dict[str, float] = field(default_factory=dict)
    seconds_per_scan: float | None = None
    history: list[dict] = field(default_factory=list)
    config: str = ""  # what `--model` gets: a registered name or a configs/models YAML


def model_label(name: str) -> str:
    """A model's folder and name in the report: its registered name, or its YAML file's stem."""
    return Path(name).stem if Path(name).suffix in (".yaml", ".yml") else name


def run_compare(request: CompareRequest, on_event=None) -> dict:
    """Train, judge and report every model; returns {"runs": [RunResult], "models": [summary rows]}."""
    say = on_event or (lambda message: log.info(message))
    if len(set(request.models)) != len(request.models) or not request.models:
        raise UsageError(f"--models {','.join(request.models)!r}: give each model once")
    configs = {name: load_run_config(request.task, name, request.profile, parse_overrides(list(request.overrides))) for name in request.models}
    first = next(iter(configs.values()))
    dataset = find_dataset_dir(first.task, request.data_dir)
    splits, splits_file = load_or_make_splits(dataset, labelled_cases(dataset, load_manifest(first.task.manifest)), request.folds)
    _record_request(request, dataset, splits_file)

    runs = [RunResult(model_label(name), fold, str(request.out / model_label(name) / f"fold_{fold}"), config=name) for name in request.models for fold in range(len(splits))]
    say(f"{len(runs)} runs ({len(request.models)} models x {len(splits)} folds) in {request.out}; folds from {splits_file}")
    gpus = visible_gpus(request.device)
    pool = GpuPool(request.processes or max(1, len(gpus)), gpus)
    pool.map(lambda run: _train(run, request, dataset, say, pool), runs)
    for run in runs:
        if run.status != "failed":
            _judge(run, request.device, say)
    extras = {}
    for name in map(model_label, request.models):
        model_runs = [r for r in runs if r.model == name]
        if all(r.status != "failed" for r in model_runs):
            extras[name] = {"postprocessing": _postprocess(request.out / name, model_runs, request.device, say)}
            if request.receptive_field:
                extras[name]["erf_r50_mm"] = _receptive_field(request.out, model_runs[0], say)
    rows = write_report(request, [asdict(r) for r in runs], extras, splits_file)
    return {"runs": runs, "rows": rows, "dataset": str(dataset), "splits": str(splits_file)}


# --- training ---------------------------------------------------------------------------------


def _train(run: RunResult, request: CompareRequest, dataset: Path, say, pool: GpuPool) -> RunResult:
    run_dir = RunDir(run.run_dir)
    if run_dir.is_finished:
        run.status = "already done"
        return _read_training(run)
    run.status = "resumed" if run_dir.last.is_file() else "new"
    say(f"{run.model} fold {run.fold}: {'resuming' if run.status == 'resumed' else 'training'}")
    run_dir.path.mkdir(parents=True, exist_ok=True)
    returncode = pool.run(_train_command(run, request, dataset), run_dir.train_log)
    if returncode != 0 or not run_dir.is_finished:
        run.status, run.error = "failed", _last_line(run_dir.train_log)
        say(f"{run.model} fold {run.fold}: failed ({run.error}); see {run_dir.train_log}")
        return run
    say(f"{run.model} fold {run.fold}: done")
    return _read_training(run)


def _train_command(run: RunResult, request: CompareRequest, dataset: Path) -> list[str]:
    command = [sys.executable, "-m", "unetr_app", "train", "--data-dir", str(dataset), "--out", run.run_dir, "--device", request.device]
    for key, value in request.budget().items():
        command += [f"--{key}", str(value)]
    if RunDir(run.run_dir).is_started:  # a killed run continues as it was recorded
        return [*command, "--resume"]
    command += ["--task", request.task, "--model", run.config, "--profile", request.profile, "--fold", str(run.fold), "--folds", str(request.folds)]
    for pair in request.overrides:
        command += ["--set", pair]
    return command


def _read_training(run: RunResult) -> RunResult:
    run_dir = RunDir(run.run_dir)
    summary = run_dir.read_summary()
    run.parameters, run.train_seconds, run.best_val_dice = summary.get("parameters"), summary.get("seconds"), summary.get("best_val_dice")
    run.history = run_dir.read_metrics()
    return run


# --- judging ----------------------------------------------------------------------------------


def _judge(run: RunResult, device: str, say) -> None:
    """Dice per validation case on the original grid and seconds per scan; measured once, kept in RUN/cv_results.json."""
    results = Path(run.run_dir) / RESULTS_FILE
    if not results.is_file():
        say(f"{run.model} fold {run.fold}: predicting its validation cases")
        records = predict_validation(Path(run.run_dir), device)
        seconds = [r.seconds for r in records if r.seconds]
        labels = run_labels(Path(run.run_dir))
        dice = {c.name: case_dice(c.prediction, c.reference, labels) for c in validation_cases(Path(run.run_dir))}
        atomic_write_text(results, json.dumps({"case_dice": dice, "seconds_per_scan": float(np.mean(seconds)) if seconds else None}, indent=2))
    data = json.loads(results.read_text(encoding="utf-8"))
    run.case_dice, run.seconds_per_scan = data["case_dice"], data["seconds_per_scan"]


def _postprocess(model_dir: Path, runs: list[RunResult], device: str, say) -> str:
    decision_file = RunDir(model_dir).postprocessing
    if not decision_file.is_file():
        say(f"{model_dir.name}: deciding post-processing on {sum(len(r.case_dice) for r in runs)} validation cases")
        run_postprocess(model_dir, device)
    steps = Postprocessing.from_dict(json.loads(decision_file.read_text(encoding="utf-8")))
    for run in runs:
        labels = run_labels(Path(run.run_dir))
        run.case_dice_postprocessed = {
            c.name: case_dice(steps.apply(c.prediction, c.spacing), c.reference, labels) for c in validation_cases(Path(run.run_dir))
        }
    return describe(steps)


def describe(steps: Postprocessing) -> str:
    parts = [f"largest component of label {v}" for v in steps.largest_component]
    parts += [f"label {v}: drop < {mm3:g} mm3" for v, mm3 in steps.min_volume_mm3.items()]
    return "; ".join(parts) or "none"


def _receptive_field(out: Path, run: RunResult, say, max_scans: int = 4) -> float:
    """ERF of the model's first fold over (up to `max_scans` of) its validation scans; cached in EXP/receptive_fields/."""
    target = out / "receptive_fields" / f"{run.model}.npz"
    if not target.is_file():
        say(f"{run.model}: measuring the effective receptive field")
        loaded = load_model(Path(run.run_dir), "cpu")  # its best checkpoint
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
    rows = model_rows(runs, extras)
    if not rows:
        return rows
    atomic_write_text(out / "comparison.csv", to_csv(rows))
    plot_dice_against(rows, "parameters", "parameters (millions)", out / "dice_vs_parameters.png", log_x=True)
    plot_dice_against(rows, "seconds_per_scan", "inference seconds per scan", out / "dice_vs_seconds.png")
    plot_learning_curves(runs, out / "learning_curves.png")
    plot_case_dice(runs, out / "per_case_dice.png")
    fields = {r["model"]: np.load(out / "receptive_fields" / f"{r['model']}.npz")["erf"] for r in rows if (out / "receptive_fields" / f"{r['model']}.npz").is_file()}
    if fields:
        plot_receptive_field_overview(fields, out / "receptive_fields.png")
    atomic_write_text(out / "report.md", _markdown(request, rows, runs, splits_file, bool(fields)))
    return rows


def _markdown(request: CompareRequest, rows: list[dict], runs: list[dict], splits_file: Path, with_fields: bool) -> str:
    budget = ", ".join(f"{k} {v}" for k, v in request.budget().items()) or "the profile's budget"
    failed = [f"{r['model']} fold {r['fold']}: {r['error']}" for r in runs if r["status"] == "failed"]
    lines = [
        f"# Model comparison: {request.task}",
        "",
        f"{len(rows)} models, {request.folds}-fold cross-validation (folds: `{splits_file}`), profile `{request.profile}`, "
        f"budget per run: {budget}; the same seed for every run. Dice is the mean foreground Dice of each validation case "
        "on its original grid (best checkpoint, no test-time augmentation); a fold's score is the mean over its cases.",
        "",
        markdown_table(rows),
        "",
        "![Dice vs parameters](dice_vs_parameters.png) ![Dice vs inference time](dice_vs_seconds.png)",
        "",
        "![Learning curves](learning_curves.png)",
        "",
        "![Per-case Dice](per_case_dice.png)",
    ]
    if with_fields:
        lines += ["", "Effective receptive field (gradient of the central output voxel's foreground logits w.r.t. the input, "
                  "averaged over validation scans of fold 0; ERF r50 is the radius holding half of its mass):", "",
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
