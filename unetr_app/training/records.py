"""What a run leaves behind for people: metrics.jsonl, summary.json and curves.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetr_app.io.atomic import append_line, atomic_path, atomic_write_text


class RunRecords:
    """The run folder's human-readable records. The checkpoint holds the history too, so after
    a crash the metrics file is rewritten from it: no gaps and no repeated epochs on resume."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def restart_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_path, "".join(json.dumps(line) + "\n" for line in history))

    def append_metrics(self, line: dict[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(line))

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        atomic_write_text(self.run_dir / name, json.dumps(data, indent=2) + "\n")

    def plot_curves(self, history: list[dict[str, Any]]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [h["epoch"] for h in history]
        validated = [h for h in history if h.get("val_dice") is not None]
        fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.plot(epochs, [h["train_loss"] for h in history], color="tab:blue")
        ax_loss.set(xlabel="epoch", ylabel="training loss (Dice + CE)", title="Loss")
        ax_dice.plot([h["epoch"] for h in validated], [h["val_dice"] for h in validated], "o-", color="tab:green")
        ax_dice.set(xlabel="epoch", ylabel="mean foreground Dice", title="Validation Dice", ylim=(0, 1))
        for ax in (ax_loss, ax_dice):
            ax.grid(alpha=0.3)
        fig.tight_layout()
        target = self.run_dir / "curves.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return target
