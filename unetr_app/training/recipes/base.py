"""The recipe contract, its typed params and its registry (see the package docstring).

A recipe declares `Params` (a pydantic model: `recipe.params` is validated against it before the run
folder is touched, and an error names the key), the `create_model` arguments its heads need
(`model_kwargs`), how it is wrapped for DDP (`distribute`), and its state beside the weights
(`extra_state` / `load_extra_state`: plain data and tensors, typed by key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from unetr_app.errors import ConfigError
from unetr_app.registry import Registry, UnknownNameError


class RecipeParams(BaseModel):
    """Base of every recipe's `Params`: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def one_of(value: str, allowed: tuple[str, ...]) -> str:
    """A Params validator's check of a name against its choices (the error names both)."""
    if value not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
    return value


def fraction_range(value: tuple[float, float]) -> tuple[float, float]:
    """A Params validator's check of a [low, high] share of a volume."""
    if not 0 < value[0] <= value[1] <= 1:
        raise ValueError(f"must be [low, high] with 0 < low <= high <= 1, got {list(value)}")
    return value


def validate_params(recipe: str, schema: type[RecipeParams], params: dict[str, Any] | None) -> RecipeParams:
    """`recipe.params` as the recipe's typed Params; the first problem is a ConfigError naming the key."""
    try:
        return schema.model_validate(dict(params or {}))
    except ValidationError as err:
        item = err.errors()[0]
        key = ".".join(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            known = ", ".join(schema.model_fields) or "none"
            raise ConfigError(f"recipe.params.{key}: not a parameter of recipe {recipe!r}; known: {known}") from None
        shown = "" if item["type"] == "value_error" else f" (got {item.get('input')!r})"
        raise ConfigError(f"recipe.params.{key}: {item['msg'].removeprefix('Value error, ')}{shown}") from None


class ForwardTrain(nn.Module):
    """A model's `forward_train` as a module's forward: what DDP wraps for a recipe that trains
    every head of a model (its forward synchronises every head's gradients)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model.forward_train(x)


def train_outputs(model: nn.Module, image: torch.Tensor) -> dict[str, Any]:
    """`forward_train(image)` of the trainable model, through DDP's forward when it is wrapped."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model(image)
    return model.forward_train(image)


class Recipe(nn.Module):
    """Base class. Subclasses set `name`, implement `forward(batch) -> dict` and may override the hooks.

    `model` is the trainable network. Frozen modules (a teacher) must be registered so that they
    require no grad and stay out of the optimizer; `state_dict()` of the recipe is
    not what checkpoints store: they store `model.state_dict()` plus `extra_state()`.

    What the trainer does around a recipe:
    - the optimizer gets `model`'s parameters plus any other parameter of the recipe that requires
      grad (e.g. a projection head; it joins the head's weight-decay group); freeze a teacher with
      `requires_grad_(False)`, and keep its weights (or an EMA copy's) in `extra_state()`;
    - under torchrun `recipe.model` is replaced by its DistributedDataParallel wrapper, so call
      `self.model(x)` (not `self.model.some_method(x)`) for every trainable forward, or
      `train_outputs(self.model, x)` for `forward_train` in a recipe with `trains_forward_train`;
    - the trainer switches only `model` between train() and eval() (validation runs the model's
      plain forward); modules of the recipe keep the mode the recipe gives them;
    - batches hold the image on the device (channels-last) and, for labelled data, "label"; every
      tensor (or list of tensors) in the batch is moved to the device.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False  # True: cannot run without a teacher (tests skip it unless given one)
    Params: ClassVar[type[RecipeParams]] = RecipeParams  # no params unless a recipe declares some
    trains_forward_train: ClassVar[bool] = False  # True: forward uses train_outputs(self.model, ...)
    self_supervised: ClassVar[bool] = False  # True: trains on unlabelled scans (`unetr pretrain`) with its own loader
    pretrain_profile: ClassVar[str | None] = None  # the profile `unetr pretrain --method NAME` uses unless given one

    def __init__(self, model: nn.Module, config: Any, **params: Any) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.settings = self.parse_params(params)  # typed
        self.params = self.settings.model_dump()  # the same, as a dict with the defaults filled in

    @classmethod
    def parse_params(cls, params: dict[str, Any] | None) -> RecipeParams:
        return validate_params(cls.name, cls.Params, params)

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments for `create_model` that this recipe needs (e.g. a distillation head)."""
        return {}

    @classmethod
    def check(cls, config: Any, dataset: Path | None = None) -> str | None:
        """Refuse, before the run folder is touched, what would make the recipe fail when built
        (bad params; a recipe may refuse more, e.g. a bad teacher, or with `dataset`, the labelled
        dataset's folder, unlabelled scans that are labelled ones). Returns a line for the user
        about what it checked (e.g. the teacher's validation Dice), or None."""
        cls.parse_params(config.recipe.params)
        return None

    @classmethod
    def unlabelled_loader(cls, config: Any, samples: list[dict], shard: Any):
        """A self-supervised recipe's loader over preprocessed unlabelled scans (e.g. DINO's multi-crop)."""
        raise NotImplementedError(f"recipe {cls.name!r} trains on labels, not unlabelled scans")

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def distribute(self, device_ids: list[int] | None) -> None:
        """Under torchrun: wrap the trainable model (only it) for DistributedDataParallel."""
        # some models hold parameters their forward never uses (MONAI UNETR's cross-attention
        # norms); without find_unused_parameters DDP would wait for their gradients and never average the others
        module = ForwardTrain(self.model) if self.trains_forward_train else self.model
        self.model = nn.parallel.DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)

    @staticmethod
    def average_gradients(params: list[nn.Parameter], shard: Any) -> None:
        """DDP averages the model's gradients; trainable parts of the recipe outside it are averaged here."""
        if not shard.distributed:
            return
        for param in params:
            if param.grad is not None:
                torch.distributed.all_reduce(param.grad)
                param.grad /= shard.world_size

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (an EMA teacher updates here)."""

    def extra_state(self) -> dict[str, Any]:
        """Plain data recorded in the checkpoint beside the weights (tensors, numbers, strings)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what `extra_state` returned, on resume."""


def model_arguments(config: Any, recipe: type[Recipe] | None = None) -> dict[str, Any]:
    """`create_model` keyword arguments for the config's model and recipe (default: the config's):
    the task's shape, the model's params and the recipe's heads (e.g. distillation=True). The
    checkpoint records them."""
    recipe = recipe or recipe_class(config.recipe.name)
    return {**config.model_kwargs(), **recipe.model_kwargs(dict(config.recipe.params))}


def _import_recipes() -> None:
    # each module registers its recipes on import
    from unetr_app.training.recipes import dino, distill, masked, self_distill, supervised  # noqa: F401


RECIPES: Registry[type[Recipe]] = Registry("recipe", loader=_import_recipes)


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a `name`")
    return RECIPES.register(cls.name, cls)


def list_recipes(self_supervised: bool | None = None) -> list[str]:
    """Registered recipe names; with `self_supervised`, only those that are (or are not)."""
    names = RECIPES.list()
    return names if self_supervised is None else [n for n in names if RECIPES.get(n).self_supervised == self_supervised]


def recipe_class(name: str) -> type[Recipe]:
    try:
        return RECIPES.get(name)
    except UnknownNameError as err:
        raise ConfigError(f"recipe.name: {err}") from None


def build_recipe(name: str, model: nn.Module, config: Any, params: dict[str, Any] | None = None) -> Recipe:
    return recipe_class(name)(model, config, **(params or {}))
