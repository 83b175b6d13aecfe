"""The distill recipe with a real teacher checkpoint and a stand-in student: a frozen teacher,
the recorded checksum, and one-line errors for every bad teacher."""

from __future__ import annotations

import hashlib

import pytest
import torch

from tests.recipes.recipe_helpers import StandInStudent, batch, tiny_config, write_teacher
from unetr_app.errors import CheckpointError, ConfigError, UsageError
from unetr_app.io.checkpoint import resolve_checkpoint_path
from unetr_app.training.recipes import build_recipe, list_recipes, recipe_class
from unetr_app.training.objectives import channel_distillation, hard_distillation, soft_distillation


def distill(teacher, **params):
    return build_recipe("distill", StandInStudent(), tiny_config(), {"teacher": str(teacher), **params})


def test_recipes_are_registered_with_their_model_kwargs():
    assert {"supervised", "distill", "self_distill"} <= set(list_recipes())
    assert recipe_class("distill").model_kwargs({}) == {"distillation": True, "prediction_head": "average"}
    assert recipe_class("distill").model_kwargs({"prediction_head": "main"})["prediction_head"] == "main"
    assert recipe_class("self_distill").model_kwargs({}) == {"aux_heads": True}


def test_teacher_gets_no_gradient_and_is_unchanged_by_training(teacher_path):
    recipe = distill(teacher_path)
    teacher = recipe.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in recipe.parameters()}
    assert not any(k.startswith("teacher") for k in recipe.state_dict())
    optimizer = torch.optim.AdamW(recipe.parameters(), lr=1e-2)
    recipe.train()
    for step in range(3):
        parts = recipe(batch(step))
        optimizer.zero_grad()
        parts["loss"].backward()
        optimizer.step()
    assert not teacher.training, "recipe.train() must leave the teacher in eval mode"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert set(parts) == {"loss", "output", "task_loss", "distill_loss"}


@pytest.mark.parametrize("mode", ["soft", "hard", "channel"])
def test_loss_is_the_weighted_sum_of_task_and_the_modes_distillation_term(teacher_path, mode):
    recipe = distill(teacher_path, alpha=0.25, mode=mode)
    data = batch(1)
    parts = recipe(data)
    with torch.no_grad():
        teacher_logits = recipe.teacher.model(data["image"])
        student = recipe.model.forward_train(data["image"])["distill_logits"]
    expected = {
        "soft": lambda: soft_distillation(student, teacher_logits, 3.0),
        "hard": lambda: hard_distillation(student, teacher_logits, recipe.task_loss),
        "channel": lambda: channel_distillation(student, teacher_logits, 3.0),
    }[mode]()
    assert parts["distill_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["loss"].item() == pytest.approx(0.75 * parts["task_loss"].item() + 0.25 * parts["distill_loss"].item(), rel=1e-5)


def test_soft_is_the_default_mode(teacher_path):
    assert distill(teacher_path).params["mode"] == "soft"


def test_checkpoint_state_records_teacher_path_and_checksum_not_weights(teacher_path):
    recipe = distill(teacher_path)
    assert "teacher" not in recipe.extra_state(), "a reference is not stored where teacher weights go"
    record = recipe.extra_state()["teacher_reference"]
    teacher_file = resolve_checkpoint_path(teacher_path)  # the weights file (NAME.safetensors)
    assert record["path"] == str(teacher_file.resolve())
    assert record["sha256"] == hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    assert not any(isinstance(v, torch.Tensor) for v in record.values())
    recipe.load_extra_state({"teacher_reference": dict(record)})  # the same teacher resumes
    recipe.load_extra_state({"teacher": dict(record)})  # a run that kept its reference under the old name
    with pytest.raises(CheckpointError, match="differs from the teacher this run started with"):
        recipe.load_extra_state({"teacher_reference": {**record, "sha256": "0" * 64}})


def test_a_run_folder_is_a_teacher(tmp_path):
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    write_teacher(best)
    assert distill(tmp_path / "run").teacher.path == resolve_checkpoint_path(best).resolve()


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_distill_without_teacher_says_how_to_give_one():
    with pytest.raises(UsageError) as err:
        build_recipe("distill", StandInStudent(), tiny_config(), {})
    assert "--teacher" in one_line(err)


def test_missing_and_unreadable_teachers_are_named(tmp_path):
    with pytest.raises(CheckpointError) as err:
        distill(tmp_path / "no-such-run")
    assert "--teacher" in one_line(err) and "no-such-run" in one_line(err)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        distill(junk)
    assert "junk.pt" in one_line(err) and "not a readable" in one_line(err)


def test_a_teacher_that_never_validated_is_refused(tmp_path):
    from unetr_app.io.checkpoint import save_checkpoint
    from unetr_app.models import create_model

    config = tiny_config()
    model = create_model(config.model.name, **config.model_kwargs())
    unvalidated = tmp_path / "unvalidated.pt"
    save_checkpoint(unvalidated, {**config.checkpoint_description(), "state_dict": model.state_dict(), "best_val_dice": -1.0})
    with pytest.raises(UsageError) as err:
        distill(unvalidated)
    assert "unvalidated" in one_line(err) and "validation Dice is missing" in one_line(err) and "val_fraction" in one_line(err)


def test_teacher_with_other_spacing_or_labels_is_refused_naming_both_values(tmp_path):
    coarse = write_teacher(tmp_path / "coarse.pt", tiny_config(preprocessing={"spacing": [6.0, 6.0, 6.0]}))
    with pytest.raises(UsageError) as err:
        distill(coarse)
    assert "preprocessing.spacing [6.0, 6.0, 6.0] differs from the student's [8.0, 8.0, 8.0]" in one_line(err)
    other_labels = {"task": {"labels": {"background": 0, "spleen": 1, "liver": 2}}}
    three = write_teacher(tmp_path / "three.pt", tiny_config(**other_labels))
    with pytest.raises(UsageError) as err:
        distill(three)
    assert "'liver': 2" in one_line(err) and "labels" in one_line(err)


def test_bad_params_and_unknown_recipe_are_config_errors(teacher_path):
    with pytest.raises(ConfigError, match="^recipe.params.mode: expected one of soft, hard, channel, got 'warm'$"):
        distill(teacher_path, mode="warm")
    with pytest.raises(ConfigError, match="^recipe.params.prediction_head: expected one of average, main, distillation, got 'both'$"):
        distill(teacher_path, prediction_head="both")
    with pytest.raises(ConfigError, match="^recipe.params.mode: expected one of byot, deep_supervision, got 'ds'$"):
        build_recipe("self_distill", StandInStudent(), tiny_config(), {"mode": "ds"})
    with pytest.raises(ConfigError, match="^recipe.params.weights: expected one of halving, nnunet, equal, got 'half'$"):
        build_recipe("self_distill", StandInStudent(), tiny_config(), {"weights": "half"})
    with pytest.raises(ConfigError, match="recipe.params.temprature: not a parameter of recipe 'distill'"):
        distill(teacher_path, temprature=2.0)
    with pytest.raises(ConfigError, match="recipe.params.alpha"):
        build_recipe("self_distill", StandInStudent(), tiny_config(), {"alpha": 1.5})
    with pytest.raises(ConfigError, match="recipe.name: unknown recipe .distil.; did you mean .distill."):
        recipe_class("distil")


def test_self_distill_recipe_trains_the_stand_in():
    recipe = build_recipe("self_distill", StandInStudent(), tiny_config())
    parts = recipe(batch(2))
    parts["loss"].backward()
    assert set(parts) == {"loss", "output", "task_loss", "aux_task_loss", "kd_loss", "hint_loss"}
    assert recipe.model.aux_head.weight.grad.abs().sum() > 0 and recipe.model.hint.weight.grad.abs().sum() > 0


def test_the_deep_supervision_control_trains_on_labels_only():
    recipe = build_recipe("self_distill", StandInStudent(), tiny_config(), {"mode": "deep_supervision"})
    parts = recipe(batch(2))
    parts["loss"].backward()
    assert set(parts) == {"loss", "output", "task_loss", "aux_task_loss"}
    assert recipe.model.aux_head.weight.grad.abs().sum() > 0
    assert recipe.model.hint.weight.grad is None  # no feature hint


def test_heads_train_through_a_ddp_wrapper(tmp_path):
    """Under torchrun the recipe wraps its model for DDP: forward_train runs as the wrapper's forward."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        student = StandInStudent()
        recipe = build_recipe("self_distill", student, tiny_config())
        recipe.distribute(None)
        assert isinstance(recipe.model, torch.nn.parallel.DistributedDataParallel)
        recipe(batch(3))["loss"].backward()
        assert student.aux_head.weight.grad.abs().sum() > 0 and student.head.weight.grad.abs().sum() > 0
        assert "forward" not in vars(student), "the model's forward is never patched"
    finally:
        dist.destroy_process_group()
