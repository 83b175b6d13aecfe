"""What a run leaves behind for people: metrics.jsonl, summary.json and curves.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unetr_app.io.atomic import append_line, atomic_path, atomic_write_text
from unetr_app.io.run_dir import RunDir


class RunRecords:
    """The run folder's human-readable records. The checkpoint holds the history too, so after
    a crash the metrics file is rewritten from it: no gaps and no repeated epochs on resume."""

    def __init__(self, run_dir: Path | RunDir):
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.metrics_path = self.run.metrics

    def restart_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text(self.metrics_path, "".join(json.dumps(line) + "\n" for line in history))

    def append_metrics(self, line: dict[str, Any]) -> None:
        append_line(self.metrics_path, json.dumps(line))

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.run.write_json(self.run.summary, summary)

    def plot_curves(self, history: list[dict[str, Any]]) -> Path:
        """Every loss part against the step (left) and validation Dice when there is any (right)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        validated = [h for h in history if h.get("val_dice") is not None]
        fig, axes = plt.subplots(1, 2 if validated else 1, figsize=(10 if validated else 5, 4), squeeze=False)
        ax_loss = axes[0][0]
        for name in loss_parts(history):
            ax_loss.plot([h["step"] for h in history if name in h], [h[name] for h in history if name in h], label=name)
        ax_loss.set(xlabel="optimizer step", ylabel="training loss", title="Loss and its parts")
        ax_loss.legend()
        if validated:
            ax_dice = axes[0][1]
            ax_dice.plot([h["step"] for h in validated], [h["val_dice"] for h in validated], "o-", color="tab:green")
            ax_dice.set(xlabel="optimizer step", ylabel="mean foreground Dice", title="Validation Dice", ylim=(0, 1))
        for ax in axes[0]:
            ax.grid(alpha=0.3)
        fig.tight_layout()
        target = self.run.curves
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return target


NOT_LOSSES = {"step", "epoch", "lr", "seconds", "val_dice", "val_dice_per_case"}


def loss_parts(history: list[dict[str, Any]]) -> list[str]:
    """`loss` first, then the recipe's other parts in the order they first appear."""
    names = dict.fromkeys(k for line in history for k in line if k not in NOT_LOSSES)
    return sorted(names, key=lambda k: k != "loss")


def count_parameters(model) -> int:
    """The summary's `parameters`."""
    return sum(p.numel() for p in model.parameters())
