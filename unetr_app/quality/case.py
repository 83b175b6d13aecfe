"""All signals of one predicted case, from its mask, probabilities, passes and scan."""

from __future__ import annotations

import numpy as np

from unetr_app.io.scans import Volume
from unetr_app.quality.model import LIMITS
from unetr_app.quality.reference import channel_profile
from unetr_app.quality.signals import border_fraction, foreground_entropy, geometry_problems, js_distance, pairwise_agreement, volume_zscore


def intensity_check(volume: Volume, reference: dict | None) -> tuple[float | None, float | None, list[str]]:
    """(largest histogram distance over channels, largest distance over its channel's flag limit,
    reasons the intensities are unlike training's)."""
    if not reference:
        return None, None, []
    worst, excess, problems = None, None, []
    rng = np.random.default_rng(0)
    for c, ref in enumerate(reference["channels"][: volume.num_channels]):
        profile = channel_profile(volume.channel(c), ref["modality"], np.asarray(ref["edges"]), rng)
        distance = js_distance(profile["histogram"], ref["histogram"])
        worst = distance if worst is None else max(worst, distance)
        limit = max(LIMITS["intensity_distance"], LIMITS["intensity_distance_over_training"] * max(ref["case_distances"], default=0.0))
        excess = distance / limit if excess is None else max(excess, distance / limit)
        name = f"channel {c} ({ref['modality']})"
        if distance > limit:
            problems.append(f"{name}: intensity histogram unlike the training scans' (distance {distance:.2f}, limit {limit:.2f})")
        problems += _share_problems(name, profile, ref)
    return worst, excess, problems


def _share_problems(name: str, profile: dict, ref: dict) -> list[str]:
    problems = []
    for key, what in (("air_share", "air below -900 HU"), ("fat_share", "fat among fat and soft tissue")):
        if key not in ref or key not in profile or not ref[key]:
            continue
        low, high = min(ref[key]) / 3.0, 1.0 - (1.0 - max(ref[key])) / 3.0
        value = profile[key]
        if low > 0.01 and not low <= value <= high or value > high:
            problems.append(f"{name}: {value:.1%} {what}, training scans {min(ref[key]):.1%}-{max(ref[key]):.1%}; is this a CT scan like theirs?")
    return problems


def scan_signals(volume: Volume, reference: dict | None) -> dict:
    """The signals of the scan itself (intensities, geometry): the same for every mask of it, so a
    case judged twice (one pass, then all) computes them once."""
    distance, excess, intensity_problems = intensity_check(volume, reference)
    directions = volume.affine[:3, :3]
    return {
        "intensity_distance": distance,
        "intensity_excess": excess,  # the distance over its flag limit: above 1 is flagged
        "intensity_problems": intensity_problems,
        "geometry_problems": geometry_problems(np.linalg.norm(directions, axis=0), directions, (reference or {}).get("spacings_mm", [])),
    }


def case_signals(labels: np.ndarray, probabilities, pass_labels: list[np.ndarray], volume: Volume, reference: dict | None,
                 label_names: dict[str, int], scan: dict | None = None) -> dict:
    """Signals of one case: `labels` on the input grid, `probabilities` (classes, *grid) and
    `pass_labels` (one label map per member / mirrored pass) on the network's grid; `scan`: the
    scan's own signals when known already."""
    values = [v for v in label_names.values() if v != 0]
    counts = np.bincount(labels.ravel(), minlength=max(values, default=0) + 1)
    volume_ml, z = float(counts[1:].sum()) * volume.voxel_ml, None
    for name, value in label_names.items():
        training = (reference or {}).get("volumes_ml", {}).get(name)
        score = volume_zscore(float(counts[value]) * volume.voxel_ml, training) if value and training else None
        if score is not None and (z is None or abs(score) > abs(z)):
            z, volume_ml = score, float(counts[value]) * volume.voxel_ml
    return {
        "agreement": pairwise_agreement(pass_labels, values),
        "entropy": foreground_entropy(probabilities),
        "border_fraction": border_fraction(labels != 0),
        "volume_ml": round(volume_ml, 4),
        "volume_z": z,
        **(scan if scan is not None else scan_signals(volume, reference)),
    }
