"""Run configuration: YAML under `configs/` parsed once into validated, typed objects.

A run is resolved from three files and the command line, later ones overriding earlier ones:

    configs/tasks/<task>.yaml      what to segment (labels, modality, dataset folder name)
    configs/models/<model>.yaml    which registered model and its hyper-parameters
    configs/profiles/<name>.yaml   preprocessing, augmentation, training and inference settings,
                                   plus `model.params` overrides (e.g. a smaller UNETR on CPU)

Every error names the file and the dotted key, e.g. `training.lr: Input should be a valid number`.

Where the YAML comes from: a path to a .yaml file is taken as it is; a name is looked up first in
`$UNETR_CONFIG_DIR/<kind>/` (a user's own tasks, models, profiles and data_manifests), then in the
files shipped with unetr: the repository's `configs/` and `data_manifests/`, which an installed
wheel carries as package data (`unetr_app/_data/`, read through importlib.resources).
"""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from unetr_app.errors import ConfigError

CONFIG_DIR_ENV = "UNETR_CONFIG_DIR"


def _shipped(name: str) -> Path:
    """configs/ or data_manifests/: the copy inside an installed wheel, else the source checkout's
    (a plain checkout or an editable install, where the package sits beside them)."""
    packaged = Path(str(resources.files("unetr_app") / "_data" / name))
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / name


CONFIG_ROOT = _shipped("configs")
MANIFEST_ROOT = _shipped("data_manifests")


def search_dirs(kind: str) -> list[Path]:
    """Folders searched for a named config of `kind` (tasks, models, profiles, data_manifests), in order."""
    shipped = MANIFEST_ROOT if kind == "data_manifests" else CONFIG_ROOT / kind
    user = os.environ.get(CONFIG_DIR_ENV)
    return ([Path(user) / kind] if user else []) + [shipped]


def find_named(kind: str, name: str) -> Path | None:
    return next((d / f"{name}.yaml" for d in search_dirs(kind) if (d / f"{name}.yaml").is_file()), None)


def known_names(kind: str) -> list[str]:
    return sorted({p.stem for d in search_dirs(kind) if d.is_dir() for p in d.glob("*.yaml")})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Modality = Literal["CT", "MRI"]


class TaskConfig(Strict):
    name: str
    dataset_dir: str = Field(description="folder name of the dataset, e.g. Task09_Spleen")
    manifest: str = Field(description="name of the manifest in data_manifests/")
    modality: Modality
    in_channels: int = Field(1, ge=1)
    channels: dict[str, Modality] | None = Field(
        None, description="channel name -> modality, in file order (CASE_0000, CASE_0001, ...); default: one per in_channels"
    )
    labels: dict[str, int]

    @model_validator(mode="after")
    def _channels_match(self) -> "TaskConfig":
        if self.channels is not None and len(self.channels) != self.in_channels:
            raise ValueError(f"channels names {len(self.channels)} channels ({', '.join(self.channels)}) but in_channels is {self.in_channels}")
        return self

    @property
    def channel_modalities(self) -> dict[str, str]:
        """{channel name: modality} for every input channel."""
        if self.channels is not None:
            return dict(self.channels)
        names = ["image"] if self.in_channels == 1 else [f"channel_{c}" for c in range(self.in_channels)]
        return {name: self.modality for name in names}

    @field_validator("labels")
    @classmethod
    def _labels_contiguous(cls, labels: dict[str, int]) -> dict[str, int]:
        values = sorted(labels.values())
        if values != list(range(len(values))) or len(values) < 2:
            raise ValueError(f"label values must be 0..N-1 with background 0 and at least one class, got {labels}")
        return labels

    @property
    def out_channels(self) -> int:
        return len(self.labels)


class ModelConfig(Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PreprocessingConfig(Strict):
    orientation: str = "RAS"
    spacing: tuple[float, float, float]
    intensity_window: tuple[float, float] | None = Field(
        None, description="[low, high] mapped to [0, 1] and clipped (CT Hounsfield units); null: per-image z-score"
    )
    roi_size: tuple[int, int, int]
    modalities: tuple[Modality, ...] | None = Field(
        None, description="per input channel: CT is windowed by intensity_window, MRI z-scored inside the body; "
        "filled from the task's channels"
    )

    @field_validator("orientation")
    @classmethod
    def _orientation_code(cls, code: str) -> str:
        code = code.upper()
        axes = [{"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}.get(c) for c in code]
        if len(code) != 3 or None in axes or sorted(axes) != [0, 1, 2]:
            raise ValueError(f"orientation must be a 3-letter code with one of L/R, A/P, S/I each, got {code!r}")
        return code

    @field_validator("spacing", "roi_size")
    @classmethod
    def _positive(cls, values):
        if any(v <= 0 for v in values):
            raise ValueError(f"every value must be positive, got {values}")
        return values

    @field_validator("intensity_window")
    @classmethod
    def _window_order(cls, window):
        if window is not None and window[0] >= window[1]:
            raise ValueError(f"intensity_window must be [low, high] with low < high, got {window}")
        return window


class AugmentationConfig(Strict):
    flip_prob: float = Field(0.1, ge=0, le=1)
    rot90_prob: float = Field(0.1, ge=0, le=1)
    intensity_shift_prob: float = Field(0.5, ge=0, le=1)
    intensity_shift_offset: float = Field(0.1, ge=0)


class TrainingConfig(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(1, ge=1, description="volumes per step; each gives num_samples crops")
    num_samples: int = Field(4, ge=1, description="random crops per volume")
    pos_neg_ratio: tuple[float, float] = (1.0, 1.0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    warmup_epochs: int = Field(0, ge=0)
    val_interval: int = Field(1, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    amp: bool = True
    cache_rate: float = Field(1.0, ge=0, le=1)
    num_workers: int = Field(0, ge=0)
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (null: one pass)")


class InferenceConfig(Strict):
    overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch_size: int = Field(4, ge=1)
    blend_mode: Literal["gaussian", "constant"] = "gaussian"


class RunConfig(Strict):
    task: TaskConfig
    model: ModelConfig
    preprocessing: PreprocessingConfig
    augmentation: AugmentationConfig = AugmentationConfig()
    training: TrainingConfig
    inference: InferenceConfig = InferenceConfig()
    profile: str = "custom"

    @model_validator(mode="before")
    @classmethod
    def _channel_modalities(cls, data: Any) -> Any:
        """The task's per-channel modalities travel with the preprocessing (and so into checkpoints)."""
        if not isinstance(data, dict) or not isinstance(data.get("task"), dict) or not isinstance(data.get("preprocessing"), dict):
            return data
        if data["preprocessing"].get("modalities") is None:
            try:
                task = TaskConfig.model_validate(data["task"])
            except ValidationError:
                return data  # reported with its key by the normal validation
            data = {**data, "preprocessing": {**data["preprocessing"], "modalities": list(task.channel_modalities.values())}}
        return data

    @model_validator(mode="after")
    def _one_modality_per_channel(self) -> "RunConfig":
        modalities = self.preprocessing.modalities
        if modalities is not None and len(modalities) != self.task.in_channels:
            raise ValueError(f"preprocessing.modalities names {len(modalities)} channels; the task has {self.task.in_channels}")
        return self

    def model_kwargs(self) -> dict[str, Any]:
        """Everything `create_model` needs for this task: the model's params plus the data's shape."""
        return {
            "task": "segmentation",
            "spatial_dims": 3,
            "in_channels": self.task.in_channels,
            "out_channels": self.task.out_channels,
            "img_size": list(self.preprocessing.roi_size),
            **self.model.params,
        }

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- loading ---------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({_one_line(err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def find_config(kind: str, name_or_path: str) -> Path:
    """`name` -> $UNETR_CONFIG_DIR/<kind>/<name>.yaml or the shipped configs/<kind>/<name>.yaml;
    a path to a .yaml file is taken as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"{kind[:-1]} config {name_or_path!r}: file not found")
        return candidate
    path = find_named(kind, name_or_path)
    if path is None:
        raise ConfigError(
            f"unknown {kind[:-1]} {name_or_path!r}; known: {', '.join(known_names(kind))} "
            f"(or pass a .yaml path, or add {name_or_path}.yaml under ${CONFIG_DIR_ENV}/{kind}/)"
        )
    return path


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_run_config(
    task: str,
    model: str | None = None,
    profile: str = "cpu-demo",
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve task + model + profile YAML and CLI overrides into one validated RunConfig.

    `model` defaults to the profile's `model.name`. A model name without a YAML file in
    configs/models/ is taken as a registered model with its own defaults. The profile's
    `model.params` size its own model; `model.sizes` sizes others, by model name or family
    (e.g. cpu-demo's CPU-sized variant of every family; a `roi_size` there replaces the profile's
    window for that family). Sizes that do not fit are an error.
    """
    task_data = read_yaml(find_config("tasks", task))
    profile_path = find_config("profiles", profile)
    profile_data = read_yaml(profile_path)
    profile_model = profile_data.pop("model", {}) or {}
    if not isinstance(profile_model, dict) or not set(profile_model) <= {"name", "params", "sizes"}:
        raise ConfigError(f"{profile_path}: model: expected a mapping with name, params and sizes")
    model_name = model or profile_model.get("name", "unetr")
    model_data = _model_config_data(model_name)
    params = _profile_model_params(profile_model, model_data["name"], profile_path)
    if "roi_size" in params:  # a family whose deepest stride needs a larger window than the profile's
        profile_data = deep_merge(profile_data, {"preprocessing": {"roi_size": params.pop("roi_size")}})
    model_data = deep_merge(model_data, {"params": params})
    data = deep_merge(profile_data, {"task": task_data, "model": model_data, "profile": Path(profile).stem})
    data = deep_merge(data, overrides or {})
    return validate_run_config(data, source=f"{profile_path.name} + {task} + {model_data['name']}")


def _profile_model_params(profile_model: dict[str, Any], name: str, profile_path: Path) -> dict[str, Any]:
    """The profile's sizes for model `name`: its own model's params, else `sizes[name]`, else
    `sizes[family]`; a profile that sizes some models but not this one is an error, not a silent
    full-size model."""
    from unetr_app.models import get_model_entry

    own, sizes = profile_model.get("params") or {}, profile_model.get("sizes") or {}
    if not isinstance(own, dict) or not isinstance(sizes, dict):
        raise ConfigError(f"{profile_path}: model.params and model.sizes must be mappings")
    if name == profile_model.get("name", name):
        return own
    family = get_model_entry(name).family
    for key in (name, family):
        if key in sizes:
            return dict(sizes[key] or {})
    if own or sizes:
        sized = ", ".join(sorted(sizes)) or "none"
        raise ConfigError(
            f"{profile_path}: model.params ({', '.join(own) or 'none'}) size {profile_model.get('name')!r} and do not "
            f"apply to --model {name} (family {family}); model.sizes covers: {sized}. Add model.sizes.{family} "
            "to the profile, or use a profile without model sizes"
        )
    return {}


def _model_config_data(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or find_named("models", name_or_path) is not None:
        data = read_yaml(find_config("models", name_or_path))
        data.setdefault("params", {})
        return data
    from unetr_app.models import get_model_entry

    get_model_entry(name_or_path)  # unknown names fail here with a suggestion
    return {"name": name_or_path, "params": {}}


def validate_run_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {format_validation_error(err)}") from None


def format_validation_error(err: ValidationError) -> str:
    """`training.lr: Input should be a valid number (got 'fast')`, several joined by '; '."""
    parts = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling)"
        got = item.get("input")
        shown = "" if item["type"] in ("missing",) or isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{key}: {msg}{shown}")
    return "; ".join(parts)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`training.lr=3e-4` style overrides -> nested dict, values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE, e.g. training.lr=3e-4")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return result


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
