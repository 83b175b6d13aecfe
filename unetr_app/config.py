"""Run configuration: YAML under `configs/` parsed once into validated, typed objects.

A run is resolved from three files and the command line, later ones overriding earlier ones:

    configs/tasks/<task>.yaml      what to segment (labels, modality, dataset folder name)
    configs/models/<model>.yaml    which registered model and its hyper-parameters
    configs/profiles/<name>.yaml   preprocessing, augmentation, training (budget, intervals),
                                   recipe, optimizer, schedule, loss and inference settings,
                                   plus `model.params` overrides (e.g. a smaller UNETR on CPU)

Every error names the file and the dotted key, e.g. `optimizer.lr: Input should be a valid number`;
an unknown key suggests the closest known one.

Where the YAML comes from: a path to a .yaml file is taken as it is; a name is looked up first in
`$UNETR_CONFIG_DIR/<kind>/` (a user's own tasks, models, profiles and data_manifests), then in the
files shipped with unetr: the repository's `configs/` and `data_manifests/`, which an installed
wheel carries as package data (`unetr_app/_data/`, read through importlib.resources).
"""

from __future__ import annotations

import copy
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from unetr_app.errors import ConfigError
from unetr_app.registry import closest_name, unknown_name_message

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
    manifest: str | None = Field(None, description="name of the manifest in data_manifests/; null: the dataset's dataset.json alone")
    file_ending: str = Field(".nii.gz", description="file name ending of the dataset's scans (nnU-Net v2's file_ending)")
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


def _choose(value: str, known: tuple[str, ...], what: str) -> str:
    """A name from a fixed list; an unknown one fails naming the value, the closest known and all of them."""
    if value in known:
        return value
    raise ValueError(unknown_name_message(what, value, known))


class BudgetConfig(Strict):
    """How long to train: optimizer steps, minutes of training, or passes over the training cases."""

    steps: int | None = Field(None, ge=1)
    minutes: float | None = Field(None, gt=0)
    epochs: int | None = Field(None, ge=1, description="passes over the training cases, turned into steps")

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetConfig:
        given = [k for k in ("steps", "minutes", "epochs") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of steps, minutes or epochs, got {given or 'none'}")
        return self

    @model_serializer(mode="wrap")
    def _only_the_given_one(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class TrainingConfig(Strict):
    budget: BudgetConfig
    batch_size: int = Field(1, ge=1, description="volumes per step and process; each gives num_samples crops")
    num_samples: int = Field(4, ge=1, description="random crops per volume")
    pos_neg_ratio: tuple[float, float] = (1.0, 1.0)
    val_every_steps: int = Field(ge=0, description="validate every N optimizer steps and at the end; 0: never")
    log_every_steps: int | None = Field(None, ge=1, description="one metrics line every N steps; null: at validations")
    checkpoint_every_steps: int | None = Field(None, ge=1, description="write last.pt every N steps; null: at each metrics line")
    val_fraction: float = Field(0.2, gt=0, lt=1)
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient's global norm; null: no clipping")
    seed: int = 0
    amp: bool = Field(True, description="mixed precision on GPUs: bfloat16 where native (Ampere on), float16 + GradScaler before")
    cpu_amp: bool = Field(False, description="bfloat16 autocast on a CPU with bfloat16 instructions (AVX-512 BF16, AMX): faster steps, "
                                             "lower Dice on cpu-demo (benchmarks/results/cpu_precision.json)")
    cache_rate: float = Field(1.0, ge=0, le=1)
    num_workers: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _some_line_interval(self) -> TrainingConfig:
        if self.val_every_steps == 0 and self.log_every_steps is None:
            raise ValueError("without validation (val_every_steps 0) set log_every_steps")
        return self

    @property
    def line_every_steps(self) -> int:
        return self.log_every_steps or self.val_every_steps


OPTIMIZERS = ("adamw", "sgd", "adafactor")
SCHEDULES = ("warmup_cosine", "warmup_cooldown", "poly")
LOSSES = ("dice_ce", "dice_focal", "dice", "ce")


class RecipeConfig(Strict):
    """A registered training recipe (unetr_app/training/recipes) and its keyword arguments."""

    name: str = "supervised"
    params: dict[str, Any] = Field(default_factory=dict)


class OptimizerConfig(Strict):
    name: str = "adamw"
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0, description="for the encoder (body); never on norms, biases, embeddings, tokens")
    head_weight_decay: float | None = Field(None, ge=0, description="for the decoder/head; null: same as weight_decay")
    encoder_lr_scale: float = Field(1.0, gt=0, le=1, description="the encoder (body) trains at lr times this: below 1 when it starts from pretraining (--init-from), so the decoder's LR does not wash it out")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = Field(None, gt=0, description="null: the optimizer's default")
    momentum: float = Field(0.99, ge=0, lt=1, description="sgd only")
    nesterov: bool = Field(True, description="sgd only")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _choose(name, OPTIMIZERS, "optimizer")


class ScheduleConfig(Strict):
    """The LR over the whole budget: a factor of optimizer.lr at each step."""

    name: str = "warmup_cosine"
    warmup_fraction: float = Field(0.0, ge=0, lt=1, description="linear warmup over this part of the budget")
    warmup_steps: int | None = Field(None, ge=0, description="warmup in steps (instead of warmup_fraction)")
    cooldown_fraction: float = Field(0.2, gt=0, le=1, description="warmup_cooldown: linear decay to zero over this last part")
    exponent: float = Field(0.9, gt=0, description="poly: (1 - t/T)^exponent")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _choose(name, SCHEDULES, "schedule")


class LossConfig(Strict):
    """A MONAI loss on (logits, integer labels): dice_ce, dice_focal, dice or ce; params go to it."""

    name: str = "dice_ce"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _choose(name, LOSSES, "loss")


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
    recipe: RecipeConfig = RecipeConfig()
    optimizer: OptimizerConfig
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
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

    def checkpoint_description(self, model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
        """What a checkpoint records besides its weights so that prediction can rebuild the network
        (registry name + kwargs) and prepare scans exactly as training did."""
        return {
            "model": {"name": self.model.name, "kwargs": model_kwargs if model_kwargs is not None else self.model_kwargs()},
            "preprocessing": self.preprocessing.model_dump(mode="json"),
            "inference": self.inference.model_dump(mode="json"),
            "labels": dict(self.task.labels),
            "task": self.task.name,
            "modality": self.task.modality,
            "in_channels": self.task.in_channels,
        }

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- loading ---------------------------------------------------------------------------------


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
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


# what `unetr train`, `compare` and `predict` use when no --task / --profile is given
DEFAULT_TASK = "spleen"
DEFAULT_PROFILE = "cpu-demo"


def load_run_config(
    task: str | dict[str, Any] | None,
    model: str | None = None,
    profile: str | dict[str, Any] = DEFAULT_PROFILE,
    overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
) -> RunConfig:
    """Resolve task + model + profile YAML and CLI overrides into one validated RunConfig.

    The task is `resolve_task(task, data_dir)`: a task YAML, the dataset's own dataset.json, or
    both when they agree. A profile may be a plans.yaml written by `unetr plan` (its `profile`).

    `model` defaults to the profile's `model.name`. A model name without a YAML file in
    configs/models/ is taken as a registered model with its own defaults. The profile's
    `model.params` size its own model; `model.sizes` sizes others, by model name or family
    (e.g. cpu-demo's CPU-sized variant of every family; a `roi_size` there replaces the profile's
    window for that family). Sizes that do not fit are an error, unless the overrides size the
    chosen model themselves (`--set model.params.KEY=...`).
    """
    task_data = resolve_task(task, data_dir)
    if isinstance(profile, dict):  # a planned profile (unetr plan), already in memory
        profile_path, profile_data, profile = Path(f"{profile.get('profile', 'planned')}.yaml"), copy.deepcopy(profile), str(profile.get("profile", "planned"))
    else:
        profile_path = find_config("profiles", profile)
        profile_data = read_yaml(profile_path)
    if isinstance(profile_data.get(PLANNED_PROFILE_KEY), dict):  # a plans.yaml: the profile planned for its device
        profile_data = copy.deepcopy(profile_data[PLANNED_PROFILE_KEY])
    profile_model = profile_data.pop("model", {}) or {}
    if not isinstance(profile_model, dict) or not set(profile_model) <= {"name", "params", "sizes"}:
        raise ConfigError(f"{profile_path}: model: expected a mapping with name, params and sizes")
    model_name = model or profile_model.get("name", "unetr")
    model_data = _model_config_data(model_name)
    sized_by_user = bool(((overrides or {}).get("model") or {}).get("params"))
    params = {} if sized_by_user and model is not None and model != profile_model.get("name") else \
        _profile_model_params(profile_model, model_data["name"], profile_path)
    if "roi_size" in params:  # a family whose deepest stride needs a larger window than the profile's
        profile_data = deep_merge(profile_data, {"preprocessing": {"roi_size": params.pop("roi_size")}})
    model_data = deep_merge(model_data, {"params": params})
    data = deep_merge(profile_data, {"task": task_data, "model": model_data, "profile": profile_data.get("profile", Path(profile).stem)})
    data = deep_merge(data, overrides or {})
    return validate_run_config(data, source=f"{profile_path.name} + {task_data.get('name', task)} + {model_data['name']}")


# --- the task: a task YAML, the dataset's own dataset.json, or both -------------------------------

DATASET_JSON = "dataset.json"
PLANNED_PROFILE_KEY = "profile"  # the key of a plans.yaml that holds the planned profile


def resolve_task(task: str | dict[str, Any] | None, data_dir: str | Path | None = None) -> dict[str, Any]:
    """The task's config data. A dataset folder with a dataset.json describes its own task; a task
    YAML (`task`, or the one whose dataset_dir is the folder's name) may name the dataset, add a
    manifest and give labels or channels, which must then agree with dataset.json."""
    description = Path(data_dir) / DATASET_JSON if data_dir is not None else None
    described = task_from_dataset_json(description) if description is not None and description.is_file() else None
    if isinstance(task, dict):  # a task already resolved (a plan's, read from the folder layout)
        return copy.deepcopy(task)
    if task is None:
        task = DEFAULT_TASK if data_dir is None else _task_for_folder(Path(data_dir).name)
    if task is None:
        if described is None:
            raise ConfigError(
                f"{description}: not found, and no task YAML names the folder {Path(data_dir).name!r}; add a dataset.json "
                "(MSD or nnU-Net v2 form: labels, modality or channel_names) or pass --task NAME"
            )
        return described
    path = find_config("tasks", task)
    data = read_yaml(path)
    return data if described is None else _agreeing_task(data, path, described, description)


def _task_for_folder(folder: str) -> str | None:
    """The known task whose dataset_dir is this folder's name (e.g. Task09_Spleen -> spleen)."""
    for name in known_names("tasks"):
        if read_yaml(find_config("tasks", name)).get("dataset_dir") == folder:
            return name
    return None


def _agreeing_task(data: dict[str, Any], path: Path, described: dict[str, Any], description: Path) -> dict[str, Any]:
    """The YAML's task completed from dataset.json; labels or channels that disagree are an error naming both."""
    if "labels" in data and data["labels"] != described["labels"]:
        raise ConfigError(
            f"{path}: labels {data['labels']} disagree with {description}'s {described['labels']}; "
            f"fix one of them, or drop labels from {path.name} to take the dataset's"
        )
    named = data.get("channels") or {}
    modalities = list(named.values()) or [data.get("modality", described["modality"])] * int(data.get("in_channels", 1))
    if "modality" in data or "channels" in data or "in_channels" in data:
        same_names = not named or [n.lower() for n in named] == [n.lower() for n in described["channels"]]
        if not same_names or modalities != list(described["channels"].values()):
            raise ConfigError(
                f"{path}: channels {_channel_text(named or modalities)} disagree with {description}'s "
                f"{_channel_text(described['channels'])}; fix one of them, or drop modality/channels from {path.name}"
            )
    return {**described, **{k: v for k, v in data.items() if k not in ("labels",)}, "labels": described["labels"]}


def _channel_text(channels: dict[str, str] | list[str]) -> str:
    if isinstance(channels, dict):
        return "[" + ", ".join(f"{name}: {modality}" for name, modality in channels.items()) + "]"
    return "[" + ", ".join(channels) + "]"


def task_from_dataset_json(path: Path) -> dict[str, Any]:
    """TaskConfig data from a dataset's own dataset.json, in either form:
    MSD (`labels` {"0": "background", "1": "liver"}, `modality` {"0": "CT"}) or nnU-Net v2
    (`labels` {"background": 0, "liver": 1}, `channel_names` {"0": "CT"}, `file_ending`).
    A channel named CT is normalised as CT; any other (T2, ADC, FLAIR, MRI, ...) is z-scored per image."""
    try:
        description = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({_one_line(err)}); fix the file") from None
    if not isinstance(description, dict):
        raise ConfigError(f"{path}: expected a JSON object with labels and modality (MSD) or channel_names (nnU-Net v2)")
    labels = _dataset_labels(description.get("labels"), path)
    names = description.get("channel_names", description.get("modality"))
    if not isinstance(names, dict) or not names:
        raise ConfigError(f"{path}: names no input channels; add \"modality\": {{\"0\": \"CT\"}} (MSD) or \"channel_names\" (nnU-Net v2)")
    ordered = [str(names[k]) for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else 0)]
    channels: dict[str, str] = {}
    for name in ordered:
        unique = name if name not in channels else f"{name}_{len(channels)}"
        channels[unique] = "CT" if name.strip().upper() == "CT" else "MRI"
    folder = Path(path).resolve().parent.name
    title = str(description.get("name") or folder)
    return {
        "name": re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "dataset",
        "dataset_dir": folder,
        "manifest": None,
        "file_ending": str(description.get("file_ending", ".nii.gz")),
        "modality": next(iter(channels.values())),
        "in_channels": len(channels),
        "channels": channels,
        "labels": labels,
    }


def _dataset_labels(labels: Any, path: Path) -> dict[str, int]:
    """{name: value} from MSD's {"1": "liver"} or nnU-Net v2's {"liver": 1}."""
    if not isinstance(labels, dict) or not labels:
        raise ConfigError(f"{path}: no labels; add \"labels\": {{\"0\": \"background\", \"1\": \"NAME\"}}")
    if all(str(k).strip().isdigit() and isinstance(v, str) for k, v in labels.items()):  # MSD
        pairs = {v: int(k) for k, v in labels.items()}
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in labels.values()):  # nnU-Net v2
        pairs = dict(labels)
    else:
        raise ConfigError(
            f"{path}: labels {labels} are neither MSD's {{\"1\": \"liver\"}} nor nnU-Net v2's {{\"liver\": 1}} form "
            "(region-based labels are not supported); give one integer value per label name"
        )
    return dict(sorted(pairs.items(), key=lambda item: item[1]))


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


# keys that moved when the trainer went from epochs to step budgets and named optimizers/schedules
MOVED_KEYS = {
    "training.lr": "optimizer.lr",
    "training.weight_decay": "optimizer.weight_decay",
    "training.epochs": "training.budget.epochs (or training.budget.steps)",
    "training.warmup_epochs": "schedule.warmup_fraction or schedule.warmup_steps",
    "training.val_interval": "training.val_every_steps",
    "training.max_steps_per_epoch": "training.budget.steps",
}


def format_validation_error(err: ValidationError) -> str:
    """`training.budget.steps: Input should be a valid integer (got 'x')`, several joined by '; '."""
    parts = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"]]
        key = ".".join(loc) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        got = item.get("input")
        shown = "" if item["type"] in ("missing", "value_error") or isinstance(got, dict) else f" (got {got!r})"
        if item["type"] == "extra_forbidden":
            msg, shown = _unknown_key_message(loc), ""
        parts.append(f"{key}: {msg}{shown}")
    return "; ".join(parts)


def _unknown_key_message(loc: list[str]) -> str:
    key = ".".join(loc)
    if key in MOVED_KEYS:
        return f"this key moved to {MOVED_KEYS[key]}"
    close = closest_name(loc[-1], _known_keys(loc[:-1]))
    return f"unknown key; did you mean {close!r}?" if close else "unknown key (check its spelling)"


def _known_keys(parent: list[str]) -> list[str]:
    """Field names of the config section at `parent` (e.g. ['training'])."""
    model: Any = RunConfig
    for part in parent:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`optimizer.lr=3e-4` style overrides -> nested dict, values parsed as YAML scalars."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE, e.g. optimizer.lr=3e-4")
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return result


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
