"""The dataset fingerprint nnU-Net's planner reads, computed in one streaming pass.

Per case: spacing and shape on the RAS axes that training resamples on, the orientation code, up
to SAMPLES_PER_CASE foreground (label > 0) intensities per channel, the voxel count of every label
value, and which classes touch the array's border. Pooled: foreground intensity percentiles per
channel, class frequencies, and the fraction of cases in which a class touches the border.

Memory: one case is in memory at a time (its image and label), plus the kept samples
(SAMPLES_PER_CASE floats per channel and case), so a 1000-case dataset of 512^2 slices needs
about as much RAM as a few cases. The per-case results are cached next to plans.yaml, keyed by
each file's size and modification time: a re-plan reads only new or changed cases.

Bad input never stops the pass: each problem is one line naming the file and the fix, and the
rest of the fingerprint is computed without the broken part.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np

from unetr_app.config import DATASET_JSON, task_from_dataset_json
from unetr_app.data.fingerprint import PERCENTILES, intensity_statistics
from unetr_app.errors import UnetrError
from unetr_app.io.atomic import atomic_path, atomic_write_text
from unetr_app.io.scans import find_cases, read_volume, source_for

SAMPLES_PER_CASE = 10_000  # foreground voxels kept per case and channel (nnU-Net samples 10,000 too)
OUTLIER_FACTOR = 5.0  # a case whose spacing on some axis is this many times the median's (or 1/this) is an outlier
CT_AIR_HU = -900.0  # without dataset.json: a channel whose typical minimum is below this looks like CT (air)
CACHE_NAME = "fingerprint_cache.json"
SAMPLES_NAME = "fingerprint_samples.npz"
CACHE_VERSION = 1
AFFINE_TOLERANCE_MM = 1e-3


@dataclass
class Listing:
    """The dataset's task description and its labelled cases, with what was wrong finding them."""

    task: dict[str, Any]
    cases: list[dict]
    problems: list[str] = field(default_factory=list)
    described: bool = True  # False: no dataset.json, the task was read from the folder layout


def list_cases(root: Path) -> Listing:
    """The training cases from dataset.json's list, else by pairing imagesTr/ with labelsTr/."""
    root = Path(root)
    problems: list[str] = []
    description = root / DATASET_JSON
    task = task_from_dataset_json(description) if description.is_file() else None
    entries = json.loads(description.read_text(encoding="utf-8")).get("training") if task else None
    if task is None:
        problems.append(f"{description}: missing; the task is read from the folder layout alone (label values become "
                        "label_1, label_2, ...); add a dataset.json (MSD or nnU-Net v2 form) to name labels and channels")
    if entries == []:
        problems.append(f"{description}: the training list is empty; cases are paired from imagesTr/ and labelsTr/ instead "
                        "(fill the list, or delete the key as nnU-Net v2 does)")
    cases = _listed(root, entries, problems) if entries else _paired(root, problems)
    if not cases:
        raise UnetrError(f"{root}: no labelled training cases (imagesTr/ with labelsTr/); nothing to plan from")
    return Listing(task or {}, cases, problems, described=task is not None)


def _listed(root: Path, entries: list, problems: list[str]) -> list[dict]:
    cases = []
    for entry in entries:
        image, label = (_under(root, entry.get(k)) if isinstance(entry, dict) else None for k in ("image", "label"))
        missing = [str(p) for p in _paths(image) + _paths(label) if not p.exists()] if image and label else ["(no image/label)"]
        if missing:
            problems.append(f"{root / DATASET_JSON}: training entry {entry} names {missing[0]}, which does not exist; fix the entry or add the file")
            continue
        cases.append({"case": source_for(image).name, "image": image, "label": label})
    return cases


def _paired(root: Path, problems: list[str]) -> list[dict]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        return []
    labels = {c.name: c for c in find_cases(labels_dir)} if labels_dir.is_dir() else {}
    cases = []
    for case in find_cases(images_dir):
        if case.name not in labels:
            problems.append(f"{case.path}: no label {labels_dir.name}/{case.name}; add it or move the image to imagesTs/")
            continue
        image = [str(p) for p in case.channel_paths] if case.channel_paths else str(case.path)
        cases.append({"case": case.name, "image": image, "label": str(labels[case.name].path)})
    return cases


def _under(root: Path, listed):
    if listed is None:
        return None
    return [str(root / p) for p in listed] if isinstance(listed, list) else str(root / listed)


def _paths(entry) -> list[Path]:
    return [Path(p) for p in (entry if isinstance(entry, list) else [entry])]


# --- one case ---------------------------------------------------------------------------------


def ras_geometry(affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
    """Spacing and shape along the RAS world axes (the axes training resamples on) and the orientation code."""
    world_axis = nib.io_orientation(affine)[:, 0].astype(int)
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    spacing, size = [0.0] * 3, [0] * 3
    for voxel_axis, axis in enumerate(world_axis):
        spacing[axis], size[axis] = round(float(zooms[voxel_axis]), 5), int(shape[voxel_axis])
    return {"spacing": spacing, "shape": size, "orientation": "".join(nib.aff2axcodes(affine))}


def case_fingerprint(case: dict) -> tuple[dict, np.ndarray]:
    """(record, samples (channels, n)) for one case; a problem is recorded, not raised."""
    record: dict[str, Any] = {"case": case["case"], "problems": []}
    samples = np.zeros((0, 0), np.float32)
    try:
        image = read_volume(source_for(case["image"]))
    except UnetrError as err:
        record["problems"].append(f"{_one_line(err)}; fix or remove the file")
        return record, samples
    record.update(ras_geometry(image.affine, image.shape), channels=image.num_channels,
                  minimum=[float(image.channel(c).min()) for c in range(image.num_channels)])
    try:
        label = read_volume(source_for(case["label"]))
    except UnetrError as err:
        record["problems"].append(f"{_one_line(err)}; fix or remove the file")
        return record, samples
    if label.shape != image.shape or not np.allclose(label.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        record["problems"].append(
            f"{case['label']}: label grid {label.shape} (spacing {ras_geometry(label.affine, label.shape)['spacing']}) differs from "
            f"the image's {image.shape} (spacing {record['spacing']}); resample the label onto the image's grid (nearest neighbour)"
        )
        return record, samples
    values = np.rint(label.array).astype(np.int64) if label.array.ndim == 3 else np.rint(label.array[..., 0]).astype(np.int64)
    del label
    if values.min() < 0:
        record["problems"].append(f"{case['label']}: negative label value {int(values.min())}; labels are 0 (background) .. N-1")
        return record, samples
    counts = np.bincount(values.ravel())
    record["voxels"] = {str(v): int(n) for v, n in enumerate(counts) if n}
    faces = np.concatenate([values[0].ravel(), values[-1].ravel(), values[:, 0].ravel(), values[:, -1].ravel(),
                            values[:, :, 0].ravel(), values[:, :, -1].ravel()])
    record["border"] = [int(v) for v in np.unique(faces) if v > 0]
    foreground = values > 0
    del values, faces
    rng = np.random.default_rng(zlib.crc32(str(case["case"]).encode()))
    kept = [_sample(image.channel(c)[foreground], rng) for c in range(image.num_channels)]
    n = min(len(k) for k in kept)
    return record, np.stack([k[:n] for k in kept]).astype(np.float32) if kept else samples


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(values, SAMPLES_PER_CASE, replace=False) if values.size > SAMPLES_PER_CASE else values


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


# --- the pass, with its cache -------------------------------------------------------------------


def _key(case: dict) -> str:
    """Changes when any of the case's files changes size or modification time."""
    parts = []
    for path in _paths(case["image"]) + _paths(case["label"]):
        stat = Path(path).stat()
        parts.append(f"{Path(path).name}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def compute_fingerprint(root: Path, cache_dir: Path | None = None, progress: Callable[[int, int], None] | None = None,
                        exclude_outliers: bool = False) -> dict:
    """The dataset's fingerprint (see the module docstring), reusing cached cases whose files did not change."""
    root = Path(root)
    cache_dir = Path(cache_dir or root)
    listing = list_cases(root)
    cache = _read_cache(cache_dir)
    records, samples, computed = [], {}, 0
    for index, case in enumerate(listing.cases):
        key = _key(case)
        hit = cache["cases"].get(case["case"])
        if hit is not None and hit["key"] == key and (hit["record"].get("voxels") is None or case["case"] in cache["samples"]):
            record, kept = hit["record"], cache["samples"].get(case["case"])
        else:
            record, kept = case_fingerprint(case)
            record["key"] = key
            computed += 1
        records.append(record)
        if kept is not None and kept.size:
            samples[case["case"]] = np.asarray(kept, np.float32)
        if progress is not None:
            progress(index + 1, len(listing.cases))
    _write_cache(cache_dir, records, samples)
    fingerprint = summarise(root, listing, records, samples, exclude_outliers)
    fingerprint["computed_cases"] = computed
    return fingerprint


def _read_cache(cache_dir: Path) -> dict:
    path, samples_path = cache_dir / CACHE_NAME, cache_dir / SAMPLES_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != CACHE_VERSION:
            raise ValueError("old cache")
        stored = np.load(samples_path) if samples_path.is_file() else {}
        return {"cases": {r["case"]: {"key": r["key"], "record": r} for r in data["cases"]}, "samples": stored}
    except (OSError, ValueError, KeyError):
        return {"cases": {}, "samples": {}}


def _write_cache(cache_dir: Path, records: list[dict], samples: dict[str, np.ndarray]) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_dir / SAMPLES_NAME) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **samples)
    atomic_write_text(cache_dir / CACHE_NAME, json.dumps({"version": CACHE_VERSION, "cases": records}) + "\n")


# --- pooling ------------------------------------------------------------------------------------


def summarise(root: Path, listing: Listing, records: list[dict], samples: dict[str, np.ndarray], exclude_outliers: bool) -> dict:
    """Pool the per-case records into the dataset's fingerprint; every problem becomes one line."""
    problems = list(listing.problems) + [p for r in records for p in r["problems"]]
    readable = [r for r in records if "spacing" in r]
    if not readable:
        raise UnetrError(f"{root}: no readable training case; {problems[0] if problems else ''}")
    task = listing.task or _task_from_layout(root, readable, samples)
    expected_channels = int(task["in_channels"])
    usable = []
    for record in readable:
        if record["channels"] != expected_channels:
            names = ", ".join(task["channels"])
            problems.append(f"case {record['case']}: {record['channels']} channel(s), but {_described(root, listing)} names "
                            f"{expected_channels} ({names}); its intensities are left out (fix the case or dataset.json)")
        else:
            usable.append(record)
    median = np.median([r["spacing"] for r in readable], axis=0)
    outliers = [r["case"] for r in readable if _is_outlier(r["spacing"], median)]
    for record in (r for r in readable if r["case"] in outliers):
        ratio = max(max(s / m, m / s) for s, m in zip(record["spacing"], median))
        action = "excluded from the plan (--exclude-outliers)" if exclude_outliers else "kept; plan with --exclude-outliers to leave it out"
        problems.append(f"case {record['case']}: spacing {record['spacing']} mm is {ratio:.0f}x the median {[round(float(m), 3) for m in median]}; "
                        f"an outlier, {action} (or check its header)")
    planned = [r for r in readable if not (exclude_outliers and r["case"] in outliers)]
    labels = task["labels"]
    problems += _unknown_label_lines(root, usable, labels, listing)
    return {
        "dataset": str(root),
        "task": task,
        "described": listing.described,
        "cases": len(records),
        "planned_cases": [r["case"] for r in planned],
        "outliers": outliers,
        "per_case": [{k: r[k] for k in ("case", "spacing", "shape", "orientation") if k in r} for r in records],
        "spacing": {"median": _list(np.median([r["spacing"] for r in planned], axis=0)),
                    "percentile_10": _list(np.percentile([r["spacing"] for r in planned], 10, axis=0))},
        "shape": {"median": _list(np.median([r["shape"] for r in planned], axis=0))},
        "orientations": _counts(r["orientation"] for r in planned),
        "channels": _channel_statistics(task, [samples[r["case"]] for r in usable if r["case"] in samples]),
        "classes": _class_statistics([r for r in usable if "voxels" in r], labels),
        "voxels": float(np.sum([np.prod(r["shape"]) for r in planned])),
        "problems": problems,
    }


def _described(root: Path, listing: Listing) -> str:
    return f"{root / DATASET_JSON}" if listing.described else "the first case"


def _is_outlier(spacing, median) -> bool:
    return any(s > OUTLIER_FACTOR * m or s * OUTLIER_FACTOR < m for s, m in zip(spacing, median))


def _unknown_label_lines(root: Path, records: list[dict], labels: dict[str, int], listing: Listing) -> list[str]:
    known = set(labels.values())
    lines = []
    for record in records:
        unknown = sorted(int(v) for v in record.get("voxels", {}) if int(v) not in known)
        if unknown:
            lines.append(f"case {record['case']}: label value(s) {unknown} are not in {_described(root, listing)}'s labels {labels}; "
                         "fix the label file or add the label to dataset.json (they count as foreground here)")
    return lines


def _channel_statistics(task: dict, kept: list[np.ndarray]) -> list[dict]:
    stats = []
    for c, (name, modality) in enumerate(task["channels"].items()):
        values = np.concatenate([k[c] for k in kept]) if kept else np.zeros(0, np.float32)
        stats.append({**intensity_statistics(name, modality, values), "samples": int(values.size)})
    return stats


def _class_statistics(records: list[dict], labels: dict[str, int]) -> dict[str, dict]:
    """Per class: its share of the labelled voxels, in what fraction of cases it appears and touches the border."""
    total = sum(sum(r["voxels"].values()) for r in records) or 1
    out = {}
    for name, value in labels.items():
        present = [r for r in records if r["voxels"].get(str(value), 0)]
        out[name] = {
            "value": value,
            "voxel_fraction": sum(r["voxels"].get(str(value), 0) for r in records) / total,
            "cases_with_class": len(present) / max(len(records), 1),
            "touches_border": sum(value in r["border"] for r in records) / max(len(records), 1) if value else None,
        }
    return out


def _task_from_layout(root: Path, records: list[dict], samples: dict[str, np.ndarray]) -> dict:
    """Without dataset.json: channels as the most common case has them, CT when its minimum looks
    like air in Hounsfield units, labels by the values the label files hold."""
    channels = int(np.bincount([r["channels"] for r in records]).argmax())
    minima = np.array([r["minimum"] for r in records if r["channels"] == channels])
    modalities = ["CT" if np.median(minima[:, c]) < CT_AIR_HU else "MRI" for c in range(channels)]
    top = max([int(v) for r in records for v in r.get("voxels", {})] + [1])
    labels = {"background": 0, **{f"label_{v}": v for v in range(1, top + 1)}}
    return {"name": root.name.lower(), "dataset_dir": root.name, "manifest": None, "modality": modalities[0],
            "in_channels": channels, "channels": {f"channel_{c}": m for c, m in enumerate(modalities)}, "labels": labels}


def _list(values) -> list[float]:
    return [round(float(v), 5) for v in values]


def _counts(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


__all__ = ["PERCENTILES", "compute_fingerprint", "list_cases", "case_fingerprint", "ras_geometry"]
