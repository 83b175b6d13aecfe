"""`unetr probe`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from unetr_app.cli.options import OverwriteOption

console = Console()


def probe(
    checkpoint: Annotated[Path, typer.Argument(help="a pretraining or training run folder, or a .pt checkpoint")],
    data_dir: Annotated[Path, typer.Argument(help="a labelled dataset folder (MSD or nnU-Net v2 layout)")],
    fit_fraction: Annotated[float, typer.Option("--fit-fraction", help="share of the cases the probe is fitted on; it is scored on the rest")] = 0.5,
    label: Annotated[str | None, typer.Option("--label", help="the label probed [default: the first foreground label]")] = None,
    key: Annotated[str, typer.Option("--init-key", help="for a pretraining run: the teacher's or the student's encoder")] = "teacher",
    seed: Annotated[int, typer.Option("--seed", help="shuffles the cases and initialises the random encoder")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="write the scores as JSON here")] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Linear probe of frozen patch tokens: how well the encoder's tokens predict each patch's label share."""
    from unetr_app.errors import UsageError
    from unetr_app.io.atomic import atomic_write_text
    from unetr_app.pipelines.probe import split_cases, token_probe

    if out is not None and out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    fit, test = split_cases(data_dir, fit_fraction, seed)
    with Progress(console=console, transient=True) as bar:
        job = bar.add_task("encoding cases", total=len(fit) + len(test))
        result = token_probe(checkpoint, fit, test, key=key, label=label, seed=seed, on_case=lambda _: bar.advance(job))
    table = Table(title=f"linear probe of {result['label']} occupancy per {'x'.join(map(str, result['patch_size']))} patch "
                        f"(fit on {len(fit)} cases, scored on {len(test)})")
    for column in ("features", "held-out R2", "AUROC (mostly inside)", "ridge penalty"):
        table.add_column(column)
    names = {"encoder": f"{checkpoint} ({key})", "random_encoder": "the same encoder, random weights", "voxels": "the patch's voxels"}
    for feature, scores in result["features"].items():
        auroc = "n/a" if scores["auroc"] is None else f"{scores['auroc']:.3f}"
        table.add_row(names[feature], f"{scores['r2']:.3f}", auroc, f"{scores['penalty']:g}")
    console.print(table)
    if out is not None:
        atomic_write_text(out, json.dumps(result, indent=2))
        console.print(f"wrote {out}")
