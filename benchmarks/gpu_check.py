"""One command that measures the GPU recipe when a GPU is at hand.

    python benchmarks/gpu_check.py               # on a GPU: gpu-default profile (UNETR-B, 96^3)
    python benchmarks/gpu_check.py --dry-run     # the same path on the CPU at tiny sizes (the test runs it)

It measures, in order:
1. training steps/s of our Trainer against the MONAI tutorial loop on the same model, data, loss,
   optimizer and batch (benchmarks/train_throughput.py's two loops, rounds alternating);
2. the model FLOP utilisation of a plain training step under the mixed precision
   `unetr_app.device.mixed_precision` picks (bfloat16 on compute capability >= 8): forward +
   backward FLOPs counted by torch's FlopCounterMode, divided by the step's time and by the GPU's
   dense bfloat16 peak (a table by device name, or --peak-tflops);
3. one 512 x 512 x 200 CT through `unetr predict` (in this process, so the CUDA allocator's peak is
   its own) with --stitch-device cpu and with --stitch-device cuda: seconds and peak GPU memory;
4. the CUDA-marked tests (`pytest -m cuda`, the test files that use the mark).

Writes benchmarks/results/gpu_check_<device>.json (the device named inside).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402

# dense (no sparsity) bfloat16 tensor-core peaks, TFLOP/s, from the vendors' data sheets
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0}
CT_SHAPE = (512, 512, 200)
CT_SPACING = (0.78, 0.78, 1.5)


def sizes(dry_run: bool) -> dict:
    """What each measurement runs at: the GPU recipe, or tiny sizes that finish on a CPU in seconds."""
    if dry_run:
        return {"profile": str(REPO / "tests" / "configs" / "tiny.yaml"), "cases": 2, "steps": 2, "rounds": 1,
                "ct_shape": (64, 64, 24), "ct_spacing": (6.0, 6.0, 10.0)}
    return {"profile": "gpu-default", "cases": 4, "steps": 20, "rounds": 3, "ct_shape": CT_SHAPE, "ct_spacing": CT_SPACING}


# --- 1. our loop against MONAI's tutorial loop -----------------------------------------------------


def training_throughput(config, cases, device, size: dict, run_dir: Path) -> tuple[dict, object]:
    from monai.data import CacheDataset, DataLoader
    from train_throughput import our_steps, tutorial_steps

    from unetr_app.data.transforms import train_transforms
    from unetr_app.models import create_model
    from unetr_app.training.loaders import build_loaders
    from unetr_app.training.loop import Trainer

    ours_loader, _ = build_loaders(config, cases, cases[:1])
    dataset = CacheDataset(cases, transform=train_transforms(config.preprocessing, config.augmentation, config.training), cache_rate=1.0, progress=False)
    tutorial_loader = DataLoader(dataset, batch_size=config.training.batch_size, shuffle=True, num_workers=config.training.num_workers)
    torch.manual_seed(0)
    model = create_model(config.model.name, **config.model_kwargs())
    trainer = Trainer(config, copy.deepcopy(model), device, run_dir)
    trainer.state.total_steps = 10 * size["rounds"] * size["steps"]
    reference = copy.deepcopy(model).to(device)
    lr, wd = config.optimizer.lr, config.optimizer.weight_decay
    tutorial_steps(reference, tutorial_loader, 1, device, lr, wd)  # warm-up: cuDNN autotuning, allocator
    our_steps(trainer, ours_loader, 1)
    rounds = []
    for _ in range(size["rounds"]):
        ours = our_steps(trainer, ours_loader, size["steps"])
        tutorial = tutorial_steps(reference, tutorial_loader, size["steps"], device, lr, wd)
        rounds.append({"ours_steps_per_s": size["steps"] / ours, "tutorial_steps_per_s": size["steps"] / tutorial})
    result = {
        "model": config.model.name, "parameters": sum(p.numel() for p in model.parameters()),
        "roi_size": list(config.preprocessing.roi_size), "crops_per_step": config.training.batch_size * config.training.num_samples,
        "steps_per_round": size["steps"], "rounds": rounds,
        "ours_steps_per_s": statistics.median(r["ours_steps_per_s"] for r in rounds),
        "tutorial_steps_per_s": statistics.median(r["tutorial_steps_per_s"] for r in rounds),
    }
    result["ours_over_tutorial"] = result["ours_steps_per_s"] / result["tutorial_steps_per_s"]
    return result, trainer


# --- 2. model FLOP utilisation -----------------------------------------------------------------


def flop_utilisation(config, device, steps: int, peak_tflops: float | None) -> dict:
    from monai.losses import DiceCELoss
    from torch.utils.flop_counter import FlopCounterMode

    from unetr_app.device import mixed_precision
    from unetr_app.models import create_model

    precision = mixed_precision(device, amp=True)
    torch.manual_seed(0)
    model = create_model(config.model.name, **config.model_kwargs()).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    crops = config.training.batch_size * config.training.num_samples
    x = torch.rand(crops, config.task.in_channels, *config.preprocessing.roi_size, device=device)
    y = torch.randint(0, len(config.task.labels), (crops, 1, *config.preprocessing.roi_size), device=device)
    scaler = precision.scaler()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(device):
            loss = loss_function(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    step()  # warm-up
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    achieved = flops / seconds / 1e12
    return {"dtype": str(precision.dtype or torch.float32).removeprefix("torch."), "grad_scaler": precision.grad_scaler,
            "flops_per_step": flops, "seconds_per_step": seconds, "achieved_tflops": achieved, "peak_tflops": peak_tflops,
            "model_flop_utilisation": achieved / peak_tflops if peak_tflops else None}


def peak_for(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():  # the more specific names come first
        if key.lower() in device_name.lower():
            return value
    return None


# --- 3. a clinical-size CT through `unetr predict` -------------------------------------------------


def ct_scan(folder: Path, shape, spacing) -> Path:
    """A CT-like volume: an elliptic body of soft tissue in air, with a denser 'organ' inside."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    slab = np.where((x / 0.8) ** 2 + (y / 0.6) ** 2 < 1, 40, -1000).astype(np.int16)
    slab[((x - 0.35) / 0.2) ** 2 + (y / 0.15) ** 2 < 1] = 120
    volume = np.repeat(slab[:, :, None], shape[2], axis=2) + rng.integers(-20, 20, size=(shape[0], shape[1], 1), dtype=np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ct_{'x'.join(str(s) for s in shape)}.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.diag([*spacing, 1.0])), path)
    return path


def predict_end_to_end(scan: Path, checkpoint: Path, out: Path, device, stitch: str) -> dict:
    from typer.testing import CliRunner

    from unetr_app.cli.app import app

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    args = ["predict", str(scan), str(out), "-c", str(checkpoint), "--device", str(device), "--stitch-device", stitch,
            "--quiet", "--overwrite", "--max-memory-gb", "1000"]
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - start
    if result.exit_code != 0:
        return {"stitch_device": stitch, "error": " ".join(result.output.split())[-500:]}
    return {"stitch_device": stitch, "seconds": seconds,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


# --- 4. the CUDA-marked tests ------------------------------------------------------------------


def cuda_tests() -> dict:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if "mark.cuda" in p.read_text(encoding="utf-8"))
    if not files:
        return {"files": [], "returncode": None, "summary": "no CUDA-marked tests"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1] if lines else done.stderr[-300:]
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", summary)}
    return {"files": files, "returncode": done.returncode, "summary": summary.strip("= "), **counts}


# --- orchestration ---------------------------------------------------------------------------------


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run every measurement on the CPU at tiny sizes (seconds)")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --dry-run")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bfloat16 peak, when the table lacks it")
    parser.add_argument("--skip-tests", action="store_true", help="do not run the CUDA-marked tests")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from unetr_app.config import load_run_config
    from unetr_app.data.dataset import labelled_cases
    from unetr_app.data.manifest import load_manifest
    from unetr_app.data.phantom import write_phantom_dataset
    from unetr_app.device import resolve_device

    device = resolve_device(args.device or ("cpu" if args.dry_run else "cuda"))
    size = sizes(args.dry_run)
    config = load_run_config("spleen", profile=size["profile"])
    name = device_name(device)
    result = {"benchmark": "gpu_check", "dry_run": args.dry_run, "device": name, "torch": torch.__version__,
              "cuda": torch.version.cuda, "profile": Path(size["profile"]).stem, "command": "python benchmarks/gpu_check.py " + " ".join(argv or sys.argv[1:])}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_phantom_dataset(tmp / "Task09_Spleen", cases=size["cases"], test_cases=0, seed=1)
        cases = labelled_cases(data, load_manifest("spleen"))
        result["training"], trainer = training_throughput(config, cases, device, size, tmp / "run")
        print(f"training: ours {result['training']['ours_steps_per_s']:.3g} steps/s, MONAI tutorial {result['training']['tutorial_steps_per_s']:.3g}", flush=True)
        checkpoint = tmp / "model.pt"
        trainer.save(checkpoint, with_training_state=False)  # the same network predicts below (untrained: timings only)
        del trainer
        peak = args.peak_tflops or (peak_for(name) if device.type == "cuda" else None)
        result["flop_utilisation"] = flop_utilisation(config, device, size["steps"], peak)
        print(f"mixed precision {result['flop_utilisation']['dtype']}: {result['flop_utilisation']['achieved_tflops']:.3g} TFLOP/s, "
              f"MFU {result['flop_utilisation']['model_flop_utilisation']}", flush=True)
        scan = ct_scan(tmp / "ct", size["ct_shape"], size["ct_spacing"])
        result["predict"] = {"shape": list(size["ct_shape"]), "spacing_mm": list(size["ct_spacing"]), "runs": [
            predict_end_to_end(scan, checkpoint, tmp / f"out_{stitch}", device, stitch) for stitch in ("cpu", "cuda")[: 2 if device.type == "cuda" else 1]]}
        print(f"predict {result['predict']['shape']}: {result['predict']['runs']}", flush=True)
    result["tests"] = {"skipped": True} if args.skip_tests else cuda_tests()
    print(f"CUDA-marked tests: {result['tests'].get('summary')}", flush=True)
    result["seconds"] = time.perf_counter() - started
    out = args.out or REPO / "benchmarks" / "results" / f"gpu_check_{_slug(name if device.type == 'cuda' else 'cpu_dry_run')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
