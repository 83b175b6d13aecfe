"""How long `make demo` takes from a fresh clone, and the Dice it reaches: the README's first command,
timed in its three parts (setup, the phantom, the training command) from a `git clone` of this
repository's HEAD into a temporary folder, which is removed afterwards.

    python benchmarks/demo_time.py          # about 10 minutes on the 2-core CPU machine; run it alone

pip reads the machine's package cache, as a second install on any machine does. Writes
benchmarks/results/demo_time.json: seconds per part, the run's best validation Dice and its steps, the
commit, and the load average before and after (another process on the machine makes every number larger).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# make's own targets, in the order `make demo` runs them: the core install, the phantom, the training command
PARTS = {"setup": ".venv/.core", "phantom": "data/Task09_Spleen/dataset.json", "training_command": "demo"}


def timed_make(target: str, clone: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(["make", target], cwd=clone, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"make {target} failed in {clone}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_time.json")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    clone = Path(tempfile.mkdtemp(prefix="demo_time_"))
    load_before = os.getloadavg()
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        seconds = {}
        for part, target in PARTS.items():
            print(f"make {target} ...", flush=True)
            seconds[part] = round(timed_make(target, clone), 1)
            print(f"  {seconds[part]} s", flush=True)
        summary = json.loads((clone / "runs" / "demo" / "summary.json").read_text(encoding="utf-8"))
    finally:
        if args.keep:
            print(f"clone kept: {clone}")
        else:
            shutil.rmtree(clone, ignore_errors=True)
    total = sum(seconds.values())
    result = {
        "benchmark": "demo_time",
        "command": "python benchmarks/demo_time.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "seconds": {**seconds, "total": round(total, 1)},
        "minutes_total": round(total / 60, 2),
        "under_10_minutes": total < 600,
        "best_val_dice": summary["best_val_dice"],
        "best_step": summary["best_step"],
        "steps": summary["steps"],
        "training_loop_seconds": summary["seconds"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"make demo: {total / 60:.1f} min, best validation Dice {summary['best_val_dice']:.4f}; {args.out}")


if __name__ == "__main__":
    main()
