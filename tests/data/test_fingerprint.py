"""The training data's intensity fingerprint: computed inside the body per channel, stored in the
checkpoint, and `predict` warns about a scan far outside it (an MR scan given to a CT model) while
the phantom's own test scans pass."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.predict.predict_helpers import tiny_unetr_checkpoint
from unetr_app.cli.app import app
from unetr_app.data.dataset import labelled_cases
from unetr_app.data.fingerprint import compute_fingerprint, intensity_warnings
from unetr_app.data.manifest import load_manifest
from unetr_app.data.phantom import save_nifti
from unetr_app.data.phantom_prostate import make_prostate_case
from unetr_app.io.checkpoint import load_checkpoint, save_checkpoint
from unetr_app.io.scans import find_cases, read_volume


@pytest.fixture(scope="module")
def ct_fingerprint(phantom_dir) -> dict:
    return compute_fingerprint(labelled_cases(phantom_dir, load_manifest("spleen")), {"image": "CT"})


def test_fingerprint_is_the_body_intensity_distribution(phantom_dir, ct_fingerprint):
    (stats,) = ct_fingerprint["channels"]
    assert ct_fingerprint["cases"] == 6 and stats["name"] == "image" and stats["modality"] == "CT"
    # the phantom body: fat near -100 HU, soft tissue 40, organs up to ~200, bone up to ~350 (+ noise)
    assert -400 < stats["percentile_00_5"] < -60  # partial-volume edges of the body and gas pockets
    assert 0 < stats["percentile_50_0"] < 120
    assert 150 < stats["percentile_99_5"] < 500
    assert stats["percentile_00_5"] < stats["mean"] < stats["percentile_99_5"] and stats["std"] > 0


def test_own_test_scans_pass_and_an_mr_scan_is_flagged(phantom_dir, ct_fingerprint):
    for case in find_cases(phantom_dir / "imagesTs"):
        assert intensity_warnings(read_volume(case), ct_fingerprint) == [], case.name
    mr = _mr_volume(phantom_dir.parent / "mr_like.nii.gz")
    (warning,) = intensity_warnings(mr, ct_fingerprint)
    assert warning.startswith("channel image:") and "outside the training range" in warning and "CT scan" in warning


def _mr_volume(path: Path):
    image, _, affine = make_prostate_case(5)
    save_nifti(image[..., 0], affine, path)  # a T2-weighted MR scan
    return read_volume(find_cases(path)[0])


def test_predict_warns_per_case_on_the_console_and_in_the_report(phantom_dir, ct_fingerprint, tmp_path):
    checkpoint = tiny_unetr_checkpoint(tmp_path / "tiny.pt")
    data = load_checkpoint(checkpoint)
    save_checkpoint(checkpoint, {**{k: v for k, v in data.items() if k not in ("format", "format_version")}, "fingerprint": ct_fingerprint})
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in find_cases(phantom_dir / "imagesTs"):
        (inputs / case.path.name).write_bytes(case.path.read_bytes())
    _mr_volume(inputs / "mr_scan.nii.gz")

    result = CliRunner().invoke(app, ["predict", str(inputs), str(tmp_path / "out"), "-c", str(checkpoint), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))
    warned = {c["case"]: c["warnings"] for c in report["cases"]}
    assert [name for name, lines in warned.items() if lines] == ["mr_scan"], warned
    assert "mr_scan" in result.output and "outside the training range" in " ".join(result.output.split())
