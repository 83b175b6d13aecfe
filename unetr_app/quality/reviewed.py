"""Reviewed cases as extra training cases: what `unetr review` accepted or corrected.

A review folder (the CORRECTIONS folder of `unetr review`) holds review.csv (a verdict per case),
the corrected masks <case>.nii.gz on their scans' grids, and sources.json naming the scans and
predictions folders it reviewed. A case counts when its verdict is "accepted" (the label is the
prediction, or the correction when one was saved) or when a correction was saved and the verdict
is not "rejected"; rejected, flagged and pending cases without a correction are left out. The
cases come back as training entries ({case, image, label, reviewed}), to be added to the
training cases only: a reviewer's masks must never score a model in validation.

Nothing here writes: every problem is found before training starts.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from unetr_app.errors import InputError, UsageError
from unetr_app.io.scans import find_cases, nifti_output_path, read_volume, source_for

REVIEW_CSV, SOURCES_NAME = "review.csv", "sources.json"
GRID_TOLERANCE_MM = 1e-3


def reviewed_cases(review_dir: Path, training_cases: list[dict] = ()) -> list[dict]:
    """[{case, image, label, reviewed: "accepted" | "corrected"}] from a review folder; raises a
    one-line error naming the file for a folder with no verdicts, a correction on another grid
    than its scan, or a reviewed case already among `training_cases`."""
    review_dir = Path(review_dir)
    verdicts = _read_verdicts(review_dir / REVIEW_CSV)
    images, predictions = _read_sources(review_dir / SOURCES_NAME)
    scans = {source.name: source for source in find_cases(images)}
    taken = []
    for case, status in verdicts.items():
        correction = review_dir / f"{case}.nii.gz"
        if status == "rejected" or not (status == "accepted" or correction.is_file()):
            continue
        if case not in scans:
            raise InputError(f"{review_dir / REVIEW_CSV}: case {case!r} has no scan in {images} (moved? review it again there)")
        label = correction if correction.is_file() else nifti_output_path(predictions, case)
        if not label.is_file():
            raise InputError(f"{label}: the accepted prediction of {case!r} is missing; predict it again or review without it")
        image = [str(p) for p in scans[case].channel_paths] if scans[case].channel_paths else str(scans[case].path)
        taken.append({"case": case, "image": image, "label": str(label), "reviewed": "corrected" if correction.is_file() else "accepted"})
    _check_not_in_training(taken, training_cases, review_dir)
    for entry in taken:
        check_same_grid(entry)
    return taken


def _read_verdicts(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UsageError(f"{path}: not found; --add-reviewed takes the corrections folder of `unetr review` (with its review.csv)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"case", "status"} <= set(reader.fieldnames):
            raise InputError(f"{path}: not a review table (expected the columns case, status); written by `unetr review`")
        verdicts = {row["case"]: row["status"] for row in reader}
    if all(status == "pending" for status in verdicts.values()):
        raise UsageError(f"{path}: no case has a verdict yet; accept, correct or reject cases in `unetr review` first")
    return verdicts


def _read_sources(path: Path) -> tuple[Path, Path]:
    try:
        sources = json.loads(path.read_text(encoding="utf-8"))
        return Path(sources["images"]), Path(sources["predictions"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path}: missing or unreadable (it names the scans and predictions reviewed); "
                         "open the review once more with `unetr review IMAGES PRED` to write it") from None


def _check_not_in_training(taken: list[dict], training_cases, review_dir: Path) -> None:
    known_names = {c.get("case") for c in training_cases} - {None, ""}
    known_images = {str(Path(p).resolve()) for c in training_cases for p in (c["image"] if isinstance(c["image"], list) else [c["image"]])}
    for entry in taken:
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        if entry["case"] in known_names or any(str(Path(p).resolve()) in known_images for p in images):
            raise UsageError(f"{review_dir / REVIEW_CSV}: reviewed case {entry['case']!r} is already a training case; "
                             "review predictions of scans outside the training set")


def check_same_grid(entry: dict) -> None:
    """The label must lie on its scan's grid (shape and affine): a correction is never resampled."""
    scan, label = read_volume(source_for(entry["image"])), read_volume(source_for(entry["label"]))
    if label.shape != scan.shape or not np.allclose(label.affine, scan.affine, atol=GRID_TOLERANCE_MM):
        raise InputError(f"{entry['label']}: on another grid than its scan {source_for(entry['image']).path} "
                         f"(shape {label.shape} vs {scan.shape}); save the correction from `unetr review` on the scan's grid")
