"""The checkpoint format. A checkpoint is untrusted input: nothing in it can run code when loaded.

A checkpoint saved as `NAME.pt` is written as up to two files beside each other:

    NAME.safetensors   the weights (safetensors: raw tensors and a JSON header, no pickle at all)
                       plus, in the header's metadata, everything needed to use them, as JSON:
                         format, format_version      "unetr-checkpoint", 2
                         save_id                      pairs this file with its NAME.pt
                         checkpoint (a JSON object):
                           model: {name, kwargs}      `create_model(name, **kwargs)` rebuilds the network
                           preprocessing              orientation, spacing, intensity_window, roi_size
                           inference                  overlap, sw_batch_size, blend_mode
                           labels                     {name: value}, background 0
                           task, modality, in_channels, step, best_val_dice, best_step, config
                           fingerprint                the training data's intensities per channel
    NAME.pt            only when there is more (last.pt: the training state: optimizer, scheduler,
                       scaler, rng, history, seconds), a torch file read with `weights_only=True`,
                       holding {format, format_version, save_id, weights: "NAME.safetensors", ...}
    NAME.previous.*    only while a pair is being replaced (or after a kill did so): the pair before

The .safetensors file alone is the model people share. Format-1 checkpoints (one torch file with
`state_dict` and everything else) still load, and so do bare state dicts (MONAI's, e.g.) through
`load_model(..., fallback=...)`, which then says which keys it loaded.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unetr_app.config import InferenceConfig, PreprocessingConfig
from unetr_app.errors import CheckpointError
from unetr_app.io.atomic import atomic_path, temporary_name
from unetr_app.io.run_dir import BEST_CHECKPOINT, CHECKPOINTS_FOLDER, LAST_CHECKPOINT

FORMAT = "unetr-checkpoint"
FORMAT_VERSION = 2
REQUIRED_KEYS = ("model", "state_dict", "preprocessing", "inference", "labels")
WEIGHTS_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".pt"
PREVIOUS = ".previous"  # NAME.previous.*: the pair kept while NAME is replaced

log = logging.getLogger(__name__)
CHECKPOINT_NAMES = (Path(BEST_CHECKPOINT).stem, Path(LAST_CHECKPOINT).stem)  # a run folder means its best, else its last
WRAPPER_KEYS = ("state_dict", "model", "net", "network", "model_state_dict")  # how other tools nest weights


# --- writing ---------------------------------------------------------------------------------


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> None:
    """Write `checkpoint` (a dict with `state_dict`) as NAME.safetensors (+ NAME.pt for the rest).

    Where an entry goes is decided by its type (`split_by_type`), never by trying to serialise it.
    Both files are written in full to temporaries before either replaces the previous save, so a
    write that fails (a full disk) leaves the previous pair as it was, loadable. The sidecar names
    the weights' `save_id`; while the two renames happen, the previous pair stays hard-linked as
    NAME.previous.*, so a run killed between them loads the previous save (never a mix of two) and
    resumes from it. A failed write is a `CheckpointError` naming the file and the cause."""
    weights_path, sidecar_path = checkpoint_files(path)
    state_dict, description, tensors_and_state = split_by_type(checkpoint)
    save_id = uuid.uuid4().hex
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "save_id": save_id,
                "checkpoint": json.dumps(description)}
    try:
        with atomic_path(weights_path) as weights_tmp:  # renamed last: after the sidecar below
            _write_safetensors_file(weights_tmp, state_dict, metadata)
            if tensors_and_state:
                sidecar = {"format": FORMAT, "format_version": FORMAT_VERSION, "save_id": save_id,
                           "weights": weights_path.name, **tensors_and_state}
                with atomic_path(sidecar_path) as sidecar_tmp:
                    torch.save(sidecar, sidecar_tmp)
                    _keep_previous(weights_path, sidecar_path)
    except OSError as err:
        raise CheckpointError(
            f"{Path(path)}: could not write the checkpoint ({err.strerror or err}); the previous one there is unchanged "
            "and loadable. Free space on that disk, then continue with `unetr train --resume --out RUN_DIR`"
        ) from None
    for file in previous_files(path):  # the new pair is complete: the previous one is no longer needed
        file.unlink(missing_ok=True)
    if not tensors_and_state:  # an older sidecar or format-1 file of the same name would now describe other weights
        sidecar_path.unlink(missing_ok=True)


def _keep_previous(weights_path: Path, sidecar_path: Path) -> None:
    """Hard-link the current pair (if there is one) as NAME.previous.*, weights first."""
    if weights_path.is_file() and sidecar_path.is_file():
        _link_pair((weights_path, sidecar_path), previous_files(sidecar_path))


def _link_pair(sources: tuple[Path, Path], targets: tuple[Path, Path]) -> None:
    """Make each target the same file as its source (a copy where the file system has no hard
    links), one atomic rename each, in order."""
    for source, target in zip(sources, targets):
        if target.is_file() and os.path.samefile(source, target):
            continue  # rename() between two links of one file does nothing and would leave the temporary
        tmp = temporary_name(target)
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copy2(source, tmp)
        os.replace(tmp, target)


def previous_files(path: str | Path) -> tuple[Path, Path]:
    """(NAME.previous.safetensors, NAME.previous.pt): the pair kept while NAME is being replaced."""
    weights, sidecar = checkpoint_files(path)
    return (weights.with_name(weights.name[: -len(WEIGHTS_SUFFIX)] + PREVIOUS + WEIGHTS_SUFFIX),
            sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)] + PREVIOUS + SIDECAR_SUFFIX))


def can_resume_from(path: str | Path) -> bool:
    """Whether a checkpoint saved as `path` exists to resume from, made whole first if a kill tore
    its last save: the previous pair is put back in its place, so the resumed run's next save keeps
    a good previous pair. Not when its only save was killed before its weights were written: that
    is said once, and the run starts again from step 0."""
    weights, sidecar = checkpoint_files(path)
    previous = previous_files(path)
    if sidecar.is_file() and not weights.is_file() and not all(f.is_file() for f in previous):
        log.warning("%s: its first save was killed before its weights were written; training starts again from step 0", sidecar)
        return False
    if all(f.is_file() for f in previous) and not _is_whole(weights, sidecar):
        log.warning("%s: its last save was torn by a kill; resuming from the save before it", sidecar)
        _link_pair(previous, (weights, sidecar))
    return sidecar.is_file() or weights.is_file()


def _is_whole(weights: Path, sidecar: Path) -> bool:
    """Both files of a pair exist and name one save."""
    if not (weights.is_file() and sidecar.is_file()):
        return False
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt", device="cpu") as handle:
        weights_id = (handle.metadata() or {}).get("save_id")
    return weights_id == torch.load(sidecar, map_location="cpu", weights_only=True, mmap=True).get("save_id")


def build_checkpoint(description: dict[str, Any], model: nn.Module | dict[str, torch.Tensor], **entries: Any) -> dict[str, Any]:
    """The one shape of a checkpoint dict: what rebuilds the network (`RunConfig.checkpoint_description`),
    its weights (detached, on the CPU) and any further entries (step, recipe, training_state, ...)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    return {**description, "state_dict": {k: v.detach().cpu() for k, v in state.items()}, **entries}


def split_by_type(checkpoint: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(weights, description, sidecar) of a checkpoint dict, by type:

    - `state_dict` (names -> tensors): the .safetensors tensors;
    - `training_state` and every entry holding a tensor anywhere (a teacher's weights, optimizer
      moments, RNG states): the torch sidecar, read back with `weights_only=True`;
    - every other entry must be plain data (str, number, bool, None, lists, str-keyed dicts): the
      .safetensors header, as JSON. Anything else (a Path, a numpy array, an object) is an error
      naming the key, so no value ever reaches a file that a safe loader could not read."""
    data = dict(checkpoint)
    state_dict = data.pop("state_dict")
    if not isinstance(state_dict, dict) or not _all_tensors(state_dict):
        raise TypeError("checkpoint['state_dict'] must map parameter names to tensors")
    sidecar = {k: data.pop(k) for k in list(data) if k == "training_state" or _holds_tensor(data[k])}
    for key, value in data.items():
        _check_plain(value, key)
    return state_dict, data, sidecar


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return isinstance(value, (list, tuple)) and any(_holds_tensor(v) for v in value)


def _check_plain(value: Any, key: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"checkpoint[{key!r}]: key {k!r} is not a string (the header is JSON)")
            _check_plain(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{key}[{i}]")
    elif not (value is None or isinstance(value, (str, bool, int, float))):
        raise TypeError(f"checkpoint[{key!r}]: a {type(value).__name__} is neither a tensor nor plain data; convert it before saving")


def write_safetensors(path: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        _write_safetensors_file(tmp, state_dict, metadata)


def _write_safetensors_file(path: Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> None:
    from safetensors.torch import save_file

    # safetensors stores each tensor's own bytes: contiguous, CPU, no storage shared between keys
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, 0o666 & ~_umask())  # safetensors creates files private (0600); torch.save follows umask


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint saved as `path` (both its files and any previous pair; any may be absent)."""
    for file in (*checkpoint_files(path), *previous_files(path)):
        file.unlink(missing_ok=True)


def checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(NAME.safetensors, NAME.pt) for a checkpoint called NAME.pt or NAME.safetensors."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, SIDECAR_SUFFIX) else path
    return base.with_name(base.name + WEIGHTS_SUFFIX), base.with_name(base.name + SIDECAR_SUFFIX)


# --- reading ---------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and validate a checkpoint (NAME.pt, NAME.safetensors, or a run folder: its best)."""
    path = resolve_checkpoint_path(path)
    data = _read_checkpoint(path)
    if data is None:
        raise CheckpointError(f"{path}: not a unetr checkpoint (no format marker {FORMAT!r})")
    return data


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A run folder means its best checkpoint (else its last); NAME.pt may exist as NAME.safetensors only."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / CHECKPOINTS_FOLDER, path):
            for name in CHECKPOINT_NAMES:
                weights, sidecar = checkpoint_files(folder / name)
                for candidate in (sidecar, weights) if name == Path(LAST_CHECKPOINT).stem else (weights, sidecar):
                    if candidate.is_file():
                        return candidate
        raise CheckpointError(f"{path}: no checkpoints/best or checkpoints/last (.safetensors or .pt) in this folder")
    if not path.is_file() and path.suffix == SIDECAR_SUFFIX and checkpoint_files(path)[0].is_file():
        return checkpoint_files(path)[0]
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    return path


def _read_checkpoint(path: Path) -> dict[str, Any] | None:
    """Our checkpoint as one dict (weights included); None when the file is readable but not ours."""
    if _is_safetensors(path):
        state_dict, metadata = read_safetensors(path)
        return _from_weights_file(path, state_dict, metadata)
    data = _torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    _check_version(path, data.get("format_version", 0))
    if "weights" in data:  # a format-2 sidecar: the weights and their metadata live beside it
        return _read_pair(path, data)
    _check_required(path, data)
    return data


def _read_pair(path: Path, data: dict, weights_path: Path | None = None) -> dict[str, Any]:
    """A sidecar joined with its weights; a pair torn by a kill while saving gives the previous save
    (`weights_path` given: that previous pair itself, with no further fallback)."""
    named = Path(str(data["weights"]))
    if named.name != str(data["weights"]):
        raise CheckpointError(f"{path}: its weights file {data['weights']!r} is not a file name beside it")
    weights_path = weights_path or path.with_name(named.name)
    torn = None
    if not weights_path.is_file():
        torn = f"{path}: its weights file {data['weights']!r} is missing beside it"
    else:
        state_dict, metadata = read_safetensors(weights_path)
        if metadata.get("save_id") != data.get("save_id"):
            torn = (f"{path}: belongs to another save than {weights_path.name} (a run killed while saving?); "
                    f"use {weights_path.name} alone for the weights")
    if torn:
        previous_weights, previous_sidecar = previous_files(path)
        if weights_path == previous_weights or not previous_sidecar.is_file() or not previous_weights.is_file():
            raise CheckpointError(torn)
        log.warning("%s was torn by a kill while saving; reading the save before it (%s)", path, previous_sidecar.name)
        previous = _torch_load(previous_sidecar)
        return _read_pair(previous_sidecar, previous, previous_weights)
    merged = _from_weights_file(weights_path, state_dict, metadata)
    merged.update({k: v for k, v in data.items() if k not in ("weights", "save_id")})
    return merged


def _from_weights_file(path: Path, state_dict: dict, metadata: dict[str, str]) -> dict[str, Any] | None:
    if metadata.get("format") != FORMAT:
        return None
    version = _check_version(path, metadata.get("format_version", "0"))
    try:
        data = json.loads(metadata.get("checkpoint", "{}"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: its metadata is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: its metadata is not a JSON object")
    data.update(format=FORMAT, format_version=version, state_dict=state_dict)
    _check_required(path, data)
    return data


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a .safetensors file (parsing it cannot run code)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(err)})") from None


def _torch_load(path: Path) -> Any:
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save archive or safetensors file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused: the file holds pickled objects other than tensors and plain data, "
            f"which could run code when loaded ({_first_line(err)})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(err)})") from None


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length followed by a JSON object."""
    if path.suffix == WEIGHTS_SUFFIX:
        return True
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not zipfile.is_zipfile(path)


def _check_version(path: Path, version: Any) -> int:
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise CheckpointError(f"{path}: format_version {version!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this unetr understands "
            f"({FORMAT_VERSION}); upgrade unetr"
        )
    return version


def _check_required(path: Path, data: dict) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")


# --- bare state dicts (MONAI's and others') --------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of any accepted file: our checkpoint, a .safetensors file, or a torch file holding
    a state dict (possibly nested under "state_dict"/"model"/..., keys possibly prefixed "module.")."""
    path = resolve_checkpoint_path(path)
    if _is_safetensors(path):
        return read_safetensors(path)[0]
    ours = _read_checkpoint(path)
    if ours is not None:
        return ours["state_dict"]
    return _unwrap_state_dict(path, _torch_load(path))


def _unwrap_state_dict(path: Path, data: Any) -> dict[str, torch.Tensor]:
    for _ in range(2):  # e.g. {"state_dict": {...}} or {"model": {"state_dict": {...}}}
        if isinstance(data, dict) and not _all_tensors(data):
            inner = next((data[k] for k in WRAPPER_KEYS if isinstance(data.get(k), dict)), None)
            data = inner if inner is not None else data
    if not isinstance(data, dict) or not data or not _all_tensors(data):
        raise CheckpointError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in data):  # saved from DistributedDataParallel
        data = {k[len("module."):]: v for k, v in data.items()}
    return data


def _all_tensors(data: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyReport:
    """How a bare state dict's keys met the model's: all model keys must be loaded."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def some(keys):
            return "" if not keys else f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"

        return (f"weights: {self.loaded} loaded, {len(self.missing)} missing{some(self.missing)}, "
                f"{len(self.unexpected)} unexpected{some(self.unexpected)}")


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
    kwargs: dict[str, Any] = field(default_factory=dict)
    key_report: KeyReport | None = None  # set when the weights came from a bare state dict
    in_channels: int = 1
    fingerprint: dict | None = None  # the training data's intensities (data.fingerprint), when recorded
    best_val_dice: float | None = None  # the run's best validation Dice, when it validated
    best_step: int | None = None


def load_model(path: str | Path, device: str | torch.device = "cpu", fallback: dict[str, Any] | None = None) -> LoadedModel:
    """Rebuild the network from a checkpoint (registry name + kwargs) and load its weights.

    `fallback` (a checkpoint dict without `state_dict`: model, preprocessing, inference, labels)
    describes the model when `path` is a bare state dict, e.g. MONAI's UNETR or SwinUNETR weights."""
    ckpt_path = resolve_checkpoint_path(path)
    data = _read_checkpoint(ckpt_path)
    bare = data is None
    if bare:
        if fallback is None:
            raise CheckpointError(
                f"{ckpt_path}: a bare state dict, not a unetr checkpoint; say which model and preprocessing "
                f"it needs (--task, --model, --profile)"
            )
        data = {**fallback, "state_dict": read_state_dict(ckpt_path)}
    model, report = _build(ckpt_path, data, strict=not bare)
    model.to(device).eval()
    return LoadedModel(
        model=model,
        name=data["model"]["name"],
        preprocessing=PreprocessingConfig.model_validate(data["preprocessing"]),
        inference=InferenceConfig.model_validate(data["inference"]),
        labels=dict(data["labels"]),
        modality=data.get("modality", "CT"),
        path=ckpt_path,
        kwargs=dict(data["model"]["kwargs"]),
        key_report=report,
        in_channels=int(data.get("in_channels", 1)),
        fingerprint=data.get("fingerprint"),
        best_val_dice=_validated(data.get("best_val_dice")),
        best_step=data.get("best_step"),
    )


def _validated(dice: Any) -> float | None:
    """A recorded best validation Dice; runs that never validated record -1 (or nothing)."""
    return float(dice) if isinstance(dice, (int, float)) and dice >= 0 else None


def _build(path: Path, data: dict, strict: bool) -> tuple[nn.Module, KeyReport | None]:
    from unetr_app.models import create_model

    spec = data["model"]
    model = create_model(spec["name"], **spec["kwargs"])
    try:
        result = model.load_state_dict(data["state_dict"], strict=strict)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {spec['name']!r} ({_load_error(err)})") from None
    if strict:
        return model, None
    report = KeyReport(len(model.state_dict()) - len(result.missing_keys), list(result.missing_keys), list(result.unexpected_keys))
    if report.missing:
        raise CheckpointError(f"{path}: weights do not fit model {spec['name']!r}: {report.summary()}")
    return model, report


def _load_error(err: Exception) -> str:
    """The informative line of a load_state_dict error (its first line only names the class)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line), lines[0] if lines else type(err).__name__)
    return detail if len(detail) <= 240 else detail[:237] + "..."


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
