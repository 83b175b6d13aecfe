"""A run's metrics read back by TensorBoard's own event reader and by MlflowClient from a real
SQLite store; a bad --tracker and an unreachable MLflow server each cost one line, not the run."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def _train(cli, phantom_dir, tiny_profile, out, *extra, env=None):
    return cli("train", "--task", "spleen", "--data-dir", str(phantom_dir), "--profile", str(tiny_profile),
                "--out", str(out), "--steps", "4", "--device", "cpu", *extra, env=env)


def _lines(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_hold_what_metrics_jsonl_holds(cli, phantom_dir, tiny_profile, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "runs" / "tracked"
    result = _train(cli, phantom_dir, tiny_profile, run, "--tracker", "mlflow")
    assert result.exit_code == 0, result.output
    lines = _lines(run)
    events = EventAccumulator(str(run))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/loss", "train/lr", "validation/val_dice"} <= set(tags), tags
    assert [e.step for e in events.Scalars("loss/loss")] == [line["step"] for line in lines]
    assert events.Scalars("validation/val_dice")[-1].value == pytest.approx(lines[-1]["val_dice"], abs=1e-6)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("spleen").experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert found[0].data.params["optimizer.lr"] == "0.001"
    history = client.get_metric_history(found[0].info.run_id, "loss")
    assert [m.step for m in history] == [line["step"] for line in lines]
    assert history[-1].value == pytest.approx(lines[-1]["loss"])
    artifacts = {a.path for a in client.list_artifacts(found[0].info.run_id)}
    assert {"metrics.jsonl", "summary.json", "config.yaml"} <= artifacts


def test_an_unknown_tracker_is_one_line_naming_the_choices(cli, phantom_dir, tiny_profile, tmp_path):
    result = _train(cli, phantom_dir, tiny_profile, tmp_path / "run", "--tracker", "wandb")
    assert result.exit_code == 2
    assert "--tracker 'wandb': expected one of tensorboard, mlflow, none" in result.output


def test_an_unreachable_mlflow_server_warns_and_training_goes_on(cli, phantom_dir, tiny_profile, tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port: nothing listens
    run = tmp_path / "run"
    result = _train(cli, phantom_dir, tiny_profile, run, "--tracker", "mlflow")
    assert result.exit_code == 0, result.output
    warnings = [r.getMessage() for r in caplog.records if r.name == "unetr_app.tracking"]
    assert len(warnings) == 1 and "http://127.0.0.1:9" in warnings[0] and "\n" not in warnings[0]
    assert _lines(run)[-1]["step"] == 4
