"""`unetr card`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def card(
    folder: Annotated[Path, typer.Argument(help="a run folder (the --out of `unetr train`), or an experiment folder of one model's fold runs")],
) -> None:
    """Write MODEL_CARD.md and model_card.json: data, licence, recipe, budget, validation Dice with spread, calibration, checksums."""
    from unetr_app.export.card import write_card

    markdown, data = write_card(folder)
    typer.echo(f"-> {markdown}, {data}")
