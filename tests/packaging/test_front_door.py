"""The README's two commands: `make demo` installs only what training needs (torch and the core
package, no extra, no apt packages), `make test` installs everything, and CI runs exactly `make test`.
Read from `make --dry-run --always-make`, which prints every command a fresh clone would run."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.packaging.test_wheel import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned_commands(target: str) -> list[str]:
    out = subprocess.run(["make", "--dry-run", "--always-make", "-C", str(REPO), target], capture_output=True, text=True, check=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip() and not line.startswith("make")]


def pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if "pip install" in c]


def test_demo_installs_the_core_package_and_trains():
    commands = planned_commands("demo")
    installs = pip_installs(commands)
    assert installs and all(c.endswith("-e .") for c in installs), installs  # no [extras]: no Qt, no MLflow
    assert not any("install_viewer_deps" in c for c in commands)
    assert any("unetr data synth" in c for c in commands)
    assert commands[-1].endswith("unetr train --task spleen --profile cpu-demo --out runs/demo --resume")


def test_test_installs_every_extra_then_runs_the_suite():
    commands = planned_commands("test")
    installs = pip_installs(commands)
    assert any(c.endswith("-e '.[all,dev]'") for c in installs), installs
    assert any("install_viewer_deps" in c for c in commands)
    assert commands[-1].endswith("-m pytest -q")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == ["make test"]
    assert "make test" in (REPO / "README.md").read_text(encoding="utf-8")
