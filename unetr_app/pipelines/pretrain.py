"""Self-supervised pretraining: training with a self-supervised recipe (`self_supervised = True`,
DINO today) on unlabelled scans.

    unetr pretrain IMAGES_DIR [IMAGES_DIR ...] --method dino --model vit_small_patch16 --out RUN

1. Find every scan in the folders (any format predict reads) and record the list in the run.
2. Preprocess each once with the task's orientation, spacing, window and body crop.
3. Build the segmentation model the config names; the recipe builds what it trains from it (DINO:
   the encoder, a class token and the DINO head, and an EMA teacher) and its own loader
   (`unlabelled_loader`: DINO's multi-crop batches).
4. Train with the one training loop (budget, checkpoints, exact resume, curves, torchrun), without validation.

`unetr train --init-from RUN` then starts a segmentation model from the teacher's encoder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from unetr_app.pipelines.train import prepare_run_dir
from unetr_app import distributed
from unetr_app.config import RunConfig
from unetr_app.data.multicrop import find_scans, preprocess_scans
from unetr_app.device import resolve_device
from unetr_app.errors import UsageError
from unetr_app.io.checkpoint import can_resume_from
from unetr_app.io.run_dir import RunDir
from unetr_app.models import create_model
from unetr_app.training.recipes import list_recipes, recipe_class
from unetr_app.training.loop import Trainer
from unetr_app.training.records import count_parameters
from unetr_app.training.state import seed_everything

log = logging.getLogger(__name__)


def pretraining_recipe(method: str):
    """The recipe class of `--method`; an unknown name or a recipe that trains on labels is a one-line error."""
    recipe = recipe_class(method)
    if not recipe.self_supervised:
        raise UsageError(f"--method {method}: that recipe trains on labels (use `unetr train`); "
                         f"self-supervised recipes: {', '.join(list_recipes(self_supervised=True))}")
    return recipe


def pretrain(config: RunConfig, run_dir: Path, folders: list[Path] | None = None, device: str = "auto",
             resume: bool = False, reporter=None) -> dict | None:
    """Pretrain into `run_dir`; returns the summary (None on torchrun ranks > 0). A resumed run
    reads its scan list from the run folder."""
    pretraining_recipe(config.recipe.name)
    torch_device = resolve_device(device)
    with distributed.process_group("nccl" if torch_device.type == "cuda" else "gloo") as shard:
        return _pretrain(config, Path(run_dir), folders, distributed.device_for(shard, torch_device), resume, reporter, shard)


def _pretrain(config, run_dir, folders, device, resume, reporter, shard) -> dict | None:
    recipe = recipe_class(config.recipe.name)
    recipe.check(config)
    run = RunDir(run_dir)
    if shard.is_main:
        continuing = resume and run.scans.is_file()
        scans = [] if continuing else [str(c.path) for c in find_scans(folders or [])]
        prepare_run_dir(run, resume)
        if not continuing:  # a resumed run keeps the scans it started with
            run.write_json(run.scans, {"folders": [str(f) for f in folders or []], "scans": scans})
        run.write_config(config)
    distributed.barrier(shard)
    cases = [c for path in recorded_scans(run_dir) for c in find_scans([path])]
    samples = preprocess_scans(cases, config.preprocessing)

    seed_everything(config.training.seed)
    model = create_model(config.model.name, **config.model_kwargs())
    trainer = Trainer(config, model, device, run_dir, reporter=reporter, shard=shard)
    if resume and can_resume_from(run.last):
        trainer.restore(run.last)
    loader = recipe.unlabelled_loader(config, samples, shard)
    state = trainer.fit(loader, None)
    if not shard.is_main:
        return None
    summary = {
        "method": config.recipe.name,
        "model": config.model.name,
        "parameters": count_parameters(trainer.recipe.model),
        "steps": state.step,
        "total_steps": state.total_steps,
        "seconds": round(state.seconds, 1),
        "final_loss": state.history[-1].get("loss") if state.history else None,
        "scans": len(samples),
        "skipped_scans": len(cases) - len(samples),
        "profile": config.profile,
        "device": str(device),
        "processes": shard.world_size,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    trainer.records.write_summary(summary)
    trainer.records.plot_curves(state.history)
    return summary


def recorded_scans(run_dir: Path) -> list[str]:
    run = RunDir(run_dir)
    return run.read_json(run.scans)["scans"]
