"""`unetr attention`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from unetr_app.cli.options import OverwriteOption

console = Console()


def attention(
    checkpoint: Annotated[Path, typer.Argument(help="a pretraining or training run folder, or a .pt checkpoint")],
    scan: Annotated[Path, typer.Argument(help="one scan (.nii, .nii.gz, .nrrd, .mha) or one DICOM series folder")],
    output_dir: Annotated[Path, typer.Argument(help="folder for <case>_attention_head<k>.nii.gz and <case>_attention.png")],
    key: Annotated[str, typer.Option("--init-key", help="for a pretraining run: the teacher's or the student's weights")] = "teacher",
    overwrite: OverwriteOption = False,
) -> None:
    """Last-block attention of a ViT per head, on the scan's own grid (NIfTI per head + PNG montage)."""
    from unetr_app.pipelines.attention import attention as attention_pipeline

    written = attention_pipeline(checkpoint, scan, output_dir, overwrite=overwrite, key=key)
    kind = "the class token's attention" if written["class_token"] else "the mean attention each patch receives"
    console.print(f"{written['heads']} heads ({kind}): {output_dir}/*_attention_head*.nii.gz; montage {written['montage']}")
