"""`unetr evaluate`: predicted masks against reference masks, case by case.

The recipe: pair the cases by name (listing those found on one side only); read each pair; bring
the reference onto the prediction's grid when it is the same grid stored in another voxel order
(axis permutations and flips, e.g. dcm2niix's LAS against SimpleITK's LPS: no interpolation), and
refuse grids that truly differ; compute Dice, HD95 and surface Dice per label in mm; write a CSV row
per case and label plus a summary JSON with the mean per label.

Label names come from `--labels-json`, the checkpoint, predict_report.json beside the predictions,
or the dataset.json above the references, in that order.

Predictions that carry their quality estimates (qc.csv from `unetr predict`) have them judged
against the measured Dice (mean over the foreground labels): the Spearman correlation of
predicted with measured Dice, the risk-coverage curve and its area, and the AUROC of risk for the
cases below `failure_dice`; a PNG of both curves goes beside the summary. Where the probabilities
were saved (<case>_probabilities.npz, already tempered), the expected calibration error is
measured on their voxels (sampled, pooled over cases) after and, by undoing the stored
temperature, before the temperature scaling.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from unetr_app.errors import InputError, UsageError
from unetr_app.evaluation import case_metrics
from unetr_app.inference.report import QC_NAME, REPORT_NAME
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.checkpoint import load_checkpoint, resolve_checkpoint_path
from unetr_app.io.scans import CaseSource, Volume, find_cases, read_volume
from unetr_app.quality.calibration import ece_before_after
from unetr_app.quality.judging import FAILURE_DICE, judge, plot_judgement, read_qc_table

CSV_NAME, SUMMARY_NAME, QUALITY_PLOT_NAME = "evaluation.csv", "evaluation_summary.json", "quality_judgement.png"
METRICS = ("dice", "hd95_mm", "nsd")
GRID_TOLERANCE_MM = 1e-3
PROBABILITIES_SUFFIX = "_probabilities.npz"
CALIBRATION_VOXELS = 200_000  # per case: plenty for 15 bins, bounded memory on whole CT scans


def run_evaluate(
    pred_dir: Path, label_dir: Path, out_dir: Path, tolerance_mm: float = 2.0,
    labels_json: Path | None = None, checkpoint: Path | None = None, failure_dice: float = FAILURE_DICE,
) -> dict:
    predictions = {c.name: c for c in find_cases(pred_dir)}
    references = {c.name: c for c in find_cases(label_dir)}
    paired = sorted(predictions.keys() & references.keys())
    labels = label_names(pred_dir, label_dir, [references[name] for name in paired], labels_json, checkpoint)
    rows, failed, voxels = [], {}, VoxelSample()
    for name in paired:
        try:
            per_label = _evaluate_pair(predictions[name], references[name], labels, tolerance_mm, voxels)
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
    calibration = voxels.calibration()
    summary["quality"] = judge_estimates(Path(pred_dir) / QC_NAME, rows, Path(out_dir), failure_dice, calibration)
    summary["calibration"] = calibration
    atomic_write_text(Path(out_dir) / CSV_NAME, _csv(rows, summary))
    atomic_write_text(Path(out_dir) / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    return summary


def _evaluate_pair(pred: CaseSource, ref: CaseSource, labels: dict[str, int], tolerance_mm: float, voxels: "VoxelSample") -> dict:
    pred_volume, ref_volume = read_volume(pred), read_volume(ref)
    reference = on_grid_of(ref_volume, pred_volume)
    spacing = tuple(np.linalg.norm(pred_volume.affine[:3, :3], axis=0))
    pred_labels, ref_labels = np.rint(pred_volume.array).astype(np.int64), np.rint(reference).astype(np.int64)
    probabilities = pred.path.parent / f"{pred.name}{PROBABILITIES_SUFFIX}"
    if probabilities.is_file():
        voxels.add(probabilities, ref_labels)
    return case_metrics(pred_labels, ref_labels, spacing, labels, tolerance_mm)


def judge_estimates(qc_path: Path, rows: list[dict], out_dir: Path, failure_dice: float, calibration: dict | None) -> dict | None:
    """The judging of qc.csv's predicted Dice and risk against the measured Dice; None without qc.csv."""
    if not qc_path.is_file():
        return None
    table = read_qc_table(qc_path)
    measured = {}
    for row in rows:
        measured.setdefault(row["case"], []).append(row["dice"])
    cases = [case for case in measured if case in table]
    if not cases:
        return {"cases": 0, "without_estimate": sorted(measured)}
    dice = [float(np.mean(measured[case])) for case in cases]
    predicted, risk = [table[c]["predicted_dice"] for c in cases], [table[c]["risk"] for c in cases]
    result = judge(predicted, risk, dice, failure_dice)
    ece = f"; ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} with temperature" if calibration and calibration["cases"] else ""
    plot_judgement(out_dir / QUALITY_PLOT_NAME, predicted, risk, dice, title=f"{len(cases)} cases{ece}")
    return {**result, "without_estimate": sorted(measured.keys() - set(cases)), "plot": str(out_dir / QUALITY_PLOT_NAME),
            "per_case": [{"case": c, "dice": d, "predicted_dice": p, "risk": r} for c, d, p, r in zip(cases, dice, predicted, risk)]}


class VoxelSample:
    """Saved probabilities and reference labels of up to CALIBRATION_VOXELS voxels per case."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.probabilities, self.labels, self.temperature, self.skipped = [], [], None, {}

    def add(self, path: Path, reference: np.ndarray) -> None:
        try:
            with np.load(path) as saved:
                probabilities, temperature = saved["probabilities"], np.asarray(saved["temperature"], np.float32)
        except (OSError, ValueError, KeyError) as err:
            self.skipped[path.name] = f"unreadable ({' '.join(str(err).split())})"
            return
        if probabilities.shape[1:] != reference.shape or reference.max(initial=0) >= probabilities.shape[0]:
            self.skipped[path.name] = f"probabilities {probabilities.shape} do not fit the reference {reference.shape}"
            return
        if self.temperature is not None and not np.allclose(self.temperature, temperature):
            self.skipped[path.name] = f"temperature {temperature.tolist()} differs from the other cases' {self.temperature.tolist()}"
            return
        self.temperature = temperature
        flat = probabilities.reshape(probabilities.shape[0], -1)
        pick = self.rng.choice(flat.shape[1], CALIBRATION_VOXELS, replace=False) if flat.shape[1] > CALIBRATION_VOXELS else slice(None)
        self.probabilities.append(flat[:, pick].astype(np.float32))
        self.labels.append(reference.reshape(-1)[pick])

    def calibration(self) -> dict | None:
        """{ece_before, ece_after, temperature, cases, voxels}; None without saved probabilities."""
        if not self.probabilities:
            return {"cases": 0, "skipped": self.skipped} if self.skipped else None
        probabilities, labels = np.concatenate(self.probabilities, axis=1), np.concatenate(self.labels)
        return {**ece_before_after(probabilities, self.temperature, labels), "temperature": self.temperature.tolist(),
                "cases": len(self.probabilities), "voxels": int(labels.size), "skipped": self.skipped}


def on_grid_of(ref: Volume, pred: Volume) -> np.ndarray:
    """The reference's voxels in the prediction's voxel order, when both lie on one physical grid.

    `inv(ref.affine) @ pred.affine` maps prediction voxels to reference voxels; for the same grid in
    another voxel order it is a signed permutation (plus the offset of the flipped axes), and the
    reference is transposed and flipped exactly. Anything else is a different grid, refused."""
    if ref.array.ndim != 3 or pred.array.ndim != 3:
        raise InputError(f"{ref.source.path}: masks must be 3D label maps (shapes {pred.array.shape} and {ref.array.shape})")
    to_ref = np.linalg.inv(ref.affine) @ pred.affine
    rotation = to_ref[:3, :3]
    axes = np.abs(rotation).argmax(axis=0)  # prediction axis i runs along reference axis axes[i]
    signs = np.sign(rotation[axes, range(3)])
    array = ref.array.transpose(axes)
    array = np.flip(array, axis=tuple(i for i in range(3) if signs[i] < 0))
    order = np.zeros((4, 4))
    order[3, 3] = 1
    for i, (j, s) in enumerate(zip(axes, signs)):
        order[j, i], order[j, 3] = s, 0 if s > 0 else ref.array.shape[j] - 1
    reason = None
    if sorted(axes) != [0, 1, 2]:
        reason = "its axes are oblique to the prediction's"
    elif array.shape != pred.array.shape:
        reason = f"shape {ref.array.shape} ({_axcodes(ref)}) holds a different grid than the prediction's {pred.array.shape} ({_axcodes(pred)})"
    else:
        offset = float(np.abs(ref.affine @ order - pred.affine).max())
        if offset > GRID_TOLERANCE_MM:
            reason = f"its grid differs from the prediction's by up to {offset:.3g} mm (not a reordering of the same voxels)"
    if reason:
        raise InputError(f"{ref.source.path}: refused: {reason}")
    return np.ascontiguousarray(array)


def _axcodes(volume: Volume) -> str:
    return "".join(nib.aff2axcodes(volume.affine))


def label_names(
    pred_dir: Path, label_dir: Path, references: list[CaseSource], labels_json: Path | None = None, checkpoint: Path | None = None
) -> dict[str, int]:
    """{name: value} from the first of: --labels-json, --checkpoint, predict_report.json beside the
    predictions, a dataset.json beside or above the references; else `label_N` for values present."""
    if labels_json is not None:
        try:
            return parse_label_map(json.loads(Path(labels_json).read_text(encoding="utf-8")), labels_json)
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"--labels-json {labels_json}: not a readable JSON file ({err})") from None
    if checkpoint is not None:
        return {str(k): int(v) for k, v in load_checkpoint(resolve_checkpoint_path(checkpoint))["labels"].items()}
    for path in (Path(pred_dir) / REPORT_NAME, Path(label_dir) / "dataset.json", Path(label_dir).parent / "dataset.json"):
        if path.is_file():
            try:
                return parse_label_map(json.loads(path.read_text(encoding="utf-8")), path)
            except (UsageError, json.JSONDecodeError):
                continue
    values = set()
    for case in references:
        values |= set(np.unique(np.rint(read_volume(case).array)).astype(int).tolist())
    return {"background": 0, **{f"label_{v}": v for v in sorted(values - {0})}}


def parse_label_map(data, source) -> dict[str, int]:
    """Labels as MSD writes them ({"1": "spleen"}), as nnU-Net v2 does ({"spleen": 1}), or inside a
    dataset.json / predict_report.json under "labels"."""
    if isinstance(data, dict) and isinstance(data.get("labels"), dict):
        data = data["labels"]
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{source}: no label map (expected {{name: value}} or {{\"value\": name}})")
    if all(str(k).isdigit() for k in data):
        return {str(name): int(value) for value, name in data.items()}
    return {str(name): int(value) for name, value in data.items() if isinstance(value, int)}


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
