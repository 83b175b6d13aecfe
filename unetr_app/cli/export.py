"""`unetr export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.cli.options import OverwriteOption


def export(
    run: Annotated[Path, typer.Argument(help="run folder (its best checkpoint) or a checkpoint file")],
    out_dir: Annotated[Path, typer.Argument(help="folder to write the export into")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="monai-bundle, torchscript (bundle + models/model.ts), onnx, monai-state-dict")] = "monai-bundle",
    overwrite: OverwriteOption = False,
) -> None:
    """Export a trained model for other tools: a MONAI bundle, TorchScript, ONNX or MONAI weights."""
    if fmt == "onnx":  # a missing extra is one line now, not after the model is loaded
        from unetr_app.extras import require_feature

        require_feature("--format onnx")
    from unetr_app.pipelines.export import run_export

    report = run_export(run, out_dir, fmt, overwrite=overwrite)
    for check in report["checks"]:
        typer.echo(f"{check['format']}: max logit difference vs PyTorch {check['max_abs_logit_difference']:.1e} (tolerance {check['tolerance']:.0e})")
    typer.echo(f"{report['model']} -> {out_dir} ({fmt}: {', '.join(report['files'])})")
