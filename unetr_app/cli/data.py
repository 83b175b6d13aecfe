"""`unetr data synth` and `unetr data check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from unetr_app.config import find_config, read_yaml

console = Console()


PHANTOMS = {  # task -> writer of its phantom dataset
    "spleen": "unetr_app.data.phantom:write_phantom_dataset",
    "prostate": "unetr_app.data.phantom_prostate:write_prostate_dataset",
}


def synth(
    out_dir: Annotated[Path, typer.Argument(help="dataset folder to write, e.g. data/Task09_Spleen")],
    task: Annotated[str, typer.Option("--task", help=f"which phantom: {', '.join(PHANTOMS)}")] = "spleen",
    cases: Annotated[int | None, typer.Option("--cases", min=2, help="labelled training cases [default: the real dataset's]")] = None,
    test_cases: Annotated[int | None, typer.Option("--test-cases", min=0, help="test cases [default: the real dataset's]")] = None,
    seed: Annotated[int, typer.Option("--seed", help="random seed; the same seed gives the same files")] = 0,
    grid: Annotated[str, typer.Option("--grid", help="acquisition grid: thick (the default every profile was tuned on) or fine (sub-millimetre in-plane)")] = "thick",
) -> None:
    """Write a phantom in the Medical Segmentation Decathlon layout: CT-like spleen, or 2-channel MRI-like prostate."""
    import importlib

    from unetr_app.data.manifest import load_manifest
    from unetr_app.errors import UsageError

    if task not in PHANTOMS:
        raise UsageError(f"--task {task!r}: no phantom for it; choose one of {', '.join(PHANTOMS)}")
    from unetr_app.data.phantom import GRIDS

    if grid not in GRIDS:  # both phantoms share the grid names
        raise UsageError(f"--grid {grid!r}: choose {' or '.join(GRIDS)}")
    counts = load_manifest(read_yaml(find_config("tasks", task)).get("manifest", task)).counts
    cases = counts.training if cases is None else cases
    test_cases = counts.test if test_cases is None else test_cases
    module, function = PHANTOMS[task].split(":")
    write = getattr(importlib.import_module(module), function)
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"writing {task} phantom cases", total=cases + test_cases)
        write(out_dir, cases, test_cases, seed, progress=lambda: bar.advance(job), grid=grid)
    console.print(f"wrote {cases} training and {test_cases} test {task} cases to {out_dir}")


def check(
    data_dir: Annotated[Path, typer.Argument(help="dataset folder (MSD layout)")],
    task: Annotated[str, typer.Option("--task", help="task whose manifest to check against")] = "spleen",
) -> None:
    """Check a dataset against its manifest; every problem is listed by file. Exit 1 if any."""
    from unetr_app.data.manifest import check_dataset, load_manifest

    manifest = load_manifest(read_yaml(find_config("tasks", task)).get("manifest", task))
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"checking {data_dir}", total=None)
        problems = check_dataset(data_dir, manifest, progress=lambda: bar.advance(job))
    for problem in problems:
        console.print(f"[red]problem[/red] {problem}", soft_wrap=True, highlight=False)
    if problems:
        console.print(f"{len(problems)} problem(s) in {data_dir} (checked against data_manifests/{manifest.task}.yaml)")
        raise typer.Exit(1)
    console.print(f"{data_dir}: no problems; matches {manifest.name} ({manifest.counts.training} training, {manifest.counts.test} test)")
