"""Post-processing of label maps, decided on cross-validation predictions (nnU-Net's rule).

Two steps are tried per label, each kept only if it raises that label's mean Dice over the
validation cases (removing voxels of one label never changes another label's Dice, so labels are
decided one by one):

1. keep only the largest connected component of the label (organs such as the spleen are one piece),
   and with it every other component at least as large as the smallest largest component of any
   validation prediction (nnU-Net v1's guard: on a scan where a false positive outgrows the organ,
   the organ is not deleted);
2. remove the label's components smaller than V mm^3 (the best of the candidate volumes that helps).

Connected components come from `cc3d` (connected-components-3d), 26-connected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

import cc3d
import numpy as np

from unetr_app.errors import UsageError
from unetr_app.io.run_dir import CHECKPOINTS_FOLDER, POSTPROCESSING_FILE

CONNECTIVITY = 26
DEFAULT_MIN_VOLUMES_MM3 = (100.0, 1000.0, 10000.0)


@dataclass(frozen=True)
class ValidationCase:
    """One cross-validation prediction and its reference on the same grid."""

    name: str
    prediction: np.ndarray  # integer label map
    reference: np.ndarray
    spacing: tuple[float, float, float]  # mm per voxel axis

    @property
    def voxel_mm3(self) -> float:
        return float(np.prod(self.spacing))


@dataclass(frozen=True)
class Postprocessing:
    """What to do to a predicted label map; the default does nothing."""

    largest_component: tuple[int, ...] = ()  # label values reduced to their largest component
    # label value -> components at least this large survive "largest component" too (none: only the largest)
    largest_component_guard_mm3: dict[int, float] = field(default_factory=dict)
    min_volume_mm3: dict[int, float] = field(default_factory=dict)  # label value -> smallest component kept

    def apply(self, labels: np.ndarray, spacing: Iterable[float]) -> np.ndarray:
        if self.is_identity:
            return labels
        voxel_mm3 = float(np.prod(list(spacing)))
        out = labels.copy()
        for value in self.largest_component:
            out = keep_largest_component(out, value, self.largest_component_guard_mm3.get(value, np.inf) / voxel_mm3)
        for value, volume in self.min_volume_mm3.items():
            out = remove_small_components(out, value, volume / voxel_mm3)
        return out

    @property
    def is_identity(self) -> bool:
        return not self.largest_component and not self.min_volume_mm3

    def to_dict(self) -> dict:
        return {"largest_component": list(self.largest_component),
                "largest_component_guard_mm3": {str(k): v for k, v in self.largest_component_guard_mm3.items()},
                "min_volume_mm3": {str(k): v for k, v in self.min_volume_mm3.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Postprocessing":
        return cls(
            largest_component=tuple(int(v) for v in data.get("largest_component", [])),
            # decisions written before the guard keep only the largest component, as they were measured
            largest_component_guard_mm3={int(k): float(v) for k, v in (data.get("largest_component_guard_mm3") or {}).items()},
            min_volume_mm3={int(k): float(v) for k, v in (data.get("min_volume_mm3") or {}).items()},
        )


def keep_largest_component(labels: np.ndarray, value: int, guard_voxels: float = np.inf) -> np.ndarray:
    """`labels` with every component of `value` but the largest, and but those of at least
    `guard_voxels` voxels, set to background."""
    mask = labels == value
    if not mask.any():
        return labels
    components, sizes = _components(mask)
    kept = sizes >= guard_voxels
    kept[sizes.argmax()] = True
    kept[0] = False
    out = labels.copy()
    out[mask & ~kept[components]] = 0
    return out


def largest_component_mm3(labels: np.ndarray, value: int, voxel_mm3: float) -> float | None:
    """The volume of the largest component of `value`; None where `value` is absent."""
    mask = labels == value
    return float(_components(mask)[1].max() * voxel_mm3) if mask.any() else None


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The component index of each voxel (0: outside `mask`) and each index's voxel count (0 for index 0)."""
    components = cc3d.connected_components(mask, connectivity=CONNECTIVITY)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components, sizes


def remove_small_components(labels: np.ndarray, value: int, min_voxels: float) -> np.ndarray:
    """`labels` with the components of `value` smaller than `min_voxels` set to background."""
    mask = labels == value
    if not mask.any():
        return labels
    kept = cc3d.dust(mask, threshold=int(np.ceil(min_voxels)), connectivity=CONNECTIVITY)
    out = labels.copy()
    out[mask & ~kept] = 0
    return out


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Binary Dice; two empty masks agree perfectly (1.0), as in `evaluation.metrics`."""
    total = int(prediction.sum()) + int(reference.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def case_dice(prediction: np.ndarray, reference: np.ndarray, labels: dict[str, int]) -> float:
    """Mean Dice over the foreground labels of one case."""
    return float(np.mean([dice(prediction == v, reference == v) for v in labels.values() if v != 0]))


def mean_dice(cases: list[ValidationCase], steps: Postprocessing, value: int) -> float:
    scores = [dice(steps.apply(c.prediction, c.spacing) == value, c.reference == value) for c in cases]
    return float(np.mean(scores))


def decide_postprocessing(
    cases: list[ValidationCase], labels: dict[str, int], min_volumes_mm3: Iterable[float] = DEFAULT_MIN_VOLUMES_MM3
) -> tuple[Postprocessing, list[dict]]:
    """The steps that raise mean validation Dice, and a record of every trial (kept or not)."""
    chosen, trials = Postprocessing(), []
    for name, value in sorted(labels.items(), key=lambda item: item[1]):
        if value == 0:
            continue
        largest = replace(chosen, largest_component=(*chosen.largest_component, value))
        volumes = [v for c in cases if (v := largest_component_mm3(c.prediction, value, c.voxel_mm3)) is not None]
        if volumes:
            largest = replace(largest, largest_component_guard_mm3={**chosen.largest_component_guard_mm3, value: min(volumes)})
        chosen = _best_of(cases, name, value, chosen, [("keep largest component", largest)], trials)
        small = [(f"remove components < {v:g} mm3", replace(chosen, min_volume_mm3={**chosen.min_volume_mm3, value: float(v)})) for v in min_volumes_mm3]
        chosen = _best_of(cases, name, value, chosen, small, trials)
    return chosen, trials


def _best_of(cases, name: str, value: int, current: Postprocessing, candidates: list[tuple[str, Postprocessing]], trials: list[dict]) -> Postprocessing:
    """The candidate with the highest mean Dice of `value` if it beats `current`, else `current`."""
    before = mean_dice(cases, current, value)
    scored = [(step, trial, mean_dice(cases, trial, value)) for step, trial in candidates]
    winner = max(scored, key=lambda item: item[2], default=None)
    if winner is not None and winner[2] <= before:
        winner = None
    for step, _, score in scored:
        kept = winner is not None and step == winner[0]
        trials.append({"label": name, "step": step, "dice_before": round(before, 6), "dice_after": round(score, 6), "kept": kept})
    return current if winner is None else winner[1]


def find_postprocessing(checkpoint: Path) -> Path | None:
    """The postprocessing.json that applies to a checkpoint file: beside it, or, for RUN/checkpoints/X.pt,
    in the run folder or the folder above it (an experiment's folds share one decision)."""
    folder = Path(checkpoint).parent
    places = [folder]
    if folder.name == CHECKPOINTS_FOLDER:
        places += [folder.parent, folder.parent.parent]
    return next((place / POSTPROCESSING_FILE for place in places if (place / POSTPROCESSING_FILE).is_file()), None)


def postprocessing_for(checkpoint: Path) -> Postprocessing | None:
    """The decision that applies to a checkpoint (see `find_postprocessing`), None where none was made."""
    found = find_postprocessing(checkpoint)
    return read_postprocessing(found) if found else None


def read_postprocessing(path: Path) -> Postprocessing:
    try:
        return Postprocessing.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise UsageError(f"{path}: unreadable post-processing decision ({' '.join(str(err).split())}); delete it or pass --no-postprocess") from None
