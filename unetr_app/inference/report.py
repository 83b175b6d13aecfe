"""What a prediction run tells its user: `predict_report.json` and `statistics.csv`.

The report carries the checkpoint's `labels` ({name: value}) at the top level, so review tools can
name the mask values without opening the checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unetr_app.io.atomic import atomic_write_text

REPORT_NAME = "predict_report.json"
STATISTICS_NAME = "statistics.csv"
QC_NAME = "qc.csv"
QC_COLUMNS = ("predicted_dice", "risk", "flag", "agreement", "entropy", "border_fraction", "volume_ml", "volume_z", "intensity_distance")
OK, FAILED, SKIPPED = "ok", "failed", "skipped"


@dataclass
class CaseRecord:
    case: str
    input: str
    status: str
    output: str | None = None
    error: str | None = None
    seconds: float = 0.0
    volumes: dict[str, dict[str, float]] = field(default_factory=dict)  # label name -> voxels, ml
    warnings: list[str] = field(default_factory=list)  # e.g. intensities unlike the training data's
    quality: dict[str, Any] = field(default_factory=dict)  # predicted_dice, risk, flag and the signals (quality.context)
    forward_passes: int = 0  # whole-scan network passes (members x mirrors)


def label_volumes(labels: np.ndarray, voxel_ml: float, names: dict[str, int]) -> dict[str, dict[str, float]]:
    """Voxel count and volume (mL) of every foreground label, including those predicted nowhere."""
    counts = np.bincount(labels.ravel(), minlength=max(names.values()) + 1)
    return {
        name: {"voxels": int(counts[value]), "ml": round(float(counts[value]) * voxel_ml, 4)}
        for name, value in sorted(names.items(), key=lambda item: item[1])
        if value != 0
    }


def build_report(records: list[CaseRecord], labels: dict[str, int], run: dict[str, Any]) -> dict[str, Any]:
    counts = {status: sum(r.status == status for r in records) for status in (OK, FAILED, SKIPPED)}
    return {
        "labels": dict(labels),
        **run,
        "summary": {"cases": len(records), **counts, "seconds": round(sum(r.seconds for r in records), 3)},
        "cases": [asdict(r) for r in records],
    }


def write_report(output_dir: Path, report: dict[str, Any]) -> Path:
    """Write predict_report.json and statistics.csv (both atomically)."""
    path = Path(output_dir) / REPORT_NAME
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(Path(output_dir) / STATISTICS_NAME, statistics_csv(report))
    if any(case.get("quality") for case in report["cases"]):
        atomic_write_text(Path(output_dir) / QC_NAME, qc_csv(report))
    return path


def qc_csv(report: dict[str, Any]) -> str:
    """One row per case: the quality estimate and the signals behind it (blank for failed or skipped cases)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "status", *QC_COLUMNS, "forward_passes"])
    for case in report["cases"]:
        quality = case.get("quality") or {}
        writer.writerow([case["case"], case["status"], *["" if quality.get(c) is None else quality[c] for c in QC_COLUMNS], case.get("forward_passes", "")])
    return buffer.getvalue()


def statistics_csv(report: dict[str, Any]) -> str:
    names = [n for n, v in sorted(report["labels"].items(), key=lambda item: item[1]) if v != 0]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "status", *[f"{n}_{unit}" for n in names for unit in ("voxels", "ml")]])
    for case in report["cases"]:
        values = [case["volumes"].get(n, {}).get(unit, "") for n in names for unit in ("voxels", "ml")]
        writer.writerow([case["case"], case["status"], *values])
    return buffer.getvalue()
