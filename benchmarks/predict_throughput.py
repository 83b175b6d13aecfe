"""Seconds per scan and peak memory: `unetr predict` against a plain MONAI loop, side by side.

    python benchmarks/predict_throughput.py [--checkpoint RUN_OR_PT] [--scans 4] [--repeats 2]
                                            [--device cpu] [--large] [--out results.json]

The plain MONAI loop is what the MONAI spleen bundle does: LoadImaged and the same preprocessing
transforms (from the checkpoint), `sliding_window_inference` with overlap 0.5 and sw_batch_size 4
(Gaussian blending, as the checkpoint says), softmax, `Invertd`, argmax, `SaveImaged`. Ours is the
real `unetr predict` pipeline at the same overlap, sw_batch_size, model and device. Each run is a fresh
process (so its peak RSS is its own); runs alternate (MONAI, ours, MONAI, ours, ...) so load from
other processes on the machine hits both alike, and each variant's best run is reported. The masks
of the two are compared (Dice and voxel agreement per scan).

`--large` adds a memory measurement: one synthetic 512 x 512 x 400 CT predicted by ours with
`--stitch-device cpu` (peak RSS, and peak GPU memory on CUDA).

Without `--checkpoint` an untrained UNETR of the cpu-demo size (48^3 ROI, feature 8, hidden 192,
4 mm) is built with a fixed seed: timings are those of a trained one; agreement is a harsher test
(an untrained model's classes are close calls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OVERLAP, SW_BATCH_SIZE = 0.5, 4  # the MONAI bundle defaults
CPU_DEMO_UNETR = {
    "task": "segmentation",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "img_size": [48, 48, 48],
    "feature_size": 8,
    "hidden_size": 192,
    "mlp_dim": 768,
    "num_heads": 4,
}


# --- the two ways of predicting (each runs in its own process) -------------------------------------


def run_monai(inputs: Path, output: Path, checkpoint: Path, device: str) -> None:
    import torch
    from monai import transforms as mt
    from monai.inferers import sliding_window_inference

    from unetr_app.data.transforms import preprocessing_transforms
    from unetr_app.io.checkpoint import load_model

    loaded = load_model(checkpoint, device)
    pre = loaded.preprocessing
    # the bundle's loading (MONAI's LoadImaged), then the same preprocessing as ours
    steps = preprocessing_transforms(pre, keys=("image",))[1:]
    preprocess = mt.Compose([mt.LoadImaged(keys="image", image_only=True), mt.EnsureChannelFirstd(keys="image"), *steps])
    postprocess = mt.Compose(
        [
            mt.Invertd(keys="pred", transform=preprocess, orig_keys="image", nearest_interp=False),
            mt.AsDiscreted(keys="pred", argmax=True),
            mt.SaveImaged(
                keys="pred", output_dir=str(output), output_postfix="", separate_folder=False,
                resample=False, output_dtype=np.uint8, print_log=False,
            ),
        ]
    )
    for path in sorted(inputs.glob("*.nii.gz")):
        data = preprocess({"image": str(path)})
        with torch.no_grad():
            logits = sliding_window_inference(
                data["image"][None].to(device), pre.roi_size, SW_BATCH_SIZE, loaded.model,
                overlap=OVERLAP, mode=loaded.inference.blend_mode,
            )
        data["pred"] = torch.softmax(logits[0], dim=0).cpu()
        postprocess(data)


def run_ours(inputs: Path, output: Path, checkpoint: Path, device: str, extra: list[str]) -> None:
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    args = ["predict", str(inputs), str(output), "-c", str(checkpoint), "--device", device, "--quiet",
            "--overlap", str(OVERLAP), "--sw-batch-size", str(SW_BATCH_SIZE), "--no-tta", *extra]
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(f"unetr predict failed: {result.output}")


def worker(args) -> None:
    """One measured run: prints JSON with wall time and this process's peak memory."""
    import torch

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_at_start = usage.ru_utime + usage.ru_stime  # imports excluded: they are the same for both
    start = time.perf_counter()
    if args.worker == "monai":
        run_monai(args.inputs, args.output, args.checkpoint, args.device)
    else:
        run_ours(args.inputs, args.output, args.checkpoint, args.device, args.extra.split())
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {"seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_at_start, "peak_rss_gb": usage.ru_maxrss / 2**20}
    if args.device.startswith("cuda"):
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    print("RESULT " + json.dumps(result))


# --- orchestration --------------------------------------------------------------------------------


def measure(variant: str, inputs: Path, output: Path, checkpoint: Path, device: str, extra: str = "", threads: int = 0) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("*"):
        old.unlink()
    command = [sys.executable, __file__, "--worker", variant, "--inputs", str(inputs), "--output", str(output),
               "--checkpoint", str(checkpoint), "--device", device, f"--extra={extra}"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{variant} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def write_scans(folder: Path, count: int, in_plane: int | None = None) -> list[Path]:
    """Phantom CTs; with `in_plane`, resampled (linear) to that many pixels per row and column, as
    clinical CT is stored (512 x 512): same anatomy and field of view, finer pixels."""
    from scipy.ndimage import zoom

    from unetr_app.data.phantom import make_phantom_case, save_nifti

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        case = make_phantom_case(1000 + index)
        image, affine = case.image, case.affine
        if in_plane:
            factors = [in_plane / image.shape[0], in_plane / image.shape[1], 1.0]
            image = zoom(image.astype(np.float32), factors, order=1).round().astype(np.int16)
            affine = affine @ np.diag([1 / factors[0], 1 / factors[1], 1.0, 1.0])
        paths.append(folder / f"scan{index:02d}.nii.gz")
        save_nifti(image, affine, paths[-1])
    return paths


def untrained_checkpoint(path: Path) -> Path:
    import torch

    from unetr_app.models import create_model
    from unetr_app.io.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("unetr", **CPU_DEMO_UNETR)
    save_checkpoint(path, {
        "model": {"name": "unetr", "kwargs": CPU_DEMO_UNETR},
        "state_dict": model.state_dict(),
        "preprocessing": {"orientation": "RAS", "spacing": [4.0, 4.0, 4.0], "intensity_window": [-175, 250], "roi_size": [48, 48, 48]},
        "inference": {"overlap": OVERLAP, "sw_batch_size": SW_BATCH_SIZE, "blend_mode": "gaussian"},
        "labels": {"background": 0, "spleen": 1},
        "modality": "CT",
    })
    return path


def agreement(ours: Path, theirs: Path, names: list[str]) -> list[dict]:
    import nibabel as nib

    rows = []
    for name in names:
        a = np.asarray(nib.load(ours / f"{name}.nii.gz").dataobj)
        b = np.asarray(nib.load(theirs / f"{name}.nii.gz").dataobj)
        fg_a, fg_b = a > 0, b > 0
        total = fg_a.sum() + fg_b.sum()
        rows.append({
            "scan": name,
            "dice": float(2 * (fg_a & fg_b).sum() / total) if total else 1.0,
            "voxel_agreement": float((a == b).mean()),
            "same_shape": a.shape == b.shape,
        })
    return rows


def large_scan(folder: Path) -> Path:
    """A 512 x 512 x 400 CT-like volume: an elliptic body of soft tissue in air, 0.78 x 0.78 x 1 mm."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, 512), np.linspace(-1, 1, 512), indexing="ij")
    body = (x / 0.8) ** 2 + (y / 0.6) ** 2 < 1
    slab = np.where(body, 40, -1000).astype(np.int16)
    volume = np.repeat(slab[:, :, None], 400, axis=2)
    volume += rng.integers(-20, 20, size=(512, 512, 1), dtype=np.int16)
    affine = np.diag([0.78, 0.78, 1.0, 1.0])
    path = folder / "large_512x512x400.nii.gz"
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume, affine), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="run folder or .pt; default: an untrained cpu-demo-size UNETR")
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--in-plane", type=int, default=512, help="resample phantoms to N x N pixels like clinical CT (0: native ~160)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every run (0: torch's default); 1 makes\n"
                        "CPU time a measure of work on a machine shared with other jobs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating; the best counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ours-extra", default="", help="extra `unetr predict` options for a third variant, e.g. --amp")
    parser.add_argument("--large", action="store_true", help="also measure a 512x512x400 scan with --stitch-device cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "predict_throughput.json")
    parser.add_argument("--worker", choices=("monai", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--extra", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    with tempfile.TemporaryDirectory(prefix="unetr-bench-") as tmp:
        tmp = Path(tmp)
        scans = write_scans(tmp / "scans", args.scans, args.in_plane or None)
        names = [p.name[: -len(".nii.gz")] for p in scans]
        checkpoint = args.checkpoint or untrained_checkpoint(tmp / "untrained.pt")
        variants = {"monai": ("monai", ""), "ours": ("ours", "")}
        if args.ours_extra:
            variants[f"ours {args.ours_extra}"] = ("ours", args.ours_extra)
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for repeat in range(args.repeats):
            for label, (kind, extra) in variants.items():
                runs[label].append(measure(kind, tmp / "scans", tmp / label.replace(" ", "_"), checkpoint, args.device, extra, args.threads))
                last = runs[label][-1]
                print(f"repeat {repeat + 1}: {label:>16}: {last['seconds']:.1f} s wall, {last['cpu_seconds']:.1f} s CPU", flush=True)
        best = {label: min(r, key=lambda run: run["seconds"]) for label, r in runs.items()}
        result = {
            "what": "unetr predict vs a plain MONAI loop (bundle-style), same scans, model, device, overlap 0.5, sw_batch_size 4",
            "device": args.device,
            "threads": args.threads or "default",
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "load_average_at_start": os.getloadavg()[0]},
            "checkpoint": str(args.checkpoint) if args.checkpoint else "untrained cpu-demo-size UNETR (seed 0)",
            "scans": len(scans),
            "in_plane_pixels": args.in_plane or "native phantom",
            "scan_shapes": [list(map(int, __import__("nibabel").load(p).shape)) for p in scans],
            "seconds_per_scan": {label: run["seconds"] / len(scans) for label, run in best.items()},
            "cpu_seconds_per_scan": {label: min(r["cpu_seconds"] for r in rs) / len(scans) for label, rs in runs.items()},
            "peak_rss_gb": {label: run["peak_rss_gb"] for label, run in best.items()},
            "all_runs_seconds": {label: [r["seconds"] for r in rs] for label, rs in runs.items()},
            "speedup_vs_monai": {label: best["monai"]["seconds"] / run["seconds"] for label, run in best.items() if label != "monai"},
            "cpu_time_speedup_vs_monai": {
                label: min(r["cpu_seconds"] for r in runs["monai"]) / min(r["cpu_seconds"] for r in rs)
                for label, rs in runs.items() if label != "monai"
            },
            "agreement_with_monai": {label: agreement(tmp / label.replace(" ", "_"), tmp / "monai", names) for label in variants if label != "monai"},
        }
        if args.device.startswith("cuda"):
            result["peak_gpu_gb"] = {label: run.get("peak_gpu_gb") for label, run in best.items()}
        if args.large:
            large = large_scan(tmp / "large")
            run = measure("ours", large.parent, tmp / "large_out", checkpoint, args.device, "--stitch-device cpu --max-memory-gb 1000")
            result["large_scan_512x512x400"] = {"stitch_device": "cpu", **run}
            print(f"512x512x400 with --stitch-device cpu: {run}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    keys = ("seconds_per_scan", "cpu_seconds_per_scan", "peak_rss_gb", "speedup_vs_monai", "cpu_time_speedup_vs_monai")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
