"""Known answers for the DINO recipe: loss, centre, EMA, schedules, head, which crops the teacher sees."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unetr_app.errors import ConfigError
from unetr_app.models import create_model
from unetr_app.training.recipes import build_recipe, list_recipes
from unetr_app.training.recipes.dino import (
    DinoParams,
    dino_loss,
    ema_update,
    teacher_momentum,
    teacher_temperature,
    updated_center,
)
from unetr_app.training.objectives import phase_warning
from unetr_app.training.recipes.dino_network import DinoHead

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}
PARAMS = {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8, "local_crops": 3, "local_size": [16, 16, 16]}


def tiny_recipe(**params):
    torch.manual_seed(0)
    model = create_model("vit_small_patch16", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[32, 32, 32], **TINY_VIT)
    return build_recipe("dino", model, None, {**PARAMS, **params})


def tiny_batch(batch=2, local=3):
    return {"global_crops": torch.randn(batch, 2, 1, 32, 32, 32), "local_crops": torch.randn(batch, local, 1, 16, 16, 16)}


def test_dino_is_registered():
    assert "dino" in list_recipes()


def test_loss_equals_the_formula_on_toy_logits():
    rng = np.random.default_rng(0)
    student, teacher, center = rng.normal(size=(4, 3, 5)), rng.normal(size=(2, 3, 5)), rng.normal(size=(1, 5))
    ts, tt = 0.1, 0.04

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    expected, pairs = 0.0, 0
    for t in range(2):
        p = softmax((teacher[t] - center) / tt)
        for s in range(4):
            if s == t:
                continue
            log_q = np.log(softmax(student[s] / ts))
            expected += np.mean(-(p * log_q).sum(-1))
            pairs += 1
    expected /= pairs
    assert pairs == 2 * 4 - 2
    got = dino_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(center), ts, tt)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_center_update():
    center = torch.tensor([[1.0, -1.0, 0.0]])
    teacher = torch.tensor([[[2.0, 0.0, 4.0], [0.0, 2.0, 0.0]], [[4.0, 2.0, 0.0], [2.0, 0.0, 0.0]]])  # (V=2, B=2, K=3)
    # batch mean over 4 rows = [2, 1, 1]; 0.9 * center + 0.1 * mean
    expected = torch.tensor([[0.9 + 0.2, -0.9 + 0.1, 0.1]])
    assert torch.allclose(updated_center(center, teacher, 0.9), expected)


def test_ema_update_at_a_given_momentum():
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.75)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.75 * t0 + 0.25 * s)


def test_teacher_momentum_is_a_cosine_from_start_to_one():
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(25, 100, 0.996) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)


def test_teacher_temperature_warms_up_linearly_then_stays():
    params = DinoParams(teacher_temp=0.04, teacher_temp_final=0.07, teacher_temp_warmup=0.3)
    assert teacher_temperature(0, 100, params) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, params) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, params) == pytest.approx(0.07)
    assert teacher_temperature(99, 100, params) == pytest.approx(0.07)


def test_last_layer_is_weight_normalised_with_g_fixed_to_one():
    torch.manual_seed(0)
    head = DinoHead(8, 10, hidden_dim=16, bottleneck_dim=4)
    optimizer = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        head(torch.randn(5, 8)).square().sum().backward()
        optimizer.step()
    magnitude = head.last_layer.parametrizations.weight.original0
    assert not magnitude.requires_grad
    assert torch.allclose(magnitude, torch.ones_like(magnitude))
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(10), atol=1e-6)


def test_teacher_never_receives_a_local_crop():
    recipe = tiny_recipe()
    seen = []
    recipe.teacher.encoder.patch_embedding.patch_embeddings.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    recipe(tiny_batch())
    assert seen == [(2 * 2, 1, 32, 32, 32)]  # both global views of both scans, nothing else


def test_student_sees_every_view_and_the_loss_trains_the_student_only():
    recipe = tiny_recipe()
    seen = []
    recipe.model.encoder.patch_embedding.patch_embeddings.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    parts = recipe(tiny_batch())
    assert seen == [(4, 1, 32, 32, 32), (6, 1, 16, 16, 16)]
    parts["loss"].backward()
    assert all(p.grad is None for p in recipe.teacher.parameters())
    assert recipe.model.cls_token.grad is not None


def test_after_step_moves_the_teacher_towards_the_student_and_state_round_trips():
    recipe = tiny_recipe(momentum=0.5)
    with torch.no_grad():
        for p in recipe.model.parameters():
            p.add_(1.0)
    teacher_before = [p.clone() for p in recipe.teacher.parameters()]
    recipe(tiny_batch())
    recipe.after_step(1, 10)  # first step: momentum 0.5
    for t, t0, s in zip(recipe.teacher.parameters(), teacher_before, recipe.model.parameters()):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s, atol=1e-6)
    state = recipe.extra_state()
    fresh = tiny_recipe(momentum=0.5)
    fresh.load_extra_state(state)
    assert fresh.step == 1 and torch.equal(fresh.center, recipe.center)
    assert all(torch.equal(a, b) for a, b in zip(fresh.teacher.state_dict().values(), recipe.teacher.state_dict().values()))


def test_bad_recipe_params_name_the_key():
    with pytest.raises(ConfigError, match="local_scale"):
        tiny_recipe(local_scale=[0.5, 0.1])


def test_a_model_without_attention_is_a_one_line_error():
    model = create_model("convmixer_768_32", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[32, 32, 32], embed_dim=32, depth=2, kernel_size=3, patch_size=16)
    from unetr_app.errors import UsageError

    with pytest.raises(UsageError, match="no attention layers"):
        build_recipe("dino", model, None, PARAMS)


# --- the small-scale remedies: eval-mode teacher, frozen last layer, constant temperature, monitors ---


def test_the_teacher_stays_in_eval_mode_and_only_the_student_drops_paths():
    torch.manual_seed(0)
    model = create_model("vit_small_patch16", task="segmentation", spatial_dims=3, in_channels=1, out_channels=2,
                         img_size=[32, 32, 32], drop_path_rate=0.5, **TINY_VIT)
    recipe = build_recipe("dino", model, None, PARAMS).train()
    assert recipe.model.training and not recipe.teacher.training
    x = torch.randn(8, 1, 32, 32, 32)  # 8 scans: two draws of the drop masks differ unless 2^-8 luck
    with torch.no_grad():
        assert torch.equal(recipe.teacher(x)["logits"], recipe.teacher(x)["logits"])  # no stochastic depth
        assert not torch.equal(recipe.model(x)["logits"], recipe.model(x)["logits"])  # the student's does apply


def test_the_last_layer_gets_no_gradient_for_the_frozen_fraction_of_the_run():
    recipe = tiny_recipe(freeze_last_layer=0.5)
    recipe.steps_planned.fill_(4)
    direction = recipe.model.head.last_layer.parametrizations.weight.original1
    for step, frozen in ((0, True), (1, True), (2, False)):
        recipe.steps_done.fill_(step)
        recipe.zero_grad()
        recipe(tiny_batch())["loss"].backward()
        assert (direction.grad.abs().sum() == 0) == frozen, f"step {step}"
        assert recipe.model.head.mlp[0].weight.grad.abs().sum() > 0  # the rest of the head trains throughout


def test_equal_start_and_final_temperatures_keep_the_teacher_temperature_constant():
    params = DinoParams(teacher_temp=0.02, teacher_temp_final=0.02, teacher_temp_warmup=0.3)
    assert {teacher_temperature(step, 100, params) for step in (0, 15, 30, 99)} == {0.02}


def test_monitors_are_loss_parts_and_the_kl_is_the_loss_minus_the_teachers_entropy():
    parts = tiny_recipe()(tiny_batch())
    ratios = parts["teacher_entropy_ratio"].item(), parts["batch_entropy_ratio"].item()
    assert all(0.0 <= r <= 1.0 + 1e-6 for r in ratios)
    # every teacher view meets as many student views, so the mean cross-entropy over pairs is
    # the mean teacher entropy plus the mean KL
    entropy = parts["teacher_entropy_ratio"].item() * math.log(PARAMS["out_dim"])
    assert parts["teacher_student_kl"].item() == pytest.approx(parts["loss"].item() - entropy, abs=1e-4)


def test_a_run_still_uniform_a_fifth_into_its_budget_is_one_warning_line(caplog):
    recipe = tiny_recipe()
    recipe.monitors = {"teacher_entropy_ratio": 0.99, "teacher_student_kl": 0.001, "batch_entropy_ratio": 0.99}
    with caplog.at_level("WARNING", logger="unetr_app.training.recipes.dino"):
        for step in range(1, 6):
            recipe.after_step(step, 10)
    assert len(caplog.records) == 1  # at step 2 of 10, once
    message = caplog.records[0].getMessage()
    assert message.startswith("dino: step 2 of 10: the teacher is still uniform (entropy 0.99 of ln K") and "\n" not in message
    assert "teacher_temp" in message


def test_a_collapsed_run_is_named_and_a_learning_one_is_not():
    collapsed = phase_warning(20, 100, {"teacher_entropy_ratio": 0.1, "teacher_student_kl": 0.5, "batch_entropy_ratio": 0.01})
    assert "collapsed onto one prototype" in collapsed and "center_momentum" in collapsed
    assert phase_warning(20, 100, {"teacher_entropy_ratio": 0.6, "teacher_student_kl": 0.5, "batch_entropy_ratio": 0.7}) is None


def test_koleo_hand_values():
    from unetr_app.training.objectives import koleo_loss

    # unit vectors at 0, 90 and 180 degrees: every nearest neighbour is sqrt(2) away
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert koleo_loss(points).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    # scale does not matter (normalised first); a near-duplicate is penalised hard
    assert koleo_loss(5 * points).item() == pytest.approx(-math.log(math.sqrt(2)), abs=1e-6)
    close = torch.tensor([[1.0, 0.0], [1.0, 1e-3], [-1.0, 0.0]])
    assert koleo_loss(close).item() > 4.0
    assert koleo_loss(points[:1]).item() == 0.0


def test_koleo_weight_adds_the_term_on_each_global_views_bottleneck_and_trains_the_encoder():
    plain, koleo = tiny_recipe()(tiny_batch()), tiny_recipe(koleo_weight=0.5)
    seen = []
    koleo.model.register_forward_hook(lambda m, args, kwargs, out: seen.append(out["bottleneck"].detach()), with_kwargs=True)
    parts = koleo(tiny_batch())
    assert "koleo" not in plain and parts["koleo"].item() != 0
    # the bottlenecks of global views 0 and 1 for the 2 scans come first, view-major
    from unetr_app.training.objectives import koleo_loss

    expected = (koleo_loss(seen[0][0:2]) + koleo_loss(seen[0][2:4])) / 2
    assert parts["koleo"].item() == pytest.approx(expected.item(), rel=1e-5)
    koleo.zero_grad()
    parts["koleo"].backward()
    assert koleo.model.encoder.patch_embedding.patch_embeddings.weight.grad.abs().sum() > 0
