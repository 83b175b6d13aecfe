"""Planned against hand-tuned on the same work: `unetr train --profile auto` (the CPU plan made from
the data) against `--profile cpu-demo` (tuned by hand on the spleen phantom) at cpu-demo's step
budget, on spleen phantoms of seeds no profile was tuned on, scored on their test scans (imagesTs)
on the original grids.

    python benchmarks/plan_vs_profile.py                  # 3 phantoms x 2 arms, two runs at a time: ~45 minutes
    python benchmarks/plan_vs_profile.py --quick          # small phantoms, a few steps: checks the path

Both arms train 825 steps (cpu-demo's budget) on the same 80% split of the same phantom. The report
gives each arm's mean test Dice per phantom, the paired per-case difference (auto minus cpu-demo)
with a bootstrap 95% interval over phantoms and their test cases, and each plan's spacing and window. Finished runs
are read back from the JSON, so a killed run resumes. Step budgets make the result independent of
what else the machine runs, so two runs share the 2 cores (one thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from time_to_dice import train_and_score  # noqa: E402

from unetr_app.data.phantom import write_phantom_dataset  # noqa: E402
from unetr_app.evaluation.comparison import paired_bootstrap  # noqa: E402

ARMS = ("auto", "cpu-demo")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[31, 32, 33], help="phantom seeds (profiles were tuned on 11)")
    parser.add_argument("--steps", type=int, default=825, help="the step budget of both arms (cpu-demo's)")
    parser.add_argument("--cases", type=int, default=41)
    parser.add_argument("--test-cases", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each on cores // jobs threads")
    parser.add_argument("--quick", action="store_true", help="small phantoms and 20 steps: checks the path in minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_vs_profile.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.cases, args.test_cases = args.seeds[:1], 20, 6, 2
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    runs = report.get("runs", {})
    report.update({"benchmark": "plan_vs_profile", "command": " ".join(sys.argv), "steps": args.steps, "train_cases": args.cases,
                   "test_cases": args.test_cases, "tuned_on": "cpu-demo: phantom seed 11", "runs": runs})
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with tempfile.TemporaryDirectory(prefix="plan-vs-profile-") as tmp:
        jobs = []
        for seed in args.seeds:
            data = None
            for arm in (a for a in ARMS if f"{seed}/{a}" not in runs):
                data = data or write_phantom_dataset(Path(tmp) / f"seed{seed}" / "Task09_Spleen", args.cases, args.test_cases, seed=seed)
                jobs.append((f"{seed}/{arm}", data, Path(tmp) / f"seed{seed}" / arm, arm))

        def run(job):
            key, data, folder, arm = job
            result = train_and_score(data, folder, arm, ["--steps", str(args.steps)], threads=threads)
            runs[key] = result
            print(f"{key}: test Dice {result['dice']:.3f} ({result['wall_seconds']:.0f} s)", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run, jobs))
    report["comparison"] = compare(runs, args.seeds)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["comparison"], indent=1))


def compare(runs: dict, seeds: list[int]) -> dict:
    """Per phantom, each arm's mean test Dice; the paired difference over a [phantom, test case] matrix
    and its bootstrap interval, which resamples phantoms as well as cases (one run per arm and phantom:
    the phantoms carry the run-to-run spread)."""
    per_phantom = {str(s): {a: runs[f"{s}/{a}"]["dice"] for a in ARMS} for s in seeds if all(f"{s}/{a}" in runs for a in ARMS)}
    differences = np.stack([np.subtract(runs[f"{s}/auto"]["per_case"], runs[f"{s}/cpu-demo"]["per_case"]) for s in map(int, per_phantom)])
    return {"per_phantom": per_phantom,
            "mean": {a: float(np.mean([p[a] for p in per_phantom.values()])) for a in ARMS},
            "auto_minus_cpu_demo": paired_bootstrap(differences)}


if __name__ == "__main__":
    main()
