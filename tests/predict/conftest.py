"""Fixtures for prediction tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from .predict_helpers import tiny_unetr_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real (untrained) tiny UNETR checkpoint."""
    return tiny_unetr_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")
