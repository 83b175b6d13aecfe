"""The recipes on registered models (not stand-ins): a plain decoder (UNETR on DeiT) and a
hierarchical one (PVT-v2 + UNet decoder), with a CNN teacher; one step each, weights move."""

from __future__ import annotations

import pytest
import torch

from tests.recipes.recipe_helpers import batch, tiny_config, write_teacher
from unetr_app.models import create_model
from unetr_app.training.recipes import build_recipe, recipe_class

SHAPE = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32]}
STUDENTS = {
    "deit+unetr": ("deit_tiny_distilled_patch16", {"embed_dim": 32, "depth": 4, "num_heads": 2, "feature_size": 4}),
    "pvt_v2+unet": ("pvt_v2_b0", {"decoder": "unet", "feature_size": 4, "norm_name": "batch"}),
}


@pytest.fixture(scope="module")
def cnn_teacher(tmp_path_factory):
    return write_teacher(tmp_path_factory.mktemp("cnn") / "segresnet.pt", tiny_config("segresnet_small"))


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("recipe", ["distill", "self_distill"])
def test_one_step_trains_the_student_heads(student, recipe, cnn_teacher):
    name, params = STUDENTS[student]
    recipe_params = {"teacher": str(cnn_teacher)} if recipe == "distill" else {}
    torch.manual_seed(0)
    model = create_model(name, **SHAPE, **params, **recipe_class(recipe).model_kwargs(recipe_params))
    runner = build_recipe(recipe, model, tiny_config(), recipe_params)
    head = model.distill_head if recipe == "distill" else model.aux_heads
    before = [p.detach().clone() for p in head.parameters()]
    optimizer = torch.optim.AdamW(runner.parameters(), lr=1e-2)
    parts = runner(batch(0, n=2))
    parts["loss"].backward()
    optimizer.step()
    assert torch.isfinite(parts["loss"]) and parts["output"].shape == (2, 2, 32, 32, 32)
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters())), "the recipe's head learns"
    model.eval()
    with torch.no_grad():
        assert model(batch(1)["image"]).shape == (1, 2, 32, 32, 32)
