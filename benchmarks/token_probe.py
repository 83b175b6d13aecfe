"""What did pretraining teach the encoder? The linear token probe on the recipes benchmark's runs.

    python benchmarks/token_probe.py [--work runs/recipes_fair] [--runs masked_pretrain plain-0 ...]

Reads the runs `benchmarks/recipes_fair.py` left in `--work` (run it first) and, for each, probes
its frozen encoder (`unetr probe`'s `token_probe`): a ridge regression from each last-layer patch
token to its patch's spleen occupancy, fitted on the benchmark's 4 labelled training cases and
scored on its 16 held-out scans. Beside every run, the same probe on the same architecture with
random weights (the run's seed) and on the patch voxels themselves.

    masked_pretrain, dino_pretrain*   the pretraining runs (their teacher's / network's encoder)
    plain-S, masked-S, masked_slow_encoder-S   supervised runs: what an encoder trained on labels holds

Writes benchmarks/results/token_probe.json: per run, held-out R^2 and AUROC (patches mostly
inside the spleen) for each feature set, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.pipelines.probe import token_probe  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_RUNS = ["masked_pretrain", "dino_pretrain_temp004", "dino_pretrain_temp002", "dino_pretrain_koleo05_bottleneck",
                *(f"{arm}-{seed}" for arm in ("plain", "masked", "masked_slow_encoder") for seed in range(5))]


def held_out_cases(data: Path) -> list[dict]:
    return [{"case": p.name.removesuffix(".nii.gz"), "image": str(p), "label": str(data / "labelsTs" / p.name)}
            for p in sorted((data / "imagesTs").glob("*.nii.gz"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/recipes_fair"))
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "token_probe.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference = args.work / "plain-0" / "split.json"
    if not reference.is_file():
        sys.exit(f"{reference} is missing: run benchmarks/recipes_fair.py --arms plain masked first")
    fit = json.loads(reference.read_text())["train"]
    test = held_out_cases(args.work / "Task09_Spleen")
    started, probes = time.perf_counter(), {}
    for run in args.runs:
        folder = args.work / run
        if not (folder / "checkpoints").is_dir():
            print(f"{run}: not in {args.work}, skipped", flush=True)
            continue
        seed = int(run.rsplit("-", 1)[1]) if run.rsplit("-", 1)[-1].isdigit() else 0
        begun = time.perf_counter()
        result = token_probe(folder, fit, test, seed=seed)
        result["seconds"] = round(time.perf_counter() - begun, 1)
        probes[run] = result
        line = "  ".join(f"{k} R2 {v['r2']:.3f} AUROC {v['auroc']:.3f}" for k, v in result["features"].items())
        print(f"{run:>22}: {line}", flush=True)
    out = {
        "benchmark": "token_probe",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "design": {"fit_cases": [Path(c["image"]).name for c in fit], "test_cases": [c["case"] for c in test],
                   "target": "spleen occupancy per 8^3 patch (R^2; AUROC of patches at least half inside)",
                   "features": "last-layer patch tokens in 48^3 windows tiling each preprocessed scan; the random "
                               "encoder has the run's architecture and the run's seed"},
        "device": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": probes,
    }
    args.out.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
