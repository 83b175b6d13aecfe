"""Options shared by several commands, defined once (with the defaults they share)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unetr_app.config import DEFAULT_PROFILE, DEFAULT_TASK  # noqa: F401  (the defaults every verb shows)

DeviceOption = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu or cuda")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="replace outputs that already exist")]
OutDirOption = Annotated[Path | None, typer.Option("--out", help="output folder")]

# the training budget: one of the three
StepsOption = Annotated[int | None, typer.Option("--steps", min=1, help="budget: N optimizer steps")]
MinutesOption = Annotated[float | None, typer.Option("--minutes", min=0.01, help="budget: M minutes of training (timed, then fixed in steps)")]
EpochsOption = Annotated[int | None, typer.Option("--epochs", min=1, help="budget: N passes over the training cases, turned into steps")]
CheckpointEveryOption = Annotated[int | None, typer.Option("--checkpoint-every", min=1, help="write checkpoints/last.pt every N steps")]

# the run folder
ResumeOption = Annotated[bool, typer.Option("--resume", help="continue the run in --out from checkpoints/last.pt (--steps/--minutes/--epochs may extend it)")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override any config key, e.g. --set optimizer.lr=3e-4")]


def budget_from(steps: int | None, minutes: float | None, epochs: int | None):
    """The one budget given (a BudgetConfig), None for the profile's; two at once is an error."""
    from unetr_app.config import BudgetConfig
    from unetr_app.errors import UsageError

    budgets = {k: v for k, v in (("steps", steps), ("minutes", minutes), ("epochs", epochs)) if v is not None}
    if len(budgets) > 1:
        raise UsageError(f"give one budget, not {' and '.join('--' + k for k in budgets)}")
    return BudgetConfig(**budgets) if budgets else None
