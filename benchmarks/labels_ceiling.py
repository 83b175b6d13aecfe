"""How much would more labels give the recipes benchmark's plain student? The room a recipe works in.

    python benchmarks/labels_ceiling.py [--labelled 16] [--seeds 0 1 2 3 4] [--steps 800]

`benchmarks/recipes_fair.py` trains its students on 4 labelled phantom cases and scores them on 16
held-out scans. This trains the same `plain` arm (same student, recipe, steps, crops and seeds) on
`--labelled` cases instead: the same 4 first, then labelled cases of another phantom seed (2028:
neither the labelled, the held-out nor the unlabelled-pool seed), with the same 4 curve-only
validation cases and **the same 16 held-out scans**, so each seed's scores pair scan by scan with
the 4-label run's. The difference per (seed, scan) gets the project's paired bootstrap interval.

A recipe that aims at +0.05 Dice at 4 labels must do better than that many more labels would, or
the target asks for more than the data can give; `benchmarks/grid_ceiling.py` gives the other
bound (a perfect network on the 4-mm grid).

Runs in `--work` (default runs/recipes_fair_labels16) through recipes_fair.py, so a killed run
resumes; the 4-label runs are read from `--base` (runs/recipes_fair_plain800, made by
`python benchmarks/recipes_fair.py --arms plain --steps 800 --val-cases 4 --work runs/recipes_fair_plain800`).
Writes benchmarks/results/recipes_fair_labels16.json (recipes_fair's own report of the runs) and
benchmarks/results/labels_ceiling.json (the paired comparison).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.data.phantom import write_phantom_dataset  # noqa: E402
from unetr_app.evaluation.comparison import paired_bootstrap  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EXTRA_SEED = 2028
BASE_TRAIN_CASES = 4


def build_dataset(base: Path, work: Path, labelled: int, val_cases: int) -> None:
    """`work`/Task09_Spleen: base's training cases, then `labelled - 4` new ones, then base's
    validation cases (recipes_fair takes the first --train-cases entries for training); base's
    held-out scans unchanged."""
    data = work / "Task09_Spleen"
    if (data / "dataset.json").is_file():
        return
    source = base / "Task09_Spleen"
    description = json.loads((source / "dataset.json").read_text())
    entries = description["training"]
    if len(entries) != BASE_TRAIN_CASES + val_cases:
        sys.exit(f"{source}/dataset.json: {len(entries)} labelled cases, expected {BASE_TRAIN_CASES} training + {val_cases} validation")
    staging = work / "Task09_Spleen.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        extra = write_phantom_dataset(Path(tmp) / "extra", cases=labelled - BASE_TRAIN_CASES, test_cases=0, seed=EXTRA_SEED)
        added = []
        for index, image in enumerate(sorted((extra / "imagesTr").glob("*.nii.gz"))):
            name = f"extra_{index + 1}.nii.gz"  # apart from every spleen_N name of the base dataset
            shutil.move(image, staging / "imagesTr" / name)
            shutil.move(extra / "labelsTr" / image.name, staging / "labelsTr" / name)
            added.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description["training"] = entries[:BASE_TRAIN_CASES] + added + entries[BASE_TRAIN_CASES:]
    description["numTraining"] = len(description["training"])
    description["description"] += f"; labels_ceiling: {len(added)} labelled cases of phantom seed {EXTRA_SEED} added"
    (staging / "dataset.json").write_text(json.dumps(description, indent=2))
    staging.rename(data)


def dice_matrix(work: Path, seeds: list[int], scans: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    results = [json.loads((work / f"plain-{seed}" / "result.json").read_text())["dice_per_case"]["checkpoint"] for seed in seeds]
    scans = scans or sorted(results[0])
    return np.array([[r[s] for s in scans] for r in results]), scans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=int, default=16)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--val-cases", type=int, default=4)
    parser.add_argument("--base", type=Path, default=ROOT / "runs" / "recipes_fair_plain800")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or ROOT / "runs" / f"recipes_fair_labels{args.labelled}"
    missing = [seed for seed in args.seeds if not (args.base / f"plain-{seed}" / "result.json").is_file()]
    if missing:
        sys.exit(f"{args.base}: no finished plain run for seeds {missing}; run the 4-label benchmark first (see --help)")
    work.mkdir(parents=True, exist_ok=True)
    build_dataset(args.base, work, args.labelled, args.val_cases)
    report = RESULTS / f"recipes_fair_labels{args.labelled}.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "recipes_fair.py"), "--arms", "plain", "--steps", str(args.steps),
                    "--train-cases", str(args.labelled), "--val-cases", str(args.val_cases), "--seeds", *map(str, args.seeds),
                    "--work", str(work), "--out", str(report)], check=True)

    few, scans = dice_matrix(args.base, args.seeds)
    many, _ = dice_matrix(work, args.seeds, scans)
    interval = paired_bootstrap(many - few)
    result = {
        "benchmark": "labels_ceiling: the recipes benchmark's plain student with more labels, paired on the same held-out scans",
        "command": "python " + " ".join(sys.argv),
        "labelled": {"few": BASE_TRAIN_CASES, "many": args.labelled, "added_from_phantom_seed": EXTRA_SEED},
        "steps": args.steps, "seeds": args.seeds, "held_out_scans": scans,
        "dice": {"few": round(float(few.mean()), 4), "many": round(float(many.mean()), 4),
                 "few_per_seed": few.mean(axis=1).round(4).tolist(), "many_per_seed": many.mean(axis=1).round(4).tolist()},
        "many_minus_few": {"mean": round(interval["mean"], 4), "ci95": [round(interval["low"], 4), round(interval["high"], 4)],
                           "higher_on_seeds": int((many.mean(axis=1) > few.mean(axis=1)).sum())},
        "runs": {"few": str(args.base), "many": str(work), "report_of_many": str(report.relative_to(ROOT))},
    }
    (RESULTS / "labels_ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("dice", "many_minus_few")}, indent=2))


if __name__ == "__main__":
    main()
