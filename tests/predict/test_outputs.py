"""What a run leaves behind: probabilities, previews, skipping finished cases, restart after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from .predict_helpers import axis_affine, save_nifti
from unetr_app.cli.app import app
from unetr_app.data.phantom import make_phantom_case
from unetr_app.io.atomic import TMP_MARK

REPO = Path(__file__).resolve().parents[2]


def write_phantoms(folder: Path, count: int, step: int = 1) -> list[str]:
    """Phantom CT scans (every `step`-th voxel in plane, for speed) named the nnU-Net way."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for seed in range(count):
        case = make_phantom_case(seed)
        affine = case.affine @ np.diag([step, step, 1, 1])
        save_nifti(case.image[::step, ::step], affine, folder / f"case{seed}_0000.nii.gz")
        names.append(f"case{seed}")
    return names


def test_probabilities_preview_and_skip(tmp_path, tiny_checkpoint):
    write_phantoms(tmp_path / "in", 1)
    args = ["predict", str(tmp_path / "in" / "case0_0000.nii.gz"), str(tmp_path / "out"), "-c", str(tiny_checkpoint), "--quiet"]
    first = CliRunner().invoke(app, [*args, "--save-probabilities", "--preview"])
    assert first.exit_code == 0, first.output
    mask = np.asarray(nib.load(tmp_path / "out" / "case0.nii.gz").dataobj)
    saved = np.load(tmp_path / "out" / "case0_probabilities.npz")
    probabilities = saved["probabilities"]
    assert probabilities.dtype == np.float16 and probabilities.shape == (2, *mask.shape)
    np.testing.assert_allclose(probabilities.astype(np.float32).sum(axis=0), 1.0, atol=2e-3)
    # float16 rounding may flip voxels sitting at p = 0.5 exactly; nothing else
    assert np.mean(np.argmax(probabilities, axis=0) == mask) > 0.999
    assert list(saved["class_names"]) == ["background", "spleen"]
    assert (tmp_path / "out" / "case0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    mtime = os.stat(tmp_path / "out" / "case0.nii.gz").st_mtime_ns
    again = CliRunner().invoke(app, args)
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))
    assert again.exit_code == 0 and report["cases"][0]["status"] == "skipped"
    assert os.stat(tmp_path / "out" / "case0.nii.gz").st_mtime_ns == mtime
    first_volumes = report["cases"][0]["volumes"]
    assert first_volumes["spleen"]["voxels"] == int((mask == 1).sum())
    redo = CliRunner().invoke(app, [*args, "--overwrite"])
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))
    assert redo.exit_code == 0 and report["cases"][0]["status"] == "ok"
    assert report["cases"][0]["volumes"] == first_volumes


def test_killed_run_restarts_and_finishes_without_temporaries(tmp_path, tiny_checkpoint):
    names = write_phantoms(tmp_path / "in", 6)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".case5{TMP_MARK}99999.nii.gz"  # what a kill in the middle of a write leaves
    stale.write_bytes(b"half a file")
    command = [sys.executable, "-m", "unetr_app", "predict", str(tmp_path / "in"), str(out), "-c", str(tiny_checkpoint), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "case0.nii.gz").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {p.name for p in out.glob("case*.nii.gz")}
    assert "case0.nii.gz" in done_before and len(done_before) < len(names), done_before

    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert not [p for p in out.iterdir() if TMP_MARK in p.name]
    report = json.loads((out / "predict_report.json").read_text(encoding="utf-8"))
    statuses = {c["case"]: c["status"] for c in report["cases"]}
    assert set(statuses) == set(names)
    assert all(statuses[p[: -len(".nii.gz")]] == "skipped" for p in done_before)
    assert all(s == "ok" for n, s in statuses.items() if f"{n}.nii.gz" not in done_before)
    for name in names:  # every mask complete and on its input's grid
        image = nib.load(tmp_path / "in" / f"{name}_0000.nii.gz")
        mask = nib.load(out / f"{name}.nii.gz")
        assert mask.shape == image.shape and np.allclose(mask.affine, image.affine, atol=1e-5)
        np.asarray(mask.dataobj)  # decompresses to the end: not truncated
