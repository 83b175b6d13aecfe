"""The quality model: a fit that recovers a known relation, the fallback, and flags."""

from __future__ import annotations

import numpy as np
import pytest

from unetr_app.quality.model import FLAG_RISK, Z_LIMIT, assess, fit_quality_model, predict_dice


def _signals(agreement, entropy=0.1, border=0.0, z=0.0, distance=0.05):
    return {"agreement": agreement, "entropy": entropy, "border_fraction": border, "volume_z": z, "intensity_distance": distance}


def test_fit_follows_a_linear_relation_and_ranks_cases():
    rng = np.random.default_rng(0)
    agreement = rng.uniform(0.5, 1.0, 30)
    signals = [_signals(a, entropy=rng.uniform(0, 0.3)) for a in agreement]
    dice = 0.9 * agreement  # Dice known to follow agreement
    model = fit_quality_model(signals, dice.tolist())
    predicted = np.array([predict_dice(model, s) for s in signals])
    assert np.abs(predicted - dice).max() < 0.05
    assert predict_dice(model, _signals(0.55)) < predict_dice(model, _signals(0.95))


def test_without_agreement_the_second_fit_is_used():
    signals = [_signals(a, entropy=1 - a) for a in np.linspace(0.5, 1.0, 10)]
    model = fit_quality_model(signals, np.linspace(0.4, 0.9, 10).tolist())
    no_agreement = {**_signals(None, entropy=0.0), "agreement": None}
    assert predict_dice(model, no_agreement) > predict_dice(model, {**no_agreement, "entropy": 0.5})


def test_the_fit_without_agreement_learns_from_the_single_pass_cases_when_given():
    mirrored = [_signals(a, entropy=0.1) for a in np.linspace(0.5, 1.0, 10)]  # entropy says nothing here
    single = [_signals(None, entropy=e) for e in np.linspace(0.0, 0.5, 10)]
    single_dice = np.linspace(0.9, 0.4, 10).tolist()  # one-pass masks: Dice falls with entropy
    model = fit_quality_model(mirrored, np.linspace(0.4, 0.9, 10).tolist(), (single, single_dice))
    assert [f["features"][0] for f in model["fits"]] == ["agreement", "entropy"]
    assert predict_dice(model, _signals(None, entropy=0.0)) > predict_dice(model, _signals(None, entropy=0.5)) + 0.2
    assert model["fits"][1]["intercept"] == pytest.approx(np.mean(single_dice))


def test_a_signal_far_outside_the_validation_cases_is_held_at_the_limit():
    # entropies spread by 0.01 around 0.5 and Dice falling with them: slope -1 per SD of entropy
    entropy = 0.5 + 0.01 * np.array([-1.0, 1.0, -1.0, 1.0])
    model = fit_quality_model([_signals(None, entropy=e) for e in entropy], (0.6 - 0.1 * (entropy - 0.5) / 0.01).tolist())
    at_limit = predict_dice(model, _signals(None, entropy=0.5 - Z_LIMIT * 0.01))
    assert predict_dice(model, _signals(None, entropy=0.0)) == pytest.approx(at_limit)  # 50 SDs away: no further
    assert predict_dice(model, _signals(None, entropy=0.51)) < at_limit


def test_too_few_cases_give_no_model():
    assert fit_quality_model([_signals(0.9)] * 3, [0.8] * 3) is None


def test_fallback_and_flags():
    plain = assess(_signals(0.8), None, classes=2)
    assert plain == {"predicted_dice": 0.8, "risk": pytest.approx(0.2), "flag": ""}
    cut = assess(_signals(0.95, border=0.5), None, classes=2)  # border 2.5x its limit of 0.2
    assert cut["risk"] >= FLAG_RISK and "edge" in cut["flag"] and cut["predicted_dice"] == pytest.approx((1 - FLAG_RISK) * (1 - 0.6), abs=1e-4)
    huge = assess({**_signals(0.95), "volume_z": 6.0, "volume_ml": 900.0}, None, classes=2)
    assert "6.0 SD above" in huge["flag"]
    mr = assess({**_signals(0.95, entropy=0.0), "intensity_problems": ["channel 0 (CT): no air"]}, None, classes=2)
    assert mr["flag"] == "channel 0 (CT): no air" and mr["risk"] >= FLAG_RISK
    # among flagged cases, the further outside its limit the riskier: a border fraction 3x its limit
    # of 0.2 gives 1 - 1/3 of the flagged range, above the fallback's own 0.6 ...
    far = assess(_signals(0.95, entropy=0.0, border=0.6), None, classes=2)
    assert far["risk"] == pytest.approx(FLAG_RISK + (1 - FLAG_RISK) * (1 - 1 / 3), abs=1e-4) and far["predicted_dice"] == pytest.approx((1 - FLAG_RISK) / 3, abs=1e-4)
    # ... and 1.25x its limit gives 0.2, below the fallback's own 0.25, which then orders it
    near = assess(_signals(0.95, entropy=0.0, border=0.25), None, classes=2)
    assert near["risk"] == pytest.approx(FLAG_RISK + (1 - FLAG_RISK) * 0.25, abs=1e-4)
    # ... or the signals' own risk where that is higher: the one whose passes disagree more is riskier
    worse = assess({**_signals(0.55, entropy=0.0), "intensity_problems": ["channel 0 (CT): no air"]}, None, classes=2)
    assert worse["risk"] == pytest.approx(FLAG_RISK + (1 - FLAG_RISK) * 0.45, abs=1e-4) and mr["risk"] == pytest.approx(FLAG_RISK + (1 - FLAG_RISK) * 0.05, abs=1e-4)
    assert worse["predicted_dice"] == pytest.approx((1 - FLAG_RISK) * 0.55, abs=1e-4) and mr["predicted_dice"] == pytest.approx((1 - FLAG_RISK) * 0.95, abs=1e-4)


def test_mirroring_counts_as_harmful_only_beyond_the_margin():
    from unetr_app.quality.model import MIRRORING_MARGIN, mirroring_loss

    record = lambda single, mirrored: {"mirroring": {"cases": 4, "single_pass_dice": single, "mirrored_dice": mirrored}}  # noqa: E731
    assert mirroring_loss(record(0.80, 0.55)) == (0.80, 0.55)
    assert mirroring_loss(record(0.80, 0.80 - MIRRORING_MARGIN / 2)) is None  # within rounding of each other
    assert mirroring_loss(record(0.80, 0.85)) is None  # mirroring helps
    assert mirroring_loss({"kind": "ridge"}) is None and mirroring_loss(None) is None  # fitted before it was measured; no model
