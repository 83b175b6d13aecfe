"""Cross-validation folds: made once per dataset, deterministic, disjoint, shared by every model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from unetr_app.pipelines.train import load_or_make_split
from unetr_app.config import load_run_config
from unetr_app.data.splits import load_or_make_splits, make_folds
from unetr_app.data.dataset import labelled_cases
from unetr_app.data.manifest import load_manifest
from unetr_app.errors import UsageError

NAMES = [f"case_{i:03d}" for i in range(23)]


def test_folds_are_deterministic_disjoint_and_cover_every_case():
    folds = make_folds(NAMES, 5)
    assert folds == make_folds(list(reversed(NAMES)), 5)  # input order does not matter
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(NAMES)
    assert sum(len(v) for v in vals) == len(NAMES)  # each case validated exactly once
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]  # 23 cases in 5 nearly equal parts
    for fold in folds:
        assert set(fold["train"]).isdisjoint(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(NAMES)
    assert make_folds(NAMES, 5) != make_folds(NAMES, 5, seed=1)


def test_too_many_folds_is_an_error():
    with pytest.raises(UsageError, match="--folds 30"):
        make_folds(NAMES, 30)


@pytest.fixture
def dataset(phantom_dir, tmp_path):
    return shutil.copytree(phantom_dir, tmp_path / "Task09_Spleen")


def _cases(dataset):
    return labelled_cases(dataset, load_manifest("spleen"))


def test_splits_json_is_made_once_in_the_dataset_and_reused(dataset):
    cases = _cases(dataset)
    splits, path = load_or_make_splits(dataset, cases, 3)
    assert path == dataset / "splits.json"
    assert json.loads(path.read_text(encoding="utf-8")) == splits  # nnU-Net's layout: a list of {train, val}
    again, _ = load_or_make_splits(dataset, list(reversed(cases)))  # no --folds: whatever exists
    assert again == splits
    with pytest.raises(UsageError, match="holds 3 folds"):
        load_or_make_splits(dataset, cases, 5)


def test_read_only_dataset_keeps_its_folds_beside_it(dataset, monkeypatch):
    # root may write anywhere, so "read-only" is what os.access says
    monkeypatch.setattr("unetr_app.data.splits.os.access", lambda path, mode: path != dataset)
    _, path = load_or_make_splits(dataset, _cases(dataset), 2)
    assert path == dataset.parent / "Task09_Spleen.splits.json" and path.is_file()
    assert not (dataset / "splits.json").exists()
    assert load_or_make_splits(dataset, _cases(dataset))[1] == path


def test_every_model_gets_the_same_fold(dataset, tiny_profile, tmp_path):
    splits = {}
    for model in ("unetr", "unet_small"):
        config = load_run_config("spleen", model, str(tiny_profile))
        train, val = load_or_make_split(tmp_path / model, dataset, config, fold=1, folds=3)
        splits[model] = (train, val)
        assert json.loads((tmp_path / model / "split.json").read_text(encoding="utf-8"))["fold"] == 1
    assert splits["unetr"] == splits["unet_small"]
    fold1 = json.loads((dataset / "splits.json").read_text(encoding="utf-8"))[1]["val"]
    assert sorted(c["image"].rsplit("/", 1)[1].split(".")[0].removesuffix("_0000") for c in splits["unetr"][1]) == sorted(fold1)


def test_fold_all_trains_on_every_case(dataset, tiny_profile, tmp_path):
    config = load_run_config("spleen", None, str(tiny_profile))
    train, val = load_or_make_split(tmp_path / "run", dataset, config, fold="all", folds=None)
    assert len(train) == len(_cases(dataset)) == 6
    # watched on the cases a default split would hold out (still trained on), not on all six
    assert len(val) == round(6 * config.training.val_fraction) and {c["image"] for c in val} <= {c["image"] for c in train}
    assert not (dataset / "splits.json").exists()  # no folds file is needed or made


def test_fold_out_of_range_is_a_one_line_error(cli, dataset, tiny_profile, tmp_path):
    result = cli("train", "--data-dir", dataset, "--profile", tiny_profile, "--fold", "7", "--folds", "3", "--out", tmp_path / "run")
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: --fold 7:") and errors[0].endswith("choose 0..2 or 'all'")
    assert "Traceback" not in result.output


def test_post_processing_is_decided_when_the_last_fold_finishes(cli, dataset, tiny_profile, tmp_path):
    experiment = tmp_path / "exp"
    quick = ["--data-dir", dataset, "--profile", tiny_profile, "--folds", "2", "--steps", "2"]
    assert cli("train", *quick, "--fold", "1", "--out", experiment / "fold_1").exit_code == 0
    assert not (experiment / "postprocessing.json").exists()  # fold 0 is not trained yet
    assert cli("train", *quick, "--model", "unet_small", "--fold", "0", "--out", experiment / "other_model").exit_code == 0
    assert not (experiment / "postprocessing.json").exists()  # another model's fold does not complete this one
    assert cli("train", *quick, "--fold", "0", "--out", experiment / "fold_0").exit_code == 0
    decision = json.loads((experiment / "postprocessing.json").read_text(encoding="utf-8"))
    assert sorted(Path(r).name for r in decision["runs"]) == ["fold_0", "fold_1"]
    assert decision["validation_cases"] == len(_cases(dataset))  # every case validated once over the two folds
    # a fold run decides nothing of its own: its decision would shadow the experiment's at predict time
    assert not any((experiment / fold / "postprocessing.json").exists() for fold in ("fold_0", "fold_1", "other_model"))


def test_a_run_of_its_own_decides_post_processing_on_its_validation_cases(cli, dataset, tiny_profile, tmp_path):
    result = cli("train", "--data-dir", dataset, "--profile", tiny_profile, "--steps", "2", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    split = json.loads((tmp_path / "run" / "split.json").read_text(encoding="utf-8"))
    decision = json.loads((tmp_path / "run" / "postprocessing.json").read_text(encoding="utf-8"))
    assert decision["runs"] == [str(tmp_path / "run")] and decision["validation_cases"] == len(split["validation"]) > 0
    assert "post-processing decided on the validation cases" in result.output


def test_validation_predictions_are_made_again_for_a_newer_checkpoint(cli, dataset, tiny_profile, tmp_path):
    from unetr_app.io.checkpoint import resolve_checkpoint_path
    from unetr_app.pipelines.postprocess import predict_validation

    run = tmp_path / "run"
    assert cli("train", "--data-dir", dataset, "--profile", tiny_profile, "--steps", "2", "--out", run).exit_code == 0
    report = run / "validation" / "predict_report.json"
    made = report.stat().st_mtime_ns
    predict_validation(run, "cpu")
    assert report.stat().st_mtime_ns == made  # the same checkpoint: read back
    checkpoint = resolve_checkpoint_path(run)
    later = made + 5_000_000_000
    os.utime(checkpoint, ns=(later, later))  # as when training goes on and finds a better step
    predict_validation(run, "cpu")
    assert report.stat().st_mtime_ns != made
