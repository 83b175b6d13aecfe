"""Does DINO pretraining help fine-tuning with few labels? Measured on the CT-like phantom.

    python benchmarks/pretrain.py [--pretrain-steps 80] [--finetune-steps 40] [--seeds 0 1 2]

1. Phantom: `--cases` labelled scans (imagesTr) and `--test-cases` held-out scans (imagesTs, with
   labels used only for testing).
2. DINO on the training scans (imagesTr), labels ignored, never on the test scans it is scored on: profile cpu-dino (4 mm, 48^3 global
   and 32^3 local crops) with a small ViT (`MODEL`: width 96, 4 blocks, 4 heads, patch 16, UNETR
   decoder of width 8), `--pretrain-steps` steps of 4 scans x (2 global + 4 local crops).
3. Fine-tune that model (cpu-demo profile, 2 crops per step) on the same 4 labelled cases, from the
   DINO teacher's encoder and from scratch, `--finetune-steps` steps each, for each seed (no
   validation: the budget is fixed).
4. Dice of every model on the test scans, on their original grids (prediction as `unetr predict`).
5. The attention of the pretrained teacher and of a randomly initialised network on the test
   scans: the fraction of attention mass inside the body and inside the organ (the fraction of
   voxels gives what uniform attention would score), and the montage of one test scan.

Writes benchmarks/results/pretrain_dino_phantom.json and .png, and pretrain_attention_montage.png.
Default size: at most 20 minutes on this shared 2-core CPU at a load average near 10 (the JSON
records the time taken and the load). So small a budget measures the start of training only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.pipelines.attention import attention as attention_pipeline  # noqa: E402
from unetr_app.pipelines.attention import attention_on_scan, load_attention_network  # noqa: E402
from unetr_app.pipelines.pretrain import pretrain  # noqa: E402
from unetr_app.pipelines.train import with_budget  # noqa: E402
from unetr_app.config import BudgetConfig, load_run_config, validate_run_config  # noqa: E402
from unetr_app.data.phantom import write_phantom_dataset  # noqa: E402
from unetr_app.inference.predictor import PredictSettings, Predictor  # noqa: E402
from unetr_app.io.checkpoint import load_model  # noqa: E402
from unetr_app.io.scans import find_cases, read_volume  # noqa: E402
from unetr_app.models import create_model  # noqa: E402
from unetr_app.training.init import init_encoder  # noqa: E402
from unetr_app.training.loaders import build_loaders  # noqa: E402
from unetr_app.training.recipes.dino import build_dino_network, dino_params  # noqa: E402
from unetr_app.training.loop import Trainer  # noqa: E402
from unetr_app.training.state import seed_everything  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
NAME = "pretrain_dino_phantom"
MODEL = {"name": "vit_small_patch16", "params": {"embed_dim": 96, "depth": 4, "num_heads": 4, "feature_size": 8}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--test-cases", type=int, default=4)
    parser.add_argument("--labelled", type=int, default=4)
    parser.add_argument("--pretrain-steps", type=int, default=80)
    parser.add_argument("--finetune-steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_dino_"))
    started = time.perf_counter()

    data = write_phantom_dataset(work / "Task09_Spleen", cases=args.cases, test_cases=args.test_cases, seed=0)
    timings = {}
    t = time.perf_counter()
    pretrain_run = work / "pretrain"
    config = load_run_config("spleen", MODEL["name"], "cpu-dino", {"model": MODEL, "training": {"log_every_steps": 10}})
    config = with_budget(config, BudgetConfig(steps=args.pretrain_steps))
    pretrain_summary = pretrain(config, pretrain_run, [data / "imagesTr"], device="cpu")  # disjoint from the test scans
    timings["pretrain_s"] = round(time.perf_counter() - t, 1)

    labelled = [{"image": str(data / "imagesTr" / f"spleen_{i + 1}.nii.gz"), "label": str(data / "labelsTr" / f"spleen_{i + 1}.nii.gz")}
                for i in range(args.labelled)]
    tests = [(data / "imagesTs" / p.name, data / "labelsTs" / p.name) for p in sorted((data / "imagesTs").glob("*.nii.gz"))]
    dice: dict[str, list[float]] = {"scratch": [], "dino": []}
    per_case: dict[str, list[list[float]]] = {"scratch": [], "dino": []}
    t = time.perf_counter()
    for seed in args.seeds:
        for start in ("scratch", "dino"):
            run = work / f"finetune_{start}_{seed}"
            finetune(labelled, run, seed, args.finetune_steps, pretrain_run if start == "dino" else None)
            scores = test_dice(run, tests)
            per_case[start].append(scores)
            dice[start].append(float(np.mean(scores)))
            print(f"seed {seed} {start}: test Dice {dice[start][-1]:.4f}", flush=True)
    timings["finetune_and_test_s"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    mass = {"dino_teacher": attention_mass(pretrain_run, tests), "random_init": attention_mass(None, tests, config)}
    montage_dir = work / "attention"
    written = attention_pipeline(pretrain_run, tests[0][0], montage_dir)
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(written["montage"], RESULTS / "pretrain_attention_montage.png")
    timings["attention_s"] = round(time.perf_counter() - t, 1)

    result = {
        "benchmark": "DINO pretraining then fine-tuning with few labels, CT-like phantom",
        "command": "python benchmarks/pretrain.py " + " ".join(sys.argv[1:]),
        "machine": f"CPU, {args.threads} threads (shared 2-core machine); load average at start {os.getloadavg()[0]:.1f}",
        "data": {"labelled_scans": args.cases, "test_scans": args.test_cases, "pretraining_scans": args.cases + args.test_cases,
                 "finetune_cases": [Path(c["image"]).name for c in labelled]},
        "model": MODEL,
        "pretraining": {"profile": "cpu-dino", "steps": args.pretrain_steps, "final_loss": pretrain_summary["final_loss"],
                        "recipe_params": dict(config.recipe.params)},
        "finetuning": {"profile": "cpu-demo", "crops_per_step": 2, "steps": args.finetune_steps, "seeds": args.seeds, "validation": "none (fixed budget)"},
        "test_dice_on_original_grids": {
            start: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v, "per_case_per_seed": per_case[start]}
            for start, v in dice.items()
        },
        "attention_mass_on_test_scans": mass,
        "montage": "benchmarks/results/pretrain_attention_montage.png",
        "seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
    }
    (RESULTS / f"{NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{NAME}.png")
    print(json.dumps({k: result[k] for k in ("test_dice_on_original_grids", "attention_mass_on_test_scans", "seconds")}, indent=2))


def finetune(cases: list[dict], run: Path, seed: int, steps: int, init_from: Path | None) -> None:
    """The cpu-demo recipe on exactly `cases`, no validation, `steps` steps."""
    config = load_run_config("spleen", MODEL["name"], "cpu-demo", {"model": MODEL})
    data = config.to_dict()
    data["training"].update({"seed": seed, "num_samples": 2, "val_every_steps": 0, "log_every_steps": max(steps // 4, 1),
                             "checkpoint_every_steps": steps})
    data["schedule"]["warmup_fraction"] = 0.1
    config = with_budget(validate_run_config(data), BudgetConfig(steps=steps))
    seed_everything(seed)
    model = create_model(config.model.name, **config.model_kwargs())
    if init_from is not None:
        report = init_encoder(model, init_from, "teacher", config.model.name)
        print(report.summary(), flush=True)
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, model, torch.device("cpu"), run)
    train_loader, _ = build_loaders(config, cases, [])
    trainer.fit(train_loader, None)


def test_dice(run: Path, tests: list[tuple[Path, Path]]) -> list[float]:
    """Foreground Dice per test scan, the prediction made and scored on the scan's own grid."""
    predictor = Predictor(load_model(run / "checkpoints" / "last.pt"), PredictSettings(device=torch.device("cpu")))
    scores = []
    for image, label in tests:
        volume = read_volume(find_cases(image)[0])
        predicted = predictor(volume).labels > 0
        truth = np.asarray(nib.load(label).dataobj) > 0
        scores.append(float(2 * (predicted & truth).sum() / max(predicted.sum() + truth.sum(), 1)))
    return scores


def attention_mass(run: Path | None, tests: list[tuple[Path, Path]], config=None) -> dict:
    """Mean over test scans and heads of the attention mass inside the body (HU > -500) and the organ."""
    if run is not None:
        encoder, class_token, checkpoint = load_attention_network(run)
        pre = checkpoint["preprocessing"]
    else:
        torch.manual_seed(12345)
        network = build_dino_network(create_model(config.model.name, **config.model_kwargs()), **{k: getattr(dino_params(config.recipe.params), k) for k in ("out_dim", "hidden_dim", "bottleneck_dim")})
        encoder, class_token, pre = network.token_encoder(), network.cls_token.detach(), config.preprocessing.model_dump()
    body, organ, body_voxels, organ_voxels = [], [], [], []
    for image, label in tests:
        volume = read_volume(find_cases(image)[0])
        _, _, on_input = attention_on_scan(encoder, class_token, pre, volume)  # (heads, *shape)
        inside, truth = volume.array > -500, np.asarray(nib.load(label).dataobj) > 0
        total = on_input.reshape(on_input.shape[0], -1).sum(axis=1)
        body.append(float(np.mean(on_input[:, inside].sum(axis=1) / total)))
        organ.append(float(np.mean(on_input[:, truth].sum(axis=1) / total)))
        body_voxels.append(float(inside.mean()))
        organ_voxels.append(float(truth.mean()))
    return {"in_body": float(np.mean(body)), "in_organ": float(np.mean(organ)),
            "uniform_in_body": float(np.mean(body_voxels)), "uniform_in_organ": float(np.mean(organ_voxels))}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dice = result["test_dice_on_original_grids"]
    mass = result["attention_mass_on_test_scans"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(dice)
    left.bar(names, [dice[n]["mean"] for n in names], yerr=[dice[n]["std"] for n in names], capsize=6, color=["#999999", "#4363d8"])
    for i, n in enumerate(names):
        left.scatter([i] * len(dice[n]["per_seed"]), dice[n]["per_seed"], color="black", zorder=3, s=12)
    left.set_ylabel("test Dice (original grids)")
    left.set_title(f"fine-tuning on {len(result['data']['finetune_cases'])} labelled cases, "
                   f"{result['finetuning']['steps']} steps, {len(result['finetuning']['seeds'])} seeds", fontsize=9)
    keys = ["in_body", "in_organ"]
    x = np.arange(len(keys))
    for offset, (label, entry, colour) in enumerate([("DINO teacher", mass["dino_teacher"], "#4363d8"),
                                                     ("random init", mass["random_init"], "#999999")]):
        right.bar(x + (offset - 0.5) * 0.35, [entry[k] for k in keys], width=0.35, label=label, color=colour)
    right.scatter(x, [mass["dino_teacher"]["uniform_" + k] for k in keys], marker="_", s=400, color="red", label="uniform (voxel fraction)", zorder=3)
    right.set_xticks(x, ["inside the body", "inside the organ"])
    right.set_ylabel("fraction of last-block attention mass")
    right.legend(fontsize=8)
    fig.suptitle(f"DINO on {result['data']['pretraining_scans']} phantom scans, {result['pretraining']['steps']} steps (cpu-dino)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
