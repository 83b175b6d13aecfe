"""The training data's intensity fingerprint, and checking a new scan against it.

Like nnU-Net's dataset fingerprint: per input channel, the 0.5, 50 and 99.5 percentiles, mean and
standard deviation of the intensities inside the body, pooled over the training cases. It is stored
in the checkpoint (key "fingerprint"), so prediction can tell when a scan is unlike anything the
model saw (an MR scan given to a CT model, a wrong channel order, intensities already rescaled).

"Inside the body" is decided per modality, the same way for training and prediction: CT voxels
above -500 HU (air and the scanner's padding are out); MRI voxels above 10% of the scan's 98th
percentile (background noise is out; the robust threshold FSL's brain extraction starts from).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.run_dir import FINGERPRINT_FILE
from unetr_app.io.scans import Volume, read_volume, source_for

CT_BODY_HU = -500.0
MRI_BODY_FRACTION = 0.1
SAMPLES_PER_CASE = 20_000  # body voxels drawn per case and channel (nnU-Net draws 10,000 foreground voxels)
PERCENTILES = (0.5, 50.0, 99.5)
OUTSIDE_LIMIT = 0.10  # flag a scan when more of its body lies outside the training range (about 1% expected)
FINGERPRINT_NAME = FINGERPRINT_FILE  # spelled in io/run_dir.py with the run folder's other files


def body_values(channel: np.ndarray, modality: str) -> np.ndarray:
    """Intensities of one channel inside the body (see the module docstring)."""
    if modality == "CT":
        return channel[channel > CT_BODY_HU]
    threshold = MRI_BODY_FRACTION * float(np.percentile(channel, 98))
    return channel[channel > threshold]


def compute_fingerprint(cases: list[dict], channels: dict[str, str], seed: int = 0) -> dict:
    """Fingerprint of the training cases ({"image": ...} entries), per channel {name: modality}."""
    rng = np.random.default_rng(seed)
    pooled: list[list[np.ndarray]] = [[] for _ in channels]
    for case in cases:
        volume = read_volume(source_for(case["image"]))
        for c, modality in enumerate(channels.values()):
            values = body_values(volume.channel(c), modality)
            if values.size > SAMPLES_PER_CASE:
                values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
            pooled[c].append(values)
    return {
        "cases": len(cases),
        "channels": [intensity_statistics(name, modality, np.concatenate(values)) for (name, modality), values in zip(channels.items(), pooled)],
    }


def intensity_statistics(name: str, modality: str, values: np.ndarray) -> dict:
    low, median, high = (float(v) for v in np.percentile(values, PERCENTILES)) if values.size else (0.0, 0.0, 0.0)
    return {
        "name": name,
        "modality": modality,
        "percentile_00_5": low,
        "percentile_50_0": median,
        "percentile_99_5": high,
        "mean": float(values.mean()) if values.size else 0.0,
        "std": float(values.std()) if values.size else 0.0,
    }


def load_or_compute_fingerprint(run_dir: Path, cases: list[dict], channels: dict[str, str], seed: int = 0) -> dict:
    """Computed once per run and kept as RUN_DIR/fingerprint.json; a resumed run reads it back."""
    path = Path(run_dir) / FINGERPRINT_NAME
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    fingerprint = compute_fingerprint(cases, channels, seed)
    atomic_write_text(path, json.dumps(fingerprint, indent=2) + "\n")
    return fingerprint


def intensity_warnings(volume: Volume, fingerprint: dict | None) -> list[str]:
    """One line per channel whose body intensities fall far outside the training data's."""
    if not fingerprint:
        return []
    lines = []
    for c, stats in enumerate(fingerprint.get("channels", [])[: volume.num_channels]):
        values = body_values(volume.channel(c), stats["modality"])
        if values.size == 0:
            lines.append(f"channel {stats['name']}: no voxels inside the body ({stats['modality']} threshold); is this a {stats['modality']} scan?")
            continue
        low, high = stats["percentile_00_5"], stats["percentile_99_5"]
        outside = float(np.count_nonzero((values < low) | (values > high))) / values.size
        if outside > OUTSIDE_LIMIT:
            lines.append(
                f"channel {stats['name']}: {outside:.0%} of body voxels lie outside the training range "
                f"[{low:.4g}, {high:.4g}] (median {float(np.median(values)):.4g}, training {stats['percentile_50_0']:.4g}); "
                f"is this a {stats['modality']} scan like the training data?"
            )
    return lines
