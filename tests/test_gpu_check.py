"""benchmarks/gpu_check.py --dry-run: every measurement's code path, on the CPU at tiny sizes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_measures_everything_and_names_the_device(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu_check.main(["--dry-run", "--out", str(tmp_path / "check.json")])

    result = json.loads((tmp_path / "check.json").read_text(encoding="utf-8"))
    assert result["dry_run"] and result["device"].startswith("cpu")
    training = result["training"]
    assert training["ours_steps_per_s"] > 0 and training["tutorial_steps_per_s"] > 0 and training["model"] == "unetr"
    flops = result["flop_utilisation"]
    assert flops["flops_per_step"] > 0 and flops["dtype"] == "float32" and flops["model_flop_utilisation"] is None  # no GPU peak
    (run,) = result["predict"]["runs"]
    assert run["stitch_device"] == "cpu" and run["seconds"] > 0, run
    assert result["tests"]["files"] == ["tests/test_device.py"] and result["tests"]["returncode"] == 0
    assert result["tests"]["skipped"] >= 1, "the CUDA test skips without a GPU"


def test_peak_table_prefers_the_specific_name():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert gpu_check.peak_for("NVIDIA H100 PCIe") == 756.0 and gpu_check.peak_for("NVIDIA H200") == 989.0
    assert gpu_check.peak_for("NVIDIA A100-SXM4-80GB") == 312.0 and gpu_check.peak_for("Tesla T4") is None
