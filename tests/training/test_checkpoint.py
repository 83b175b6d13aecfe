"""A checkpoint is untrusted input: only tensors and plain data are ever unpickled."""

from __future__ import annotations

import pytest
import torch

from unetr_app.errors import CheckpointError
from unetr_app.io.checkpoint import FORMAT, load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this would run `touch`: exactly what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _minimal(**extra):
    return {"model": {"name": "unetr", "kwargs": {}}, "state_dict": {"w": torch.zeros(2)}, "preprocessing": {}, "inference": {}, "labels": {"background": 0, "spleen": 1}, **extra}


def test_checkpoint_with_pickled_object_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, **_minimal(extra=_Payload(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_roundtrip_and_format_checks(tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(path, _minimal(epoch=3))
    assert load_checkpoint(path)["epoch"] == 3
    assert not list(tmp_path.glob(".*")), "atomic write leaves no temporary file"

    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a unetr checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": FORMAT, "format_version": 99, **_minimal()}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")
