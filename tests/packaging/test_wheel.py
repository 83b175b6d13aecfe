"""The wheel works the way users install it: built, installed into a fresh environment, and run
from an unrelated folder (no checkout on the path): `unetr --version`, `data synth`, `data check`
and a few training steps. The fresh environment borrows this one's dependencies through a .pth
file instead of downloading torch again."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from unetr_app.io.checkpoint import checkpoint_files, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "unetr_app", "configs", "data_manifests")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the built unetr wheel; returns its bin/ folder."""
    root = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(root)
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root)
    python = venv / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).strip())
    # dependencies (torch, monai, ...) from this environment; .pth files there are not run, so
    # this environment's own (editable) unetr stays invisible
    borrowed = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "borrowed_dependencies.pth").write_text("\n".join(dict.fromkeys(borrowed)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)], root, _pip_env())
    return venv / "bin"


def build_wheel(root: Path) -> Path:
    """The unetr wheel, built under `root` from a copy of the sources."""
    src = root / "src"
    src.mkdir()
    for name in SOURCES:  # build from a copy: nothing of the checkout's build/ or _data/ leaks in
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "_data")} if (REPO / name).is_dir() else {}))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(root / "dist"), str(src)], root)
    return next((root / "dist").glob("unetr-*.whl"))


def _run(command: list[str], cwd: Path, env: dict | None = None, expect: int = 0) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert result.returncode == expect, f"{' '.join(command)} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _pip_env() -> dict:
    """This environment without PYTHONPATH: a checkout on it holds an egg-info, and pip would take
    the wheel as installed already."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _user_env(bin_dir: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "UNETR_CONFIG_DIR", "UNETR_DATA", "VIRTUAL_ENV")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", LANG="C.UTF-8", PYTHONIOENCODING="utf-8", **extra)
    return env


def test_installed_wheel_runs_every_step_from_any_folder(installed, tmp_path):
    work = tmp_path / "somewhere"
    work.mkdir()
    env = _user_env(installed)
    where = _run([str(installed / "python"), "-c", "import unetr_app.pipelines as p; print(p.__file__)"], work, env)
    assert str(installed.parent) in where and str(REPO) not in where, where
    # one top-level package: nothing named `pipelines` (or anything else) to shadow another project's
    top = _run([str(installed / "python"), "-c", "import importlib.metadata as m; print(m.distribution('unetr').read_text('top_level.txt'))"], work, env)
    assert top.split() == ["unetr_app"], top
    assert _run(["unetr", "--version"], work, env).strip() == "unetr 0.1.0"

    _run(["unetr", "data", "synth", "data/Task09_Spleen", "--cases", "4", "--test-cases", "1", "--seed", "3"], work, env)
    # the shipped manifest expects the real dataset's 41 / 20 cases: checked, and reported
    out = _run(["unetr", "data", "check", "data/Task09_Spleen"], work, env, expect=1)
    assert "4 images, the manifest expects 41" in " ".join(out.split())
    # a user's own manifest in $UNETR_CONFIG_DIR overrides the shipped one
    user = tmp_path / "my_configs" / "data_manifests"
    user.mkdir(parents=True)
    shipped = (REPO / "data_manifests" / "spleen.yaml").read_text(encoding="utf-8")
    (user / "spleen.yaml").write_text(shipped.replace("training: 41", "training: 4").replace("test: 20", "test: 1"))
    out = _run(["unetr", "data", "check", "data/Task09_Spleen"], work, _user_env(installed, UNETR_CONFIG_DIR=str(user.parent)))
    assert "no problems" in out

    profile = tmp_path / "tiny.yaml"  # a user's own profile, by path
    shutil.copy(REPO / "tests" / "configs" / "tiny.yaml", profile)
    _run(["unetr", "train", "--task", "spleen", "--profile", str(profile), "--out", "runs/tiny",
          "--steps", "1", "--device", "cpu"], work, env)
    best, _ = checkpoint_files(work / "runs" / "tiny" / "checkpoints" / "best")
    assert load_checkpoint(best)["model"]["name"] == "unetr"
