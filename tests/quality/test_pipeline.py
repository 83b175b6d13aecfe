"""`unetr qc` fits what `unetr predict` then uses: qc.csv, --tta auto, tempered probabilities."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from unetr_app.quality.calibration import TEMPERATURE_NAME, apply_temperature
from unetr_app.quality.model import QC_MODEL_NAME
from unetr_app.quality.reference import REFERENCE_NAME

QC_COLUMNS = {"case", "predicted_dice", "risk", "flag", "agreement", "entropy", "border_fraction", "volume_z", "intensity_distance"}


@pytest.fixture(scope="module")
def fitted(qc_run):
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    result = CliRunner().invoke(app, ["qc", str(qc_run), "--device", "cpu"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return qc_run


def _predict(cli, run, phantom_dir, out, *extra):
    result = cli("predict", phantom_dir / "imagesTs", out, "-c", run, "--device", "cpu", "-q", *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "predict_report.json").read_text())


def _rows(out):
    with open(out / "qc.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_qc_fit_writes_model_reference_and_temperature(fitted):
    model = json.loads((fitted / QC_MODEL_NAME).read_text())
    assert model["cases"] == 4 and {tuple(f["features"]) for f in model["fits"]} >= {("entropy", "border_fraction", "volume_z", "intensity_distance")}
    reference = json.loads((fitted / REFERENCE_NAME).read_text())
    assert reference["cases"] == 2 and len(reference["volumes_ml"]["spleen"]) == 2  # the run's training cases
    temperature = json.loads((fitted / TEMPERATURE_NAME).read_text())
    assert set(temperature["temperature"]) == {"background", "spleen"} and all(t > 0 for t in temperature["temperature"].values())
    assert model["mirroring"]["cases"] == 4 and 0 <= model["mirroring"]["single_pass_dice"] <= 1


def test_qc_measures_one_unmirrored_pass_as_predict_tta_off_does(fitted, tmp_path, cli):
    from unetr_app.io.run_dir import RunDir
    from unetr_app.io.scans import read_volume, source_for
    from unetr_app.pipelines.quality import run_fit_quality
    from unetr_app.quality.signals import dice

    run = shutil.copytree(fitted, tmp_path / "run")
    cases = run_fit_quality(run, device="cpu")["cases"]
    validation = RunDir(run).read_split()["validation"]
    images = tmp_path / "validation"
    images.mkdir()
    for case in validation:
        shutil.copy(case["image"], images)
    result = cli("predict", images, tmp_path / "off", "-c", run, "--device", "cpu", "-q", "--tta", "off")
    assert result.exit_code == 0, result.output
    for row, case in zip(cases, validation):
        name = Path(case["image"]).name
        mask = read_volume(source_for(tmp_path / "off" / name)).array
        truth = read_volume(source_for(case["label"])).array
        assert row["single_pass_dice"] == pytest.approx(dice(mask == 1, truth == 1), abs=1e-6), name
    model = json.loads((run / QC_MODEL_NAME).read_text())
    assert model["mirroring"]["single_pass_dice"] == pytest.approx(np.mean([r["single_pass_dice"] for r in cases]))
    assert model["mirroring"]["mirrored_dice"] == pytest.approx(np.mean([r["dice"] for r in cases]))


def test_predict_writes_qc_csv_and_report(fitted, phantom_dir, tmp_path, cli):
    report = _predict(cli, fitted, phantom_dir, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert QC_COLUMNS <= set(rows[0]) and [r["case"] for r in rows] == [c["case"] for c in report["cases"]]
    for row, case in zip(rows, report["cases"]):
        assert 0.0 <= float(row["risk"]) <= 1.0 and 0.0 <= float(row["predicted_dice"]) <= 1.0
        assert float(row["risk"]) == case["quality"]["risk"] and row["flag"] == case["quality"]["flag"]
        assert row["agreement"] == ""  # one model, no mirroring: no agreement to measure
    assert report["quality_notes"] == []


def test_a_run_without_qc_files_predicts_and_says_so_once(bare_run, phantom_dir, tmp_path, cli, caplog):
    with caplog.at_level(logging.WARNING):
        report = _predict(cli, bare_run, phantom_dir, tmp_path / "out")
    said = [r for r in caplog.records if "no quality model" in r.getMessage()]
    assert len(said) == 1 and len(report["cases"]) == 2  # once, not once per case
    assert all(r["risk"] != "" for r in _rows(tmp_path / "out"))


def test_tta_auto_mirrors_only_risky_cases(fitted, phantom_dir, tmp_path, cli):
    always = _predict(cli, fitted, phantom_dir, tmp_path / "never", "--tta", "auto", "--tta-risk", "0")
    assert [c["forward_passes"] for c in always["cases"]] == [9, 9]  # 1 first pass + 8 mirrors
    assert all(c["quality"]["agreement"] is not None for c in always["cases"])
    none = _predict(cli, fitted, phantom_dir, tmp_path / "all", "--tta", "auto", "--tta-risk", "1")
    assert [c["forward_passes"] for c in none["cases"]] == [1, 1]
    mirrored = _predict(cli, fitted, phantom_dir, tmp_path / "on", "--tta", "on")
    assert [c["forward_passes"] for c in mirrored["cases"]] == [8, 8]


def test_a_kept_first_pass_is_written_as_tta_off_writes_it_and_resampled_once(fitted, phantom_dir, tmp_path, cli, monkeypatch):
    import nibabel as nib

    from unetr_app.inference.predictor import Predictor

    off = _predict(cli, fitted, phantom_dir, tmp_path / "off", "--tta", "off")
    restored = []
    original = Predictor.restore
    monkeypatch.setattr(Predictor, "restore", lambda self, *a, **k: restored.append(1) or original(self, *a, **k))
    kept = _predict(cli, fitted, phantom_dir, tmp_path / "kept", "--tta", "auto", "--tta-risk", "1")
    assert [c["forward_passes"] for c in kept["cases"]] == [1, 1]
    assert len(restored) == 2, "one resampling per case: the judged first-pass mask is the one written"
    assert [c["quality"] for c in kept["cases"]] == [c["quality"] for c in off["cases"]]
    for case in off["cases"]:
        name = Path(case["output"]).name
        assert np.array_equal(np.asarray(nib.load(tmp_path / "kept" / name).dataobj), np.asarray(nib.load(tmp_path / "off" / name).dataobj))


def test_where_mirroring_lowered_validation_dice_auto_stops_mirroring_and_on_says_so(fitted, phantom_dir, tmp_path, cli):
    run = shutil.copytree(fitted, tmp_path / "run")
    model = json.loads((run / QC_MODEL_NAME).read_text())
    model["mirroring"] = {"cases": 4, "mirrored_dice": 0.55, "single_pass_dice": 0.8}
    (run / QC_MODEL_NAME).write_text(json.dumps(model))
    auto = _predict(cli, run, phantom_dir, tmp_path / "auto", "--tta", "auto", "--tta-risk", "0")
    assert [c["forward_passes"] for c in auto["cases"]] == [1, 1]  # even the risky ones: mirrors would only harm
    assert len(auto["quality_notes"]) == 1 and "from 0.800 to 0.550" in auto["quality_notes"][0] and "mirrors no case" in auto["quality_notes"][0]
    on = _predict(cli, run, phantom_dir, tmp_path / "on", "--tta", "on")
    assert [c["forward_passes"] for c in on["cases"]] == [8, 8] and "mirrors anyway" in on["quality_notes"][0]
    assert _predict(cli, run, phantom_dir, tmp_path / "off", "--tta", "off")["quality_notes"] == []


def test_saved_probabilities_are_tempered(fitted, bare_run, phantom_dir, tmp_path, cli):
    (bare_run / TEMPERATURE_NAME).write_text(json.dumps({"temperature": {"background": 2.0, "spleen": 3.0}}))
    _predict(cli, bare_run, phantom_dir, tmp_path / "hot", "--save-probabilities")
    (bare_run / TEMPERATURE_NAME).unlink()
    _predict(cli, bare_run, phantom_dir, tmp_path / "raw", "--save-probabilities")
    name = sorted((tmp_path / "raw").glob("*_probabilities.npz"))[0].name
    raw, hot = np.load(tmp_path / "raw" / name), np.load(tmp_path / "hot" / name)
    assert hot["temperature"].tolist() == [2.0, 3.0] and raw["temperature"].tolist() == [1.0, 1.0]
    expected = apply_temperature(raw["probabilities"].astype(np.float32), [2.0, 3.0], axis=0)
    assert np.abs(hot["probabilities"].astype(np.float32) - expected).max() < 2e-3  # float16 storage


def test_a_trained_run_keeps_its_training_reference_so_predict_checks_scans_without_qc(qc_run, phantom_dir, tmp_path, cli, caplog):
    import shutil

    split = json.loads((qc_run / "split.json").read_text())
    reference = json.loads((qc_run / "qc_reference.json").read_text())
    assert reference["cases"] == len(split["train"]) and len(reference["volumes_ml"]["spleen"]) == len(split["train"])
    run = tmp_path / "trained"  # what training leaves, before any `unetr qc`
    shutil.copytree(qc_run / "checkpoints", run / "checkpoints")
    shutil.copy(qc_run / "qc_reference.json", run / "qc_reference.json")
    with caplog.at_level(logging.WARNING):
        _predict(cli, run, phantom_dir, tmp_path / "out")
    messages = [r.getMessage() for r in caplog.records]
    assert any("no quality model" in m for m in messages)
    assert not any("no training reference" in m for m in messages)
