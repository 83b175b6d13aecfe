"""The one registry: lookup by name, the closest-name suggestion, duplicates, list patterns."""

from __future__ import annotations

import pytest

from unetr_app.errors import ConfigError
from unetr_app.registry import Registry, UnknownNameError, unknown_name_message


def _registry() -> Registry:
    reg = Registry("model", list_command="unetr models list")
    reg.register("unetr", "U")
    reg.register("vit_base", "V")

    @reg.register("swin_tiny")
    def swin_tiny():
        return "S"

    return reg


def test_get_returns_what_was_registered_by_call_and_by_decorator():
    reg = _registry()
    assert reg.get("unetr") == "U"
    assert reg.get("swin_tiny")() == "S"


def test_unknown_name_suggests_the_closest_in_one_line():
    with pytest.raises(UnknownNameError) as err:
        _registry().get("unetrr")
    assert str(err.value) == "unknown model 'unetrr'; did you mean 'unetr'? see `unetr models list`"
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line with exit code 2


def test_without_a_list_command_the_message_names_every_choice():
    assert unknown_name_message("loss", "dicece", ["dice", "dice_ce", "ce"]) == (
        "unknown loss 'dicece'; did you mean 'dice_ce'? choose one of dice, dice_ce, ce")
    assert unknown_name_message("loss", "zzz", ["dice", "ce"]) == "unknown loss 'zzz'; choose one of dice, ce"


def test_a_duplicate_name_is_an_error():
    reg = _registry()
    with pytest.raises(ValueError, match="model name 'unetr' is already registered"):
        reg.register("unetr", "other")
    assert reg.get("unetr") == "U"


def test_list_filters_with_a_shell_pattern_and_sorts():
    reg = _registry()
    assert reg.list() == ["swin_tiny", "unetr", "vit_base"]
    assert reg.list("*_*") == ["swin_tiny", "vit_base"]
    assert reg.list("nothing*") == []


def test_the_loader_runs_once_before_the_first_lookup():
    calls = []
    reg = Registry("decoder", loader=lambda: (calls.append(1), reg.register("unet", "D")))
    assert "unet" in reg and reg.list() == ["unet"] and calls == [1]
