"""`unetr predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.cli.options import DeviceOption, OverwriteOption


def predict(
    input: Annotated[Path, typer.Argument(help="a scan (.nii, .nii.gz, .nrrd, .mha), a folder of them, or a DICOM series folder")],
    output_dir: Annotated[Path, typer.Argument(help="folder for <case>.nii.gz masks and predict_report.json")],
    checkpoint: Annotated[list[Path], typer.Option("--checkpoint", "-c", help="run folder (its best checkpoint), a checkpoint (.safetensors/.pt), or a MONAI UNETR/SwinUNETR state dict (with --task/--model/--profile); repeat it to ensemble models or folds")],
    device: DeviceOption = "auto",
    overlap: Annotated[float | None, typer.Option("--overlap", help="sliding-window overlap in [0, 1); default: the checkpoint's")] = None,
    sw_batch_size: Annotated[int | None, typer.Option("--sw-batch-size", min=1, help="windows per forward pass; default: the checkpoint's")] = None,
    tta: Annotated[str | None, typer.Option("--tta", help="on: average 8 mirrored predictions; off; auto: mirror only cases a first pass finds risky (above --tta-risk); default on for CUDA, off for CPU")] = None,
    no_tta: Annotated[bool, typer.Option("--no-tta", help="same as --tta off")] = False,
    tta_risk: Annotated[float, typer.Option("--tta-risk", min=0, max=1, help="with --tta auto: the risk above which a case gets the mirrored passes")] = 0.5,
    amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="mixed precision; default float16 on CUDA, float32 on CPU (--amp: bfloat16)")] = None,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities", help="also write <case>_probabilities.npz (float16)")] = False,
    overwrite: OverwriteOption = False,
    preview: Annotated[bool, typer.Option("--preview", help="also write <case>.png: the axial slice through the largest region")] = False,
    stitch_device: Annotated[str | None, typer.Option("--stitch-device", help="blend windows here (cpu keeps whole-volume logits off the GPU)")] = None,
    max_memory_gb: Annotated[float | None, typer.Option("--max-memory-gb", min=0, help="refuse scans estimated to need more; default 80% of RAM")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    output_format: Annotated[str, typer.Option("--output-format", help="nifti, dicom-seg (DICOM series inputs) or both")] = "nifti",
    task: Annotated[str | None, typer.Option("--task", help="for a bare state dict: task config (labels, modality)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="for a bare state dict: registered model or configs/models YAML")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="for a bare state dict: profile (preprocessing, model params) or a .yaml")] = None,
    postprocess: Annotated[bool, typer.Option("--postprocess/--no-postprocess", help="apply the postprocessing.json decided on validation (found beside the checkpoint)")] = True,
) -> None:
    """Segment every scan; masks land on each input's exact grid. Exit 1 if any case failed."""
    if output_format == "dicom-seg":  # every case would fail without it (under `both`, NIfTI inputs need none)
        from unetr_app.extras import require_feature

        require_feature("--output-format dicom-seg")
    from unetr_app.pipelines.predict import PredictRequest, exit_code, run_predict

    request = PredictRequest(
        input=input,
        output_dir=output_dir,
        checkpoint=tuple(checkpoint),
        device=device,
        stitch_device=stitch_device,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        tta="off" if no_tta else tta,
        tta_risk=tta_risk,
        amp=amp,
        save_probabilities=save_probabilities,
        overwrite=overwrite,
        preview=preview,
        max_memory_gb=max_memory_gb,
        show_progress=not quiet,
        output_format=output_format,
        task=task,
        model=model,
        profile=profile,
        postprocess=postprocess,
    )
    report = run_predict(request)
    summary = report["summary"]
    if report.get("processes", 1) == 1 or _is_main_process():
        if "weights" in report:  # a bare state dict: which keys met the model
            typer.echo(report["weights"])
        typer.echo(
            f"{summary['ok']} predicted, {summary['skipped']} already done, {summary['failed']} failed "
            f"-> {output_dir / 'predict_report.json'}"
        )
    raise typer.Exit(exit_code(report))


def _is_main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
