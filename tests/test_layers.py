"""Layers import downward only: a package may import its own layer or lower ones, never higher.

Function-level (lazy) imports count too: they run upward just the same when called.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# lowest first; modules of one layer may import each other, except the pairs in SEPARATE
LAYERS = {
    "unetr_app.errors": 0, "unetr_app.registry": 0, "unetr_app.extras": 0, "unetr_app.config": 0, "unetr_app.device": 0, "unetr_app.distributed": 0, "unetr_app.io": 0, "unetr_app.models": 0,
    "unetr_app.data": 1, "unetr_app.evaluation": 1, "unetr_app.planning": 1, "unetr_app.quality": 1,
    "unetr_app.training": 2, "unetr_app.inference": 2, "unetr_app.export": 2, "unetr_app.tracking": 2,
    "unetr_app.review": 4,
    "unetr_app.pipelines": 5,
    "unetr_app.cli": 6, "unetr_app.__main__": 6,
}

# training and inference stand side by side: what both need (checkpoint format, scan I/O) lives below them
SEPARATE = {("unetr_app.training", "unetr_app.inference"), ("unetr_app.inference", "unetr_app.training")}


def layer_of(module: str) -> tuple[str, int] | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, LAYERS[prefix]
    return None


def imports_of(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


SOURCES = {module_name(p): p.read_text(encoding="utf-8") for p in sorted((ROOT / "unetr_app").rglob("*.py"))}


def upward_imports(sources: dict[str, str]) -> list[str]:
    problems = []
    for module, source in sources.items():
        own = layer_of(module)
        if own is None:
            continue
        for line, imported in imports_of(source):
            target = layer_of(imported)
            if target is not None and (target[1] > own[1] or (own[0], target[0]) in SEPARATE):
                problems.append(f"{module}:{line} ({own[0]}) imports {imported} ({target[0]}, a higher or separate layer)")
    return problems


def test_every_module_has_a_layer():
    unplaced = [m for m in SOURCES if layer_of(m) is None and m != "unetr_app"]
    assert unplaced == [], f"place these modules in LAYERS: {unplaced}"


def test_no_module_imports_a_higher_layer():
    assert upward_imports(SOURCES) == []


@pytest.mark.parametrize(
    ("module", "statement"),
    [("unetr_app.training.bad", "from unetr_app.inference.predictor import Predictor"),
     ("unetr_app.inference.bad", "from unetr_app.training.loop import Trainer"),
     ("unetr_app.io.bad", "import unetr_app.data.dataset")],
)
def test_the_check_catches_an_upward_import_even_inside_a_function(module, statement):
    assert len(upward_imports({module: f"def f():\n    {statement}\n"})) == 1
    assert upward_imports({"unetr_app.pipelines.fine": f"def f():\n    {statement}\n"}) == []


def test_the_registry_is_the_bottom_floor():
    # every layer registers parts in it, so it may import nothing of ours but the error classes
    ours = [name for _, name in imports_of(SOURCES["unetr_app.registry"]) if name.startswith("unetr_app")]
    assert ours == ["unetr_app.errors"]


def test_the_run_folder_is_named_in_io_only():
    # io/run_dir.py spells the run folder's files; training, inference and pipelines ask it
    from unetr_app.io import run_dir

    assert layer_of("unetr_app.io.run_dir") == ("unetr_app.io", 0)
    names = [value for key, value in vars(run_dir).items() if key.endswith(("_FILE", "_CHECKPOINT"))]
    assert {"summary.json", "split.json", "config.yaml", "last.pt", "init.json", "fingerprint.json", "compare_scores.json"} <= set(names)
    spelled = {m: n for m, src in SOURCES.items() for n in names if f'"{n}"' in src and m != "unetr_app.io.run_dir"}
    assert spelled == {}
