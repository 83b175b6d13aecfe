"""The network alone, for runtimes without our Python code: TorchScript (MONAI's `ckpt_export`) and ONNX.

Both take one window of the sliding window, (B, C, *roi_size) -> logits (B, classes, *roi_size):
preprocessing and stitching are the caller's (the bundle's inference.json describes them). Each
export is checked on one random window against PyTorch before it is kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from unetr_app.errors import UsageError
from unetr_app.extras import require_feature
from unetr_app.io.atomic import atomic_path
from unetr_app.io.checkpoint import LoadedModel

log = logging.getLogger(__name__)

ONNX_OPSET = 17
# float32 through a different kernel library: sums in another order, measured ~1e-5 on tiny models
TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4}


def example_window(loaded: LoadedModel, batch: int = 1) -> torch.Tensor:
    channels = int(loaded.kwargs.get("in_channels", 1))
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, channels, *loaded.preprocessing.roi_size, generator=generator)


def export_torchscript(bundle_dir: Path) -> Path:
    """models/model.ts beside models/model.pt, through MONAI's `ckpt_export` (scripted where the
    network scripts, traced on one window otherwise); the bundle's configs ride along as extra files."""
    from monai.bundle import ckpt_export

    configs = bundle_dir / "configs"
    meta = json.loads((configs / "metadata.json").read_text(encoding="utf-8"))
    shape = [1, meta["network_data_format"]["inputs"]["image"]["num_channels"], *meta["network_data_format"]["inputs"]["image"]["spatial_shape"]]
    target = bundle_dir / "models" / "model.ts"
    common = {"net_id": "network_def", "filepath": str(target), "ckpt_file": str(bundle_dir / "models" / "model.pt"),
              "meta_file": str(configs / "metadata.json"), "config_file": str(configs / "inference.json"),
              "bundle_root": str(bundle_dir)}
    with warnings.catch_warnings(), _importable(bundle_dir):
        warnings.simplefilter("ignore")
        try:
            ckpt_export(**common)
        except Exception as err:  # noqa: BLE001 - scripting fails on dynamic Python; tracing handles it
            log.info("scripting failed (%s); tracing on one window of shape %s", type(err).__name__, shape)
            try:
                ckpt_export(**common, use_trace=True, input_shape=shape)
            except Exception as err:  # noqa: BLE001 - one line naming the failure, not a traceback
                raise UsageError(f"{bundle_dir}: the network neither scripts nor traces ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    return target


@contextlib.contextmanager
def _importable(bundle_dir: Path):
    """The bundle's scripts/ importable, as `monai.bundle run` makes it, for the duration."""
    root = str(bundle_dir.resolve())
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            del sys.modules[name]


def export_onnx(loaded: LoadedModel, path: Path) -> dict:
    """model.onnx (batch axis dynamic) and its check against PyTorch with onnxruntime."""
    onnxruntime = require_feature("--format onnx")["onnxruntime"]

    model = loaded.model.float().eval().cpu()
    window = example_window(loaded)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model, (window,), str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as err:  # noqa: BLE001 - unsupported operators: say which model, keep it one line
            raise UsageError(f"model {loaded.name!r} does not export to ONNX ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return compare("onnx", session.run(None, {"image": window.numpy()})[0], reference_logits(loaded, window))


def reference_logits(loaded: LoadedModel, window: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return loaded.model.float().eval().cpu()(window).numpy()


def compare(kind: str, logits: np.ndarray, reference: np.ndarray) -> dict:
    """Max |difference| of logits on the check window; raises if over TOLERANCE[kind]."""
    difference = float(np.abs(np.asarray(logits) - reference).max())
    if difference > TOLERANCE[kind]:
        raise UsageError(f"{kind} export computes other logits than PyTorch: max difference {difference:.2e} > {TOLERANCE[kind]:.0e}")
    return {"format": kind, "max_abs_logit_difference": difference, "tolerance": TOLERANCE[kind],
            "window_shape": list(reference.shape)}
