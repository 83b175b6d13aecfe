"""Configs are data: resolved from YAML in order, validated, with errors that name the key."""

from __future__ import annotations

import pytest

from unetr_app.config import load_run_config, parse_overrides
from unetr_app.errors import ConfigError


def test_profile_model_params_override_the_model_file_and_cli_overrides_both():
    config = load_run_config("spleen", profile="cpu-demo", overrides=parse_overrides(["model.params.feature_size=12", "optimizer.lr=3e-4"]))
    assert config.model.params["hidden_size"] == 192  # from the profile
    assert config.model.params["proj_type"] == "conv"  # from configs/models/unetr.yaml
    assert config.model.params["feature_size"] == 12 and config.optimizer.lr == 3e-4  # from the CLI
    kwargs = config.model_kwargs()
    assert kwargs["img_size"] == [48, 48, 48] and kwargs["out_channels"] == 2


def test_gpu_default_is_the_published_recipe():
    config = load_run_config("spleen", profile="gpu-default")
    assert config.preprocessing.spacing == (1.5, 1.5, 2.0)
    assert config.preprocessing.roi_size == (96, 96, 96)
    assert config.preprocessing.intensity_window == (-175, 250)
    assert (config.optimizer.name, config.optimizer.lr, config.optimizer.weight_decay) == ("adamw", 1e-4, 1e-5)
    assert config.training.num_samples == 4 and config.loss.name == "dice_ce" and config.schedule.name == "warmup_cosine"
    # 500 passes over MSD spleen's 33 training cases, 50 of them warmup, in steps
    assert config.training.budget.steps == 16500 and config.schedule.warmup_fraction == 0.1
    assert config.inference.overlap == 0.5
    assert config.model.params["hidden_size"] == 768 and config.model.params["feature_size"] == 16


@pytest.mark.parametrize(
    "override, key",
    [
        ({"optimizer": {"lr": "fast"}}, "optimizer.lr"),
        ({"training": {"budgett": 3}}, "training.budgett: unknown key; did you mean 'budget'"),
        ({"training": {"lr": 3e-4}}, "training.lr: this key moved to optimizer.lr"),
        ({"training": {"budget": {"steps": 10, "minutes": 2}}}, "training.budget: give exactly one of steps, minutes or epochs"),
        ({"optimizer": {"name": "adamx"}}, "optimizer.name: unknown optimizer 'adamx'; did you mean 'adamw'"),
        ({"schedule": {"name": "cosine"}}, "schedule.name: unknown schedule 'cosine'; did you mean 'warmup_cosine'"),
        ({"loss": {"name": "dicece"}}, "loss.name: unknown loss 'dicece'; did you mean 'dice_ce'"),
        ({"preprocessing": {"spacing": [1.5, -1, 2]}}, "preprocessing.spacing"),
        ({"preprocessing": {"orientation": "RAX"}}, "preprocessing.orientation"),
        ({"preprocessing": {"intensity_window": [250, -175]}}, "preprocessing.intensity_window"),
        ({"inference": {"overlap": 1.5}}, "inference.overlap"),
        ({"task": {"labels": {"background": 0, "spleen": 2}}}, "task.labels"),
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_run_config("spleen", profile="cpu-demo", overrides=override)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ConfigError, match="known: .*cpu-demo.*gpu-default"):
        load_run_config("spleen", profile="cpu-dmeo")
    with pytest.raises(ConfigError, match="did you mean 'unetr'"):
        load_run_config("spleen", model="unetrr")


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_run_config("spleen", profile=str(bad))


def test_override_syntax_is_checked():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["training.lr"])
    assert parse_overrides(["a.b=1", "a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


def test_cli_config_error_is_one_line_exit_2(cli, tmp_path):
    result = cli("train", "--task", "spleen", "--set", "optimizer.lr=fast", "--data-dir", tmp_path)
    assert result.exit_code == 2
    assert "optimizer.lr" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
