"""`unetr data synth` and `unetr data check`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from unetr_app.config import find_config, read_yaml

console = Console()


def synth(
    out_dir: Annotated[Path, typer.Argument(help="dataset folder to write, e.g. data/Task09_Spleen")],
    cases: Annotated[int, typer.Option("--cases", min=2, help="labelled training cases")] = 41,
    test_cases: Annotated[int, typer.Option("--test-cases", min=0, help="test cases")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="random seed; the same seed gives the same files")] = 0,
) -> None:
    """Write a CT-like spleen phantom in the Medical Segmentation Decathlon layout."""
    from unetr_app.data.phantom import write_phantom_dataset

    with Progress(console=console, transient=True) as bar:
        job = bar.add_task("writing phantom cases", total=cases + test_cases)
        write_phantom_dataset(out_dir, cases, test_cases, seed, progress=lambda: bar.advance(job))
    console.print(f"wrote {cases} training and {test_cases} test cases to {out_dir}")


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
