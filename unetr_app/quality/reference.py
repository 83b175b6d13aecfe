"""What the training scans looked like, for judging a new scan and its mask against them.

Kept as RUN/qc_reference.json, computed from the run's training cases (images and labels): per
input channel the histogram of body intensities (on fixed edges), and for CT the share of air in
the field of view and the fat/soft-tissue balance of the body; per label the mask volumes (mL);
the voxel spacings. A range check (the fingerprint's 0.5-99.5 percentiles) cannot tell an MR scan
with values 0-700 from a CT body; these distributions can: no air at -1000 HU, no fat below 0 HU,
and a histogram piled up where CT has almost nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unetr_app.data.fingerprint import body_values
from unetr_app.errors import InputError
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.scans import read_volume, source_for
from unetr_app.quality.signals import histogram, js_distance

REFERENCE_NAME = "qc_reference.json"
CT_EDGES = np.arange(-500.0, 1501.0, 20.0)  # body voxels are above -500 HU (data.fingerprint)
CT_AIR_HU, FAT_HU, SOFT_HU = -900.0, (-190.0, -30.0), (-30.0, 150.0)
OTHER_BINS = 100
SAMPLES = 200_000  # voxels per channel and case: plenty for a 100-bin histogram


def channel_profile(channel: np.ndarray, modality: str, edges: np.ndarray, rng: np.random.Generator | None = None) -> dict:
    """Histogram of body intensities; for CT also the air share of the scan and fat / (fat + soft tissue)."""
    values = np.asarray(channel, np.float32).ravel()
    if rng is not None and values.size > SAMPLES:
        values = rng.choice(values, SAMPLES, replace=False)
    body = body_values(values, modality)
    profile = {"histogram": histogram(body, edges).tolist()}
    if modality == "CT":
        fat = np.count_nonzero((body >= FAT_HU[0]) & (body < FAT_HU[1]))
        soft = np.count_nonzero((body >= SOFT_HU[0]) & (body < SOFT_HU[1]))
        profile["air_share"] = float(np.count_nonzero(values < CT_AIR_HU) / max(values.size, 1))
        profile["fat_share"] = float(fat / max(fat + soft, 1))
    return profile


def edges_for(modality: str, fingerprint_channel: dict | None) -> np.ndarray:
    if modality == "CT":
        return CT_EDGES
    low = fingerprint_channel["percentile_00_5"] if fingerprint_channel else 0.0
    high = fingerprint_channel["percentile_99_5"] if fingerprint_channel else 1.0
    span = max(high - low, 1e-6)
    return np.linspace(low - 0.5 * span, high + 0.5 * span, OTHER_BINS + 1)


def compute_reference(cases: list[dict], labels: dict[str, int], modalities: list[str], fingerprint: dict | None = None, seed: int = 0) -> dict:
    """The reference from training cases ({"image": ..., "label": ...} entries)."""
    rng = np.random.default_rng(seed)
    channels_fp = (fingerprint or {}).get("channels", [])
    edges = [edges_for(m, channels_fp[c] if c < len(channels_fp) else None) for c, m in enumerate(modalities)]
    profiles: list[list[dict]] = [[] for _ in modalities]
    volumes: dict[str, list[float]] = {name: [] for name, value in labels.items() if value != 0}
    spacings = []
    for case in cases:
        volume = read_volume(source_for(case["image"]))
        for c, modality in enumerate(modalities[: volume.num_channels]):
            profiles[c].append(channel_profile(volume.channel(c), modality, edges[c], rng))
        spacings.append([float(s) for s in np.linalg.norm(volume.affine[:3, :3], axis=0)])
        if case.get("label"):
            mask = read_volume(source_for(case["label"]))
            counts = np.bincount(np.rint(mask.array).astype(np.int64).ravel(), minlength=max(labels.values()) + 1)
            for name in volumes:
                volumes[name].append(float(counts[labels[name]]) * mask.voxel_ml)
    channels = []
    for c, modality in enumerate(modalities):
        mean = np.mean([p["histogram"] for p in profiles[c]], axis=0) if profiles[c] else np.zeros(len(edges[c]) - 1)
        entry = {"modality": modality, "edges": edges[c].tolist(), "histogram": mean.tolist(),
                 "case_distances": [js_distance(p["histogram"], mean) for p in profiles[c]]}
        for key in ("air_share", "fat_share"):
            if profiles[c] and key in profiles[c][0]:
                entry[key] = [p[key] for p in profiles[c]]
        channels.append(entry)
    return {"cases": len(cases), "channels": channels, "volumes_ml": volumes, "spacings_mm": spacings}


def write_reference(path: Path, reference: dict) -> Path:
    atomic_write_text(Path(path), json.dumps(reference, indent=1) + "\n")
    return Path(path)


def keep_training_reference(run_dir: Path, cases: list[dict], labels: dict[str, int], modalities: list[str],
                            fingerprint: dict | None = None) -> None:
    """Training writes RUN/qc_reference.json once, from its training cases (seconds: the scans are read
    as the fingerprint reads them), so predict checks scans and mask volumes against them without
    `unetr qc`; `unetr qc` writes it again beside the quality model it fits."""
    path = Path(run_dir) / REFERENCE_NAME
    if not path.is_file():
        write_reference(path, compute_reference(cases, labels, modalities, fingerprint))


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable {what} ({' '.join(str(err).split())}); delete it and fit it again with `unetr qc RUN`") from None


def find_beside(checkpoint: Path, name: str) -> Path | None:
    """`name` beside a checkpoint file, or for RUN/checkpoints/X in the run folder or the folder above
    (an experiment's folds share one), the same places as postprocessing.json."""
    folder = Path(checkpoint).parent
    places = [folder, *([folder.parent, folder.parent.parent] if folder.name == "checkpoints" else [])]
    return next((place / name for place in places if (place / name).is_file()), None)
