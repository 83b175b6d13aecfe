"""The core install works without any extra: built as a wheel, installed into a fresh venv whose
site-packages holds this environment's packages *except* every extra's (napari, Qt, ONNX,
highdicom, MLflow, TensorBoard are not importable there, not merely unused), then `train` and
`predict` run from an unrelated folder, and each verb whose extra is missing says in one line
which `pip install` brings it."""

from __future__ import annotations

import email
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.packaging.test_wheel import REPO, _pip_env, _run, _user_env, build_wheel

pytestmark = pytest.mark.slow

# top-level entries of site-packages (modules and their dist-info) that the extras install
EXTRA_PREFIXES = ("napari", "pyqt", "qt", "superqt", "magicgui", "app_model", "vispy", "pytest_qt", "pytestqt",
                  "onnx", "highdicom", "mlflow", "tensorboard")
# this environment's own (editable) unetr: linked in, pip would take the wheel as already installed
OWN_PREFIXES = ("unetr", "__editable__")
EXTRA_MODULES = ("napari", "PyQt6", "qtpy", "onnx", "onnxruntime", "highdicom", "mlflow", "tensorboard")


@pytest.fixture(scope="module")
def core_installed(tmp_path_factory) -> tuple[Path, Path]:
    """(bin folder of a venv with the wheel and the core dependencies only, the wheel)."""
    root = tmp_path_factory.mktemp("core")
    wheel = build_wheel(root)
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).strip())
    core = root / "core-site-packages"  # this environment's packages less the extras', as links
    core.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(EXTRA_PREFIXES + OWN_PREFIXES) and not entry.name.endswith(".pth") and entry.name != "__pycache__":
            (core / entry.name).symlink_to(entry)
    (purelib / "core_dependencies.pth").write_text(f"{core}\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], root, _pip_env())
    return venv / "bin", wheel


def test_the_wheel_requires_no_extra_package(core_installed):
    _, wheel = core_installed
    with zipfile.ZipFile(wheel) as archive:
        meta = email.message_from_bytes(archive.read(next(n for n in archive.namelist() if n.endswith("METADATA"))))
    required = meta.get_all("Requires-Dist")
    core = [r for r in required if "extra ==" not in r]
    assert not [r for r in core if r.lower().startswith(("napari", "pyqt", "onnx", "highdicom", "mlflow", "tensorboard"))], core
    for extra in ("review", "export", "dicom", "track", "all"):
        assert extra in meta.get_all("Provides-Extra")


def test_core_install_trains_and_predicts_without_qt(core_installed, tmp_path):
    bin_dir, _ = core_installed
    work = tmp_path / "somewhere"
    work.mkdir()
    env = _user_env(bin_dir)
    for module in EXTRA_MODULES:  # really absent, not blocked
        result = subprocess.run([str(bin_dir / "python"), "-c", f"import {module}"], cwd=work, env=env, capture_output=True, text=True, encoding="utf-8")
        assert result.returncode != 0 and "No module named" in result.stderr, module
    _run([str(bin_dir / "python"), "-c", "import unetr_app.cli.app"], work, env)

    _run(["unetr", "data", "synth", "data/Task09_Spleen", "--cases", "4", "--test-cases", "1", "--seed", "3"], work, env)
    _run(["unetr", "train", "--task", "spleen", "--profile", str(REPO / "tests" / "configs" / "tiny.yaml"), "--out", "runs/tiny",
          "--steps", "1", "--device", "cpu"], work, env)
    assert (work / "runs" / "tiny" / "metrics.jsonl").is_file()
    _run(["unetr", "predict", "data/Task09_Spleen/imagesTs", "masks", "-c", "runs/tiny", "--device", "cpu", "-q"], work, env)
    assert list((work / "masks").glob("*.nii.gz"))
    _run(["unetr", "export", "runs/tiny", "exported", "--format", "monai-state-dict"], work, env)

    for command, extra in ((["review", "data/Task09_Spleen/imagesTs", "masks"], "review"),
                           (["export", "runs/tiny", "onnx_out", "--format", "onnx"], "export"),
                           (["train", "--task", "spleen", "--profile", str(REPO / "tests" / "configs" / "tiny.yaml"),
                             "--out", "runs/tracked", "--steps", "1", "--device", "cpu", "--tracker", "mlflow"], "track"),
                           (["predict", "data/Task09_Spleen/imagesTs", "segs", "-c", "runs/tiny", "--output-format", "dicom-seg"], "dicom")):
        result = subprocess.run(["unetr", *command], cwd=work, env=env, capture_output=True, text=True, encoding="utf-8")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and f"pip install 'unetr[{extra}]'" in lines[0], (command, result.stderr)
    # asked before any work: nothing was written for the refused commands
    assert not any((work / name).exists() for name in ("masks_corrections", "onnx_out", "runs/tracked", "segs"))
