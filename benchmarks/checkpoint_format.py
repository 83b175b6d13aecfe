"""Checkpoint files of UNETR-B (96^3, 1 -> 2 classes): format 1 (one torch file) against format 2
(NAME.safetensors weights + NAME.pt training state), sizes and load times side by side.

    python benchmarks/checkpoint_format.py [--out benchmarks/results/checkpoint_format.json]

The optimizer state is AdamW's after one step (exp_avg, exp_avg_sq per parameter), as in last.pt.
Load time is `load_model` (what `unetr predict` does), best of 3, both formats in this process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from unetr_app.io.checkpoint import FORMAT, load_model, save_checkpoint
from unetr_app.models import create_model

KWARGS = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [96, 96, 96]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/checkpoint_format.json"))
    args = parser.parse_args()
    model = create_model("unetr", **KWARGS)
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    data = {
        "model": {"name": "unetr", "kwargs": KWARGS}, "state_dict": model.state_dict(),
        "preprocessing": {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0], "intensity_window": [-175, 250], "roi_size": [96, 96, 96]},
        "inference": {"overlap": 0.5, "sw_batch_size": 4, "blend_mode": "gaussian"}, "labels": {"background": 0, "spleen": 1},
    }
    state = {"optimizer": optimizer.state_dict(), "history": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.save({"format": FORMAT, "format_version": 1, **data, "training_state": state}, tmp / "v1_last.pt")
        torch.save({"format": FORMAT, "format_version": 1, **data}, tmp / "v1_best.pt")
        save_checkpoint(tmp / "last.pt", {**data, "training_state": state})
        save_checkpoint(tmp / "best.pt", data)
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        load = {name: _best_of(3, lambda n=name: load_model(tmp / n)) for name in ("v1_best.pt", "best.safetensors")}
    result = {
        "model": "unetr (UNETR-B, 96^3, 2 classes)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "bytes": sizes,
        "shared_file_mb": {"format 1 best.pt (pickle-based torch file)": sizes["v1_best.pt"] / 1e6,
                           "format 2 best.safetensors (no pickle)": sizes["best.safetensors"] / 1e6},
        "load_model_seconds_best_of_3": load,
        "load_ratio_v1_over_v2": load["v1_best.pt"] / load["best.safetensors"],
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


if __name__ == "__main__":
    main()
