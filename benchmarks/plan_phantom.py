"""A dataset unlike the spleen, trained with no YAML and no tuning: `unetr plan` + `unetr train
--profile auto` on the MRI-like prostate phantom (two channels on an arbitrary scale, 0.8 x 0.8 x 4 mm
voxels on the default `fine` grid, two foreground labels), scored per label on held-out test scans.

    python benchmarks/plan_phantom.py                 # the plan's own budget (8 training minutes), run alone
    python benchmarks/plan_phantom.py --minutes 3 --grid thick

Writes benchmarks/results/plan_phantom.json. The phantom's seed is one no profile was tuned on.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.data.phantom_prostate import write_prostate_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=None, help="training minutes (default: the plan's budget)")
    parser.add_argument("--grid", default="fine", choices=("fine", "thick"), help="fine: 0.8 x 0.8 x 4 mm; thick: 2 x 2 x 3-4 mm")
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--test-cases", type=int, default=8)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_phantom.json")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "unetr_app"]
    with tempfile.TemporaryDirectory(prefix="plan-phantom-") as tmp:
        data = write_prostate_dataset(Path(tmp) / "Prostate", args.cases, args.test_cases, seed=args.seed, grid=args.grid)
        (data / "dataset.json").write_text(json.dumps({**json.loads((data / "dataset.json").read_text()), "name": "Gland"}))
        started = time.perf_counter()
        subprocess.run([*cli, "plan", str(data), "--device", "cpu"], check=True, env=env, stdout=subprocess.DEVNULL)
        plan_seconds = time.perf_counter() - started
        run = Path(tmp) / "run"
        started = time.perf_counter()
        budget = ["--minutes", str(args.minutes)] if args.minutes else []
        subprocess.run([*cli, "train", "--data-dir", str(data), "--profile", "auto", *budget, "--out", str(run), "--device", "cpu"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        train_seconds = time.perf_counter() - started
        subprocess.run([*cli, "predict", str(data / "imagesTs"), str(run / "test"), "-c", str(run), "-q", "--no-postprocess"], check=True, env=env)
        subprocess.run([*cli, "evaluate", str(run / "test"), str(data / "labelsTs")], check=True, env=env, stdout=subprocess.DEVNULL)
        scores = json.loads((run / "test" / "evaluation_summary.json").read_text())
        plans = yaml.safe_load((data / "plans.yaml").read_text())
        summary = json.loads((run / "summary.json").read_text())
    grid = {"fine": "0.8x0.8x4 mm", "thick": "2x2x3-4 mm"}[args.grid]
    report = {"benchmark": "plan_phantom", "command": " ".join(sys.argv), "phantom": f"prostate (MRI-like, 2 channels, {grid})",
              "seed": args.seed, "train_cases": args.cases, "test_cases": args.test_cases, "minutes": args.minutes or plans["targets"]["cpu"]["profile"]["training"]["budget"].get("minutes"),
              "plan_seconds": round(plan_seconds, 1), "train_wall_seconds": round(train_seconds, 1),
              "plan": {k: plans["targets"]["cpu"][k] for k in ("spacing", "normalisation", "traded", "warnings")} | {"unetr": plans["targets"]["cpu"]["unetr"]},
              "test_dice": {k: v.get("dice") for k, v in scores["mean"].items()}, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["test_dice"]), flush=True)


if __name__ == "__main__":
    main()
