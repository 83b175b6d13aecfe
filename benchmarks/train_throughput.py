"""Training steps per second: our Trainer against a plain MONAI-tutorial loop, side by side.

Both loops train the same model (same initial weights), on the same cached phantom data with
the same transforms, loss, optimizer, batch and device; only the loop differs. Ours runs with the
profile's precision and `--set` overrides (`device.mixed_precision`: bfloat16 or float16 autocast on
GPUs; float32 on a CPU unless `training.cpu_amp=true`) and, where that is not float32, in float32
too, which separates the precision's share from the rest of the loop's. Rounds alternate (ours, ours float32, tutorial,
ours, ...) so that machine load affects all alike; the median round counts.

    python benchmarks/train_throughput.py                      # cpu-demo profile, this machine
    python benchmarks/train_throughput.py --profile gpu-default --device cuda
    python benchmarks/train_throughput.py --set training.cpu_amp=true --out benchmarks/results/train_throughput_cpu_bfloat16.json

Writes benchmarks/results/train_throughput_<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import monai
import torch
from monai.data import CacheDataset, DataLoader
from monai.losses import DiceCELoss

from unetr_app.config import load_run_config, parse_overrides
from unetr_app.data.dataset import labelled_cases
from unetr_app.data.manifest import load_manifest
from unetr_app.data.phantom import write_phantom_dataset
from unetr_app.data.transforms import train_transforms
from unetr_app.device import resolve_device
from unetr_app.models import create_model
from unetr_app.training.loaders import build_loaders
from unetr_app.training.batches import metadata_only_if_needed
from unetr_app.training.loop import Trainer


def tutorial_steps(model, loader, steps: int, device, lr: float, weight_decay: float) -> float:
    """The loop of MONAI's spleen tutorial (with the UNETR recipe's loss and optimizer); seconds for `steps`."""
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    done, start = 0, time.perf_counter()
    while done < steps:
        for batch_data in loader:
            inputs, labels = batch_data["image"].to(device), batch_data["label"].to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = loss_function(outputs, labels)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    _sync(device)
    return time.perf_counter() - start


def our_steps(trainer: Trainer, loader, steps: int) -> float:
    """Our training step (recipe, schedule, AMP, channels-last) for `steps` steps, restarting the loader as the tutorial loop does."""
    trainer.model.train()
    done, start = 0, time.perf_counter()
    with metadata_only_if_needed(trainer.config):
        while done < steps:
            for batch in loader:
                trainer.train_step(batch)
                done += 1
                if done == steps:
                    break
    _sync(trainer.device)
    return time.perf_counter() - start


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cases", type=int, default=4, help="phantom cases to train on")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for ours")
    args = parser.parse_args()

    device = resolve_device(args.device)
    config = load_run_config("spleen", profile=args.profile, overrides=parse_overrides(args.overrides))
    float32_config = load_run_config("spleen", profile=args.profile, overrides=parse_overrides([*args.overrides, "training.amp=false"]))
    with tempfile.TemporaryDirectory() as tmp:
        data = write_phantom_dataset(Path(tmp) / "Task09_Spleen", cases=args.cases, test_cases=0, seed=1)
        cases = labelled_cases(data, load_manifest("spleen"))
        ours_loader, _ = build_loaders(config, cases, cases[:1])
        tutorial_ds = CacheDataset(cases, transform=train_transforms(config.preprocessing, config.augmentation, config.training), cache_rate=1.0, num_workers=2, progress=False)
        tutorial_loader = DataLoader(tutorial_ds, batch_size=config.training.batch_size, shuffle=True, num_workers=config.training.num_workers)

        torch.manual_seed(0)
        model = create_model(config.model.name, **config.model_kwargs())
        trainer = Trainer(config, copy.deepcopy(model), device, Path(tmp) / "run")
        # where ours already runs in float32 (a CPU without cpu_amp) it is its own float32 reference
        float32_trainer = None if trainer.precision.name == "float32" else Trainer(float32_config, copy.deepcopy(model), device, Path(tmp) / "run_float32")
        for t in filter(None, (trainer, float32_trainer)):
            t.state.total_steps = 10 * args.rounds * args.steps  # a schedule long enough for every round
        reference = copy.deepcopy(model).to(device)
        tutorial_steps(reference, tutorial_loader, 2, device, config.optimizer.lr, config.optimizer.weight_decay)  # warm-up
        for t in filter(None, (trainer, float32_trainer)):
            our_steps(t, ours_loader, 2)
        rounds = []
        for _ in range(args.rounds):
            ours = our_steps(trainer, ours_loader, args.steps)
            ours_float32 = our_steps(float32_trainer, ours_loader, args.steps) if float32_trainer else ours
            tutorial = tutorial_steps(reference, tutorial_loader, args.steps, device, config.optimizer.lr, config.optimizer.weight_decay)
            rounds.append({"ours_steps_per_s": args.steps / ours, "ours_float32_steps_per_s": args.steps / ours_float32,
                           "tutorial_steps_per_s": args.steps / tutorial, "ratio": tutorial / ours, "ratio_float32": tutorial / ours_float32})

    result = {
        "benchmark": "train_throughput",
        "command": "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:]),
        "device": _device_name(device),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "threads": torch.get_num_threads(),
        "profile": args.profile,
        "model": config.model.name,
        "roi_size": list(config.preprocessing.roi_size),
        "crops_per_step": config.training.batch_size * config.training.num_samples,
        "ours_precision": trainer.precision.name,
        "tutorial_precision": "float32",
        "steps_per_round": args.steps,
        "ours_steps_per_s": statistics.median(r["ours_steps_per_s"] for r in rounds),
        "ours_float32_steps_per_s": statistics.median(r["ours_float32_steps_per_s"] for r in rounds),
        "tutorial_steps_per_s": statistics.median(r["tutorial_steps_per_s"] for r in rounds),
        "ratio_ours_over_tutorial": statistics.median(r["ratio"] for r in rounds),
        "ratio_ours_float32_over_tutorial": statistics.median(r["ratio_float32"] for r in rounds),
        "rounds": rounds,
    }
    out = args.out or Path(__file__).parent / "results" / f"train_throughput_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("device", "ours_precision", "ours_steps_per_s", "ours_float32_steps_per_s", "tutorial_steps_per_s",
                                                        "ratio_ours_over_tutorial", "ratio_ours_float32_over_tutorial")}, indent=2))
    print(f"wrote {out}")


def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
