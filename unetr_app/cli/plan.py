"""`unetr plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from unetr_app.cli.options import OverwriteOption

console = Console()


def plan(
    data_dir: Annotated[Path, typer.Argument(help="dataset folder (MSD or nnU-Net v2 layout)")],
    out: Annotated[Path | None, typer.Option("--out", help="plans file [default: DATA_DIR/plans.yaml]")] = None,
    device: Annotated[str | None, typer.Option("--device", help="plan for cpu or cuda alone [default: both; train uses this machine's]")] = None,
    memory: Annotated[float | None, typer.Option("--memory", min=0.1, help="GB the target device has [default: this machine's]")] = None,
    exclude_outliers: Annotated[bool, typer.Option("--exclude-outliers", help="leave cases with outlying spacing out of the plan")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Fingerprint a dataset and plan spacing, normalisation, window, batch and network from it (nnU-Net's rules)."""
    from unetr_app.pipelines.plan import plan_dataset

    with Progress(console=console, transient=True) as bar:
        job = bar.add_task(f"fingerprinting {data_dir}", total=None)
        plans, path = plan_dataset(data_dir, out, device, memory, exclude_outliers, overwrite,
                                   progress=lambda done, total: bar.update(job, completed=done, total=total))
    fingerprint = plans["fingerprint"]
    for line in fingerprint["problems"]:
        console.print(f"[yellow]problem[/yellow] {line}", soft_wrap=True, highlight=False)
    console.print(_fingerprint_table(plans))
    console.print(_plan_table(plans))
    for target in plans["targets"].values():
        for line in target["traded"]:
            console.print(f"{target['device']} traded: {line}", soft_wrap=True, highlight=False)
        for line in target["warnings"]:
            console.print(f"[yellow]warning[/yellow] {line}", soft_wrap=True, highlight=False)
    console.print(f"wrote {path} ({plans['computed_cases']} of {fingerprint['cases']} cases read, the rest from the cache); "
                  f"train with: unetr train --data-dir {data_dir} --profile auto")


def _fingerprint_table(plans: dict) -> Table:
    fp, task = plans["fingerprint"], plans["task"]
    table = Table(title=f"fingerprint of {plans['dataset']} ({fp['cases']} cases)")
    table.add_column("what")
    table.add_column("value")
    table.add_row("labels", ", ".join(f"{v} {k}" for k, v in task["labels"].items()))
    table.add_row("median spacing (RAS, mm)", _x(fp["spacing"]["median"]))
    table.add_row("10th percentile spacing", _x(fp["spacing"]["percentile_10"]))
    table.add_row("median shape (RAS, voxels)", _x(fp["shape"]["median"]))
    table.add_row("orientations", ", ".join(f"{k} {v}" for k, v in fp["orientations"].items()))
    for c in fp["channels"]:
        table.add_row(f"channel {c['name']} ({c['modality']}) foreground",
                      f"p0.5 {c['percentile_00_5']:.4g}, median {c['percentile_50_0']:.4g}, p99.5 {c['percentile_99_5']:.4g}, "
                      f"mean {c['mean']:.4g}, std {c['std']:.4g}")
    for name, c in fp["classes"].items():
        border = "" if c["touches_border"] is None else f", touches the border in {c['touches_border']:.0%} of cases"
        table.add_row(f"class {name}", f"{c['voxel_fraction']:.3%} of voxels, in {c['cases_with_class']:.0%} of cases{border}")
    return table


def _plan_table(plans: dict) -> Table:
    table = Table(title="plan (train uses: " + plans["device"] + ")")
    table.add_column("")
    for device in plans["targets"]:
        table.add_column(device)
    rows = {
        "memory (GB)": lambda t: f"{t['memory_gb']:g}",
        "spacing (mm)": lambda t: _x(t["spacing"]),
        "normalisation": lambda t: "; ".join(_normalisation(k, n) for k, n in t["normalisation"].items()),
        "unetr window / patch / tokens": lambda t: f"{_x(t['unetr']['roi'])} / {t['unetr']['patch']} / {t['unetr']['tokens']}",
        "dynunet patch / batch": lambda t: f"{_x(t['dynunet']['patch'])} / {t['dynunet']['batch']}",
        "dynunet strides": lambda t: " ".join(_x(s) for s in t["dynunet"]["strides"]),
        "dynunet kernels": lambda t: " ".join(_x(k) for k in t["dynunet"]["kernels"]),
        "budget": lambda t: ", ".join(f"{k} {v}" for k, v in t["profile"]["training"]["budget"].items()),
    }
    for name, cell in rows.items():
        table.add_row(name, *(cell(t) for t in plans["targets"].values()))
    return table


def _normalisation(channel: str, n: dict) -> str:
    if n["scheme"] == "CT":
        return f"{channel}: clip {n['clip'][0]:.4g}..{n['clip'][1]:.4g} (mean {n['mean']:.4g}, std {n['std']:.4g})"
    return f"{channel}: z-score per image"


def _x(values) -> str:
    return "x".join(f"{v:g}" for v in values)
