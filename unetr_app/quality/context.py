"""What prediction needs to judge its masks: the training reference, the quality model and the
temperatures found beside a checkpoint (each optional: an older run has none of them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unetr_app.io.scans import Volume
from unetr_app.quality.calibration import TEMPERATURE_NAME, apply_temperature, read_temperature
from unetr_app.quality.case import case_signals, scan_signals
from unetr_app.quality.model import QC_MODEL_NAME, assess, mirroring_loss
from unetr_app.quality.reference import REFERENCE_NAME, find_beside, read_json

log = logging.getLogger(__name__)
SIGNAL_COLUMNS = ("agreement", "entropy", "border_fraction", "volume_ml", "volume_z", "intensity_distance")


@dataclass(frozen=True)
class QualityKit:
    labels: dict[str, int]
    reference: dict | None = None
    model: dict | None = None
    temperature: np.ndarray | None = None

    def scan_signals(self, volume: Volume) -> dict:
        """The scan's own signals, to pass to every `judge` of one case."""
        return scan_signals(volume, self.reference)

    def judge(self, labels: np.ndarray, probabilities, pass_labels: list[np.ndarray], volume: Volume, scan: dict | None = None) -> dict:
        """{predicted_dice, risk, flag, **signals} of one predicted case."""
        signals = case_signals(labels, probabilities, pass_labels, volume, self.reference, self.labels, scan)
        verdict = assess(signals, self.model, len(self.labels))
        return {**verdict, **{k: _round(signals[k]) for k in SIGNAL_COLUMNS}}

    def calibrate(self, probabilities: np.ndarray, axis: int = -1) -> np.ndarray:
        return probabilities if self.temperature is None else apply_temperature(probabilities, self.temperature, axis=axis)

    def mirroring_lowers_dice(self) -> tuple[float, float] | None:
        """(single-pass, mirrored) validation Dice where `unetr qc` measured mirroring doing harm."""
        return mirroring_loss(self.model)

    def notes(self, tta: bool | str = False) -> list[str]:
        """What is missing or doubtful, said once per run rather than once per case."""
        notes = []
        if tta and (loss := self.mirroring_lowers_dice()):
            single, mirrored = loss
            effect = "mirrors no case" if tta == "auto" else "mirrors anyway, as asked"
            notes.append(f"mirrored passes lowered this run's validation Dice from {single:.3f} to {mirrored:.3f} (`unetr qc`): "
                         f"the model rarely saw flipped scans in training (augmentation.flip_prob); --tta {'auto' if tta == 'auto' else 'on'} {effect}")
        if self.model is None:
            notes.append("no quality model beside the checkpoint (fit one with `unetr qc RUN`): predicted_dice is the "
                         "members' / mirrored passes' agreement and risk the worst signal, both uncalibrated")
        if self.reference is None:
            notes.append("no training reference beside the checkpoint: the volume and intensity-distribution checks are off")
        return notes


def load_quality_kit(checkpoint: Path, labels: dict[str, int]) -> QualityKit:
    found = {name: find_beside(checkpoint, name) for name in (REFERENCE_NAME, QC_MODEL_NAME, TEMPERATURE_NAME)}
    # `unetr qc` fits its model on signals measured against the reference it writes beside it: a fold
    # run's own reference (its training cases, kept by `unetr train`) must not replace that one
    if (model := found[QC_MODEL_NAME]) and (model.parent / REFERENCE_NAME).is_file():
        found[REFERENCE_NAME] = model.parent / REFERENCE_NAME
    data = {name: read_json(path, name) if path else None for name, path in found.items()}
    temperature = data[TEMPERATURE_NAME]
    return QualityKit(labels, data[REFERENCE_NAME], data[QC_MODEL_NAME], read_temperature(temperature, labels) if temperature else None)


def _round(value):
    return round(float(value), 4) if isinstance(value, (float, int, np.floating)) else value
