"""The recipe contract and its registry (see the package docstring)."""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

import torch
from torch import nn

from unetr_app.errors import ConfigError

_RECIPES: dict[str, type[Recipe]] = {}


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
      `self.model(x)` (not `self.model.some_method(x)`) for every trainable forward;
    - the trainer switches only `model` between train() and eval() (validation runs the model's
      plain forward); modules of the recipe keep the mode the recipe gives them;
    - batches hold the image on the device (channels-last) and, for labelled data, "label"; every
      tensor (or list of tensors) in the batch is moved to the device.
    """

    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = False  # True: cannot run without a teacher (tests skip it unless given one)

    def __init__(self, model: nn.Module, config: Any, **params: Any) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.params = params

    @classmethod
    def model_kwargs(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Extra keyword arguments for `create_model` that this recipe needs (e.g. a distillation head)."""
        return {}

    @classmethod
    def check(cls, config: Any) -> None:
        """Refuse, before the run folder is touched, what would make the recipe fail when built (a bad teacher)."""

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def distribute(self, device_ids: list[int] | None) -> None:
        """Under torchrun: wrap the trainable model (only it) for DistributedDataParallel."""
        # some models hold parameters their forward never uses (MONAI UNETR's cross-attention
        # norms); without find_unused_parameters DDP would wait for their gradients and never average the others
        self.model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=True)

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


def model_arguments(config: Any) -> dict[str, Any]:
    """`create_model` keyword arguments for the config's model and recipe: the task's shape, the
    model's params and the recipe's heads (e.g. distillation=True). The checkpoint records them."""
    return {**config.model_kwargs(), **recipe_class(config.recipe.name).model_kwargs(dict(config.recipe.params))}


def register_recipe(cls: type[Recipe]) -> type[Recipe]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a `name`")
    if cls.name in _RECIPES:
        raise ValueError(f"recipe name {cls.name!r} is already registered by {_RECIPES[cls.name].__module__}")
    _RECIPES[cls.name] = cls
    return cls


def _import_recipes() -> None:
    # each module registers its recipes on import
    from unetr_app.training.recipes import dino, distill, self_distill, supervised  # noqa: F401


def list_recipes() -> list[str]:
    _import_recipes()
    return sorted(_RECIPES)


def recipe_class(name: str) -> type[Recipe]:
    _import_recipes()
    if name not in _RECIPES:
        close = difflib.get_close_matches(name, list(_RECIPES), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"recipe.name: unknown recipe {name!r}.{hint} Known: {', '.join(sorted(_RECIPES))}")
    return _RECIPES[name]


def build_recipe(name: str, model: nn.Module, config: Any, params: dict[str, Any] | None = None) -> Recipe:
    cls = recipe_class(name)
    try:
        return cls(model, config, **(params or {}))
    except TypeError as err:  # an unknown or missing keyword in recipe.params
        raise ConfigError(f"recipe.params: {err} (recipe {name!r})") from None
