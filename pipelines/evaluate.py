"""`unetr evaluate`: predicted masks against reference masks, case by case.

The recipe: pair the cases by name (listing those found on one side only); read each pair; check
they share a grid; compute Dice, HD95 and surface Dice per label in mm; write a CSV row per case and
label plus a summary JSON with the mean per label.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from unetr_app.errors import InputError
from unetr_app.evaluation import case_metrics
from unetr_app.io.scans import CaseSource, find_cases, read_volume
from unetr_app.inference.report import REPORT_NAME
from unetr_app.io.atomic import atomic_write_text

CSV_NAME, SUMMARY_NAME = "evaluation.csv", "evaluation_summary.json"
METRICS = ("dice", "hd95_mm", "nsd")


def run_evaluate(pred_dir: Path, label_dir: Path, out_dir: Path, tolerance_mm: float = 2.0) -> dict:
    predictions = {c.name: c for c in find_cases(pred_dir)}
    references = {c.name: c for c in find_cases(label_dir)}
    paired = sorted(predictions.keys() & references.keys())
    labels = _label_names(pred_dir, [references[name] for name in paired])
    rows, failed = [], {}
    for name in paired:
        try:
            per_label = _evaluate_pair(predictions[name], references[name], labels, tolerance_mm)
        except InputError as err:
            failed[name] = str(err)
            continue
        rows += [{"case": name, "label": label, **values} for label, values in per_label.items()]
    summary = {
        "labels": labels,
        "tolerance_mm": tolerance_mm,
        "cases_evaluated": len(paired) - len(failed),
        "mean": {label: _means([r for r in rows if r["label"] == label]) for label in labels if labels[label] != 0},
        "missing": {
            "without_label": sorted(predictions.keys() - references.keys()),
            "without_prediction": sorted(references.keys() - predictions.keys()),
        },
        "failed": failed,
        "csv": str(Path(out_dir) / CSV_NAME),
    }
    atomic_write_text(Path(out_dir) / CSV_NAME, _csv(rows, summary))
    atomic_write_text(Path(out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary


def _evaluate_pair(pred: CaseSource, ref: CaseSource, labels: dict[str, int], tolerance_mm: float) -> dict:
    pred_volume, ref_volume = read_volume(pred), read_volume(ref)
    if pred_volume.array.shape != ref_volume.array.shape:
        raise InputError(f"{pred.path}: shape {pred_volume.array.shape} differs from the reference's {ref_volume.array.shape}")
    if not np.allclose(pred_volume.affine, ref_volume.affine, atol=1e-3):
        raise InputError(f"{pred.path}: its affine differs from the reference's; the masks are on different grids")
    spacing = tuple(np.linalg.norm(ref_volume.affine[:3, :3], axis=0))
    pred_labels, ref_labels = np.rint(pred_volume.array).astype(np.int64), np.rint(ref_volume.array).astype(np.int64)
    return case_metrics(pred_labels, ref_labels, spacing, labels, tolerance_mm)


def _label_names(pred_dir: Path, references: list[CaseSource]) -> dict[str, int]:
    """Names from predict_report.json beside the predictions, else `label_N` for values present."""
    report = Path(pred_dir) / REPORT_NAME
    if report.is_file():
        labels = json.loads(report.read_text()).get("labels")
        if labels:
            return {str(k): int(v) for k, v in labels.items()}
    values = set()
    for case in references:
        values |= set(np.unique(np.rint(read_volume(case).array)).astype(int).tolist())
    return {"background": 0, **{f"label_{v}": v for v in sorted(values - {0})}}


def _means(rows: list[dict]) -> dict[str, float | None]:
    means = {}
    for metric in METRICS:
        values = [r[metric] for r in rows if r[metric] is not None]
        means[metric] = float(np.mean(values)) if values else None
    return means


def _csv(rows: list[dict], summary: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "label", *METRICS, "status"])
    for row in rows:
        writer.writerow([row["case"], row["label"], *["" if row[m] is None else f"{row[m]:.6g}" for m in METRICS], "ok"])
    for status, cases in (("missing_label", summary["missing"]["without_label"]), ("missing_prediction", summary["missing"]["without_prediction"])):
        writer.writerows([case, "", "", "", "", status] for case in cases)
    writer.writerows([case, "", "", "", "", f"failed: {error}"] for case, error in summary["failed"].items())
    return buffer.getvalue()
