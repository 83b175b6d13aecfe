"""`unetr qc`: fit the quality model, training reference and temperatures of a run or experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.cli.options import DeviceOption

def qc(
    folder: Annotated[Path, typer.Argument(help="a run folder, or an experiment folder of fold runs (their validation predictions are pooled)")],
    device: DeviceOption = "auto",
    mirrors: Annotated[bool, typer.Option("--mirrors/--no-mirrors", help="predict validation with all 8 mirrored passes (gives the agreement signal)")] = True,
) -> None:
    """Fit qc_model.json (Dice from the quality signals), qc_reference.json and temperature.json on validation cases."""
    import numpy as np

    from unetr_app.pipelines.quality import run_fit_quality

    result = run_fit_quality(folder, device, mirrors)
    cases = result["cases"]
    typer.echo(f"{len(cases)} validation cases, Dice {np.mean([c['dice'] for c in cases]):.3f} on average" if cases else "no validation cases")
    if result["model"] is None:
        typer.secho("too few validation cases for a quality model: predict will judge masks by the signals alone", fg="yellow", err=True)
    ece = result["ece_validation"]
    typer.echo(f"temperature {', '.join(f'{t:.3g}' for t in result['temperature'])}: validation ECE {ece['before']:.4f} -> {ece['after']:.4f}")
    typer.echo(f"-> {result['folder']}")
