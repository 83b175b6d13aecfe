"""Which reference, quality model and temperatures prediction finds beside a checkpoint."""

from __future__ import annotations

import json

from unetr_app.quality.context import load_quality_kit
from unetr_app.quality.model import QC_MODEL_NAME
from unetr_app.quality.reference import REFERENCE_NAME

LABELS = {"background": 0, "spleen": 1}


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def test_a_fold_checkpoint_is_judged_against_the_reference_its_quality_model_was_fit_with(tmp_path):
    experiment = tmp_path / "exp"
    checkpoint = experiment / "fold0" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    _write(experiment / "fold0" / REFERENCE_NAME, {"cases": 8, "from": "the fold's training cases (unetr train)"})
    _write(experiment / REFERENCE_NAME, {"cases": 10, "from": "every fold's training cases (unetr qc)"})
    _write(experiment / QC_MODEL_NAME, {"fitted_on": "signals against the experiment's reference"})
    assert load_quality_kit(checkpoint, LABELS).reference["cases"] == 10


def test_without_a_quality_model_the_nearest_reference_serves(tmp_path):
    run = tmp_path / "exp" / "fold0"
    checkpoint = run / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    _write(run / REFERENCE_NAME, {"cases": 8})
    _write(tmp_path / "exp" / REFERENCE_NAME, {"cases": 10})
    kit = load_quality_kit(checkpoint, LABELS)
    assert kit.reference["cases"] == 8 and kit.model is None and kit.temperature is None
