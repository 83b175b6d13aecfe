"""Temperature scaling: a known temperature is recovered, and ECE drops after scaling."""

from __future__ import annotations

import numpy as np
import pytest

from unetr_app.quality.calibration import (
    apply_temperature, expected_calibration_error, fit_temperature, log_probabilities, read_temperature,
)


def _sample(rng, logits, temperature):
    p = np.exp(logits / temperature)
    p /= p.sum(axis=1, keepdims=True)
    return (rng.random(len(p))[:, None] > np.cumsum(p, axis=1)).sum(axis=1)


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (40_000, 3))
    labels = _sample(rng, logits, temperature)  # the truth: softmax(logits / T)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx([temperature] * 3, rel=0.08)


def test_per_class_temperatures_are_recovered():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (60_000, 2))
    truth = np.array([1.0, 3.0])
    labels = _sample(rng, logits / truth * truth.mean(), truth.mean())  # softmax(z_c / T_c)
    assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.1)


def test_overconfident_probabilities_become_calibrated():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (2, 20_000))
    labels = _sample(rng, logits.T, 1.0)
    p = np.exp(logits * 4.0)  # an overconfident network: logits 4x too large
    p /= p.sum(axis=0, keepdims=True)
    temperature = fit_temperature(log_probabilities(p).T, labels)
    assert temperature == pytest.approx([4.0, 4.0], rel=0.1)
    before = expected_calibration_error(p, labels)
    after = expected_calibration_error(apply_temperature(p, temperature), labels)
    assert after < 0.5 * before


def test_ece_of_a_perfect_certain_prediction_is_zero():
    labels = np.array([[0, 1], [1, 0]])
    onehot = np.stack([labels == 0, labels == 1]).astype(np.float32)
    assert expected_calibration_error(onehot, labels) == pytest.approx(0.0)
    assert expected_calibration_error(np.full((2, 2, 2), 0.5, np.float32), labels) == pytest.approx(0.0)  # 50% right at 50%


def test_read_temperature_orders_by_label_value():
    assert read_temperature({"temperature": {"spleen": 2.0}}, {"spleen": 1, "background": 0}).tolist() == [1.0, 2.0]
