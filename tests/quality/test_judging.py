"""Known answers for the judging of quality estimates."""

from __future__ import annotations

import numpy as np
import pytest

from unetr_app.quality.judging import aurc, failure_auroc, judge, plot_judgement, risk_coverage, spearman


def test_risk_coverage_known_values():
    measured = [0.9, 0.1, 0.5]
    coverage, selective = risk_coverage([0.1, 0.9, 0.5], measured)  # a perfect ranking
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert selective.tolist() == pytest.approx([0.1, 0.3, 0.5])
    assert aurc([0.1, 0.9, 0.5], measured) == pytest.approx(0.3)
    assert aurc([0.9, 0.1, 0.5], measured) == pytest.approx((0.9 + 0.7 + 0.5) / 3)  # the worst ranking


def test_auroc_and_spearman():
    assert failure_auroc([0.9, 0.8, 0.1, 0.2], [0.1, 0.3, 0.9, 0.8]) == 1.0
    # failures have risks 0.1, 0.8; successes 0.9, 0.2: only 0.8 > 0.2 of the four pairs
    assert failure_auroc([0.1, 0.8, 0.9, 0.2], [0.1, 0.3, 0.9, 0.8]) == 0.25
    assert failure_auroc([0.1, 0.2], [0.9, 0.8]) is None  # no failures
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_plot_and_summary(tmp_path):
    rng = np.random.default_rng(0)
    measured = rng.uniform(0, 1, 20)
    summary = judge(measured, 1 - measured, measured)
    assert summary["spearman_predicted_dice"] == pytest.approx(1.0) and summary["aurc"] == pytest.approx(summary["aurc_best"])
    plot_judgement(tmp_path / "qc.png", measured, 1 - measured, measured)
    assert (tmp_path / "qc.png").read_bytes()[:4] == b"\x89PNG"
