"""`torchrun --nproc-per-node 2 -m unetr_app predict` (gloo, CPU) gives what one process gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

from .test_outputs import write_phantoms

REPO = Path(__file__).resolve().parents[2]


def predict(args: list[str], launcher: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same arithmetic in both runs (torchrun sets 1 too)
    with log.open("w") as handle:  # a file, not a pipe: nobody reads it until the run ends
        return subprocess.Popen([*launcher, "-m", "unetr_app", "predict", *args, "--quiet"], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def test_two_processes_match_one(tmp_path, tiny_checkpoint):
    names = write_phantoms(tmp_path / "in", 4, step=2)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    # the two predictions are independent: side by side
    single = predict([str(tmp_path / "in"), str(tmp_path / "single"), "-c", str(tiny_checkpoint)], [sys.executable], tmp_path / "single.log")
    pair = predict([str(tmp_path / "in"), str(tmp_path / "pair"), "-c", str(tiny_checkpoint)], torchrun, tmp_path / "pair.log")
    for process, log in ((single, "single.log"), (pair, "pair.log")):
        assert process.wait(timeout=600) == 0, (tmp_path / log).read_text(encoding="utf-8")[-3000:]

    for name in names:
        one, two = nib.load(tmp_path / "single" / f"{name}.nii.gz"), nib.load(tmp_path / "pair" / f"{name}.nii.gz")
        np.testing.assert_array_equal(np.asarray(one.dataobj), np.asarray(two.dataobj))
        np.testing.assert_array_equal(one.affine, two.affine)
    reports = [json.loads((tmp_path / run / "predict_report.json").read_text(encoding="utf-8")) for run in ("single", "pair")]
    assert reports[1]["processes"] == 2
    strip = lambda report: [(c["case"], c["status"], c["volumes"]) for c in report["cases"]]  # noqa: E731
    assert strip(reports[0]) == strip(reports[1])
    assert [c["case"] for c in reports[1]["cases"]] == names  # merged once, in case order
