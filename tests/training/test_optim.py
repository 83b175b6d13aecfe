"""Known answers for the optimizer, weight-decay groups, LR schedules and losses named in config."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from monai.optimizers import WarmupCosineSchedule

from unetr_app.config import LossConfig, OptimizerConfig, ScheduleConfig, load_run_config, parse_overrides
from unetr_app.errors import ConfigError
from unetr_app.models import create_model
from unetr_app.training.losses import build_loss
from unetr_app.training.optim import Schedule, build_optimizer, parameter_groups, remember_initial_lr
from unetr_app.training.recipes import build_recipe


def schedule(name: str, total: int, **kwargs) -> Schedule:
    return Schedule(ScheduleConfig(name=name, **kwargs), total)


def test_warmup_cosine_is_monai_warmup_cosine_step_for_step():
    ours = schedule("warmup_cosine", 100, warmup_fraction=0.1)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    monai = WarmupCosineSchedule(optimizer, warmup_steps=10, t_total=100)
    for t in range(101):
        assert ours.factor(t) == pytest.approx(optimizer.param_groups[0]["lr"], abs=1e-12), t
        optimizer.step()
        monai.step()
    assert ours.factor(10) == 1.0 and ours.factor(5) == 0.5 and ours.factor(100) == 0.0


def test_warmup_cooldown_known_values():
    s = schedule("warmup_cooldown", 1000, warmup_steps=100, cooldown_fraction=0.2)
    assert s.factor(50) == 0.5  # half way up
    assert s.factor(100) == 1.0  # end of warmup
    assert s.factor(500) == 1.0 and s.factor(800) == 1.0  # constant until the cooldown starts
    assert s.factor(900) == 0.5  # mid-cooldown
    assert s.factor(1000) == 0.0  # the budget's end


def test_poly_is_nnunet_formula():
    s = schedule("poly", 200)
    assert s.factor(0) == 1.0
    assert s.factor(100) == pytest.approx(0.5**0.9)
    assert s.factor(200) == 0.0


def test_warmup_fraction_scales_with_the_budget():
    assert schedule("warmup_cosine", 825, warmup_fraction=0.04).warmup == 33
    assert schedule("warmup_cosine", 16500, warmup_fraction=0.04).warmup == 660


def _groups(model, **optimizer):
    groups = parameter_groups(model, OptimizerConfig(lr=1e-3, **optimizer))
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: ({names[id(p)] for p in g["params"]}, g["weight_decay"]) for g in groups}


def test_weight_decay_groups_of_a_vit_backed_model():
    model = create_model("unetr", img_size=[32, 32, 32], feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2)
    groups = _groups(model, weight_decay=0.05, head_weight_decay=0.3)
    body, body_wd = groups["body"]
    body_free, free_wd = groups["body_no_decay"]
    head, head_wd = groups["head"]
    head_free, _ = groups["head_no_decay"]
    assert (body_wd, head_wd, free_wd) == (0.05, 0.3, 0.0)
    assert "vit.blocks.0.attn.qkv.weight" in body and "vit.blocks.0.mlp.linear1.weight" in body
    assert "vit.patch_embedding.position_embeddings" in body_free  # position embedding: no decay
    assert {"vit.blocks.0.norm1.weight", "vit.blocks.0.norm1.bias", "vit.norm.weight"} <= body_free
    assert "out.conv.conv.weight" in head and "decoder5.transp_conv.conv.weight" in head and "encoder1.layer.conv1.conv.weight" in head
    assert head_free == {"out.conv.conv.bias"}
    assert not any(n.startswith("vit.") for n in head | head_free) and all(n.startswith("vit.") for n in body | body_free)
    assert sum(len(g[0]) for g in groups.values()) == len(list(model.parameters())), "every parameter in one group"


def test_weight_decay_groups_of_a_classifier_with_tokens():
    model = create_model("deit_tiny_distilled_patch16", task="classification", spatial_dims=2, in_channels=1, num_classes=3, img_size=[32, 32])
    groups = _groups(model, weight_decay=0.1)
    assert {"cls_token", "dist_token"} <= groups["body_no_decay"][0]
    assert groups["head"] == ({"head.weight", "head_dist.weight"}, 0.1), "head_weight_decay null: same as the body"
    assert groups["head_no_decay"][0] == {"head.bias", "head_dist.bias"}


def test_weight_decay_groups_of_a_cnn():
    model = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    groups = _groups(model, weight_decay=1e-4, head_weight_decay=1e-2)
    assert groups["head"] == ({"final_conv.weight"}, 1e-2) and groups["head_no_decay"][0] == {"final_conv.bias"}
    assert "conv_0.conv_0.conv.weight" in groups["body"][0]
    assert all(p.endswith(("bias", "weight")) for p in groups["body_no_decay"][0])
    batch_norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm3d)}
    assert {f"{n}.weight" for n in batch_norms} <= groups["body_no_decay"][0]


def test_encoder_lr_scale_slows_only_the_encoder_through_the_whole_schedule():
    model = create_model("unetr", img_size=[32, 32, 32], feature_size=8, hidden_size=64, mlp_dim=128, num_heads=2)
    config = OptimizerConfig(lr=1e-3, encoder_lr_scale=0.1)
    optimizer = build_optimizer(parameter_groups(model, config), config)
    remember_initial_lr(optimizer)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"body": 1e-4, "body_no_decay": 1e-4, "head": 1e-3, "head_no_decay": 1e-3})
    s = schedule("warmup_cosine", 100, warmup_fraction=0.1)
    s.apply(optimizer, 55)  # mid-cosine: every group at its own LR times the same factor
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["body"] == pytest.approx(1e-4 * s.factor(55)) and lrs["head"] == pytest.approx(1e-3 * s.factor(55))
    with pytest.raises(ValueError, match="encoder_lr_scale"):
        OptimizerConfig(lr=1e-3, encoder_lr_scale=0.0)


@pytest.mark.parametrize(("name", "kind"), [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("adafactor", torch.optim.Adafactor)])
def test_optimizers_by_name_step_with_their_groups(name, kind):
    model = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4))
    config = OptimizerConfig(name=name, lr=1e-2, weight_decay=1e-3, head_weight_decay=1e-1)
    optimizer = build_optimizer(parameter_groups(model, config), config)
    assert isinstance(optimizer, kind)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 0.0, 1e-1, 0.0]
    before = model.final_conv.weight.detach().clone()
    model(torch.rand(2, 1, 32, 32)).mean().backward()
    optimizer.step()
    assert not torch.equal(before, model.final_conv.weight)


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal", "dice", "ce"])
def test_losses_by_name_are_zero_free_on_a_perfect_prediction(name):
    loss = build_loss(LossConfig(name=name))
    labels = torch.zeros(1, 1, 8, 8, 8)
    labels[..., 2:6, 2:6, 2:6] = 1
    perfect = torch.cat([1 - labels, labels], dim=1) * 40 - 20  # logits that agree with the labels
    assert loss(perfect, labels) < 1e-3 < loss(-perfect, labels)


def test_ce_is_plain_cross_entropy():
    logits, labels = torch.randn(2, 3, 4, 4, 4), torch.randint(0, 3, (2, 1, 4, 4, 4))
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 0])
    assert build_loss(LossConfig(name="ce"))(logits, labels) == pytest.approx(expected.item(), rel=1e-5)


def test_a_loss_under_cpu_autocast_is_the_float32_loss_of_its_bfloat16_logits():
    torch.manual_seed(0)
    logits = (torch.randn(2, 2, 32, 32, 32) * 3).bfloat16()
    labels = (torch.rand(2, 1, 32, 32, 32) > 0.95).long()  # a small foreground, as a spleen's
    expected = DiceCELoss(to_onehot_y=True, softmax=True)(logits.float(), labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = build_loss(LossConfig(name="dice_ce"))(logits, labels)
    # CPU autocast leaves softmax and the Dice sums in bfloat16: about 7e-5 off here
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.name=adam", "optimizer.name: unknown optimizer 'adam'; did you mean 'adamw'? choose one of adamw, sgd, adafactor"),
        ("schedule.name=poly2", "schedule.name: unknown schedule 'poly2'; did you mean 'poly'?"),
        ("loss.name=focal", "loss.name: unknown loss 'focal'"),
        ("loss.params={gama: 2}", None),
    ],
)
def test_unknown_names_are_one_line_errors_naming_value_and_fix(override, message):
    if message is None:  # a bad loss parameter fails when the loss is built, naming the key
        config = load_run_config("spleen", profile="cpu-demo", overrides=parse_overrides(["loss.name=dice_focal", override]))
        with pytest.raises(ConfigError, match="loss.params: .*gama"):
            build_loss(config.loss)
        return
    with pytest.raises(ConfigError) as err:
        load_run_config("spleen", profile="cpu-demo", overrides=parse_overrides([override]))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_recipe_is_a_one_line_error_with_a_suggestion():
    config = load_run_config("spleen", profile="cpu-demo")
    with pytest.raises(ConfigError) as err:
        build_recipe("supervized", torch.nn.Linear(1, 1), config)
    assert "recipe.name: unknown recipe 'supervized'; did you mean 'supervised'?" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="recipe.params.temperature: not a parameter of recipe 'supervised'; known: none"):
        build_recipe("supervised", torch.nn.Linear(1, 1), config, {"temperature": 3})


def test_cooldown_fraction_rounds_to_whole_steps():
    s = schedule("warmup_cooldown", 10, cooldown_fraction=0.25)  # 2.5 -> 2 steps of cooldown
    assert [s.factor(t) for t in range(7, 11)] == [1.0, 1.0, 0.5, 0.0]
    assert math.isclose(schedule("warmup_cooldown", 10).factor(10), 0.0)
