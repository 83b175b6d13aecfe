"""The progress line shows every loss part and monitor of a metrics line, not the bookkeeping."""

from __future__ import annotations

from rich.console import Console

from unetr_app.training.progress import RichReporter
from unetr_app.training.state import TrainState


def test_a_metrics_line_prints_loss_parts_and_monitors():
    console = Console(record=True, width=200)
    reporter = RichReporter(console)
    reporter.start(0, 10)
    line = {"step": 2, "epoch": 0.5, "lr": 0.001, "loss": 2.5, "teacher_entropy_ratio": 0.93, "teacher_student_kl": 0.01,
            "val_dice": 0.25, "seconds": 3.0}
    reporter.line_done(line, TrainState())
    reporter.stop()
    text = console.export_text()
    assert "loss 2.5000" in text and "teacher_entropy_ratio 0.9300" in text and "teacher_student_kl 0.0100" in text
    assert "val Dice 0.2500" in text and "lr 0.0010" not in text and "epoch 0.5000" not in text
