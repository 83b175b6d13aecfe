"""Do the survey's recipes help a transformer on few labels? A design that can show a gain.

On the CT-like phantom: `--train-cases` labelled cases (4 by default), `--val-cases` more labelled
cases used only for the Dice-vs-step curves (validation never picks the checkpoint: every arm is
scored with last.pt after the whole budget), and `--held-out` test scans (16 by default) that no
run trains or validates on. The student is UNETR on a narrow DeiT with 8^3-voxel patches (a 48^3
window at 4 mm is 6^3 = 216 tokens; profile cpu-recipes); the teacher is a small CNN (segresnet_small) trained first,
longer (`--teacher-steps`), on the same labelled cases. Every student arm trains `--steps` steps
for each of `--seeds` (5 by default; a seed fixes the initialisation and the crops, the same for
every arm: the arms are paired by seed).

    arm               recipe        params
    plain             supervised    -
    distill_control   distill       alpha 0 (the distillation head, trained on nothing), main head
    soft              distill       per-voxel T^2 KL, alpha 0.5, T 3
    hard              distill       DiceCE on the teacher's masks, alpha 0.5
    channel           distill       channel-wise (Shu et al.), alpha 0.5, T 4
    soft_unlabelled   distill       soft, alpha 0.5, T 3, and the same term on `--unlabelled-scans`
                                    other phantom scans without labels (another phantom seed)
    hard_unlabelled   distill       hard, alpha 0.5, and the teacher's masks on the same scans (self-training)
    byot              self_distill  Be Your Own Teacher, equal head weights (the paper's sum)
    deep_supervision  self_distill  labels only on every head, equal weights (BYOT's control)
    nnunet            self_distill  labels only, weights 1/2^i with the coarsest 0
    dino              supervised    plain's recipe and budget from the encoder of a DINO run (the
                                    teacher's): profile cpu-dino on the student's own model, over the
                                    labelled cases' scans and `--unlabelled-scans` other scans, never
                                    a held-out one; the whole network at the same LR
    dino_slow_encoder supervised    the same start, the encoder at 0.1 of the LR
                                    (optimizer.encoder_lr_scale)
    masked, masked_slow_encoder     the same from a masked-image-modelling run (profile cpu-masked)
    masked_frozen_encoder           the masked run's encoder frozen: only the decoder trains
    ibot, ibot_frozen_encoder       the same from an iBOT run (DINO + masked patch tokens: recipe
                                    ibot on profile cpu-dino)
    random_frozen_encoder           plain's random encoder frozen: the frozen arm's reference

Each pretraining run is made once (`--pretrain-steps`, default the shipped profile's budget); its
loss curve and, for DINO and iBOT, the collapse monitors (teacher entropy over ln K, teacher-student KL,
batch-mean entropy over ln K; iBOT's patch monitors too) go to the JSON.

Distillation arms are scored with each prediction head (average of the logits, main,
distillation). Scores: spleen Dice from `unetr predict` + `unetr evaluate` on each held-out scan's
original grid. For each arm, the difference to `plain` per (seed, scan) and its paired bootstrap
95% interval (seeds and scans resampled with replacement, 10,000 draws: `evaluation.comparison.paired_bootstrap`;
the JSONs committed before it was shared used 2,000 draws of their own).

    python benchmarks/recipes_fair.py --quick             # the whole path in minutes (tiny student, 1 seed)
    nice -n 10 python benchmarks/recipes_fair.py          # the full design (see the JSON for its time)
    python benchmarks/recipes_fair.py --arms plain soft   # a subset; plain is always run

Runs live in `--work` (default runs/recipes_fair[_quick]); a finished run leaves result.json and
is read back when the benchmark is started again, so a killed benchmark resumes where it stopped; a
finished run made with other settings (another --steps, say) stops it, naming what changed.
Writes benchmarks/results/recipes_fair[_quick].json and a .png of the Dice-vs-step curves.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import unetr_app.pipelines.predict as predict_pipeline
from unetr_app.pipelines.evaluate import run_evaluate
from unetr_app.pipelines.predict import PredictRequest, run_predict
from unetr_app.pipelines.pretrain import pretrain
from unetr_app.pipelines.train import train
from unetr_app.config import load_run_config
from unetr_app.data.phantom import write_phantom_dataset
from unetr_app.evaluation.comparison import paired_bootstrap
from unetr_app.training.init import EncoderInit
from unetr_app.training.objectives import dino_phase
from unetr_app.training.recipes import recipe_class

RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = "cpu-recipes"  # the student (patch-8 DeiT + UNETR decoder), the teacher's size, data and augmentation
STUDENT = {"name": None, "params": {}}  # the profile's own model
QUICK_STUDENT = {"name": None, "params": {"embed_dim": 32, "depth": 2, "num_heads": 2, "feature_size": 4}}
TEACHER = {"name": "segresnet_small", "params": {}}  # sized by the profile's model.sizes
ARMS = {
    "plain": ("supervised", {}),
    "distill_control": ("distill", {"mode": "soft", "alpha": 0.0, "prediction_head": "main"}),
    "soft": ("distill", {"mode": "soft", "alpha": 0.5, "temperature": 3.0}),
    "hard": ("distill", {"mode": "hard", "alpha": 0.5}),
    "channel": ("distill", {"mode": "channel", "alpha": 0.5, "temperature": 4.0}),
    "soft_unlabelled": ("distill", {"mode": "soft", "alpha": 0.5, "temperature": 3.0, "unlabelled": "pool"}),
    "hard_unlabelled": ("distill", {"mode": "hard", "alpha": 0.5, "unlabelled": "pool"}),
    "byot": ("self_distill", {"mode": "byot", "weights": "equal"}),
    "deep_supervision": ("self_distill", {"mode": "deep_supervision", "weights": "equal"}),
    "nnunet": ("self_distill", {"mode": "deep_supervision", "weights": "nnunet"}),
}
# arms that start from a pretraining run or freeze the encoder: (the pretraining method or None for
# random weights, the encoder's LR scale, whether the encoder is frozen)
ENCODER_ARMS = {"dino": ("dino", 1.0, False), "dino_slow_encoder": ("dino", 0.1, False), "masked": ("masked", 1.0, False),
                "ibot": ("ibot", 1.0, False), "ibot_frozen_encoder": ("ibot", 1.0, True),
                "masked_slow_encoder": ("masked", 0.1, False), "masked_frozen_encoder": ("masked", 1.0, True),
                "random_frozen_encoder": (None, 1.0, True)}
ARMS.update({arm: ("supervised", {}) for arm in ENCODER_ARMS})
MONITORS = ("teacher_entropy_ratio", "teacher_student_kl", "batch_entropy_ratio")
PATCH_MONITORS = ("patch_entropy_ratio", "patch_student_kl", "patch_batch_entropy_ratio")
HEADS = ("average", "main", "distillation")


# --- one run ---------------------------------------------------------------------------------------


def run_config(model: dict, recipe: str, params: dict, seed: int, steps: int, args, encoder_lr_scale: float = 1.0) -> object:
    overrides = {
        **({"model": {"params": model["params"]}} if model["params"] else {}),
        "training": {
            "budget": {"steps": steps}, "batch_size": 1, "num_samples": args.crops, "seed": seed,
            "val_every_steps": max(1, steps // args.curve_points), "log_every_steps": max(1, steps // args.curve_points),
            "checkpoint_every_steps": max(1, steps // args.curve_points),
        },
        "optimizer": {"lr": args.lr, "encoder_lr_scale": encoder_lr_scale},
        "recipe": {"name": recipe, "params": params},
        "inference": {"overlap": 0.25, "sw_batch_size": 4},
    }
    return load_run_config("spleen", model=model["name"], profile=PROFILE, overrides=overrides)


def curve(run_dir: Path) -> list[list[float]]:
    """[step, validation Dice] from the run's metrics lines."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [[line["step"], line["val_dice"]] for line in lines if "val_dice" in line]


@contextlib.contextmanager
def prediction_head(head: str | None):
    """Predict with another head of a distilled model than its checkpoint names (the library's
    prediction path, with the loaded network's `prediction_head` switched)."""
    if head is None:
        yield
        return
    original = predict_pipeline.load_model

    def load(*args, **kwargs):
        loaded = original(*args, **kwargs)
        loaded.model.prediction_head = head
        return loaded

    predict_pipeline.load_model = load
    try:
        yield
    finally:
        predict_pipeline.load_model = original


def score(run_dir: Path, data: Path, head: str | None = None) -> dict[str, float]:
    """Spleen Dice per held-out scan of last.pt, on the scans' original grids."""
    name = f"predictions-{head}" if head else "predictions"
    predictions, evaluation = run_dir / name, run_dir / f"evaluation-{head or 'checkpoint'}"
    for folder in (predictions, evaluation):
        shutil.rmtree(folder, ignore_errors=True)
    with prediction_head(head):
        # the network's own masks: no post-processing (training decides one beside the run)
        run_predict(PredictRequest(input=data / "imagesTs", output_dir=predictions, checkpoint=run_dir / "checkpoints" / "last.pt",
                                   device="cpu", show_progress=False, postprocess=False))
    run_evaluate(predictions, data / "labelsTs", evaluation)
    per_case = {}
    for line in (evaluation / "evaluation.csv").read_text().splitlines()[1:]:
        case, label, dice, *_ = line.split(",")
        if label == "spleen":
            per_case[case] = float(dice)
    shutil.rmtree(predictions, ignore_errors=True)  # the scores are kept; the masks would fill the disk
    return per_case


SETTINGS = ("model", "preprocessing", "augmentation", "training", "recipe", "optimizer", "schedule", "loss")


def settings_of(config) -> dict:
    """What a run is made with, stored in its result.json: a rerun with other settings must not read it back."""
    dumped = config.model_dump(mode="json")
    return {key: dumped[key] for key in SETTINGS}


def read_back(done: Path, settings: dict) -> dict | None:
    """A finished run's result, None when there is none; a run made with other settings stops the benchmark
    (runs from before settings were stored are read back as they are)."""
    if not done.is_file():
        return None
    result = json.loads(done.read_text())
    stored = result.get("settings")
    if stored is not None and stored != settings:
        old, new = _flat(stored), _flat(settings)
        changed = [f"{key} {old.get(key)} -> {new.get(key)}" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
        sys.exit(f"{done.parent}: made with other settings ({'; '.join(changed[:3])}); use another --work, or remove that folder to redo it")
    return result


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def run_once(run_dir: Path, config, data: Path, split: dict, heads: tuple[str | None, ...], init: EncoderInit | None = None) -> dict:
    """Train and score one run; a finished run (result.json) is read back, an unfinished one redone."""
    done = run_dir / "result.json"
    settings = settings_of(config)
    if (finished := read_back(done, settings)) is not None:
        return finished
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "split.json").write_text(json.dumps(split))
    started = time.perf_counter()
    summary = train(config, run_dir, data, "cpu", init=init)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    dice = {head or "checkpoint": score(run_dir, data, head) for head in heads}
    result = {
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(summary["seconds"] / max(summary["steps"], 1), 3),
        "score_seconds": round(time.perf_counter() - started, 1),
        "parameters": summary["parameters"],
        "best_val_dice": summary["best_val_dice"],
        "curve": curve(run_dir),
        "dice_per_case": dice,
        "settings": settings,
    }
    done.write_text(json.dumps(result, indent=2))
    return result


# --- statistics ------------------------------------------------------------------------------------


def minus_plain(diffs: np.ndarray) -> dict:
    """diffs (seeds, scans) against plain: the project's paired bootstrap (seeds and scans resampled), in this JSON's keys."""
    interval = paired_bootstrap(diffs)
    low, high = interval["low"], interval["high"]
    return {"mean": interval["mean"], "ci95": [low, high], "excludes_zero": bool(low > 0 or high < 0)}


def per_seed_matrix(runs: list[dict], head: str, cases: list[str]) -> np.ndarray:
    return np.array([[run["dice_per_case"][head][c] for c in cases] for run in runs])


def plateau(curves: list[list[list[float]]], tolerance: float = 0.02) -> dict:
    """The seed-mean validation curve: the first step from which it stays within `tolerance` of its end."""
    steps = [s for s, _ in curves[0]]
    mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
    final = mean[-1]
    first = next(s for i, s in enumerate(steps) if all(abs(m - final) <= tolerance for m in mean[i:]))
    return {"steps": steps, "mean_val_dice": mean, "plateau_step": first,
            "plateaued": first <= steps[len(steps) * 3 // 4] if len(steps) > 1 else False, "tolerance": tolerance}


# --- the benchmark ---------------------------------------------------------------------------------


def dataset(work: Path, args) -> tuple[Path, dict]:
    data = work / "Task09_Spleen"
    if not (data / "dataset.json").is_file():  # the phantom is deterministic: a kept one is the same data
        write_phantom_dataset(data, cases=args.train_cases + args.val_cases, test_cases=args.held_out, seed=2026)
    entries = json.loads((data / "dataset.json").read_text())["training"]
    cases = [{"image": str(data / e["image"]), "label": str(data / e["label"])} for e in entries]
    split = {"seed": 0, "val_fraction": 0.0, "train": cases[: args.train_cases], "validation": cases[args.train_cases:]}
    return data, split


def unlabelled_pool(work: Path, args) -> Path:
    """`--unlabelled-scans` phantom scans of another seed than the labelled ones, named apart from them."""
    pool = work / "unlabelled"
    if len(list(pool.glob("*.nii.gz"))) != args.unlabelled_scans:
        shutil.rmtree(pool, ignore_errors=True)
        source = write_phantom_dataset(work / "unlabelled_source", cases=1, test_cases=args.unlabelled_scans, seed=2027)
        pool.mkdir(parents=True)
        for index, scan in enumerate(sorted((source / "imagesTs").glob("*.nii.gz"))):
            shutil.move(scan, pool / f"unlabelled_{index}.nii.gz")
        shutil.rmtree(source)
    return pool


def pretrain_encoder(work: Path, method: str, student: dict, split: dict, args) -> dict:
    """The pretraining run (`method`: dino or masked) its arms start from, made once (read back
    after a kill), on the labelled cases' scans and the unlabelled pool, never a held-out scan."""
    run_dir = work / f"{method}_pretrain"
    overrides = {"model": {"params": student["params"]}, "recipe": {"name": method}}
    profile = recipe_class(method).pretrain_profile
    if args.pretrain_steps is not None:
        overrides["training"] = {"budget": {"steps": args.pretrain_steps}}
    config = load_run_config("spleen", model=student["name"], profile=profile, overrides=overrides)
    settings = settings_of(config)
    if (finished := read_back(run_dir / "result.json", settings)) is not None:
        return finished
    done = run_dir / "result.json"
    shutil.rmtree(run_dir, ignore_errors=True)
    scans = [Path(case["image"]) for case in split["train"]] + [unlabelled_pool(work, args)]
    summary = pretrain(config, run_dir, scans, "cpu")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {"method": method, "profile": profile, "steps": summary["steps"],
              "train_seconds": summary["seconds"], "score_seconds": 0.0, "scans": summary["scans"],
              "final_loss": summary["final_loss"], "loss_curve": [[line["step"], round(line["loss"], 4)] for line in lines if "loss" in line]}
    if method in ("dino", "ibot"):
        names = MONITORS + (PATCH_MONITORS if method == "ibot" else ())
        monitored = [line for line in lines if all(name in line for name in names)]
        last = monitored[-1] if monitored else None
        result.update({
            "ln_K": float(np.log(config.recipe.params["out_dim"])),
            "monitor_names": ["step", *names],
            "monitors": [[line["step"], *(round(float(line[name]), 4) for name in names)] for line in monitored],
            "phase_at_end": (dino_phase(last["teacher_entropy_ratio"], last["batch_entropy_ratio"]) or "learning") if last else None,
        })
    result["settings"] = settings
    done.write_text(json.dumps(result, indent=2))
    return result


def run_benchmark(args, work: Path) -> dict:
    data, split = dataset(work, args)
    student = QUICK_STUDENT if args.quick else STUDENT
    plain_config = run_config(student, "supervised", {}, args.seeds[0], args.steps, args)
    student = {"name": plain_config.model.name, "params": dict(plain_config.model.params), "profile": PROFILE}
    teacher_dir = work / "teacher"
    teacher = None
    if any(ARMS[arm][0] == "distill" for arm in args.arms):  # the teacher costs as much as an arm: only when asked for
        teacher = run_once(teacher_dir, run_config(TEACHER, "supervised", {}, 0, args.teacher_steps, args), data, split, (None,))
        print(f"teacher: test Dice {statistics.fmean(teacher['dice_per_case']['checkpoint'].values()):.3f}", flush=True)
    pretrained = {}
    for method in sorted({ENCODER_ARMS[arm][0] for arm in args.arms if arm in ENCODER_ARMS} - {None}):
        pretrained[method] = pretrain_encoder(work, method, student, split, args)
        run = pretrained[method]
        print(f"{method}: {run['steps']} steps in {run['train_seconds']:.0f} s, final loss {run['final_loss']:.4f}"
              + (f", phase at the end {run['phase_at_end']}, monitors {run['monitors'][-1]}" if "monitors" in run else ""), flush=True)
    runs: dict[str, list[dict]] = {}
    for arm in ["plain", *[a for a in args.arms if a != "plain"]]:
        recipe, params = ARMS[arm]
        method, encoder_lr_scale, frozen = ENCODER_ARMS.get(arm, (None, 1.0, False))
        init = EncoderInit(work / f"{method}_pretrain" if method else None, "teacher", frozen) if method or frozen else None
        if recipe == "distill":
            params = {**params, "teacher": str(teacher_dir)}
        if "unlabelled" in params:
            params = {**params, "unlabelled": [str(unlabelled_pool(work, args))]}
        heads = HEADS if recipe == "distill" and params["alpha"] > 0 else (None,)
        runs[arm] = []
        for seed in args.seeds:
            config = run_config(QUICK_STUDENT if args.quick else STUDENT, recipe, params, seed, args.steps, args,
                                encoder_lr_scale=encoder_lr_scale)
            runs[arm].append(run_once(work / f"{arm}-{seed}", config, data, split, heads, init))
            scores = runs[arm][-1]["dice_per_case"]
            line = "  ".join(f"{h} {statistics.fmean(d.values()):.3f}" for h, d in scores.items())
            print(f"seed {seed} {arm:>16}: Dice {line}  ({runs[arm][-1]['train_seconds']:.0f} s)", flush=True)
    result = summarise(args, student, teacher, runs)
    result["pretraining"] = pretrained  # by method; empty: no pretrained arm was run
    # the runs this result is made of, not every run in a --work folder other benchmarks share
    made_of = [run for rows in runs.values() for run in rows] + [teacher or {}] + list(pretrained.values())
    result["run_seconds_total"] = round(sum(run.get("train_seconds", 0.0) + run.get("score_seconds", 0.0) for run in made_of), 1)
    return result


def summarise(args, student: dict, teacher: dict | None, runs: dict[str, list[dict]]) -> dict:
    cases = sorted(runs["plain"][0]["dice_per_case"]["checkpoint"])
    plain = per_seed_matrix(runs["plain"], "checkpoint", cases)
    arms = {}
    for arm, rows in runs.items():
        arms[arm] = {"recipe": ARMS[arm][0], "params": ARMS[arm][1], "heads": {}}
        for head in rows[0]["dice_per_case"]:
            matrix = per_seed_matrix(rows, head, cases)
            entry = {"dice_mean": float(matrix.mean()), "dice_per_seed": matrix.mean(axis=1).tolist()}
            if arm != "plain":
                entry["minus_plain"] = minus_plain(matrix - plain)
            if arm.endswith("_frozen_encoder") and arm != "random_frozen_encoder" and "random_frozen_encoder" in runs:
                # frozen against frozen: what the pretrained encoder adds where only the decoder trains
                entry["minus_random_frozen"] = minus_plain(matrix - per_seed_matrix(runs["random_frozen_encoder"], head, cases))
            arms[arm]["heads"][head] = entry
        arms[arm]["curves"] = [run["curve"] for run in rows]
        arms[arm]["seconds_per_step"] = statistics.fmean(run["seconds_per_step"] for run in rows)
    if teacher is not None:
        teacher_dice = np.array([teacher["dice_per_case"]["checkpoint"][c] for c in cases])
        teacher = {**TEACHER, "test_dice_mean": float(teacher_dice.mean()), "curve": teacher["curve"],
                   "minus_plain": minus_plain(teacher_dice[None, :] - plain), "steps": args.teacher_steps}
    return {
        "benchmark": "recipes_fair: few-label phantom, paired seeds, bootstrap intervals against plain",
        "quick": bool(args.quick),
        "note": "QUICK MODE: a check of the whole path with a tiny student and a few steps; its numbers measure nothing"
        if args.quick else "the full design",
        "command": "python benchmarks/recipes_fair.py " + " ".join(sys.argv[1:]),
        "design": {
            "train_cases": args.train_cases, "val_cases_for_curves": args.val_cases, "held_out_cases": args.held_out,
            "seeds": args.seeds, "student_steps": args.steps, "teacher_steps": args.teacher_steps,
            "crops_per_step": args.crops, "lr": args.lr, "spacing_mm": 4.0, "roi": 48,
            "checkpoint_scored": "last.pt after the whole budget (validation only draws the curves)",
            "interval": "paired bootstrap over seeds and held-out scans (evaluation.comparison.paired_bootstrap: 10,000 draws), 2.5-97.5 percentiles",
            "seconds_per_step": "a run's training seconds (summary.json) per step, validation and checkpoints included",
            "pairing": "a seed fixes the crops and the initialisation; recipe heads (the distillation token) draw "
                       "from the same generator, so their arms start from other weights than plain's",
        },
        "student": student,
        "teacher": teacher,  # None: no distillation arm was run
        "plain_plateau": plateau([run["curve"] for run in runs["plain"]]) if runs["plain"][0]["curve"] else None,
        "device": f"cpu ({platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)",
        "arms": arms,
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for arm, entry in result["arms"].items():
        curves = [c for c in entry["curves"] if c]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        mean = [statistics.fmean(c[i][1] for c in curves) for i in range(len(steps))]
        ax.plot(steps, mean, marker="o", ms=3, label=arm, lw=2.2 if arm == "plain" else 1.2)
    teacher = (result["teacher"] or {}).get("curve")
    if teacher:
        ax.plot([s for s, _ in teacher], [d for _, d in teacher], "k--", lw=1, label="teacher (CNN)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation Dice (mean over seeds)")
    title = f"{result['design']['train_cases']} labelled cases, {len(result['design']['seeds'])} seeds"
    ax.set_title(title + (" (QUICK: checks the path only)" if result["quick"] else ""), fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny student, 1 seed, 4 steps, 2 scans: checks the path")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps of every student arm (400 stopped plain before its plateau: recipes_fair_plain800.json)")
    parser.add_argument("--teacher-steps", type=int, default=800)
    parser.add_argument("--train-cases", type=int, default=4)
    parser.add_argument("--val-cases", type=int, default=4, help="labelled cases for the curves only")
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--unlabelled-scans", type=int, default=16, help="scans without labels for soft_unlabelled and DINO")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="DINO steps (default: the cpu-dino profile's budget)")
    parser.add_argument("--crops", type=int, default=2, help="random ROI crops per step")
    parser.add_argument("--curve-points", type=int, default=8, help="validations per run")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="runs folder (default runs/recipes_fair[_quick])")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.teacher_steps = args.seeds[:1], 4, 4
        args.val_cases, args.held_out, args.crops, args.curve_points = 1, 2, 1, 2
        args.unlabelled_scans, args.pretrain_steps = 2, 4
    suffix = "_quick" if args.quick else ""
    args.work = args.work or Path("runs") / f"recipes_fair{suffix}"
    args.out = args.out or RESULTS / f"recipes_fair{suffix}.json"
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("unetr_app.pipelines.predict").setLevel(logging.ERROR)  # no quality model beside benchmark runs: known
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_start = os.getloadavg()
    result = run_benchmark(args, args.work)
    result["wall_seconds_this_session"] = round(time.perf_counter() - started, 1)
    result["load_average"] = {"start": load_start, "end": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    for arm, entry in result["arms"].items():
        for head, stats in entry["heads"].items():
            diff = stats.get("minus_plain")
            versus = f"  minus plain {diff['mean']:+.3f} [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}]" if diff else ""
            if frozen := stats.get("minus_random_frozen"):
                versus += f"  minus random_frozen_encoder {frozen['mean']:+.3f} [{frozen['ci95'][0]:+.3f}, {frozen['ci95'][1]:+.3f}]"
            print(f"{arm:>16} {head:>12}: Dice {stats['dice_mean']:.3f}{versus}")
    print(f"wall {result['wall_seconds_this_session']:.0f} s; wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
