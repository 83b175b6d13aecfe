"""Every recipe trains as it did before the training stack was split up: fixed-seed 24-step runs
reproduce the recorded loss parts and validation Dice of every metrics line."""

from __future__ import annotations

import json

import pytest

from tests.training.reference_runs import FIXTURE, RECIPES, run_recipe

RECORDED = json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_fixed_seed_run_reproduces_the_recorded_loss_parts(recipe, phantom_dir, tmp_path):
    lines = run_recipe(recipe, phantom_dir, tmp_path)
    expected = RECORDED[recipe]
    assert [line["step"] for line in lines] == [line["step"] for line in expected]
    for got, want in zip(lines, expected):
        assert sorted(got) == sorted(want), f"step {want['step']}: the parts logged changed"
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-6), f"step {want['step']}: {key}"
