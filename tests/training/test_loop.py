"""The generic loop runs any recipe: one without labels or validation, its loss parts and hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from unetr_app.config import load_run_config, parse_overrides
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.training.recipes import Recipe
from unetr_app.training.loop import Trainer

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv3d(1, 4, 3, padding=1)
        self.decoder = nn.Conv3d(4, 2, 1)

    def forward(self, x):
        return self.decoder(torch.relu(self.encoder(x)))


class Denoise(Recipe):
    """Needs no label: a projection head outside the model, two named loss parts, a step counter."""

    name = "denoise_for_tests"  # not registered: handed to the Trainer as an instance

    def __init__(self, model, config, **params):
        super().__init__(model, config, **params)
        self.projection = nn.Linear(2, 2)
        self.calls: list[tuple[int, int]] = []

    def forward(self, batch):
        output = self.model(batch["image"])
        pooled = self.projection(output.mean(dim=(2, 3, 4)))
        smooth, small = (output[:, :, 1:] - output[:, :, :-1]).pow(2).mean(), pooled.pow(2).mean()
        return {"loss": smooth + small, "output": output, "smooth_loss": smooth, "small_loss": small}

    def after_step(self, step, total_steps):
        self.calls.append((step, total_steps))

    def extra_state(self):
        return {"calls": len(self.calls), "projection": self.projection.state_dict()}


def test_a_recipe_without_labels_or_validation_trains_logs_its_parts_and_checkpoints(tmp_path):
    overrides = parse_overrides(["training.budget.steps=6", "training.val_every_steps=0", "training.log_every_steps=3",
                                 "training.checkpoint_every_steps=2", "optimizer.weight_decay=0.1", "optimizer.head_weight_decay=0.5"])
    config = load_run_config("spleen", profile=str(TINY), overrides=overrides)
    recipe = Denoise(TinyNet(), config)
    before = recipe.projection.weight.detach().clone()
    trainer = Trainer(config, recipe, torch.device("cpu"), tmp_path, checkpoint_extras={"fingerprint": {"mean": 1.5}})
    batches = [{"image": torch.rand(1, 1, 8, 8, 8)} for _ in range(4)]  # no "label", no "case"
    state = trainer.fit(torch.utils.data.DataLoader(batches, batch_size=None), None)

    assert state.step == 6 and state.epoch == 1, "4 batches a pass: one pass and a half"
    assert recipe.calls == [(s, 6) for s in range(1, 7)], "after_step after each optimizer step, with the budget"
    assert not torch.equal(before, recipe.projection.weight), "trainable parts outside the model are optimized"
    head = [g for g in trainer.optimizer.param_groups if g["name"] == "head"][0]
    assert any(p is recipe.projection.weight for p in head["params"]) and head["weight_decay"] == 0.5

    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [m["step"] for m in lines] == [3, 6] and not any("val_dice" in m for m in lines)
    assert all(m["loss"] == pytest.approx(m["smooth_loss"] + m["small_loss"], rel=1e-6) for m in lines)
    last, best = load_checkpoint(tmp_path / "checkpoints" / "last.pt"), load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["best_step"] == 6 == last["step"], "without validation, best is the last"
    torch.testing.assert_close(best["state_dict"]["decoder.weight"], recipe.model.decoder.weight.detach())
    assert last["recipe"]["extra_state"]["calls"] == 6 and "projection" in last["recipe"]["extra_state"]
    assert last["fingerprint"] == best["fingerprint"] == {"mean": 1.5}, "checkpoint extras in every checkpoint"
    assert trainer.records.plot_curves(state.history).read_bytes()[:4] == b"\x89PNG"



def test_gradient_clipping_bounds_the_global_norm(tmp_path):
    config = load_run_config("spleen", profile=str(TINY), overrides=parse_overrides(["training.grad_clip=0.001", "optimizer.name=sgd"]))
    trainer = Trainer(config, Denoise(TinyNet(), config), torch.device("cpu"), tmp_path)
    trainer.state.total_steps = 10
    trainer.train_step({"image": torch.rand(1, 1, 8, 8, 8) * 100})
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in trainer.trainable]))
    assert norm == pytest.approx(0.001, rel=1e-4), "clipped to the limit (the raw gradient is far larger)"


@pytest.mark.parametrize("native", [True, False])
def test_cpu_amp_trains_in_bfloat16_only_where_the_cpu_computes_it(native, tmp_path, monkeypatch):
    monkeypatch.setattr("unetr_app.device.cpu_computes_bfloat16", lambda: native)
    config = load_run_config("spleen", profile=str(TINY), overrides=parse_overrides(["training.cpu_amp=true"]))
    recipe = Denoise(TinyNet(), config)
    before = recipe.model.encoder.weight.detach().clone()
    trainer = Trainer(config, recipe, torch.device("cpu"), tmp_path)
    trainer.state.total_steps = 10
    parts = trainer.train_step({"image": torch.rand(1, 1, 8, 8, 8)})

    assert parts["output"].dtype == (torch.bfloat16 if native else torch.float32), "the network runs under the chosen autocast"
    assert not trainer.scaler.is_enabled(), "bfloat16 needs no GradScaler"
    assert recipe.model.encoder.weight.dtype == torch.float32, "the weights themselves stay float32"
    assert not torch.equal(before, recipe.model.encoder.weight), "and they train"
