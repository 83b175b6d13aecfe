"""Known-answer tests: the distillation losses equal their formulas, computed here by hand."""

from __future__ import annotations

import math

import pytest
import torch

from monai.losses import DiceCELoss

from unetr_app.training.objectives import hard_distillation, soft_distillation
from unetr_app.training.recipes.distill import distillation_loss
from unetr_app.training.recipes.self_distill import feature_hint_loss, head_weights, self_distillation_loss

CROSS_ENTROPY = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0)

# (batch 1, 3 classes, 2 x 1 x 1 voxels): voxel 0 and voxel 1 as plain lists per class
STUDENT = [[2.0, -1.0], [0.5, 0.0], [-1.0, 3.0]]
TEACHER = [[0.1, 4.0], [2.0, 1.0], [0.3, -2.0]]  # teacher's argmax: class 1 at voxel 0, class 0 at voxel 1


def as_logits(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).reshape(1, len(values), len(values[0]), 1, 1)


def softmax(row, temperature=1.0):
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def voxel(values, index):
    return [values[c][index] for c in range(len(values))]


def test_hard_distillation_is_the_task_loss_on_the_teachers_argmax():
    by_hand = []
    for i in range(2):
        target = max(range(3), key=lambda c: voxel(TEACHER, i)[c])
        by_hand.append(-math.log(softmax(voxel(STUDENT, i))[target]))
    expected = sum(by_hand) / 2
    assert hard_distillation(as_logits(STUDENT), as_logits(TEACHER), CROSS_ENTROPY).item() == pytest.approx(expected, rel=1e-6)
    got = distillation_loss(as_logits(STUDENT), as_logits(TEACHER), "hard", 3.0, CROSS_ENTROPY).item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_distillation_is_t_squared_kl_teacher_to_student(temperature):
    by_hand = []
    for i in range(2):
        p_t, p_s = softmax(voxel(TEACHER, i), temperature), softmax(voxel(STUDENT, i), temperature)
        by_hand.append(sum(t * math.log(t / s) for t, s in zip(p_t, p_s)))
    expected = temperature**2 * sum(by_hand) / 2
    got = soft_distillation(as_logits(STUDENT), as_logits(TEACHER), temperature).item()
    assert got == pytest.approx(expected, rel=1e-6)
    got = distillation_loss(as_logits(STUDENT), as_logits(TEACHER), "soft", temperature, CROSS_ENTROPY).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_soft_distillation_is_zero_when_the_student_matches_the_teacher_and_positive_otherwise():
    teacher = as_logits(TEACHER)
    assert soft_distillation(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_distillation(as_logits(STUDENT), teacher, 2.0).item() > 0.1


def test_feature_hint_is_the_mean_squared_distance_and_names_mismatched_shapes():
    hint = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 2, 2, 1, 1)
    target = torch.tensor([1.0, 0.0, 0.0, 2.0]).reshape(1, 2, 2, 1, 1)
    assert feature_hint_loss(hint, target).item() == pytest.approx((0 + 4 + 9 + 4) / 4)
    with pytest.raises(ValueError, match=r"\(1, 2, 2, 1, 1\).*\(1, 4, 2, 1, 1\)"):
        feature_hint_loss(hint, torch.zeros(1, 4, 2, 1, 1))


def _outputs(requires_grad: bool = True) -> dict:
    deepest = as_logits(TEACHER).requires_grad_(requires_grad)
    aux = [as_logits(STUDENT).requires_grad_(requires_grad), (2 * as_logits(STUDENT)).detach().requires_grad_(requires_grad)]
    deep_features = torch.tensor([1.0, -1.0, 0.5, 2.0], dtype=torch.float64).reshape(1, 2, 2, 1, 1).requires_grad_(requires_grad)
    hints = [torch.zeros_like(deep_features, requires_grad=requires_grad), torch.ones_like(deep_features).requires_grad_(requires_grad)]
    return {"logits": deepest, "aux_logits": aux, "hint_features": hints, "deep_features": deep_features}


def mean_of_logits(logits, label):
    """A stand-in task loss with an obvious value (the known answers below do not need DiceCE)."""
    return logits.mean()


def test_self_distillation_parts_and_total_match_the_formula():
    outputs = _outputs()
    alpha, temperature, weight = 0.3, 3.0, 0.03
    parts = self_distillation_loss(outputs, None, mean_of_logits, alpha, temperature, weight)

    deep_task = sum(map(sum, TEACHER)) / 6
    aux_task = sum(map(sum, STUDENT)) / 6 * (1 + 2)
    kd = 0.0
    for scale in (1, 2):
        student = [[scale * v for v in row] for row in STUDENT]
        for i in range(2):
            p_t, p_s = softmax(voxel(TEACHER, i), temperature), softmax(voxel(student, i), temperature)
            kd += temperature**2 * sum(t * math.log(t / s) for t, s in zip(p_t, p_s)) / 2
    features = [1.0, -1.0, 0.5, 2.0]
    hint = sum(f**2 for f in features) / 4 + sum((1 - f) ** 2 for f in features) / 4
    assert parts["task_loss"].item() == pytest.approx(deep_task)
    assert parts["aux_task_loss"].item() == pytest.approx(aux_task)
    assert parts["kd_loss"].item() == pytest.approx(kd, rel=1e-6)
    assert parts["hint_loss"].item() == pytest.approx(hint)
    expected = (1 - alpha) * (deep_task + aux_task) + alpha * kd + weight * hint
    assert parts["loss"].item() == pytest.approx(expected, rel=1e-6)


def test_the_deepest_head_learns_only_from_the_labels():
    """Its logits and features act as the teacher detached: their gradient is the task term's alone."""
    outputs = _outputs()
    alpha = 0.3
    self_distillation_loss(outputs, None, mean_of_logits, alpha, 3.0, 0.03)["loss"].backward()
    task_only = torch.full_like(outputs["logits"], (1 - alpha) / 6)  # d/dx of (1 - alpha) * mean over 6 values
    assert torch.allclose(outputs["logits"].grad, task_only)
    assert outputs["deep_features"].grad is None
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in outputs["hint_features"])


def test_self_distillation_needs_one_hint_per_aux_head():
    outputs = _outputs(requires_grad=False)
    outputs["hint_features"] = outputs["hint_features"][:1]
    with pytest.raises(ValueError, match="2 auxiliary heads and 1 hint"):
        self_distillation_loss(outputs, None, mean_of_logits, 0.3, 3.0, 0.03)


def test_weighted_self_distillation_weights_every_term_of_a_head_and_deep_supervision_drops_the_teacher():
    outputs = _outputs(requires_grad=False)
    alpha, temperature, weight = 0.3, 3.0, 0.03
    equal = self_distillation_loss(outputs, None, mean_of_logits, alpha, temperature, weight)
    # 3 heads, the deepest first: halving gives (4, 2, 1) / 7; aux heads come coarsest first (1/7, 2/7)
    weights = head_weights("halving", 3)
    assert weights == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    parts = self_distillation_loss(outputs, None, mean_of_logits, alpha, temperature, weight, weights)
    aux_means = [sum(map(sum, STUDENT)) / 6 * scale for scale in (1, 2)]  # coarsest aux head first
    assert parts["task_loss"].item() == pytest.approx(equal["task_loss"].item())  # logged unweighted
    assert parts["aux_task_loss"].item() == pytest.approx(aux_means[0] / 7 + aux_means[1] * 2 / 7)
    control = self_distillation_loss(outputs, None, mean_of_logits, alpha, temperature, weight, weights, "deep_supervision")
    assert set(control) == {"loss", "task_loss", "aux_task_loss"}
    assert control["loss"].item() == pytest.approx(4 / 7 * parts["task_loss"].item() + parts["aux_task_loss"].item())


def test_nnunet_weighting_gives_the_coarsest_head_nothing():
    outputs = _outputs()
    parts = self_distillation_loss(outputs, None, mean_of_logits, 0.3, 3.0, 0.03, head_weights("nnunet", 3))
    parts["loss"].backward()
    coarsest, middle = outputs["aux_logits"]
    assert coarsest.grad.abs().sum() == 0 and middle.grad.abs().sum() > 0
    assert head_weights("equal", 3) == [1.0, 1.0, 1.0]
