"""Experiment tracking: a run's metrics in TensorBoard (always, when installed) and MLflow (`--tracker mlflow`).

Trackers are reporters (the trainer's `start / step_done / line_done / stop` protocol, the one
the rich progress bar follows), composed with the progress bar by `TrackedReporter`; `finish`
adds what exists only after training (summary, curves, weights). metrics.jsonl stays the record:
a tracker that fails warns in one line and stops tracking, and training goes on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from unetr_app.errors import UsageError
from unetr_app.extras import available, require_feature

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "none")  # tensorboard: event files only; mlflow: both; none: neither
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's own names, written in the run folder beside metrics.jsonl
MLFLOW_STORE = "mlflow.db"  # the default MLflow store: beside the run folder (runs/mlflow.db)
MLFLOW_ARTIFACTS = "mlartifacts"  # the default store's artifacts, beside it
MLFLOW_RUN_TAG = "unetr.run_dir"  # finds the MLflow run of a resumed run folder
ARTIFACT_PATTERNS = ("*.json", "*.jsonl", "*.yaml", "*.png", "*.md", "checkpoints/best.*")


def require_tracker(tracker: str | None) -> None:
    """A valid --tracker whose extra is installed, or the one-line error (before any work)."""
    if tracker is not None and tracker not in TRACKERS:
        raise UsageError(f"--tracker {tracker!r}: expected one of {', '.join(TRACKERS)}")
    if tracker in ("tensorboard", "mlflow"):
        require_feature(f"--tracker {tracker}")


def track_run(config, run_dir: Path, reporter=None, tracker: str | None = None) -> TrackedReporter:
    """`reporter` plus the trackers `tracker` asks for: by default TensorBoard events where
    tensorboard is installed; a named tracker whose extra is missing is an error, before training."""
    require_tracker(tracker)
    trackers = []
    if tracker in ("tensorboard", "mlflow") or (tracker is None and available("tensorboard")):
        trackers.append(TensorBoardTracker(run_dir))
    if tracker == "mlflow":
        trackers.append(MlflowTracker(run_dir, config))
    return TrackedReporter([reporter] if reporter is not None else [], trackers)


def scalars(line: dict[str, Any]) -> dict[str, float]:
    """A metrics line as named numbers: loss parts, learning rate, validation Dice (also per case)."""
    out = {key: float(value) for key, value in line.items()
           if key not in ("step", "seconds") and isinstance(value, (int, float)) and not isinstance(value, bool)}
    for case, dice in (line.get("val_dice_per_case") or {}).items():
        out[f"val_dice_per_case/{case}"] = float(dice)
    return out


class TrackedReporter:
    """Reporters and trackers called as one; a tracker that raises is warned about once and dropped."""

    def __init__(self, reporters: list, trackers: list):
        self.reporters, self.trackers = reporters, trackers

    def start(self, **kwargs) -> None:
        self._call("start", **kwargs)

    def step_done(self) -> None:
        for reporter in self.reporters:
            reporter.step_done()

    def note(self, text: str) -> None:
        """A line for the person watching (reporters only; trackers keep metrics)."""
        for reporter in self.reporters:
            if hasattr(reporter, "note"):
                reporter.note(text)

    def line_done(self, line: dict, state) -> None:
        self._call("line_done", line, state)

    def stop(self) -> None:
        self._call("stop")

    def finish(self, summary: dict) -> None:
        """After the run's summary and curves are written (trackers only)."""
        for tracker in list(self.trackers):
            self._guarded(tracker, "finish", summary)

    def _call(self, method: str, *args, **kwargs) -> None:
        for reporter in self.reporters:
            getattr(reporter, method)(*args, **kwargs)
        for tracker in list(self.trackers):
            self._guarded(tracker, method, *args, **kwargs)

    def _guarded(self, tracker, method: str, *args, **kwargs) -> None:
        try:
            getattr(tracker, method)(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - tracking is a copy; metrics.jsonl is the record
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            log.warning("%s failed (%s: %s); training goes on without it, metrics stay in metrics.jsonl",
                        tracker.describe(), type(err).__name__, first[:300])
            self.trackers.remove(tracker)


class TensorBoardTracker:
    """Event files in the run folder: `tensorboard --logdir runs` shows every run."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.writer = Path(run_dir), None

    def describe(self) -> str:
        return f"TensorBoard logging into {self.run_dir}"

    def start(self, first_step: int = 0, **_) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run drops the events after its checkpoint, as metrics.jsonl drops its lines
        self.writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=first_step or None)

    def line_done(self, line: dict, state) -> None:
        for name, value in scalars(line).items():
            self.writer.add_scalar(_tag(name), value, line["step"])
        self.writer.flush()

    def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def finish(self, summary: dict) -> None:
        pass


def _tag(name: str) -> str:
    """TensorBoard groups by the part before '/': losses together, validation together."""
    if "/" in name:
        return name
    if name.endswith("loss"):
        return f"loss/{name}"
    if name.startswith("val_"):
        return f"validation/{name}"
    return f"train/{name}"


def mlflow_uri(run_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite store beside the run folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(run_dir).resolve().parent / MLFLOW_STORE}"


class MlflowTracker:
    """One MLflow run per run folder (a resumed run continues it): params from the config, every
    metrics line, and at the end the run's files as artifacts. Experiment = the task's name."""

    def __init__(self, run_dir: Path, config):
        self.run_dir, self.config = Path(run_dir).resolve(), config
        self.uri = mlflow_uri(self.run_dir)
        self.client = self.run_id = None

    def describe(self) -> str:
        return f"MLflow tracking at {self.uri}"

    def start(self, **_) -> None:
        from mlflow.tracking import MlflowClient

        for name, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
            os.environ.setdefault(name, value)  # an unreachable server is reported in seconds, not minutes
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self._experiment_id()
        found = self.client.search_runs([experiment], filter_string=f"tags.`{MLFLOW_RUN_TAG}` = '{self.run_dir}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment, run_name=self.run_dir.name, tags={MLFLOW_RUN_TAG: str(self.run_dir)}).info.run_id
        self._log_params()

    def _experiment_id(self) -> str:
        name = self.config.task.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        local = None if os.environ.get("MLFLOW_TRACKING_URI") else (self.run_dir.parent / MLFLOW_ARTIFACTS).as_uri()
        return self.client.create_experiment(name, artifact_location=local)

    def _log_params(self) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        params = {key: value for key, value in flatten(self.config.to_dict()).items() if key not in logged}
        if params:  # a resumed run keeps its recorded params (only its budget may grow)
            self.client.log_batch(self.run_id, params=[Param(key, value[:6000]) for key, value in params.items()])

    def line_done(self, line: dict, state) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, line["step"]) for name, value in scalars(line).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def stop(self) -> None:
        pass

    def finish(self, summary: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        numbers = {f"summary/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, int(summary.get("steps") or 0)) for k, v in numbers.items()])
        for path in sorted({p for pattern in ARTIFACT_PATTERNS for p in self.run_dir.glob(pattern) if p.is_file()}):
            parent = path.parent.relative_to(self.run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        self.client.set_terminated(self.run_id, "FINISHED")


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: {"optimizer.lr": "0.001", ...}."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
