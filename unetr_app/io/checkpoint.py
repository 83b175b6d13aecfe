"""The checkpoint format. A checkpoint is untrusted input: it is read with
`torch.load(..., weights_only=True)`, which refuses pickled code or arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:

    format, format_version            "unetr-checkpoint", 1
    model: {name, kwargs}             `create_model(name, **kwargs)` rebuilds the network
    state_dict                        the weights
    preprocessing                     orientation, spacing, intensity_window, roi_size
    inference                         overlap, sw_batch_size, blend_mode
    labels                            {name: value}, background 0
    task, modality, in_channels
    epoch, best_val_dice, best_epoch
    config                            the resolved run config
    fingerprint                       the training data's intensities per channel (data.fingerprint)
    training_state (last.pt only)     optimizer, scheduler, scaler, rng, history, seconds
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetr_app.config import InferenceConfig, PreprocessingConfig
from unetr_app.errors import CheckpointError
from unetr_app.io.atomic import atomic_path

FORMAT = "unetr-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("model", "state_dict", "preprocessing", "inference", "labels")


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **checkpoint}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint file (or `RUN_DIR`, meaning RUN_DIR/checkpoints/best.pt)."""
    path = resolve_checkpoint_path(path)
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save archive)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain data, "
            f"which could run code when loaded ({_first_line(err)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a unetr checkpoint (no format marker {FORMAT!r})")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {data['format_version']} is newer than this unetr "
            f"understands ({FORMAT_VERSION}); upgrade unetr"
        )
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return data


def resolve_checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "best.pt", path / "checkpoints" / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this folder")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return path


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference plus everything needed to preprocess its input."""

    model: nn.Module
    name: str
    preprocessing: PreprocessingConfig
    inference: InferenceConfig
    labels: dict[str, int]
    modality: str
    path: Path
    in_channels: int = 1
    fingerprint: dict | None = None  # the training data's intensities (data.fingerprint), when recorded


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network from a checkpoint (registry name + kwargs) and load its weights."""
    from unetr_app.models import create_model

    ckpt_path = resolve_checkpoint_path(path)
    data = load_checkpoint(ckpt_path)
    spec = data["model"]
    model = create_model(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"{ckpt_path}: weights do not fit model {spec['name']!r} ({_first_line(err)})") from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        name=spec["name"],
        preprocessing=PreprocessingConfig.model_validate(data["preprocessing"]),
        inference=InferenceConfig.model_validate(data["inference"]),
        labels=dict(data["labels"]),
        modality=data.get("modality", "CT"),
        path=ckpt_path,
        in_channels=int(data.get("in_channels", 1)),
        fingerprint=data.get("fingerprint"),
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
