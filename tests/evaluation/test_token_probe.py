"""The linear token probe: its ridge, scores and occupancy by hand, and `unetr probe` on a run."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from unetr_app.evaluation.metrics import auroc
from unetr_app.evaluation.token_probe import fit_ridge, patch_occupancy, probe_scores, r2_score


def test_patch_occupancy_hand_values_in_token_order():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 0] = 1  # patch (0, 0): 1 of 4
    mask[0, 0, 0:2, 2:4] = 1  # patch (0, 1): all 4
    mask[0, 0, 3, 1] = 1  # patch (1, 0): 1 of 4
    assert patch_occupancy(mask, (2, 2)).tolist() == [[0.25, 1.0, 0.25, 0.0]]
    cube = torch.zeros(1, 1, 4, 4, 4)
    cube[0, 0, 2:, :2, 2:] = 1  # the patch at grid (1, 0, 1): index 1*4 + 0*2 + 1
    assert patch_occupancy(cube, (2, 2, 2))[0].nonzero().flatten().tolist() == [5]


def test_auroc_and_r2_hand_values():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts half
    assert auroc([0.1, 0.2], [1, 1]) is None
    # SS_tot about the fit set's mean 0: 1 - (0.25 + 0.25) / (1 + 1)
    assert r2_score([0.5, 0.5], [1.0, 1.0], reference_mean=0.0) == pytest.approx(0.75)
    assert r2_score([0.3, 0.3, 0.3], [0.0, 1.0, 0.2], reference_mean=0.3) == pytest.approx(0.0)


def test_ridge_matches_scikit_learn_at_the_chosen_penalty():
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) * rng.uniform(0.5, 4, size=8) + rng.normal(size=8)
    y = x @ rng.normal(size=8) + rng.normal(scale=2.0, size=60)
    probe = fit_ridge(x, y)
    reference = sklearn.Ridge(alpha=probe.penalty).fit((x - x.mean(0)) / x.std(0), y)
    np.testing.assert_allclose(probe.coef, reference.coef_, rtol=1e-8)
    assert probe.intercept == pytest.approx(reference.intercept_)
    test = rng.normal(size=(5, 8))
    np.testing.assert_allclose(probe.predict(test), reference.predict((test - x.mean(0)) / x.std(0)), rtol=1e-8)


def test_the_probe_finds_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(1)
    x_fit, x_test = rng.normal(size=(400, 20)), rng.normal(size=(400, 20))
    weights = rng.normal(size=20)
    signal = probe_scores(x_fit, x_fit @ weights, x_test, x_test @ weights)
    assert signal["r2"] > 0.999 and signal["penalty"] <= 1.0
    noise = probe_scores(x_fit, rng.uniform(size=400), x_test, rng.uniform(size=400))
    assert noise["r2"] < 0.05 and noise["penalty"] >= 100


def _block_case(folder, name: str, seed: int, side: int = 64, block: int = 16) -> dict:
    """A scan of 16^3 blocks of 0 or 250 HU at 8 mm (no resampling, no body crop at the tiny
    profile's settings) and a label on the 250 HU blocks: each patch's occupancy is a linear
    function of its voxels (0 or 1, the same as any of them)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, size=(side // block,) * 3)
    blocks[0, 0, 0], blocks[-1, -1, -1] = 0, 1  # both kinds in every case
    full = np.kron(blocks, np.ones((block,) * 3))
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    image, label = folder / f"{name}.nii.gz", folder / f"{name}_label.nii.gz"
    nib.save(nib.Nifti1Image((250.0 * full).astype(np.float32), affine), image)
    nib.save(nib.Nifti1Image(full.astype(np.uint8), affine), label)
    return {"case": name, "image": str(image), "label": str(label)}


def test_token_probe_pairs_each_token_with_its_own_patch(tmp_path, pretrained_masked):
    from unetr_app.pipelines.probe import token_probe

    cases = [_block_case(tmp_path, f"case{i}", seed=i) for i in range(4)]
    result = token_probe(pretrained_masked, cases[:2], cases[2:])
    voxels = result["features"]["voxels"]
    # 64^3 voxels = 8 windows of 32^3 = 64 patches of 16^3 per case, every one inside the scan
    assert voxels["fit_tokens"] == 128 and voxels["test_tokens"] == 128
    assert voxels["r2"] > 0.999 and voxels["auroc"] == 1.0  # a token paired with another patch's label could not
    assert result["label"] == "spleen" and result["fit_cases"] == ["case0", "case1"] and result["patch_size"] == [16, 16, 16]
    for feature in ("encoder", "random_encoder"):
        assert result["features"][feature]["test_tokens"] == 128 and result["features"][feature]["auroc"] is not None


def test_probe_cli_scores_held_out_cases_and_refuses_bad_input(cli, tmp_path, phantom_dir, pretrained_masked):
    out = tmp_path / "probe.json"
    result = cli("probe", pretrained_masked, phantom_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "held-out R2" in result.output and "random weights" in result.output
    scores = json.loads(out.read_text(encoding="utf-8"))
    assert set(scores["features"]) == {"encoder", "random_encoder", "voxels"}
    assert not set(scores["fit_cases"]) & set(scores["test_cases"])
    assert len(scores["fit_cases"]) + len(scores["test_cases"]) == 6
    for args, expected in (((), "exists; pass --overwrite"), (("--label", "liver"), "--label 'liver'"),
                           (("--fit-fraction", "1.5"), "--fit-fraction must be between 0 and 1"),
                           (("--init-key", "nope"), "--init-key must be one of")):
        again = cli("probe", pretrained_masked, phantom_dir, "--out", out, *(["--overwrite"] if args else []), *args)
        assert again.exit_code != 0 and expected in again.output, again.output
        assert len([line for line in again.output.strip().splitlines() if line.startswith("error:")]) == 1


def test_leaving_one_case_out_picks_a_larger_penalty_when_cases_differ_by_an_offset():
    # each case shifts its features by its own offset that says nothing about the target: pooled
    # GCV fits the offsets; leaving a case out sees they do not carry over to a new case
    rng = np.random.default_rng(2)
    cases, per_case, dims = 4, 50, 30
    groups = np.repeat(np.arange(cases), per_case)
    offsets = rng.normal(scale=3.0, size=(cases, dims))
    y = rng.normal(size=cases)[groups] + 0.1 * rng.normal(size=cases * per_case)
    x = offsets[groups] + 0.1 * rng.normal(size=(cases * per_case, dims))
    assert fit_ridge(x, y, groups=groups).penalty > fit_ridge(x, y).penalty
    assert fit_ridge(x, y, groups=np.zeros(len(y))).penalty == fit_ridge(x, y).penalty  # one group: GCV
