"""The model registry: every architecture is created by name, so configs and checkpoints
can name a model as data and later families join without touching the trainer.

    @register_model(family="unetr", spatial_dims=(3,), tasks=("segmentation",))
    def unetr(**kwargs): ...

    model = create_model("unetr", task="segmentation", spatial_dims=3, in_channels=1,
                         out_channels=2, img_size=(96, 96, 96), feature_size=16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from unetr_app.errors import ConfigError
from unetr_app.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    spatial_dims: tuple[int, ...]
    tasks: tuple[str, ...]
    description: str


def _import_families() -> None:
    # Importing the package registers every family module it lists.
    import unetr_app.models  # noqa: F401


MODELS: Registry[ModelEntry] = Registry("model", list_command="unetr models list", loader=_import_families)


def register_model(
    name: str | None = None,
    *,
    family: str,
    spatial_dims: tuple[int, ...] = (2, 3),
    tasks: tuple[str, ...] = ("classification", "segmentation"),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder under `name` (default: the function's name). Duplicates are an error."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or builder.__name__
        doc = (builder.__doc__ or "").strip().splitlines()
        MODELS.register(key, ModelEntry(key, builder, family, tuple(spatial_dims), tuple(tasks), doc[0] if doc else ""))
        return builder

    return decorator


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted."""
    return MODELS.list(pattern)


def get_model_entry(name: str) -> ModelEntry:
    return MODELS.get(name)


def create_model(name: str, *, task: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model. `task` defaults to the entry's first task."""
    entry = get_model_entry(name)
    task = task or entry.tasks[0]
    if task not in entry.tasks:
        raise ConfigError(f"model {name!r} does not support task {task!r}; it supports {', '.join(entry.tasks)}")
    spatial_dims = kwargs.get("spatial_dims", entry.spatial_dims[-1])
    if spatial_dims not in entry.spatial_dims:
        raise ConfigError(
            f"model {name!r} supports spatial_dims {entry.spatial_dims}, got {spatial_dims!r}"
        )
    try:
        return entry.builder(task=task, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        # a size the patches or strides don't divide, a misspelt parameter: the user's config to fix
        raise ConfigError(f"model {name!r}: {err}") from err

