"""Fixtures for recipe tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recipes.recipe_helpers import write_teacher


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory) -> Path:
    return write_teacher(tmp_path_factory.mktemp("teacher") / "teacher.pt")
