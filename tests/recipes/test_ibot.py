"""Known answers for iBOT, the DINO recipe with the masked patch-token term on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unetr_app.errors import ConfigError
from unetr_app.models import create_model
from unetr_app.training.recipes import build_recipe, list_recipes
from unetr_app.training.objectives import patch_monitors, phase_warning
from unetr_app.training.recipes.dino import masked_patch_loss, updated_center

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
PARAMS = {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8, "local_crops": 2, "local_size": [16, 16, 16]}
TOKENS = 2 ** 3  # a 32^3 crop in 16^3 patches


def tiny_recipe(name="ibot", **params):
    torch.manual_seed(0)
    model = create_model("vit_small_patch16", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[32, 32, 32], **TINY_VIT)
    return build_recipe(name, model, None, {**PARAMS, **params})


def tiny_batch(batch=2, local=2):
    torch.manual_seed(1)
    return {"global_crops": torch.randn(batch, 2, 1, 32, 32, 32), "local_crops": torch.randn(batch, local, 1, 16, 16, 16)}


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_ibot_is_registered_as_dino_with_the_patch_term_on():
    assert "ibot" in list_recipes(self_supervised=True)
    assert tiny_recipe().settings.patch_weight == 1.0
    assert tiny_recipe("dino").settings.patch_weight == 0.0


def test_masked_patch_loss_equals_the_formula_on_masked_patches_only():
    rng = np.random.default_rng(0)
    student, teacher, center = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 5)), rng.normal(size=(1, 5))
    mask = np.array([[True, False, True, False], [False, False, False, True]])
    ts, tt = 0.1, 0.04
    per_crop = []
    for v in range(2):
        terms = [-(softmax((teacher[v, n] - center[0]) / tt) * np.log(softmax(student[v, n] / ts))).sum()
                 for n in range(4) if mask[v, n]]
        per_crop.append(np.mean(terms))
    got = masked_patch_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(mask), torch.tensor(center), ts, tt)
    assert got.item() == pytest.approx(np.mean(per_crop), rel=1e-10)
    # an unmasked patch's logits do not matter
    moved = student.copy()
    moved[0, 1] += 10.0
    assert masked_patch_loss(torch.tensor(moved), torch.tensor(teacher), torch.tensor(mask), torch.tensor(center), ts, tt).item() \
        == pytest.approx(got.item(), rel=1e-12)


def test_patch_monitors_on_a_uniform_and_a_one_hot_teacher():
    k = 8
    uniform = torch.full((2, 3, k), 1.0 / k)
    mask = torch.tensor([[True, False, False], [False, True, True]])
    monitors = patch_monitors(uniform, torch.log(uniform), mask)
    assert monitors["patch_entropy_ratio"].item() == pytest.approx(1.0)
    assert monitors["patch_student_kl"].item() == pytest.approx(0.0, abs=1e-7)
    assert monitors["patch_batch_entropy_ratio"].item() == pytest.approx(1.0)
    # every patch one-hot on prototype 0, the student uniform: entropy 0, KL ln K, the mean one-hot too
    one_hot = torch.zeros(2, 3, k)
    one_hot[..., 0] = 1.0
    monitors = patch_monitors(one_hot, torch.log(uniform), mask)
    assert monitors["patch_entropy_ratio"].item() == pytest.approx(0.0, abs=1e-7)
    assert monitors["patch_student_kl"].item() == pytest.approx(math.log(k))
    assert monitors["patch_batch_entropy_ratio"].item() == pytest.approx(0.0, abs=1e-7)
    # one-hot on different prototypes: each patch sure, the batch spread over 2 of 8
    one_hot[1, :, 0], one_hot[1, :, 1] = 0.0, 1.0
    assert patch_monitors(one_hot, torch.log(uniform), mask)["patch_batch_entropy_ratio"].item() == pytest.approx(math.log(2) / math.log(k))


def test_the_patch_centre_is_the_mean_over_crops_and_patches():
    teacher = torch.tensor([[[2.0, 0.0], [0.0, 4.0]], [[4.0, 0.0], [2.0, 0.0]]])  # (V=2, N=2, K=2): mean [2, 1]
    assert torch.allclose(updated_center(torch.zeros(1, 2), teacher, 0.5), torch.tensor([[1.0, 0.5]]))


def test_the_student_sees_masked_global_crops_and_the_teacher_whole_ones():
    recipe = tiny_recipe(mask_ratio=0.5)
    student_tokens, teacher_tokens = [], []

    def keep(store):
        return lambda module, args, out: store.append(out.detach().clone())

    recipe.model.encoder.patch_embedding.patch_embeddings.register_forward_hook(keep(student_tokens))
    recipe.teacher.encoder.patch_embedding.patch_embeddings.register_forward_hook(keep(teacher_tokens))
    masks = []
    recipe.model.register_forward_hook(lambda m, args, kwargs, out: masks.append(kwargs["mask"]), with_kwargs=True)
    parts = recipe(tiny_batch())
    mask = masks[0]
    assert mask.shape == (4, TOKENS) and (mask.sum(dim=1) == TOKENS // 2).all()
    assert len(teacher_tokens) == 1 and teacher_tokens[0].shape[0] == 4  # global crops only, unmasked
    assert {"patch_loss", "dino_loss", "patch_entropy_ratio", "patch_student_kl", "patch_batch_entropy_ratio"} <= set(parts)
    assert parts["loss"].item() == pytest.approx(parts["dino_loss"].item() + parts["patch_loss"].item(), rel=1e-5)


def test_a_masked_patch_is_the_mask_token_and_its_gradient_reaches_it():
    recipe = tiny_recipe()
    x = torch.randn(1, 1, 32, 32, 32)
    mask = torch.zeros(1, TOKENS, dtype=torch.bool)
    mask[0, 3] = True  # patch (0, 1, 1) of the 2x2x2 grid: voxels [0:16, 16:32, 16:32]
    changed = x.clone()
    changed[..., 0:16, 16:32, 16:32] = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        masked_classes, masked_patches = recipe.model.encode(x, mask)
        classes, patches = recipe.model.encode(changed, mask)
        _, unmasked = recipe.model.encode(changed)
        _, unmasked_before = recipe.model.encode(x)
    # the masked patch's voxels reach nothing: every token's output is the same
    assert torch.allclose(masked_classes, classes, atol=1e-6) and torch.allclose(masked_patches, patches, atol=1e-6)
    assert not torch.allclose(unmasked, unmasked_before, atol=1e-3)  # unmasked, they do
    parts = recipe(tiny_batch())
    parts["patch_loss"].backward()
    assert recipe.model.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in recipe.teacher.parameters())


def test_the_patch_centre_moves_and_round_trips_with_the_recipe_state():
    recipe = tiny_recipe()
    recipe(tiny_batch())
    assert recipe.patch_center.abs().sum() > 0
    recipe.after_step(0, 10)
    fresh = tiny_recipe()
    fresh.load_extra_state(recipe.extra_state())
    assert torch.equal(fresh.patch_center, recipe.patch_center) and fresh.step == 1


def test_bad_ibot_params_name_the_key():
    with pytest.raises(ConfigError, match="mask_ratio"):
        tiny_recipe(mask_ratio=1.5)
    with pytest.raises(ConfigError, match="patch_weight"):
        tiny_recipe(patch_weight=0.0)


def test_the_phase_warning_says_where_the_patch_targets_stand():
    monitors = {"teacher_entropy_ratio": 0.99, "teacher_student_kl": 0.001, "batch_entropy_ratio": 0.99,
                "patch_entropy_ratio": 0.6, "patch_student_kl": 0.4, "patch_batch_entropy_ratio": 0.8}
    line = phase_warning(20, 100, monitors)
    assert line.startswith("dino: step 20 of 100 (patch targets learning, entropy 0.60 of ln K): the teacher is still uniform")
    monitors["patch_entropy_ratio"] = 0.97
    assert "(patch targets uniform, entropy 0.97 of ln K)" in phase_warning(20, 100, monitors)
