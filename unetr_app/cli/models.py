"""`unetr models list`: every registered model with its family, 2D/3D support, size and cost."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from unetr_app.errors import UsageError

models_app = typer.Typer(help="Inspect the registered models.", no_args_is_help=True)


def parse_size(text: str) -> tuple[int, ...]:
    try:
        size = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        size = ()
    if len(size) not in (2, 3) or min(size) < 1:
        raise UsageError(f"--size {text!r}: give 2 or 3 positive integers, e.g. --size 96,96,96 or --size 224x224")
    return size


@models_app.command("list")
def list_command(
    pattern: Annotated[str, typer.Argument(help="shell-style name pattern, e.g. 'vit_*'")] = "*",
    size: Annotated[str, typer.Option("--size", help="input size for parameters and FLOPs: D,H,W (3D) or H,W (2D)")] = "96,96,96",
    task: Annotated[str, typer.Option("--task", help="segmentation or classification")] = "segmentation",
    in_channels: Annotated[int, typer.Option("--in-channels", min=1)] = 1,
    classes: Annotated[int, typer.Option("--classes", min=1, help="out_channels (segmentation) or num_classes")] = 2,
    flops: Annotated[bool, typer.Option("--flops/--no-flops", help="count FLOPs (a multiply-add is 2)")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List registered models with parameters and FLOPs for one input of --size."""
    from unetr_app.models import list_models
    from unetr_app.models.summary import summarize

    if task not in ("segmentation", "classification"):
        raise UsageError(f"--task {task!r}: use segmentation or classification")
    input_size = parse_size(size)
    names = list_models(pattern)
    if not names:
        raise UsageError(f"no registered model matches {pattern!r}; `unetr models list` shows them all")
    with Console(stderr=True).status(f"building {len(names)} models on the meta device (no weights)..."):
        rows = [summarize(n, input_size, task, in_channels, classes, flops) for n in names]
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    Console().print(_table(rows, input_size, task))


def _table(rows, input_size: tuple[int, ...], task: str) -> Table:
    table = Table(title=f"{task} models at {'x'.join(map(str, input_size))}")
    for column in ("name", "family", "2D/3D", "params (M)", "GFLOPs", "note"):
        table.add_column(column, justify="right" if column in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        dims = "/".join(f"{d}D" for d in r.spatial_dims)
        params = f"{r.params / 1e6:.2f}" if r.params is not None else "-"
        gflops = f"{r.flops / 1e9:.1f}" if r.flops is not None else "-"
        note = (r.error or "").removeprefix(f"{r.name}: ")
        table.add_row(r.name, r.family, dims, params, gflops, note)
    return table
