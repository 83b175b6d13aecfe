"""Every registered model as a segmentation model at one common 3D input: parameters, FLOPs,
forward time, training-step (forward + backward) time and peak memory. JSON out, PNG chart.

    python benchmarks/family.py                                   # all models, 96³, this machine
    python benchmarks/family.py --pattern 'vit_*,deit_*' --size 64,64,64 --device cpu
    python benchmarks/family.py --device cuda --batch 2

Each model runs in its own subprocess, so its peak memory is its own (CPU: peak resident set
size of that process, minus the same process's size before building the model; CUDA: peak
allocated) and one model running out of memory does not end the run. Full-size configurations
(as registered), in_channels 1, 2 classes. Timings are medians over --repeats after one warm-up.
Writes benchmarks/results/family_<device>_<size>.json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def measure_one(name: str, size: tuple[int, ...], batch: int, device: str, repeats: int, threads: int) -> dict:
    """Runs inside the worker process: build, warm up, time, report."""
    from unetr_app.models import create_model
    from unetr_app.models.summary import summarize

    torch.set_num_threads(threads)
    summary = summarize(name, size, task="segmentation", in_channels=1, classes=2)
    row = {"name": name, "family": summary.family, "params": summary.params,
           "flops_per_sample": summary.flops, "error": summary.error}
    if summary.error:
        return row
    base_rss = _rss_mb()
    torch.manual_seed(0)
    model = create_model(name, task="segmentation", spatial_dims=len(size), in_channels=1, out_channels=2,
                         img_size=list(size)).to(device)
    x = torch.randn(batch, 1, *size, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _train_step(model, x, device)  # warm-up (allocator, kernels, mkldnn plans)
    row["forward_s"] = statistics.median(_forward(model, x, device) for _ in range(repeats))
    row["train_step_s"] = statistics.median(_train_step(model, x, device) for _ in range(repeats))
    row["peak_memory_mb"] = (torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else _rss_mb() - base_rss
    return row


def _forward(model, x, device) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    _sync(device)
    return time.perf_counter() - start


def _train_step(model, x, device) -> float:
    model.train()
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(x).square().mean().backward()
    _sync(device)
    return time.perf_counter() - start


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    # ru_maxrss is the peak so far: kilobytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", name, "--size", args.size, "--batch", str(args.batch),
               "--device", args.device, "--repeats", str(args.repeats), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["exit code %d" % done.returncode])[-1]
        return {"name": name, "error": f"worker failed: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if not r.get("error")]
    names = [r["name"] for r in rows]
    panels = [("params", 1e-6, "parameters (M)"), ("flops_per_sample", 1e-9, "GFLOPs per sample"),
              ("forward_s", 1, "forward (s)"), ("train_step_s", 1, "forward + backward (s)"),
              ("peak_memory_mb", 1 / 1024, "peak memory (GiB)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.28 * len(names) + 1.5), sharey=True)
    for ax, (key, scale, label) in zip(axes, panels):
        ax.barh(names, [(r.get(key) or 0) * scale for r in rows], color="tab:blue")
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pattern", default="*", help="shell-style patterns over registered names, comma-separated")
    parser.add_argument("--size", default="96,96,96", help="common 3D input D,H,W")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per worker")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per model before giving up")
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/family_<device>_<size>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.split(","))
    if args.worker:
        print(json.dumps(measure_one(args.worker, size, args.batch, args.device, args.repeats, args.threads)))
        return

    from unetr_app.models import list_models

    names = sorted({n for pattern in args.pattern.split(",") for n in list_models(pattern.strip())})
    rows = []
    for name in names:
        rows.append(run_worker(name, args))
        r = rows[-1]
        print(f"{name:32s} " + (r["error"] if r.get("error") else
              f"{r['params'] / 1e6:7.2f} M  {r['flops_per_sample'] / 1e9:8.1f} GFLOPs  fwd {r['forward_s']:.3f} s  "
              f"train {r['train_step_s']:.3f} s  peak {r['peak_memory_mb']:.0f} MiB"), flush=True)
    tag = f"family_{args.device}_{'x'.join(map(str, size))}"
    out = args.out or RESULTS / f"{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"size": size, "batch": args.batch, "device": args.device, "repeats": args.repeats,
            "threads": args.threads, "torch": torch.__version__, "machine": platform.platform(),
            "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(), "pattern": args.pattern,
            "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    out.write_text(json.dumps({"meta": meta, "models": rows}, indent=2))
    plot(rows, out.with_suffix(".png"), f"segmentation models at {'x'.join(map(str, size))}, batch {args.batch}, "
                                         f"{args.device}")
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
