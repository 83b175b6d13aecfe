"""`unetr export`: a trained model in a format other tools run.

    monai-bundle      a MONAI bundle folder (`python -m monai.bundle run` predicts a folder of NIfTI scans)
    torchscript       the bundle plus models/model.ts (MONAI's ckpt_export), checked against PyTorch
    onnx              model.onnx: the network alone, checked with onnxruntime
    monai-state-dict  model.pt that MONAI's UNETR / SwinUNETR load with strict=True, and network.json
                      (the MONAI class and its arguments)

Every export writes export_report.json: what was written and how it was checked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from unetr_app.errors import UsageError
from unetr_app.export.bundle import write_bundle
from unetr_app.export.monai_weights import monai_network
from unetr_app.export.traced import compare, example_window, export_onnx, export_torchscript, reference_logits
from unetr_app.io.atomic import atomic_path, atomic_write_text
from unetr_app.io.checkpoint import load_model

log = logging.getLogger(__name__)

FORMATS = ("monai-bundle", "torchscript", "onnx", "monai-state-dict")


def run_export(run: Path, out_dir: Path, fmt: str, overwrite: bool = False) -> dict:
    """Export the run's (or checkpoint file's) model to `out_dir`; returns the report."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    _check_out_dir(out_dir, overwrite)
    loaded = load_model(run)
    report = {"source": str(loaded.path), "model": loaded.name, "format": fmt, "checks": []}
    if fmt in ("monai-bundle", "torchscript"):
        write_bundle(loaded, out_dir, name=out_dir.name, run_info={"checkpoint": loaded.path.name})
        report["files"] = ["configs/inference.json", "configs/metadata.json", "models/model.pt", "LICENSE", "docs/README.md"]
        report["files"] += ["scripts/"] if (out_dir / "scripts").is_dir() else []
        report["files"] += ["docs/MODEL_CARD.md", "docs/model_card.json"] if (out_dir / "docs" / "MODEL_CARD.md").is_file() else []
    if fmt == "torchscript":
        scripted = torch.jit.load(str(export_torchscript(out_dir)), map_location="cpu")
        window = example_window(loaded)
        with torch.inference_mode():
            report["checks"].append(compare("torchscript", scripted(window).numpy(), reference_logits(loaded, window)))
        report["files"].append("models/model.ts")
    elif fmt == "onnx":
        out_dir.mkdir(parents=True, exist_ok=True)
        report["checks"].append(export_onnx(loaded, out_dir / "model.onnx"))
        report["files"] = ["model.onnx"]
    elif fmt == "monai-state-dict":
        network = monai_network(loaded)  # checks strict loading and equal logits, or says why not
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "model.pt") as tmp:
            torch.save(network.state_dict, tmp)
        atomic_write_text(out_dir / "network.json", json.dumps({"_target_": network.target, **network.kwargs}, indent=2) + "\n")
        report["files"] = ["model.pt", "network.json"]
        report["monai_class"] = network.target
    atomic_write_text(out_dir / "export_report.json", json.dumps(report, indent=2) + "\n")
    return report


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a folder; OUT_DIR must be a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"{out_dir}: folder is not empty; choose another or pass --overwrite")
