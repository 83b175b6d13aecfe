"""Start a segmentation model from a pretrained encoder (`train --init-from`), and freeze it.

Sources, all read as safetensors or with `torch.load(weights_only=True)`:

- a `unetr pretrain` run or checkpoint: the teacher's encoder (default, as DINO evaluates) or the
  student's (`--init-key student`);
- any `unetr train` run or checkpoint: its encoder;
- a plain state-dict file, e.g. MONAI's UNETR (`vit.*`) or Swin UNETR (`swinViT.*`, or the
  self-supervised `module.*` backbone weights), optionally wrapped in {"state_dict": ...}.

Only the encoder is loaded: the keys under the prefix that matches the most encoder keys. Every
encoder parameter must be found with the same shape, otherwise the source is another architecture
and nothing is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from unetr_app.errors import CheckpointError, UsageError
from unetr_app.io.atomic import atomic_write_text
from unetr_app.io.run_dir import RunDir
from unetr_app.io.checkpoint import checkpoint_files, load_checkpoint, read_state_dict, resolve_checkpoint_path
from unetr_app.training.optim import ENCODER_NAMES
from unetr_app.training.teacher import teacher_reference, teacher_weights

INIT_KEYS = ("teacher", "student")


@dataclass
class InitReport:
    source: str
    key: str
    prefix: str  # the prefix of the source's encoder keys
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # encoder keys the source lacks (buffers only)
    unexpected: list[str] = field(default_factory=list)  # source keys left unused (heads, decoders)

    def summary(self) -> str:
        def some(keys):
            return f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else ""

        return (f"initialised the encoder from {self.source} ({self.key}): {len(self.loaded)} keys loaded, "
                f"{len(self.missing)} missing{some(self.missing)}, {len(self.unexpected)} unexpected{some(self.unexpected)}")

    def to_dict(self) -> dict:
        return asdict(self)


def encoder_of(model: nn.Module, model_name: str = "this model") -> tuple[str, nn.Module]:
    """(attribute, module) of a segmentation model's encoder."""
    for name in ENCODER_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return name, module
    raise UsageError(f"{model_name}: cannot tell its encoder apart (no {', '.join(ENCODER_NAMES)} module)")


def init_encoder(model: nn.Module, source: str | Path, key: str = "teacher", model_name: str = "this model") -> InitReport:
    """Load the encoder weights of `source` into `model`'s encoder; refuse another architecture."""
    if key not in INIT_KEYS:
        raise UsageError(f"--init-key must be one of {', '.join(INIT_KEYS)}, got {key!r}")
    weights, described, used = read_source_weights(source, key)
    _, encoder = encoder_of(model, model_name)
    target = encoder.state_dict()
    prefix = _best_prefix(weights, target)
    picked = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix) and k[len(prefix):] in target}
    if not picked:
        raise UsageError(f"{described}: no key matches the encoder of {model_name} (architecture mismatch)")
    wrong = [k for k, v in picked.items() if tuple(v.shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise UsageError(
            f"{described}: architecture mismatch with {model_name}: {k} is {tuple(picked[k].shape)} there, "
            f"{tuple(target[k].shape)} here ({len(wrong)} keys differ); pretrain with the same model and params"
        )
    parameters = {name for name, _ in encoder.named_parameters()}
    missing = [k for k in target if k not in picked]
    if any(k in parameters for k in missing):
        absent = [k for k in missing if k in parameters]
        raise UsageError(
            f"{described}: architecture mismatch with {model_name}: {len(absent)} encoder weights are missing "
            f"there (first: {absent[0]}); pretrain with the same model and params"
        )
    encoder.load_state_dict(picked, strict=False)
    unexpected = [k for k in weights if not (k.startswith(prefix) and k[len(prefix):] in picked)]
    return InitReport(str(source), used, prefix, sorted(picked), missing, unexpected)


def freeze_encoder(model: nn.Module, model_name: str = "this model") -> int:
    """Stop gradients into the encoder; returns the number of parameters still trained."""
    _, encoder = encoder_of(model, model_name)
    encoder.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def read_source_weights(source: str | Path, key: str) -> tuple[dict[str, torch.Tensor], str, str]:
    """(flat state dict, where it came from, which weights: teacher/student/model) of a run, a
    checkpoint or a state-dict file."""
    path = Path(source)
    if not path.exists() and not checkpoint_files(path)[0].is_file():
        raise UsageError(f"--init-from {path}: no such run folder or file")
    try:
        data = load_checkpoint(run_checkpoint(path))
    except CheckpointError:
        if path.is_dir():
            raise
        data = None
    if data is not None:
        extra = (data.get("recipe") or {}).get("extra_state") or {}
        teacher, reference = teacher_weights(extra), teacher_reference(extra)
        if key == "teacher" and teacher is not None:
            return teacher, str(path), "teacher"
        if key == "teacher" and reference is not None:
            raise UsageError(
                f"--init-from {path}: this run has no teacher weights (its teacher was {reference.path}, kept by "
                f"reference); use --init-key student for the run's own weights, or --init-from its teacher"
            )
        return dict(data["state_dict"]), str(path), "student" if teacher is not None or reference is not None else "model"
    return read_state_dict(path), str(path), "state dict"


def run_checkpoint(path: Path) -> Path:
    """The checkpoint of a run folder (its best, else its last) or of NAME.pt / NAME.safetensors,
    read through its NAME.pt when there is one: only that file holds a recipe's extra state (DINO's
    teacher); the weights file alone is the student."""
    resolved = resolve_checkpoint_path(path)
    sidecar = checkpoint_files(resolved)[1]
    return sidecar if sidecar.is_file() else resolved


def _best_prefix(weights: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str:
    prefixes = {""} | {f"{name}." for name in ENCODER_NAMES}
    return max(sorted(prefixes), key=lambda p: sum(k.startswith(p) and k[len(p):] in target for k in weights))


@dataclass
class EncoderInit:
    """`train --init-from SOURCE --init-key KEY --freeze-encoder` as data; `announce` prints a line."""

    source: Path | None = None
    key: str = "teacher"
    freeze: bool = False
    announce: Callable[[str], None] | None = None


def prepare_encoder(model: nn.Module, run_dir: Path, model_name: str, init: EncoderInit | None, restoring: bool,
                    main: bool = True) -> dict | None:
    """Apply --init-from/--freeze-encoder to a new run and record them in RUN/init.json (the `main`
    process writes and announces); a resumed run (its weights come from last.pt) only re-applies
    the recorded freeze."""
    record = RunDir(run_dir).init_record
    if restoring:
        recorded = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        if recorded.get("freeze_encoder"):
            freeze_encoder(model, model_name)
        return recorded or None
    if init is None or (init.source is None and not init.freeze):
        return None
    recorded: dict = {"freeze_encoder": init.freeze}
    if init.source is not None:
        report = init_encoder(model, init.source, init.key, model_name)
        recorded["init"] = report.to_dict()
        _say(init, main, report.summary())
    if init.freeze:
        trained = freeze_encoder(model, model_name)
        _say(init, main, f"encoder frozen: {trained:,} parameters train (the decoder)")
    if main:
        atomic_write_text(record, json.dumps(recorded, indent=2) + "\n")
    return recorded


def _say(init: EncoderInit, main: bool, line: str) -> None:
    if main and init.announce is not None:
        init.announce(line)
