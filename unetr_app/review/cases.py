"""Which scan goes with which prediction (and reference), and what the labels are called.

A case is a scan in IMAGES_DIR (NIfTI, NRRD, MetaImage or a DICOM series, named as `unetr predict`
names them: `spleen_3.nii.gz` and `spleen_3_0000.nii.gz` are both case `spleen_3`) with a mask
`PRED_DIR/<case>.nii.gz`; the reference, when given, is the file of the same case in LABEL_DIR.
Cases come in natural name order, or by the risk `unetr predict` wrote to PRED_DIR/qc.csv
(highest first), so a reviewer with time for a few cases sees the likeliest failures.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from unetr_app.errors import InputError, UsageError
from unetr_app.io.scans import CaseSource, find_cases, nifti_output_path
from unetr_app.quality.judging import read_qc_table

log = logging.getLogger(__name__)

REPORT_NAME = "predict_report.json"
QC_NAME = "qc.csv"
ORDERS = ("name", "risk")
# Colours by label value (RGB, 0..1): saturated, far from grey, so an overlay stays visible on CT.
PALETTE = (
    (0.90, 0.10, 0.12), (0.10, 0.45, 0.90), (0.15, 0.75, 0.25), (1.00, 0.60, 0.00), (0.65, 0.25, 0.80),
    (0.00, 0.80, 0.80), (1.00, 0.90, 0.10), (0.95, 0.40, 0.70), (0.55, 0.35, 0.15), (0.50, 0.90, 0.50),
)


@dataclass(frozen=True)
class ReviewCase:
    name: str
    image: CaseSource
    prediction: Path
    reference: CaseSource | None = None


def find_review_cases(images_dir: Path, pred_dir: Path, labels_dir: Path | None = None) -> list[ReviewCase]:
    """Every scan that has a prediction, in natural order (spleen_2 before spleen_10)."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise UsageError(f"{pred_dir}: no such predictions folder; run `unetr predict` first")
    references = {source.name: source for source in find_cases(labels_dir)} if labels_dir else {}
    cases, missing = [], []
    for source in find_cases(images_dir):
        prediction = nifti_output_path(pred_dir, source.name)
        if prediction.is_file():
            cases.append(ReviewCase(source.name, source, prediction, references.get(source.name)))
        else:
            missing.append(source.name)
    if missing:
        log.warning("%d scan(s) without a prediction in %s are left out: %s", len(missing), pred_dir, ", ".join(missing[:5]))
    if not cases:
        raise UsageError(f"{pred_dir}: no prediction matches a scan in {images_dir} (expected files named <case>.nii.gz)")
    return sorted(cases, key=lambda case: natural_key(case.name))


def read_quality(pred_dir: Path) -> dict[str, dict]:
    """{case: {predicted_dice, risk, flag}} from PRED_DIR/qc.csv; {} when there is none."""
    path = Path(pred_dir) / QC_NAME
    return read_qc_table(path) if path.is_file() else {}


def order_cases(cases: list[ReviewCase], quality: dict[str, dict], order: str) -> list[ReviewCase]:
    """`cases` by name (natural order) or by risk, highest first; ties and cases without a risk
    (failed in prediction, or predicted later) keep the name order, the latter at the end."""
    if order not in ORDERS:
        raise UsageError(f"--order {order!r}: expected one of {', '.join(ORDERS)}")
    by_name = sorted(cases, key=lambda case: natural_key(case.name))
    if order == "name":
        return by_name
    return sorted(by_name, key=lambda case: -quality[case.name]["risk"] if case.name in quality else float("inf"))


def read_channel_names(images_dir: Path) -> dict[int, str]:
    """{channel: name} from a dataset.json beside or above the scans (MSD's "modality", nnU-Net v2's
    "channel_names"); {} without one."""
    for path in (Path(images_dir) / "dataset.json", Path(images_dir).parent / "dataset.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                names = data.get("channel_names") or data.get("modality") or {}
                return {int(k): str(v) for k, v in names.items()}
            except (ValueError, TypeError, AttributeError):
                log.warning("%s: no readable channel names; channels are numbered", path)
    return {}


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_label_names(pred_dir: Path) -> dict[int, str]:
    """{value: name} of the foreground labels from `predict_report.json`; {} when there is none."""
    report_path = Path(pred_dir) / REPORT_NAME
    if not report_path.is_file():
        return {}
    try:
        labels = json.loads(report_path.read_text(encoding="utf-8")).get("labels", {})
        names = {int(value): str(name) for name, value in labels.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise InputError(f"{report_path}: unreadable label names ({err}); expected \"labels\": {{name: value}}") from None
    return {value: name for value, name in names.items() if value != 0}


def label_name(names: dict[int, str], value: int) -> str:
    return names.get(int(value), f"label_{int(value)}")


def label_color(value: int) -> tuple[float, float, float, float]:
    """RGBA of a foreground label value; the same value always gets the same colour."""
    return (*PALETTE[(int(value) - 1) % len(PALETTE)], 1.0)
