"""Few labels: a plain ViT student vs DeiT distillation from a CNN teacher vs self-distillation.

On the CT-like phantom with 4 labelled training cases (plus 1 for the trainer's end-of-run
validation) and a fixed set of held-out cases, every arm trains for the same number of optimizer
steps, then `predict` + `evaluate` score it through the library on the held-out scans' ORIGINAL
grids (Dice of the spleen, mean +- std over seeds):

    plain         the student (a small UNETR: ViT encoder + UNETR decoder) with the supervised recipe
    teacher       a small CNN (segresnet_small) trained the same way on the same 4 cases
    distill       the student + a distillation head, hard DeiT distillation from that seed's teacher
    self_distill  the student + auxiliary decoder heads ("Be Your Own Teacher")

    python benchmarks/recipes.py                      # the committed run (about 20 min on 2 busy cores)
    python benchmarks/recipes.py --seeds 0 --steps 8  # a quick check of the whole path
    python benchmarks/recipes.py --work runs/bench    # keep the runs; rerunning skips finished ones

Writes benchmarks/results/recipes.json and recipes.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unetr_app.pipelines.evaluate import run_evaluate
from unetr_app.pipelines.predict import PredictRequest, run_predict
from unetr_app.pipelines.train import train
from unetr_app.config import load_run_config
from unetr_app.data.phantom import write_phantom_dataset

RESULTS = Path(__file__).resolve().parent / "results"
# UNETR's decoder on a narrow DeiT (without distillation=True its token and head are not built:
# then it is a plain ViT), sized for a busy CPU
STUDENT = {"name": "deit_tiny_distilled_patch16", "params": {"embed_dim": 96, "num_heads": 4, "feature_size": 8}}
TEACHER = {"name": "segresnet_small", "params": {}}
ARMS = ("plain", "distill", "self_distill")


def run_config(model: dict, recipe: str, recipe_params: dict, seed: int, args) -> object:
    overrides = {
        "model": {"params": model["params"]},
        "preprocessing": {"spacing": [args.spacing] * 3, "roi_size": [args.roi] * 3},
        "training": {
            "budget": {"steps": args.steps}, "batch_size": 1, "num_samples": args.crops, "seed": seed,
            "val_every_steps": 0, "log_every_steps": max(1, args.steps // 4), "checkpoint_every_steps": args.steps,
        },
        "optimizer": {"lr": args.lr},
        "recipe": {"name": recipe, "params": recipe_params},
        "inference": {"overlap": 0.25, "sw_batch_size": 4},
    }
    return load_run_config("spleen", model=model["name"], profile="cpu-demo", overrides=overrides)


def train_run(config, run_dir: Path, data: Path, split: dict) -> dict:
    """Train with the benchmark's fixed split (the trainer reads split.json from the run folder)."""
    run_dir.mkdir(parents=True)
    (run_dir / "split.json").write_text(json.dumps(split))
    started = time.perf_counter()
    summary = train(config, run_dir, data, "cpu")
    if summary["train_cases"] != len(split["train"]):
        raise RuntimeError(f"{run_dir}: trained on {summary['train_cases']} cases, expected {len(split['train'])}")
    return {"train_seconds": round(time.perf_counter() - started, 1), "parameters": summary["parameters"]}


def score(run_dir: Path, data: Path) -> dict:
    """Predict the held-out scans with the run's best checkpoint, evaluate on their original grids."""
    started = time.perf_counter()
    predictions = run_dir / "predictions"
    checkpoint = run_dir / "checkpoints" / "last.pt"  # the model after the whole budget (no validation picks another)
    run_predict(PredictRequest(input=data / "imagesTs", output_dir=predictions, checkpoint=checkpoint, device="cpu", show_progress=False,
                               postprocess=False))  # the network's own masks, as when these results were made
    evaluation = run_evaluate(predictions, data / "labelsTs", run_dir / "evaluation")
    per_case = {}
    for line in (run_dir / "evaluation" / "evaluation.csv").read_text().splitlines()[1:]:
        case, label, dice, *_ = line.split(",")
        if label == "spleen":
            per_case[case] = float(dice)
    return {
        "dice": evaluation["mean"]["spleen"]["dice"],
        "hd95_mm": evaluation["mean"]["spleen"]["hd95_mm"],
        "dice_per_case": per_case,
        "cases": evaluation["cases_evaluated"],
        "predict_evaluate_seconds": round(time.perf_counter() - started, 1),
    }


def summarise(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["teacher", *ARMS]
    arms = result["arms"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, name in enumerate(names):
        stats = arms[name]["dice"]
        ax.bar(i, stats["mean"], yerr=stats["std"], capsize=4, color="#999999" if name == "teacher" else "#4c72b0", alpha=0.8)
        ax.scatter([i] * len(stats["values"]), stats["values"], color="black", s=12, zorder=3)
        ax.text(i, stats["mean"] + stats["std"] + 0.02, f"{stats['mean']:.3f}", ha="center", fontsize=9)
    labels = {"teacher": f"teacher\n({TEACHER['name']})", "plain": "plain\n(UNETR)", "distill": "distill\n(hard, DeiT)", "self_distill": "self_distill\n(BYOT)"}
    ax.set_xticks(range(len(names)), [labels[n] for n in names])
    ax.set_ylabel("spleen Dice, held-out scans (original grid)")
    ax.set_ylim(0, 1.05)
    b = result["budget"]
    ax.set_title(f"{b['train_cases']} labelled cases, {b['optimizer_steps']} steps, {len(result['seeds'])} seeds, {b['held_out_cases']} held-out", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps per run (every arm and the teacher)")
    parser.add_argument("--train-cases", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--crops", type=int, default=2, help="random ROI crops per step")
    parser.add_argument("--spacing", type=float, default=6.0)
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "recipes.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        result = run_benchmark(args, work)
    result["wall_seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for name in ("teacher", *ARMS):
        stats = result["arms"][name]["dice"]
        print(f"{name:>13}: Dice {stats['mean']:.3f} +- {stats['std']:.3f}  {[round(v, 3) for v in stats['values']]}")
    print(f"wall {result['wall_seconds']:.0f} s; wrote {args.out} and {args.out.with_suffix('.png')}")


def run_once(run_dir: Path, config, data: Path, split: dict, seed: int) -> dict:
    """Train and score one run; a finished run in --work is read back, an unfinished one redone."""
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    result = {"seed": seed, **train_run(config, run_dir, data, split), **score(run_dir, data)}
    done.write_text(json.dumps(result, indent=2))
    return result


def run_benchmark(args, work: Path) -> dict:
    data = work / "Task09_Spleen"
    if not (data / "dataset.json").is_file():  # the phantom is deterministic: a kept one is the same data
        write_phantom_dataset(data, cases=args.train_cases + 1, test_cases=args.held_out, seed=2026)
    cases = [{"image": str(data / e["image"]), "label": str(data / e["label"])} for e in json.loads((data / "dataset.json").read_text())["training"]]
    split = {"seed": 0, "val_fraction": 0.0, "train": cases[: args.train_cases], "validation": cases[args.train_cases:]}
    runs: dict[str, list[dict]] = {name: [] for name in ("teacher", *ARMS)}
    load_start = os.getloadavg()
    for seed in args.seeds:
        teacher_dir = work / f"teacher-{seed}"
        runs["teacher"].append(run_once(teacher_dir, run_config(TEACHER, "supervised", {}, seed, args), data, split, seed))
        recipes = {"plain": ("supervised", {}), "distill": ("distill", {"teacher": str(teacher_dir), "mode": "hard"}), "self_distill": ("self_distill", {})}
        for arm in ARMS:
            recipe, params = recipes[arm]
            runs[arm].append(run_once(work / f"{arm}-{seed}", run_config(STUDENT, recipe, params, seed, args), data, split, seed))
            print(f"seed {seed} {arm:>12}: Dice {runs[arm][-1]['dice']:.3f} (train {runs[arm][-1]['train_seconds']:.0f} s)", flush=True)
    return {
        "benchmark": "recipes: few-label phantom, plain vs distill vs self_distill",
        "command": "python benchmarks/recipes.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (("steps", args.steps), ("crops", args.crops), ("threads", args.threads))),
        "budget": {
            "train_cases": args.train_cases,
            "checkpoint_scored": "last.pt after the whole budget (no validation during training)",
            "held_out_cases": args.held_out,
            "optimizer_steps": args.steps,
            "crops_per_step": args.crops,
            "spacing_mm": args.spacing,
            "roi": args.roi,
            "lr": args.lr,
            "target": "whole benchmark <= 20 min on 2 busy CPU cores",
        },
        "student": STUDENT,
        "teacher": TEACHER,
        "seeds": args.seeds,
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        "load_average_start": load_start,
        "run_seconds_total": round(sum(r["train_seconds"] + r["predict_evaluate_seconds"] for rows in runs.values() for r in rows), 1),
        "metric": "spleen Dice from `unetr evaluate` on the held-out scans' original grids; mean and sample std over seeds",
        "arms": {name: {"dice": summarise([r["dice"] for r in rows]), "runs": rows} for name, rows in runs.items()},
    }


if __name__ == "__main__":
    main()
