"""`unetr evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.cli.options import OutDirOption


def evaluate(
    pred_dir: Annotated[Path, typer.Argument(help="folder of predicted masks (<case>.nii.gz)")],
    label_dir: Annotated[Path, typer.Argument(help="folder of reference masks with the same case names")],
    out: OutDirOption = None,
    tolerance_mm: Annotated[float, typer.Option("--tolerance-mm", min=0, help="surface Dice tolerance in mm")] = 2.0,
    labels_json: Annotated[Path | None, typer.Option("--labels-json", help="label names: {name: value}, {\"value\": name} or a dataset.json")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="take the label names from this checkpoint")] = None,
    failure_dice: Annotated[float, typer.Option("--failure-dice", min=0, max=1, help="with qc.csv: a case below this Dice counts as a failure the risk should detect")] = 0.5,
) -> None:
    """Dice, HD95 and surface Dice per case and label (mm); writes evaluation.csv and evaluation_summary.json.

    A reference stored in another voxel order of the same grid (e.g. LAS vs LPS) is reoriented exactly;
    a reference on a different grid is refused, and every refused or missing case is listed with its reason.
    With the qc.csv of `unetr predict` beside the masks, its predicted Dice and risk are judged against
    the measured Dice (quality_judgement.png); with saved probabilities, the calibration error before
    and after temperature scaling."""
    from unetr_app.pipelines.evaluate import run_evaluate

    summary = run_evaluate(pred_dir, label_dir, out or pred_dir, tolerance_mm=tolerance_mm, labels_json=labels_json,
                           checkpoint=checkpoint, failure_dice=failure_dice)
    for name, stats in summary["mean"].items():
        typer.echo(f"{name}: Dice {_fmt(stats['dice'])}  HD95 {_fmt(stats['hd95_mm'])} mm  NSD {_fmt(stats['nsd'])}")
    reasons = {"without_label": "no reference mask with this name", "without_prediction": "no prediction with this name"}
    for side, cases in summary["missing"].items():
        for case in cases:
            typer.secho(f"missing {case}: {reasons[side]}", fg="yellow", err=True)
    for case, reason in summary["failed"].items():
        typer.secho(f"refused {case}: {reason}", fg="red", err=True)
    _echo_quality(summary["quality"], summary["calibration"])
    typer.echo(f"{summary['cases_evaluated']} cases evaluated -> {summary['csv']}")


def _echo_quality(quality: dict | None, calibration: dict | None) -> None:
    if quality and quality["cases"]:
        typer.echo(f"quality estimates over {quality['cases']} cases: Spearman(predicted, measured Dice) "
                   f"{_fmt(quality['spearman_predicted_dice'])}, AURC {_fmt(quality['aurc'])} (best {_fmt(quality['aurc_best'])}), "
                   f"AUROC for Dice < {quality['failure_dice']:g} {_fmt(quality['auroc_failure'])} ({quality['failures']} failures) "
                   f"-> {quality['plot']}")
    elif quality is not None:
        typer.secho("qc.csv names none of the evaluated cases: no quality estimates judged", fg="yellow", err=True)
    if calibration and calibration["cases"]:
        typer.echo(f"calibration over {calibration['cases']} cases: ECE {calibration['ece_before']:.4f} before, "
                   f"{calibration['ece_after']:.4f} after the temperature")
    for name, reason in (calibration or {}).get("skipped", {}).items():
        typer.secho(f"calibration skips {name}: {reason}", fg="yellow", err=True)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
