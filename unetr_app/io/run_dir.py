"""The run folder: every file a training or pretraining run leaves, named here and nowhere else.

    run = RunDir("runs/spleen-unetr")
    run.config, run.split, run.metrics, run.summary, run.curves   # config.yaml, split.json, ...
    run.last, run.best                                            # checkpoints/last.pt, best.pt
    run.init_record, run.fingerprint, run.scans                   # init.json, fingerprint.json, scans.json
    run.is_started, run.is_finished, run.read_summary()

`start_or_resume` is the one decision `unetr train` and `unetr pretrain` make before training:
continue the recorded run in --out (refusing options that would change it) or start a new one
under a generated name.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from unetr_app.errors import UsageError
from unetr_app.io.atomic import atomic_write_text

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
INIT_FILE = "init.json"
FINGERPRINT_FILE = "fingerprint.json"
SCANS_FILE = "scans.json"
COMPARE_SCORES_FILE = "compare_scores.json"
POSTPROCESSING_FILE = "postprocessing.json"
VALIDATION_FOLDER = "validation"
TRAIN_LOG = "train.log"
CHECKPOINTS_FOLDER = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
TIMING_PROBE = ".timing.pt"
RUNS_FOLDER = Path("runs")


class RunDir:
    """Paths of one run folder (nothing is created until something writes)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / CONFIG_FILE, doc="the run's config as recorded at its start")
    split = property(lambda self: self.path / SPLIT_FILE, doc="training/validation case names")
    metrics = property(lambda self: self.path / METRICS_FILE, doc="one JSON line per logged step")
    summary = property(lambda self: self.path / SUMMARY_FILE, doc="written when the run finishes")
    curves = property(lambda self: self.path / CURVES_FILE, doc="loss and Dice curves")
    init_record = property(lambda self: self.path / INIT_FILE, doc="where the encoder's warm start came from")
    fingerprint = property(lambda self: self.path / FINGERPRINT_FILE, doc="the training data's intensities per channel")
    scans = property(lambda self: self.path / SCANS_FILE, doc="a pretraining run's unlabelled scans")
    compare_scores = property(lambda self: self.path / COMPARE_SCORES_FILE, doc="a compare run's Dice per validation case (last checkpoint)")
    postprocessing = property(lambda self: self.path / POSTPROCESSING_FILE, doc="the chosen post-processing")
    validation = property(lambda self: self.path / VALIDATION_FOLDER, doc="predictions of the validation cases")
    train_log = property(lambda self: self.path / TRAIN_LOG, doc="output of a training subprocess (compare's)")
    checkpoints = property(lambda self: self.path / CHECKPOINTS_FOLDER)
    last = property(lambda self: self.checkpoints / LAST_CHECKPOINT, doc="with training state, for resuming")
    best = property(lambda self: self.checkpoints / BEST_CHECKPOINT, doc="best validation Dice, weights only")
    timing_probe = property(lambda self: self.checkpoints / TIMING_PROBE, doc="scratch state of the budget's timing probe")

    def file(self, name: str) -> Path:
        """Another file in the run folder (one its owner names in a constant)."""
        return self.path / name

    @property
    def is_started(self) -> bool:
        return self.config.is_file()

    @property
    def is_finished(self) -> bool:
        return self.summary.is_file()

    @property
    def has_checkpoint(self) -> bool:
        from unetr_app.io.checkpoint import checkpoint_files

        return any(f.is_file() for c in (self.best, self.last) for f in checkpoint_files(c))

    def prepare(self) -> None:
        """Create the folder and its checkpoints folder."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_config(self, config) -> None:
        """Record a RunConfig as config.yaml."""
        atomic_write_text(self.config, yaml.safe_dump(config.to_dict(), sort_keys=False))

    @staticmethod
    def write_json(path: Path, data: Any) -> None:
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")

    @staticmethod
    def read_json(path: Path) -> Any:
        return json.loads(Path(path).read_text(encoding="utf-8"))

    def read_config(self):
        """The recorded config, validated (a RunConfig)."""
        from unetr_app.config import validate_run_config

        return validate_run_config(yaml.safe_load(self.config.read_text(encoding="utf-8")), source=str(self.config))

    def read_config_dict(self) -> dict[str, Any]:
        return yaml.safe_load(self.config.read_text(encoding="utf-8"))

    def read_split(self) -> dict[str, Any]:
        return json.loads(self.split.read_text(encoding="utf-8"))

    def read_summary(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text(encoding="utf-8"))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]


def new_run_path(name: str) -> Path:
    """runs/NAME-YYYYmmdd-HHMMSS."""
    return RUNS_FOLDER / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class RunStart:
    config: Any  # RunConfig
    run: RunDir
    resumed: bool


def start_or_resume(out: Path | None, *, resume: bool, new_config: Callable[[], Any],
                    run_name: Callable[[Any], str], options: dict[str, tuple[Any, Any]] | None = None,
                    overrides: Iterable[str] = ()) -> RunStart:
    """Continue the recorded run in `out` (with --resume) or build a new config and name its folder.

    `options` maps a flag to (given value, a function of the recorded config giving its value); a
    resumed run refuses any given option or --set override that would change what it recorded.
    """
    if resume and out is None:
        raise UsageError("--resume needs --out RUN_DIR (the run to continue)")
    if resume and RunDir(out).is_started:
        config = RunDir(out).read_config()
        refuse_changes(config, options or {}, list(overrides))
        return RunStart(config, RunDir(out), resumed=True)
    config = new_config()
    return RunStart(config, RunDir(out or new_run_path(run_name(config))), resumed=False)


def refuse_changes(config, options: dict[str, tuple[Any, Callable[[Any], Any]]], overrides: list[str]) -> None:
    """A resumed run keeps its recorded config: options that would change it are refused, naming them."""
    from unetr_app.config import parse_overrides

    recorded = config.to_dict()
    ignored = []
    for flag, (value, recorded_value) in options.items():
        had = recorded_value(config)
        if value is not None and value != had:
            ignored.append(f"{flag} {value} (the run has {had})")
    for pair in overrides:
        key = pair.partition("=")[0]
        if _differs(recorded, parse_overrides([pair])):
            ignored.append(f"--set {pair} (the run has {key}={_lookup(recorded, key)!r})")
    if ignored:
        raise UsageError(
            f"--resume continues the run as it was recorded and would ignore {'; '.join(ignored)}. "
            "Drop them (only --steps/--minutes/--epochs may extend a run), or start a new run with another --out"
        )


def _differs(recorded: dict, override: dict) -> bool:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(recorded.get(key), dict):
            if _differs(recorded[key], value):
                return True
        elif recorded.get(key, object()) != value and not (isinstance(value, list) and list(recorded.get(key) or []) == value):
            return True
    return False


def _lookup(recorded: dict, dotted: str):
    node = recorded
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
