"""A profile's model sizes: its own model's params, `model.sizes` for others, an error otherwise
(never a silently full-size model on a CPU profile)."""

from __future__ import annotations

import pytest
import yaml

from unetr_app.config import find_config, load_run_config
from unetr_app.errors import ConfigError
from unetr_app.models import create_model
from unetr_app.models.registry import get_model_entry, list_models


def _one_model_per_family() -> dict[str, str]:
    chosen: dict[str, str] = {}
    for name in list_models():
        family = get_model_entry(name).family
        if family != "test":
            chosen.setdefault(family, name)
    return chosen


@pytest.mark.parametrize("family, name", sorted(_one_model_per_family().items()))
def test_cpu_demo_sizes_every_family_and_the_model_builds(family, name):
    config = load_run_config("spleen", model=name, profile="cpu-demo")
    assert config.model.params, f"cpu-demo has no CPU size for family {family}"
    model = create_model(config.model.name, **config.model_kwargs())
    assert sum(p.numel() for p in model.parameters()) < 25e6  # CPU-sized (full sizes reach 86-300 M)


def test_profile_params_for_another_model_are_an_error(tmp_path):
    profile = yaml.safe_load(find_config("profiles", "cpu-demo").read_text(encoding="utf-8"))
    profile["model"].pop("sizes")
    path = tmp_path / "small-unetr.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(ConfigError, match=r"do not apply to --model vit_tiny_patch16 \(family vit\).*model.sizes.vit"):
        load_run_config("spleen", model="vit_tiny_patch16", profile=str(path))
    assert load_run_config("spleen", profile=str(path)).model.params["hidden_size"] == 192  # its own model: fine


def test_profile_without_model_sizes_takes_any_model():
    assert load_run_config("spleen", model="swin_t", profile="gpu-default").model.name == "swin_t"


@pytest.mark.parametrize("name", ["segresnet_small", "unet_small", "dynunet_small"])
def test_cpu_recipes_sizes_its_cnns_as_cpu_demo_does(name):
    """The recipes' teacher and the committed comparison's CNNs are cpu-demo's CNNs, not full-size ones."""
    recipes = load_run_config("spleen", model=name, profile="cpu-recipes")
    demo = load_run_config("spleen", model=name, profile="cpu-demo")
    assert recipes.model.params and recipes.model.params == demo.model.params
    assert recipes.preprocessing.roi_size == demo.preprocessing.roi_size
