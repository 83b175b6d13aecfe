"""`--format torchscript` and `--format onnx`: the network alone, giving PyTorch's logits on a window.

Tolerances (max |logit difference| on one 32^3 window, float32): TorchScript 1e-5 (the same kernels),
ONNX Runtime 1e-4 (its own kernels sum in another order; measured ~5e-6 here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unetr_app.io.checkpoint import load_model

TORCHSCRIPT_TOLERANCE = 1e-5
ONNX_TOLERANCE = 1e-4


def window(seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(seed))


def pytorch_logits(checkpoint, x) -> np.ndarray:
    with torch.inference_mode():
        return load_model(checkpoint).model(x).numpy()


@pytest.mark.slow
def test_torchscript_gives_pytorch_logits(cli, tiny_checkpoint, tmp_path):
    result = cli("export", tiny_checkpoint, tmp_path / "ts", "--format", "torchscript")
    assert result.exit_code == 0, result.output
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(tmp_path / "ts" / "models" / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 32, 32]
    x = window()
    with torch.inference_mode():
        difference = np.abs(scripted(x).numpy() - pytorch_logits(tiny_checkpoint, x)).max()
    assert difference <= TORCHSCRIPT_TOLERANCE


@pytest.mark.slow
def test_onnx_gives_pytorch_logits_in_onnxruntime(cli, tiny_checkpoint, tmp_path):
    import onnxruntime

    result = cli("export", tiny_checkpoint, tmp_path / "onnx", "--format", "onnx")
    assert result.exit_code == 0, result.output
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.cat([window(1), window(2)])  # the batch axis is dynamic (sliding-window batches)
    logits = session.run(None, {"image": x.numpy()})[0]
    assert logits.shape == (2, 2, 32, 32, 32)
    assert np.abs(logits - pytorch_logits(tiny_checkpoint, x)).max() <= ONNX_TOLERANCE


def test_export_refuses_a_non_empty_folder_and_an_unknown_format(cli, tiny_checkpoint, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = cli("export", tiny_checkpoint, tmp_path / "full")
    assert result.exit_code == 2 and "not empty" in result.output and "Traceback" not in result.output
    result = cli("export", tiny_checkpoint, tmp_path / "new", "--format", "tflite")
    assert result.exit_code == 2 and "monai-bundle" in result.output
