"""The numbers behind `unetr compare`'s claims, on hand-made per-case Dice with known answers:
the paired bootstrap interval, the pairing by seed and case, the per-model rows, and post-processing
decided on the other folds only."""

from __future__ import annotations

import numpy as np
import pytest

from unetr_app.errors import UsageError
from unetr_app.evaluation.comparison import case_matrix, markdown_table, model_rows, paired_bootstrap, paired_differences
from unetr_app.evaluation.postprocess import Postprocessing, ValidationCase, case_dice


def _signs(n: int) -> np.ndarray:
    return np.array([1.0, -1.0] * (n // 2))


def test_interval_of_a_two_point_difference_is_the_binomial_quantiles():
    # 40 cases, differences 0.05 +- 0.1: a resample's mean is 0.05 + 0.1 (2K/40 - 1), K ~ Binomial(40, 1/2).
    # P(K <= 13) = 0.019 < 0.025 < P(K <= 14) = 0.040, so the 2.5% point is K = 14 (0.02) and, by symmetry,
    # the 97.5% point K = 26 (0.08).
    interval = paired_bootstrap(0.05 + 0.1 * _signs(40), seed=0)
    assert interval["mean"] == pytest.approx(0.05)
    assert (interval["low"], interval["high"]) == (pytest.approx(0.02), pytest.approx(0.08))
    assert interval["low"] > 0  # the interval excludes 0: a difference these cases support


def test_interval_includes_zero_when_the_cases_do_not_decide():
    interval = paired_bootstrap(0.01 + 0.1 * _signs(40), seed=0)  # same quantiles, shifted: [-0.02, 0.04]
    assert (interval["low"], interval["high"]) == (pytest.approx(-0.02), pytest.approx(0.04))
    assert interval["low"] < 0 < interval["high"]


def test_the_rng_seed_fixes_the_interval():
    rng = np.random.default_rng(3)
    d = rng.normal(0.02, 0.05, size=(3, 17))
    assert paired_bootstrap(d, seed=5) == paired_bootstrap(d, seed=5)


def test_seed_to_seed_spread_widens_the_interval():
    # seed 0 beats the reference by 0.1 on every case, seed 1 ties: resampling cases changes nothing,
    # resampling the two seeds gives 0.1, 0.05 or 0 (probabilities 1/4, 1/2, 1/4): the interval is [0, 0.1].
    d = np.array([[0.1] * 10, [0.0] * 10])
    interval = paired_bootstrap(d, seed=0)
    assert interval["mean"] == pytest.approx(0.05)
    assert (interval["low"], interval["high"]) == (pytest.approx(0.0), pytest.approx(0.1))
    assert interval["seeds"] == 2 and interval["cases"] == 10


def _runs(model: str, per_seed: dict[int, dict[str, float]], folds: int = 2, budget: str = "steps") -> list[dict]:
    """A model's runs: each seed's cases dealt over `folds` folds, each fold's dict in reverse order."""
    runs = []
    for seed, scores in per_seed.items():
        names = list(scores)
        for fold in range(folds):
            mine = names[fold::folds][::-1]
            runs.append({"model": model, "seed": seed, "fold": fold, "budget": budget, "parameters": 1_000_000, "case_dice": {c: scores[c] for c in mine},
                         "status": "already done", "steps": 7 if budget == "time" else 10})
    return runs


CASES = [f"case_{i:02d}" for i in range(8)]


def test_pairing_is_by_seed_and_case_name_not_by_order():
    wide = np.linspace(0.2, 0.9, len(CASES))  # the cases differ far more than the models do
    reference = _runs("ref", {0: dict(zip(CASES, wide)), 1: dict(zip(CASES, wide - 0.05))})
    better = _runs("new", {0: dict(zip(CASES[::-1], (wide + 0.01)[::-1])), 1: dict(zip(CASES, wide - 0.04))}, folds=4)  # other folds, other order
    d = paired_differences(reference + better, "new", "ref")
    np.testing.assert_allclose(d, np.full((2, len(CASES)), 0.01), atol=1e-12)
    interval = paired_bootstrap(d)
    assert interval["low"] == pytest.approx(0.01) and interval["high"] == pytest.approx(0.01)
    seeds, cases, matrix = case_matrix(reference, "ref")
    assert seeds == [0, 1] and cases == CASES and matrix[1, 0] == pytest.approx(0.15)


def test_models_scored_on_other_cases_or_seeds_are_not_paired():
    reference = _runs("ref", {0: dict.fromkeys(CASES, 0.5)})
    fewer = _runs("new", {0: dict.fromkeys(CASES[:-1], 0.6)})
    with pytest.raises(UsageError, match="different cases or have no finished seed in common"):
        paired_differences(reference + fewer, "new", "ref")
    other_seed = _runs("new", {1: dict.fromkeys(CASES, 0.6)})
    with pytest.raises(UsageError, match="different cases or have no finished seed in common"):
        paired_differences(reference + other_seed, "new", "ref")
    overlapping = _runs("ref", {0: dict.fromkeys(CASES, 0.5)}) + _runs("ref", {0: dict.fromkeys(CASES[:1], 0.5)})
    with pytest.raises(UsageError, match="scored twice"):
        case_matrix(overlapping, "ref")


def test_a_seed_with_a_failed_fold_is_left_out_of_means_and_pairs():
    reference = _runs("ref", {0: dict.fromkeys(CASES, 0.5), 1: dict.fromkeys(CASES, 0.7)})
    new = _runs("new", {0: dict.fromkeys(CASES, 0.6), 1: dict.fromkeys(CASES, 0.9)})
    new[-1]["case_dice"], new[-1]["status"] = {}, "failed"  # seed 1's last fold
    assert case_matrix(new, "new")[0] == [0]
    np.testing.assert_allclose(paired_differences(reference + new, "new", "ref"), np.full((1, 8), 0.1), atol=1e-12)
    rows = {r["model"]: r for r in model_rows(reference + new, reference="ref")}
    assert rows["new"]["seeds"] == 1 and rows["new"]["dice_mean"] == pytest.approx(0.6) and rows["ref"]["seeds"] == 2


def test_rows_give_mean_and_spread_over_seeds_and_the_paired_difference_under_each_budget():
    ref_scores = {0: dict(zip(CASES, [0.6] * 8)), 1: dict(zip(CASES, [0.8] * 8))}
    new_scores = {0: dict(zip(CASES, [0.7] * 8)), 1: dict(zip(CASES, [0.9] * 8))}
    runs = _runs("ref", ref_scores) + _runs("new", new_scores) + _runs("ref", {0: dict.fromkeys(CASES, 0.5)}, budget="time") \
        + _runs("new", {0: dict.fromkeys(CASES, 0.3)}, budget="time")
    for run in runs:  # ref still learning in its last quarter, new flat
        run["history"] = [{"step": 5, "val_dice": 0.2}, {"step": 7, "val_dice": 0.4}, {"step": 10, "val_dice": 0.6 if run["model"] == "ref" else 0.4}]
    rows = {r["model"]: r for r in model_rows(runs, reference="ref")}
    assert rows["ref"]["late_val_gain"] == pytest.approx(0.2) and rows["new"]["late_val_gain"] == pytest.approx(0.0)
    assert rows["ref"]["dice_mean"] == pytest.approx(0.7) and rows["new"]["dice_mean"] == pytest.approx(0.8)
    assert rows["new"]["dice_seed_std"] == pytest.approx(np.std([0.7, 0.9], ddof=1))
    assert rows["new"]["seeds"] == 2 and rows["new"]["folds"] == 2 and rows["new"]["dice_fold_std"] == pytest.approx(0.0)
    assert rows["new"]["diff_to_reference"] == pytest.approx(0.1)
    assert rows["new"]["diff_low"] == pytest.approx(0.1) and rows["new"]["diff_high"] == pytest.approx(0.1)
    assert "diff_to_reference" not in rows["ref"]
    # equal time: the ranking turns around, and the report says so in its own column
    assert rows["new"]["time_dice_mean"] == pytest.approx(0.3) and rows["new"]["time_diff_to_reference"] == pytest.approx(-0.2)
    assert rows["new"]["time_steps"] == 7
    table = markdown_table(list(rows.values()), reference="ref", minutes=2)
    assert "Dice at equal time (2 min)" in table and "Dice - ref [95% paired bootstrap]" in table
    new_line = next(line for line in table.splitlines() if line.startswith("| new "))
    assert "0.800 +- 0.141" in new_line and "+0.100 [+0.100, +0.100]" in new_line and "-0.200 [-0.200, -0.200]" in new_line
    assert "| reference |" in next(line for line in table.splitlines() if line.startswith("| ref "))


def _cube(shape, corner, size) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    x, y, z = corner
    mask[x:x + size, y:y + size, z:z + size] = 1
    return mask


def test_each_fold_gets_the_post_processing_its_own_cases_did_not_choose():
    from unetr_app.pipelines.compare import describe, nested_decisions

    shape, spacing = (24, 24, 24), (1.0, 1.0, 1.0)
    big = _cube(shape, (2, 2, 2), 8)  # 512 mm3
    # fold 0: one true organ, the prediction adds a stray voxel: keeping the largest component helps
    stray = big.copy()
    stray[20, 20, 20] = 1
    fold0 = [ValidationCase(f"a{i}", stray, big, spacing) for i in range(2)]
    # fold 1: the reference has a second, small true part (27 mm3) that the prediction finds: the same step hurts
    two = big | _cube(shape, (18, 18, 18), 3)
    fold1 = [ValidationCase(f"b{i}", two.copy(), two, spacing) for i in range(2)]
    labels = {"background": 0, "spleen": 1}

    decided = nested_decisions({0: fold0, 1: fold1}, labels)
    decisions = {fold: steps for fold, (steps, _) in decided.items()}
    assert describe(decisions[0]) == "none"  # decided on fold 1, where removing parts only hurts
    # decided on fold 0, guarded by its smallest largest component (the 512 mm3 organ)
    assert decisions[1] == Postprocessing(largest_component=(1,), largest_component_guard_mm3={1: 512.0})
    assert describe(decisions[1]) == "largest component of label 1, and any other >= 0.512 mL"
    kept = [t for t in decided[1][1] if t["kept"]]  # the trial that chose it, scored on fold 0's cases
    assert [t["step"] for t in kept] == ["keep largest component"]
    assert kept[0]["dice_before"] == pytest.approx(2 * 512 / (513 + 512), abs=1e-6) and kept[0]["dice_after"] == pytest.approx(1.0)
    assert not any(t["kept"] for t in decided[0][1])
    after = case_dice(decisions[1].apply(fold1[0].prediction, spacing), fold1[0].reference, labels)
    assert after == pytest.approx(2 * 512 / (512 + 539))  # the small true part lost: reported as such, not hidden
    assert case_dice(decisions[0].apply(fold0[0].prediction, spacing), fold0[0].reference, labels) == pytest.approx(2 * 512 / (512 + 513))
