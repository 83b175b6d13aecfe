"""`unetr plan` on many large synthetic cases: peak RSS and time of the streaming fingerprint.

    nice -n 10 python benchmarks/plan_scale.py --cases 500        # the issue's 500 x 512x512x100
    nice -n 10 python benchmarks/plan_scale.py --cases 40         # what fits a busy shared machine

Case names carry no _NNNN suffix (nnU-Net reads that as a channel number). Cases are mostly constant (a body block and a label block), so gzip keeps them small and cheap to
write; reading still decodes every voxel. The plan runs in a child process whose peak RSS
(ru_maxrss) is measured; writing the data is not timed. Writes benchmarks/results/plan_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_cases(root: Path, cases: int, shape) -> None:
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    image = np.full(shape, -1000, np.int16)
    image[100:400, 120:380, 10:90] = 40
    label = np.zeros(shape, np.uint8)
    label[200:260, 200:260, 40:60] = 1
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    for i in range(cases):
        nib.save(nib.Nifti1Image(image, affine), root / "imagesTr" / f"case{i:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / f"case{i:04d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "Scale", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 100])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plan_scale.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plan-scale-") as tmp:
        data = Path(tmp) / "Scale"
        started = time.perf_counter()
        write_cases(data, args.cases, tuple(args.shape))
        written = time.perf_counter() - started
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        runs = []
        for label in ("first", "cached"):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "unetr_app", "plan", str(data), "--device", "cpu", "--overwrite"], check=True, env=env,
                           stdout=subprocess.DEVNULL)
            runs.append({"run": label, "seconds": round(time.perf_counter() - started, 1)})
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        case_mb = np.prod(args.shape) * (4 + 4 + 8) / 1024**2  # float32 image + float32 label + int64 label values
    report = {"benchmark": "plan_scale", "command": " ".join(sys.argv), "cases": args.cases, "shape": args.shape,
              "write_seconds": round(written, 1), "runs": runs, "peak_rss_mb": round(peak_mb), "one_case_arrays_mb": round(case_mb),
              "note": "shared 2-core machine, other engineers' jobs running: seconds are an upper bound, not a fair timing; "
                      "peak RSS is the largest child (the first plan run)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
