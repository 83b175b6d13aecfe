"""Rich progress for training: a bar over all steps of the run and one line per epoch."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichReporter:
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  best Dice {task.fields[best]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = None

    def start(self, first_epoch: int, epochs: int, steps: int) -> None:
        self.epochs = epochs
        remaining = max(epochs - first_epoch + 1, 0) * steps
        self.progress.start()
        self.task = self.progress.add_task("train", total=remaining, epoch=first_epoch, epochs=epochs, loss="-", best="-")

    def step_done(self) -> None:
        self.progress.advance(self.task)

    def epoch_done(self, line: dict, state) -> None:
        dice = f"  val Dice {line['val_dice']:.4f}" if "val_dice" in line else ""
        self.progress.console.print(f"epoch {line['epoch']:>4}  loss {line['train_loss']:.4f}{dice}  ({line['seconds']:.0f} s)")
        best = f"{state.best_val_dice:.4f}" if state.best_val_dice >= 0 else "-"
        self.progress.update(self.task, epoch=min(line["epoch"] + 1, self.epochs), loss=f"{line['train_loss']:.3f}", best=best)

    def stop(self) -> None:
        self.progress.stop()
