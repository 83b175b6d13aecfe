"""Known answers for the recipes' loss terms and DINO's collapse monitors, on hand-made logits.

Logits are chosen so that the softmaxes are round numbers: logits (0, ln 3) give (1/4, 3/4),
equal logits give the uniform distribution.
"""

from __future__ import annotations

import math

import pytest
import torch

from unetr_app.training.objectives import (
    batch_entropy_ratio,
    channel_distillation,
    deep_supervision_weights,
    dino_monitors,
    dino_phase,
    hard_distillation,
    soft_distillation,
    teacher_entropy_ratio,
    teacher_student_kl,
)

LN3 = math.log(3.0)
KL_QUARTER_VS_HALF = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL((1/4, 3/4) || (1/2, 1/2))


def voxels(*columns) -> torch.Tensor:
    """Logits (1, K, V) from one K-vector per voxel."""
    return torch.tensor(columns, dtype=torch.float32).T.unsqueeze(0)


# --- soft (per-voxel) distillation ----------------------------------------------------------------


def test_soft_distillation_is_the_per_voxel_kl_averaged_over_voxels():
    teacher = voxels([0.0, LN3], [0.0, 0.0])  # voxel 1: (1/4, 3/4); voxel 2: uniform
    student = torch.zeros_like(teacher)  # uniform everywhere
    assert soft_distillation(student, teacher, temperature=1.0).item() == pytest.approx(KL_QUARTER_VS_HALF / 2, rel=1e-5)


def test_soft_distillation_softens_both_sides_and_scales_by_t_squared():
    teacher, student = voxels([0.0, LN3]), voxels([0.0, 0.0])
    # at T = 2 the teacher's logits are (0, ln 3 / 2): softmax (1, sqrt 3) / (1 + sqrt 3)
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1.0 + math.sqrt(3.0))
    expected = 4.0 * float((p * torch.log(p / 0.5)).sum())
    assert soft_distillation(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_soft_distillation_is_zero_when_the_student_copies_the_teacher():
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert soft_distillation(logits, logits, temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)


# --- hard distillation ----------------------------------------------------------------------------


def test_hard_distillation_gives_the_task_loss_the_teachers_argmax_as_a_label_map():
    teacher = voxels([0.0, 5.0], [2.0, 1.0], [0.0, 9.0])  # argmax 1, 0, 1
    student = torch.randn(1, 2, 3)
    seen = {}

    def task_loss(logits, label):
        seen["logits"], seen["label"] = logits, label
        return logits.sum() * 0

    hard_distillation(student, teacher, task_loss)
    assert seen["label"].shape == (1, 1, 3)  # MONAI's (B, 1, *spatial) integer labels
    assert seen["label"].flatten().tolist() == [1, 0, 1]
    assert torch.equal(seen["logits"], student)


def test_hard_distillation_with_cross_entropy_has_its_hand_value():
    from monai.losses import DiceCELoss

    teacher = voxels([0.0, 1.0], [1.0, 0.0])  # masks 1, 0
    student = voxels([0.0, LN3], [0.0, LN3])  # (1/4, 3/4) at both voxels
    ce = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0)
    expected = (-math.log(0.75) - math.log(0.25)) / 2
    assert hard_distillation(student, teacher, ce).item() == pytest.approx(expected, rel=1e-5)


# --- channel-wise distillation --------------------------------------------------------------------


def test_channel_distillation_is_a_kl_between_spatial_softmaxes_per_class_channel():
    # class 0 over the two voxels: logits (0, ln 3) -> spatial softmax (1/4, 3/4); class 1: uniform
    teacher = voxels([0.0, 0.0], [LN3, 0.0])
    student = torch.zeros_like(teacher)
    assert channel_distillation(student, teacher, temperature=1.0).item() == pytest.approx(KL_QUARTER_VS_HALF / 2, rel=1e-5)


def test_channel_distillation_ignores_a_per_channel_offset_that_per_voxel_distillation_sees():
    teacher = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    offset = torch.tensor([0.0, 5.0, -2.0]).reshape(1, 3, 1, 1)
    assert channel_distillation(teacher + offset, teacher, temperature=4.0).item() == pytest.approx(0.0, abs=1e-5)
    assert soft_distillation(teacher + offset, teacher, temperature=4.0).item() > 0.1


def test_channel_distillation_scales_by_t_squared():
    teacher, student = voxels([0.0, 0.0], [LN3, 0.0]), torch.zeros(1, 2, 2)
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1.0 + math.sqrt(3.0))  # class 0 at T = 2
    expected = 4.0 * float((p * torch.log(p / 0.5)).sum()) / 2  # class 1 adds 0; mean over 2 classes
    assert channel_distillation(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)


# --- deep supervision -----------------------------------------------------------------------------


def test_deep_supervision_weights_halve_per_head_and_sum_to_one():
    assert deep_supervision_weights(4, coarsest_zero=False) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])


def test_nnunet_gives_the_coarsest_head_weight_zero():
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(2) == pytest.approx([1.0, 0.0])


def test_too_few_heads_for_deep_supervision_is_an_error():
    assert deep_supervision_weights(1, coarsest_zero=False) == [1.0]
    with pytest.raises(ValueError, match="at least 2 heads, got 1"):
        deep_supervision_weights(1)


# --- DINO monitors --------------------------------------------------------------------------------


def test_a_uniform_teacher_has_entropy_ratio_one_and_zero_kl_to_a_uniform_student():
    teacher = torch.full((2, 3, 8), 1 / 8)
    student = torch.full((4, 3, 8), math.log(1 / 8))
    assert teacher_entropy_ratio(teacher).item() == pytest.approx(1.0)
    assert batch_entropy_ratio(teacher).item() == pytest.approx(1.0)
    assert teacher_student_kl(teacher, student).item() == pytest.approx(0.0, abs=1e-6)


def test_a_teacher_collapsed_on_one_prototype_has_both_entropies_zero():
    teacher = torch.zeros(2, 3, 8)
    teacher[..., 2] = 1.0
    assert teacher_entropy_ratio(teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert batch_entropy_ratio(teacher).item() == pytest.approx(0.0, abs=1e-6)


def test_one_hot_targets_on_different_prototypes_are_sharp_but_not_collapsed():
    teacher = torch.eye(4).unsqueeze(0)  # 1 view, 4 scans, each on its own prototype
    assert teacher_entropy_ratio(teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert batch_entropy_ratio(teacher).item() == pytest.approx(1.0)


def test_monitors_have_their_hand_values_on_a_two_prototype_teacher():
    teacher = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])  # 1 view, 1 scan, K = 4: entropy ln 2 = ln 4 / 2
    student = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.4]], [[0.25, 0.25, 0.25, 0.25]]]))
    monitors = dino_monitors(teacher, student)
    assert monitors["teacher_entropy_ratio"].item() == pytest.approx(0.5)
    assert monitors["batch_entropy_ratio"].item() == pytest.approx(0.5)
    # the only pair is (teacher view 0, student view 1): KL((1/2, 1/2, 0, 0) || uniform) = ln 2
    assert monitors["teacher_student_kl"].item() == pytest.approx(math.log(2.0), rel=1e-5)


@pytest.mark.parametrize("entropy_ratio, batch_ratio, phase", [
    (0.97, 0.99, "uniform"), (0.30, 0.01, "collapsed"), (0.50, 0.60, None),
])
def test_dino_phase_names_uniform_and_collapsed_runs(entropy_ratio, batch_ratio, phase):
    assert dino_phase(entropy_ratio, batch_ratio) == phase
