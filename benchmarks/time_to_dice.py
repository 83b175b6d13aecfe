"""Dice reached for a given wall-clock training time: `unetr train` (a named profile, `ours`, or the
plan made from the data, `auto`) against a plain MONAI-tutorial UNETR loop (2 x 2 x 3 mm, 64^3 crops,
AdamW 3e-4), on the same phantom training cases, scored on the test scans (imagesTs) on their
original grids.

    python benchmarks/time_to_dice.py --minutes 2 5 10            # cpu-demo vs the tutorial, a quiet machine: ~35 minutes
    python benchmarks/time_to_dice.py --arms auto,tutorial --minutes 8 --cases 41 --test-cases 20 \
        --phantoms 21:thick 22:fine 23:fine --out benchmarks/results/time_to_dice_contest.json
                                                                    # the plan against the tutorial on unseen phantoms
    python benchmarks/time_to_dice.py --smoke                       # seconds: checks the machinery only

Each contestant trains from scratch once per phantom and budget, with `minutes` of training-loop time
(data caching and start-up excluded for both; the total wall time of each is recorded too). The
tutorial model is judged the tutorial's way: sliding window at its spacing, argmax, `Invertd` back to
the scan's grid. A phantom is `SEED:GRID` (`unetr data synth --seed SEED --grid GRID`); the profiles
were tuned on seed 11 of the thick grid. Finished arms are read back from the JSON, so a killed run
resumes. Writes the JSON and a PNG beside it. Wall-clock numbers mean little on a shared machine: run
it alone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, Dataset, decollate_batch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNETR

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.data.phantom import write_phantom_dataset  # noqa: E402
from unetr_app.evaluation.postprocess import dice  # noqa: E402

# The tutorial's recipe on the network cpu-demo had when the comparison was set (UNETR-B's shape with
# fewer channels), so the two contestants differ in recipe, not in network size.
TUTORIAL = {"spacing": (2.0, 2.0, 3.0), "roi": (64, 64, 64), "lr": 3e-4, "weight_decay": 1e-5, "window": (-175.0, 250.0),
            "network": {"feature_size": 8, "hidden_size": 192, "mlp_dim": 768, "num_heads": 4}}


def pairs(data: Path, images: str, labels: str) -> list[dict]:
    return [{"image": str(p), "label": str(data / labels / p.name)} for p in sorted((data / images).glob("*.nii.gz"))]


def tutorial_transforms(train: bool, roi) -> mt.Compose:
    low, high = TUTORIAL["window"]
    steps = [
        mt.LoadImaged(keys=["image", "label"]), mt.EnsureChannelFirstd(keys=["image", "label"]),
        mt.Orientationd(keys=["image", "label"], axcodes="RAS"),
        mt.Spacingd(keys=["image", "label"], pixdim=TUTORIAL["spacing"], mode=("bilinear", "nearest")),
        mt.ScaleIntensityRanged(keys=["image"], a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
        mt.CropForegroundd(keys=["image", "label"], source_key="image"),
    ]
    if train:
        steps += [
            mt.SpatialPadd(keys=["image", "label"], spatial_size=roi),
            mt.RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=roi, pos=1, neg=1, num_samples=4, image_key="image", image_threshold=0),
            mt.RandFlipd(keys=["image", "label"], spatial_axis=[0], prob=0.10),
            mt.RandShiftIntensityd(keys=["image"], offsets=0.10, prob=0.50),
        ]
    return mt.Compose(steps)


def train_tutorial(train_cases, minutes: float, roi, small: bool) -> tuple[torch.nn.Module, dict]:
    """The tutorial's loop, stopped after `minutes` of training."""
    started = time.perf_counter()
    loader = DataLoader(CacheDataset(train_cases, tutorial_transforms(True, roi), cache_rate=1.0, num_workers=2, progress=False), batch_size=1, shuffle=True)
    torch.manual_seed(0)
    width = dict(feature_size=4, hidden_size=48, mlp_dim=96, num_heads=2) if small else TUTORIAL["network"]
    model = UNETR(in_channels=1, out_channels=2, img_size=roi, norm_name="instance", res_block=True, **width)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TUTORIAL["lr"], weight_decay=TUTORIAL["weight_decay"])
    model.train()
    steps, train_start = 0, time.perf_counter()
    while time.perf_counter() - train_start < minutes * 60:
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_function(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            steps += 1
            if time.perf_counter() - train_start >= minutes * 60:
                break
    return model, {"steps": steps, "train_seconds": time.perf_counter() - train_start, "wall_seconds": time.perf_counter() - started}


def score_tutorial(model, test_cases, roi) -> list[float]:
    """Sliding window at the tutorial's spacing, then `Invertd` to each scan's grid, as the tutorial does."""
    pre = tutorial_transforms(False, roi)
    post = mt.Compose([
        mt.Invertd(keys="pred", transform=pre, orig_keys="image", meta_keys="pred_meta_dict", orig_meta_keys="image_meta_dict", nearest_interp=False, to_tensor=True),
        mt.AsDiscreted(keys="pred", argmax=True),
    ])
    model.eval()
    scores = []
    with torch.no_grad():
        for batch in DataLoader(Dataset(test_cases, pre), batch_size=1):
            batch["pred"] = sliding_window_inference(batch["image"], roi, 4, model, overlap=0.5)
            for item in decollate_batch(batch):
                restored = post(item)["pred"][0].numpy()
                reference = np.asarray(mt.LoadImage(image_only=True)(item["label"].meta["filename_or_obj"]))
                scores.append(dice(restored == 1, reference == 1))
    return scores


def train_and_score_ours(data: Path, minutes: float, work: Path, profile: str, overrides: list[str]) -> dict:
    """`unetr train --minutes M --fold all` (`profile` auto: `unetr plan` first), scored on imagesTs."""
    return train_and_score(data, work / f"{Path(profile).stem}_{minutes:g}min", profile, ["--minutes", str(minutes), "--fold", "all"], overrides)


def train_and_score(data: Path, run: Path, profile: str, budget: list[str], overrides: list[str] = (), threads: int | None = None,
                    task: str | None = None) -> dict:
    """`unetr train` with `budget` options (`profile` auto: `unetr plan` first; a finished run is kept), then
    `unetr predict` + `unetr evaluate` on imagesTs: mean and per-case test Dice, the run's summary and, for
    auto, the plan. `task` names a task YAML; without it the task comes from the dataset's dataset.json."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)} | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    cli = [sys.executable, "-m", "unetr_app"]
    started = time.perf_counter()
    if profile == "auto":
        subprocess.run([*cli, "plan", str(data), "--device", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)
    sets = [arg for item in overrides for arg in ("--set", item)] + (["--task", task] if task else [])
    if not (run / "summary.json").is_file():
        subprocess.run([*cli, "train", "--profile", profile, "--data-dir", str(data), *budget, "--out", str(run), "--device", "cpu", *sets],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    subprocess.run([*cli, "predict", str(data / "imagesTs"), str(run / "test"), "-c", str(run), "-q", "--no-postprocess"], check=True, env=env)
    subprocess.run([*cli, "evaluate", str(run / "test"), str(data / "labelsTs")], check=True, env=env, stdout=subprocess.DEVNULL)
    rows = json.loads((run / "test" / "evaluation_summary.json").read_text())
    with open(run / "test" / "evaluation.csv", newline="") as table:
        per_case = [float(r["dice"]) for r in csv.DictReader(table) if r.get("label") in (None, "spleen") and r.get("dice")]
    result = {"dice": rows["mean"]["spleen"]["dice"], "per_case": per_case, "wall_seconds": round(wall, 1),
              "summary": json.loads((run / "summary.json").read_text())}
    if profile == "auto":
        plans = yaml.safe_load((data / "plans.yaml").read_text())["targets"]["cpu"]
        result["plan"] = {key: plans[key] for key in ("spacing", "traded", "warnings")} | {"unetr": plans["unetr"]}
    return result


def phantom_data(work: Path, seed: int, grid: str, cases: int, test_cases: int) -> Path:
    return write_phantom_dataset(work / f"seed{seed}-{grid}" / "Task09_Spleen", cases=cases, test_cases=test_cases, seed=seed, grid=grid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[2.0, 5.0, 10.0])
    parser.add_argument("--data-dir", type=Path, default=None, help="a dataset instead of phantoms")
    parser.add_argument("--phantoms", nargs="+", default=["3:thick"], metavar="SEED:GRID",
                        help="phantoms to contest on (the profiles were tuned on 11:thick)")
    parser.add_argument("--cases", type=int, default=33, help="phantom training cases")
    parser.add_argument("--test-cases", type=int, default=8, help="phantom test cases (imagesTs)")
    parser.add_argument("--profile", default=None, help="the `ours` arm's profile (default: cpu-demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for ours/auto (tuning)")
    parser.add_argument("--arms", default="ours,tutorial", help="contestants: ours (a named profile), auto (the plan), tutorial")
    parser.add_argument("--smoke", action="store_true", help="tiny data, tiny models, a few seconds per budget")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "time_to_dice.json")
    args = parser.parse_args()
    minutes = [0.1] if args.smoke else args.minutes
    profile = args.profile or (str(ROOT / "tests" / "configs" / "tiny.yaml") if args.smoke else "cpu-demo")
    arms = args.arms.split(",")
    roi = (32, 32, 32) if args.smoke else TUTORIAL["roi"]
    out = args.out.with_name(args.out.stem + "_smoke.json") if args.smoke else args.out
    previous = json.loads(out.read_text()) if out.exists() and not args.smoke else {}
    results = [row for row in previous.get("results", []) if "phantom" in row]
    report = {"benchmark": "time_to_dice", "smoke": args.smoke, "command": " ".join(sys.argv), "threads": torch.get_num_threads(),
              "profile": profile, "overrides": args.overrides, "train_cases": args.cases, "test_cases": args.test_cases,
              "tuned_on": "11:thick", "tutorial": {k: list(v) if isinstance(v, tuple) else v for k, v in TUTORIAL.items()}, "results": results}
    phantoms = ["data-dir"] if args.data_dir else args.phantoms
    with tempfile.TemporaryDirectory(prefix="time-to-dice-") as tmp:
        for phantom in phantoms:
            data = None
            for budget in minutes:
                row = next((r for r in results if r["phantom"] == phantom and r["minutes"] == budget), None)
                if row is None:
                    row = {"phantom": phantom, "minutes": budget}
                    results.append(row)
                for arm in (a for a in arms if a not in row):
                    if data is None:
                        seed, _, grid = phantom.partition(":")
                        data = args.data_dir or phantom_data(Path(tmp), int(seed), grid or "thick", 4 if args.smoke else args.cases,
                                                             1 if args.smoke else args.test_cases)
                    if arm == "tutorial":
                        train_cases, test_cases = pairs(data, "imagesTr", "labelsTr"), pairs(data, "imagesTs", "labelsTs")
                        model, info = train_tutorial(train_cases, budget, roi, small=args.smoke)
                        row[arm] = {"dice": float(np.mean(scores := score_tutorial(model, test_cases, roi))), "per_case": scores, **info}
                    else:
                        row[arm] = train_and_score_ours(data, budget, Path(tmp) / phantom.replace(":", "-"),
                                                        "auto" if arm == "auto" else profile, args.overrides)
                    if "tutorial" in row:
                        row.update({f"{a}_minus_tutorial": row[a]["dice"] - row["tutorial"]["dice"] for a in ("ours", "auto") if a in row})
                    print(f"{phantom} {budget:g} min: " + ", ".join(f"{a} Dice {row[a]['dice']:.3f}" for a in ("ours", "auto", "tutorial") if a in row), flush=True)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(report, indent=2) + "\n")
    out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(results, out.with_suffix(".png"), Path(profile).stem)
    print(f"wrote {out}")


LABELS = {"ours": "unetr train --profile {profile}", "auto": "unetr plan + train --profile auto", "tutorial": "MONAI tutorial UNETR loop"}


def _plot(results, path: Path, profile: str = "cpu-demo") -> None:
    """One panel per phantom: Dice against minutes, or with a single budget each arm's per-case Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phantoms = list(dict.fromkeys(r["phantom"] for r in results))
    single_budget = len({r["minutes"] for r in results}) == 1
    fig, axes = plt.subplots(1, len(phantoms), figsize=(4.5 * len(phantoms) + 1.5, 4), squeeze=False)
    for ax, phantom in zip(axes[0], phantoms):
        rows = [r for r in results if r["phantom"] == phantom]
        present = [arm for arm in LABELS if any(arm in r for r in rows)]
        for x, (arm, marker) in enumerate((a, m) for a, m in (("ours", "o"), ("auto", "D"), ("tutorial", "s")) if a in present):
            label = LABELS[arm].format(profile=profile)
            if single_budget:
                cases = rows[0][arm].get("per_case", [rows[0][arm]["dice"]])
                ax.plot(x + np.linspace(-0.15, 0.15, len(cases)), cases, marker, alpha=0.5, label=label)
                ax.hlines(rows[0][arm]["dice"], x - 0.25, x + 0.25, colors="k")
            else:
                ax.plot(*zip(*sorted((r["minutes"], r[arm]["dice"]) for r in rows if arm in r)), marker + "-", label=label)
        if single_budget:
            ax.set_xticks(range(len(present)), present)
            ax.set(xlabel=f"{rows[0]['minutes']:g} training minutes each (line: mean)")
        else:
            ax.set(xlabel="training minutes (wall clock)")
        ax.set(ylabel="test Dice (original grids)", ylim=(0, 1), title=f"phantom {phantom}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Dice for the same training time" + (", per test scan" if single_budget else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
