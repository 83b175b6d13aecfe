"""Rich progress for training: a bar over the run's optimizer steps and one line per metrics interval."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


# a metrics line's bookkeeping; every other number is a loss part or a monitor (DINO's entropy ratios)
NOT_PARTS = ("step", "epoch", "lr", "seconds", "val_dice")


class RichReporter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]step"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  best Dice {task.fields[best]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None

    def start(self, first_step: int, total_steps: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=first_step, loss="-", best="-")

    def step_done(self) -> None:
        self.progress.advance(self.task)

    def note(self, text: str) -> None:
        self.console.print(text)

    def line_done(self, line: dict, state) -> None:
        parts = "  ".join(f"{k} {v:.4f}" for k, v in line.items() if k not in NOT_PARTS and isinstance(v, float))
        dice = f"  val Dice {line['val_dice']:.4f}" if "val_dice" in line else ""
        self.progress.console.print(f"step {line['step']:>6}  epoch {line['epoch']:>7.2f}  {parts}{dice}  ({line['seconds']:.0f} s)")
        best = f"{state.best_val_dice:.4f}" if state.best_val_dice >= 0 else "-"
        self.progress.update(self.task, total=state.total_steps, loss=f"{line.get('loss', float('nan')):.3f}", best=best)

    def stop(self) -> None:
        self.progress.stop()


class SilentReporter:
    """What processes other than rank 0, and runs without a reporter, report to."""

    def start(self, **_): ...
    def step_done(self): ...
    def note(self, text): ...
    def line_done(self, line, state): ...
    def stop(self): ...
