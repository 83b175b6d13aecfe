"""Does training under bfloat16 autocast on a CPU cost Dice, and what does it save? cpu-demo trained in
float32 (the default) and in bfloat16 (`training.cpu_amp=true`, on a CPU with bfloat16 instructions),
paired by seed (a seed fixes the split, the initialisation and the crops), scored on the phantom's 20
test scans on their original grids (`unetr predict` in float32, no post-processing, + `unetr evaluate`).

    python benchmarks/cpu_precision.py                 # seeds 0-2, 6 runs of 825 steps: about 50 min alone
    python benchmarks/cpu_precision.py --seeds 0       # one pair

The data is `data/Task09_Spleen` (`unetr data synth`'s default phantom, written when missing); runs live
in `--work` (default runs/cpu_precision) and a finished run is read back, so a killed benchmark resumes.
Training seconds come from each run's summary.json: they compare only where the runs had the machine
alone. Writes benchmarks/results/cpu_precision.json with the paired bootstrap 95% interval of
bfloat16 - float32 over seeds and test scans.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_to_dice import train_and_score  # noqa: E402
from unetr_app.data.phantom import write_phantom_dataset  # noqa: E402
from unetr_app.device import cpu_computes_bfloat16  # noqa: E402
from unetr_app.evaluation.comparison import paired_bootstrap  # noqa: E402

ARMS = {"float32": "training.cpu_amp=false", "bfloat16": "training.cpu_amp=true"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "Task09_Spleen")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "cpu_precision")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_precision.json")
    parser.add_argument("--note", default="", help="recorded in the JSON: how the runs were made (e.g. which shared the CPU)")
    args = parser.parse_args()
    if not cpu_computes_bfloat16():
        sys.exit("this CPU has no bfloat16 instructions: training.cpu_amp runs float32 here, and the two arms would be one")
    if not (args.data / "dataset.json").is_file():
        write_phantom_dataset(args.data)

    runs = {}
    for seed in args.seeds:
        for arm, override in ARMS.items():
            folder = args.work / f"seed{seed}_{arm}"
            print(f"seed {seed} {arm}", flush=True)
            result = train_and_score(args.data, folder, args.profile, [], [override, f"training.seed={seed}"], task="spleen")
            summary = result["summary"]
            runs[f"seed{seed}_{arm}"] = {"seed": seed, "arm": arm, "test_dice": result["dice"], "per_case": result["per_case"],
                                         "best_val_dice": summary["best_val_dice"], "steps": summary["steps"],
                                         "train_seconds": summary["seconds"]}

    diffs = np.array([np.subtract(runs[f"seed{s}_bfloat16"]["per_case"], runs[f"seed{s}_float32"]["per_case"]) for s in args.seeds])
    by_arm = {arm: [r for r in runs.values() if r["arm"] == arm] for arm in ARMS}
    result = {
        "benchmark": "cpu_precision",
        "command": "python benchmarks/cpu_precision.py " + " ".join(sys.argv[1:]),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, bfloat16 instructions)",
        "torch": torch.__version__,
        "profile": args.profile,
        "data": "unetr data synth's default phantom: 33 training and 8 validation cases, 20 test scans",
        "scored": "mean spleen Dice on the 20 test scans of best.pt (what `unetr predict -c RUN` picks: the best validation Dice), predicted in float32, no post-processing",
        "note": args.note,
        "arms": {arm: {"test_dice_mean": statistics.mean(r["test_dice"] for r in rows),
                       "best_val_dice_mean": statistics.mean(r["best_val_dice"] for r in rows),
                       "seconds_per_step_median": statistics.median(r["train_seconds"] / r["steps"] for r in rows)} for arm, rows in by_arm.items()},
        "bfloat16_minus_float32_test_dice": paired_bootstrap(diffs),
        "bfloat16_minus_float32_val_dice_per_seed": [runs[f"seed{s}_bfloat16"]["best_val_dice"] - runs[f"seed{s}_float32"]["best_val_dice"] for s in args.seeds],
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("arms", "bfloat16_minus_float32_test_dice")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
