"""A model card: what a trained model is, for someone who did not train it.

`build_card(FOLDER)` reads only what the run recorded (config.yaml, split.json, summary.json,
metrics.jsonl, fingerprint.json, compare_scores.json, postprocessing.json, the qc files of `unetr qc`,
the data manifest) and the checkpoints' bytes (their sha256). FOLDER is one run, or an experiment:
a folder of fold runs of one model (`unetr compare`'s OUT/MODEL, or `unetr train --fold` runs side
by side), whose validation Dice is then the cross-validation's.

Validation Dice, per case: `compare_scores.json` where `unetr compare` measured it (the last
checkpoint, on each scan's own grid: nothing was chosen on those cases), otherwise the metrics line
of the best step, where the best checkpoint was chosen on those same cases and the card says it is
an optimistic estimate. Dice per label
needs the label masks: read from RUN/validation/ where present (`unetr postprocess`, `unetr qc`);
with one foreground label the per-case Dice is that label's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from unetr_app.data.fingerprint import FINGERPRINT_NAME
from unetr_app.errors import UsageError
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.checkpoint import checkpoint_files
from unetr_app.io.run_dir import CONFIG_FILE, POSTPROCESSING_FILE, SPLIT_FILE, RunDir
from unetr_app.quality.calibration import TEMPERATURE_NAME
from unetr_app.quality.model import QC_MODEL_NAME

CARD_MARKDOWN = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
CARD_VERSION = 1
FAILURE_CASES = 3  # lowest-Dice validation cases named on the card


def find_card_runs(folder: Path) -> list[RunDir]:
    """The run itself, or the runs one or two levels below an experiment folder."""
    folder = Path(folder)
    if RunDir(folder).is_started:
        return [RunDir(folder)]
    found = sorted({p.parent for pattern in (f"*/{CONFIG_FILE}", f"*/*/{CONFIG_FILE}") for p in folder.glob(pattern)})
    return [RunDir(p) for p in found if (p / SPLIT_FILE).is_file()]


def build_card(folder: Path) -> dict[str, Any]:
    """The card of the run or experiment in `folder`, as plain data (model_card.json)."""
    folder = Path(folder)
    runs = _runs_of_one_model(folder)
    configs = [run.read_config_dict() for run in runs]
    summaries = [run.read_summary() if run.is_finished else {} for run in runs]
    config, summary = configs[0], summaries[0]
    labels = dict(config["task"]["labels"])
    manifest = _manifest(config["task"].get("manifest"))
    splits = [run.read_split() for run in runs]
    card = {
        "card_version": CARD_VERSION,
        "name": folder.resolve().name,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "kind": "run" if runs[0].path == folder else "experiment",
        "runs": [str(run.path.relative_to(folder)) if run.path != folder else "." for run in runs],
        "intended_use": _intended_use(config, labels),
        "task": {"name": config["task"]["name"], "modality": config["task"].get("modality"),
                 "channels": config["task"].get("channels"), "labels": labels},
        "data": _data(config, manifest, splits, summaries, runs[0]),
        "preprocessing": config["preprocessing"],
        "model": {"name": config["model"]["name"], "params": config["model"].get("params", {}), "parameters": summary.get("parameters")},
        "recipe": {"name": config["recipe"]["name"], "params": config["recipe"].get("params", {}), "optimizer": config["optimizer"],
                   "schedule": config["schedule"], "loss": config["loss"], "budget": config["training"]["budget"],
                   "batch_size": config["training"]["batch_size"], "crops_per_volume": config["training"].get("num_samples"),
                   "precision": summary.get("precision", "not recorded"), "seed": config["training"].get("seed"),
                   "steps": [s.get("steps") for s in summaries], "epochs": [s.get("epochs") for s in summaries]},
        "compute": {"device": summary.get("device"), "processes": summary.get("processes"),
                    "seconds": [s.get("seconds") for s in summaries], "finished": all(run.is_finished for run in runs)},
        "validation": _validation(runs, summaries, labels),
        "postprocessing": _first_json([folder, *(r.path for r in runs)], POSTPROCESSING_FILE),
        "calibration": _calibration(folder, runs),
        "quality_model": _quality_model(folder, runs),
        "weights": _weights(folder, runs),
    }
    card["failure_modes"] = _failure_modes(card)
    return card


def write_card(folder: Path) -> tuple[Path, Path]:
    """Write FOLDER/MODEL_CARD.md and FOLDER/model_card.json; returns both paths."""
    card = build_card(folder)
    json_path, markdown_path = Path(folder) / CARD_JSON, Path(folder) / CARD_MARKDOWN
    atomic_write_text(json_path, json.dumps(card, indent=2) + "\n")
    atomic_write_text(markdown_path, render_markdown(card))
    return markdown_path, json_path


def _runs_of_one_model(folder: Path) -> list[RunDir]:
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; give a run folder (the --out of `unetr train`) or an experiment folder of fold runs")
    runs = find_card_runs(folder)
    if not runs:
        raise UsageError(f"{folder}: not a run (no {CONFIG_FILE} and {SPLIT_FILE}, here or in its subfolders); "
                         "give the --out folder of `unetr train`, or an experiment folder of fold runs")
    models = sorted({run.read_config_dict()["model"]["name"] for run in runs})
    if len(models) > 1:
        raise UsageError(f"{folder}: holds runs of {len(models)} models ({', '.join(models)}); a card describes one model: "
                         f"give the folder of one model's runs, e.g. {runs[0].path.parent}")
    return runs


# --- sections ------------------------------------------------------------------------------------


def _intended_use(config: dict, labels: dict[str, int]) -> str:
    names = ", ".join(name for name, value in labels.items() if value)
    modality = config["task"].get("modality") or "medical"
    return (f"Research only, not for diagnostic use. Segments {names} in {modality} scans like its training data "
            f"(task {config['task']['name']}); `unetr predict` warns about scans unlike them.")


def _manifest(name: str | None):
    from unetr_app.data.manifest import load_manifest
    from unetr_app.errors import ConfigError

    try:
        return load_manifest(name)
    except ConfigError:  # a task whose manifest is not installed here: the card says "not recorded"
        return None


def _data(config, manifest, splits, summaries, first: RunDir) -> dict[str, Any]:
    train = {c.get("case", str(c.get("image"))) for s in splits for c in s["train"]}
    validation = {c.get("case", str(c.get("image"))) for s in splits for c in s["validation"]}
    fingerprint = _read_json(first.file(FINGERPRINT_NAME))
    return {
        "dataset": manifest.name if manifest else config["task"].get("dataset_dir") or config["task"]["name"],
        "description": manifest.description if manifest else None,
        "licence": manifest.license if manifest else None,
        "citation": manifest.source.citation if manifest else None,
        "homepage": manifest.source.homepage if manifest else None,
        "cases": len(train | validation),
        "train_cases_per_run": [len(s["train"]) for s in splits],
        "validation_cases_per_run": [len(s["validation"]) for s in splits],
        "folds": [s.get("fold") for s in splits],
        "fingerprint": fingerprint,
        "plan": config.get("profile"),
    }


def _validation(runs: list[RunDir], summaries: list[dict], labels: dict[str, int]) -> dict[str, Any]:
    """Dice per validation case (pooled over runs), per label where the masks allow, with spread."""
    foreground = {name: value for name, value in labels.items() if value}
    cases, per_label, sources = {}, {name: {} for name in foreground}, set()
    for run, summary in zip(runs, summaries):
        recorded, source = _case_dice(run, summary)
        sources.add(source)
        cases.update({f"{run.path.name}/{c}" if len(runs) > 1 else c: d for c, d in recorded.items()})
        for name, values in _label_dice(run, foreground).items():
            per_label[name].update({f"{run.path.name}/{c}" if len(runs) > 1 else c: d for c, d in values.items()})
    if len(foreground) == 1:
        per_label = {next(iter(foreground)): dict(cases)}
    return {
        "selection": ("the last checkpoint, which nothing chose on these cases" if sources <= {LAST_SOURCE}
                      else "the best checkpoint was chosen on these validation cases: an optimistic estimate"),
        "source": sorted(sources),
        "dice": _spread(list(cases.values())),
        "dice_per_run": [s.get("best_val_dice") for s in summaries],
        "dice_per_label": {name: _spread(list(values.values())) if values else None for name, values in per_label.items()},
        "case_dice": cases,
    }


LAST_SOURCE = "compare_scores.json (last checkpoint, each scan's own grid)"


def _case_dice(run: RunDir, summary: dict) -> tuple[dict[str, float], str]:
    scores = _read_json(run.compare_scores)
    if scores and scores.get("case_dice"):
        return {c: float(d) for c, d in scores["case_dice"].items()}, LAST_SOURCE
    best = summary.get("best_step")
    for line in reversed(run.read_metrics()):
        if "val_dice_per_case" in line and (best is None or line["step"] == best):
            return {c: float(d) for c, d in line["val_dice_per_case"].items()}, "metrics.jsonl (best step, training grid)"
    return {}, "none recorded"


def _label_dice(run: RunDir, foreground: dict[str, int]) -> dict[str, dict[str, float]]:
    if len(foreground) < 2 or not run.validation.is_dir():
        return {}
    import nibabel as nib

    from unetr_app.io.scans import read_volume, source_for
    from unetr_app.quality.signals import dice

    out: dict[str, dict[str, float]] = {name: {} for name in foreground}
    for case in run.read_split()["validation"]:
        source = source_for(case["image"])
        predicted = run.validation / f"{source.name}.nii.gz"
        if not predicted.is_file():
            continue
        mask = np.asarray(nib.load(predicted).dataobj)
        reference = np.rint(read_volume(source_for(case["label"])).array)
        for name, value in foreground.items():
            out[name][source.name] = float(dice(mask == value, reference == value))
    return out


def _spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()), "cases": len(values)}


def _calibration(folder: Path, runs: list[RunDir]) -> dict | None:
    data = _first_json([folder, *(r.path for r in runs)], TEMPERATURE_NAME)
    if data is None:
        return None
    return {"temperature": data.get("temperature"), "ece_validation": data.get("ece_validation"),
            "validation_cases": data.get("validation_cases")}


def _quality_model(folder: Path, runs: list[RunDir]) -> dict | None:
    data = _first_json([folder, *(r.path for r in runs)], QC_MODEL_NAME)
    if data is None:
        return None
    return {"kind": data.get("kind"), "cases": data.get("cases"), "dice_mean": data.get("dice_mean"),
            "dice_min": data.get("dice_min"), "features": [fit["features"] for fit in data.get("fits", [])]}


def _weights(folder: Path, runs: list[RunDir]) -> list[dict[str, Any]]:
    files = []
    for run in runs:
        for checkpoint in (run.best, run.last):
            for path in checkpoint_files(checkpoint):
                if path.is_file():
                    files.append({"file": str(path.relative_to(folder)), "bytes": path.stat().st_size, "sha256": sha256(path)})
    return files


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _failure_modes(card: dict) -> list[str]:
    """What the record shows the model gets wrong or was never shown."""
    notes = []
    worst = sorted(card["validation"]["case_dice"].items(), key=lambda item: item[1])[:FAILURE_CASES]
    if worst:
        notes.append("lowest validation Dice: " + ", ".join(f"{case} {d:.3f}" for case, d in worst))
    for channel in (card["data"]["fingerprint"] or {}).get("channels", []):
        notes.append(f"trained on {channel['name']} ({channel['modality']}) intensities {channel['percentile_00_5']:.4g} .. "
                     f"{channel['percentile_99_5']:.4g} (0.5-99.5 percentiles inside the body); scans outside are unlike its data")
    spacing = card["preprocessing"].get("spacing")
    notes.append(f"predicts at {spacing} mm; structures smaller than a few voxels there are lost")
    if not card["compute"]["finished"]:
        notes.append("a run did not finish: its checkpoints are from part of the budget")
    return notes


def _first_json(folders: list[Path], name: str) -> dict | None:
    for folder in folders:
        data = _read_json(Path(folder) / name)
        if data is not None:
            return data
    return None


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if Path(path).is_file() else None


# --- markdown ----------------------------------------------------------------------------------


def render_markdown(card: dict) -> str:
    data, validation, recipe, compute = card["data"], card["validation"], card["recipe"], card["compute"]
    lines = [f"# Model card: {card['name']}", "", f"_{card['kind']} of {len(card['runs'])} run(s), written {card['written']} by `unetr card`; "
             f"every number below is from the run's own records ({CARD_JSON} has them all)._", "",
             "## Intended use", "", card["intended_use"], "",
             "## Task", "", f"- task: {card['task']['name']}, modality {card['task']['modality']}",
             f"- labels: {', '.join(f'{v} {k}' for k, v in sorted(card['task']['labels'].items(), key=lambda i: i[1]))}", "",
             "## Data", "",
             f"- dataset: {data['dataset']}" + (f" ({data['description']})" if data["description"] else ""),
             f"- licence: {data['licence'] or 'not recorded (no data manifest)'}" + (f"; cite: {data['citation']}" if data["citation"] else ""),
             f"- cases: {data['cases']}; per run {_pairs(data['train_cases_per_run'], data['validation_cases_per_run'])} (train / validation)"]
    for channel in (data["fingerprint"] or {}).get("channels", []):
        lines.append(f"- fingerprint {channel['name']}: median {channel['percentile_50_0']:.4g}, mean {channel['mean']:.4g}, std {channel['std']:.4g}, "
                     f"0.5-99.5 % {channel['percentile_00_5']:.4g} .. {channel['percentile_99_5']:.4g}")
    pre = card["preprocessing"]
    lines += ["", "## Preprocessing and model", "",
              f"- orientation {pre.get('orientation')}, spacing {pre.get('spacing')} mm, intensity window {pre.get('intensity_window') or 'z-score'}, "
              f"window (ROI) {pre.get('roi_size')}; plan / profile: {data['plan']}",
              f"- model: {card['model']['name']} {card['model']['params']}, {card['model']['parameters'] or '?'} parameters", "",
              "## Recipe and budget", "",
              f"- recipe {recipe['name']}, optimizer {recipe['optimizer'].get('name')} lr {recipe['optimizer'].get('lr')}, "
              f"schedule {recipe['schedule'].get('name')}, loss {recipe['loss'].get('name')}",
              f"- budget {recipe['budget']}; batch {recipe['batch_size']} x {recipe['crops_per_volume']} crops; precision {recipe['precision']}; seed {recipe['seed']}",
              f"- steps per run {recipe['steps']}, epochs {recipe['epochs']}", "",
              "## Compute", "", f"- device {compute['device']}, processes {compute['processes']}, seconds per run {compute['seconds']}", "",
              "## Validation", "", f"{validation['selection']} (source: {'; '.join(validation['source'])}).", "",
              "| label | mean Dice | std | min | max | cases |", "|---|---|---|---|---|---|"]
    rows = {"all labels (mean per case)": validation["dice"], **validation["dice_per_label"]}
    for name, spread in rows.items():
        lines.append(f"| {name} | " + (" | ".join(f"{spread[k]:.4f}" for k in ("mean", "std", "min", "max")) + f" | {spread['cases']} |"
                                       if spread else "not recorded (run `unetr postprocess` to predict the validation cases) | | | | |"))
    lines += ["", "## Calibration and quality control", ""]
    calibration, quality = card["calibration"], card["quality_model"]
    if calibration:
        ece = calibration.get("ece_validation") or {}
        lines.append(f"- temperature per class {calibration['temperature']}; validation ECE {ece.get('before')} -> {ece.get('after')}")
    if quality:
        lines.append(f"- quality model ({quality['kind']}) fitted on {quality['cases']} validation cases (Dice mean {quality['dice_mean']}, min {quality['dice_min']})")
    if not calibration and not quality:
        lines.append("- none recorded (run `unetr qc` on this folder)")
    if card["postprocessing"]:
        lines.append(f"- post-processing: {json.dumps(card['postprocessing'].get('steps', card['postprocessing']))}")
    lines += ["", "## Known failure modes", "", *[f"- {note}" for note in card["failure_modes"]], "",
              "## Weights", "", "| file | bytes | sha256 |", "|---|---|---|",
              *[f"| {w['file']} | {w['bytes']} | `{w['sha256']}` |" for w in card["weights"]], ""]
    if bundle := card.get("bundle"):
        lines += [f"This bundle's {bundle['weights']['file']} holds the weights of {bundle['checkpoint']} "
                  f"(sha256 `{bundle['weights']['sha256']}`).", ""]
    return "\n".join(lines)


def _pairs(a: list, b: list) -> str:
    return ", ".join(f"{x} / {y}" for x, y in zip(a, b))
