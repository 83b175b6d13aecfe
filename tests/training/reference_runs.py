"""Fixed-seed 24-step runs of every recipe on the tiny phantom, and their recorded loss parts.

The recorded numbers (reference_runs.json) were taken before the training stack was split into
modules; the test reruns them so that moving code cannot change what training computes. dino's
were re-recorded once since, when its teacher moved to eval mode and its collapse monitors joined
the loss parts (meant changes); the others are the pre-split recording.

    PYTHONPATH=. python -m tests.training.reference_runs   # re-record (only when a change is meant)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "reference_runs.json"
TINY = TESTS / "configs" / "tiny.yaml"
TINY_DINO = TESTS / "configs" / "tiny-dino.yaml"
RECIPES = ("supervised", "distill", "self_distill", "dino")
STEPS = 24
# a line every 2 steps, validation every 12, last.pt every 12: every cadence of the loop is exercised
RUN = {"training": {"budget": {"steps": STEPS}, "log_every_steps": 2, "val_every_steps": 12, "checkpoint_every_steps": 12,
                    "val_fraction": 0.34}}
# recipe heads need one of our decoders: a narrow DeiT with UNETR's decoder
NARROW_DEIT = ("deit_tiny_distilled_patch16", {"embed_dim": 32, "depth": 2, "num_heads": 2, "feature_size": 4})
NOT_LOSSES = {"step", "epoch", "lr", "seconds", "val_dice_per_case"}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run_recipe(recipe: str, phantom_dir: Path, work: Path) -> list[dict]:
    """The metrics lines' loss parts (and validation Dice) of one fixed-seed run."""
    from unetr_app.pipelines.pretrain import pretrain
    from unetr_app.pipelines.train import train
    from unetr_app.config import load_run_config
    from tests.recipes.recipe_helpers import write_teacher

    torch.set_num_threads(2)
    if recipe == "dino":
        overrides = {"training": {"budget": {"steps": STEPS}, "log_every_steps": 2, "checkpoint_every_steps": 12}}
        config = load_run_config("spleen", profile=str(TINY_DINO), overrides=overrides)
        pretrain(config, work / recipe, [phantom_dir / "imagesTr"], device="cpu")
    else:
        overrides = _merge(RUN, {"recipe": {"name": recipe}})
        model = None
        if recipe != "supervised":
            model = NARROW_DEIT[0]
            overrides["model"] = {"params": NARROW_DEIT[1]}
        if recipe == "distill":
            teacher = write_teacher(work / "teacher.pt")
            overrides["recipe"]["params"] = {"teacher": str(teacher), "mode": "soft", "alpha": 0.5}
        if recipe == "self_distill":  # the recorded run's head weights (the default is now halving)
            overrides["recipe"]["params"] = {"weights": "equal"}
        config = load_run_config("spleen", model=model, profile=str(TINY), overrides=overrides, data_dir=phantom_dir)
        train(config, work / recipe, phantom_dir, device="cpu", tracker="none")
    lines = [json.loads(line) for line in (work / recipe / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{k: v for k, v in line.items() if k not in NOT_LOSSES or k == "step"} for line in lines]


def record(phantom_dir: Path, work: Path) -> dict:
    return {recipe: run_recipe(recipe, phantom_dir, work) for recipe in RECIPES}


if __name__ == "__main__":
    from unetr_app.data.phantom import write_phantom_dataset

    with tempfile.TemporaryDirectory() as tmp:
        phantom = write_phantom_dataset(Path(tmp) / "phantom" / "Task09_Spleen", cases=6, test_cases=2, seed=7)
        recorded = record(phantom, Path(tmp))
    FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n", encoding="utf-8")
    print(f"recorded {', '.join(f'{k}: {len(v)} lines' for k, v in recorded.items())} in {FIXTURE}", file=sys.stderr)
