"""Review by risk, the uncertainty layer and multi-channel scans: the ordering and the layers as
functions, the layers on napari's ViewerModel (no display needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unetr_app.errors import InputError, UsageError
from unetr_app.quality.signals import voxel_entropy
from unetr_app.review.cases import find_review_cases, order_cases, read_quality
from unetr_app.review.session import ReviewSession

from .conftest import LPS_AFFINE, SHAPE, ct_scan, make_review_folders, write_nifti


def _qc(folder, rows):
    lines = ["case,status,predicted_dice,risk,flag"] + [",".join(map(str, r)) for r in rows]
    (folder / "qc.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def five(tmp_path):
    folders = make_review_folders(tmp_path, cases=5)
    # spleen_4 failed in prediction (no risk); spleen_1 and spleen_5 tie
    _qc(folders.predictions, [("spleen_1", "ok", 0.7, 0.3, ""), ("spleen_2", "ok", 0.1, 0.95, "organ cut"),
                              ("spleen_3", "ok", 0.4, 0.6, ""), ("spleen_4", "failed", "", "", ""), ("spleen_5", "ok", 0.7, 0.3, "")])
    return folders


def test_order_by_risk_highest_first_ties_and_unscored_by_name(five):
    cases = find_review_cases(five.images, five.predictions)
    quality = read_quality(five.predictions)
    assert [c.name for c in order_cases(cases, quality, "risk")] == ["spleen_2", "spleen_3", "spleen_1", "spleen_5", "spleen_4"]
    assert [c.name for c in order_cases(cases[::-1], quality, "name")] == [f"spleen_{i}" for i in range(1, 6)]
    with pytest.raises(UsageError, match="--order 'size': expected one of name, risk"):
        order_cases(cases, quality, "size")


def test_session_by_risk_opens_the_riskiest_pending_case(five):
    session = ReviewSession(five.images, five.predictions, order="risk")
    assert session.current.name == "spleen_2" and session.risk_of(session.current) == {"predicted_dice": 0.1, "risk": 0.95, "flag": "organ cut"}
    session.set_status("accepted")
    assert ReviewSession(five.images, five.predictions, order="risk").current.name == "spleen_3"  # resumes down the queue


def test_order_risk_without_qc_csv_or_with_a_foreign_one_is_one_line(review_folders):
    with pytest.raises(UsageError, match=r"qc.csv not found.*`unetr predict`"):
        ReviewSession(review_folders.images, review_folders.predictions, order="risk")
    (review_folders.predictions / "qc.csv").write_text("case,score\nspleen_1,x\n")
    with pytest.raises(InputError, match="not a qc.csv"):
        ReviewSession(review_folders.images, review_folders.predictions)


def test_review_cli_order_risk_screenshot_names_the_riskiest(five, cli, monkeypatch):
    seen = {}
    monkeypatch.setattr("unetr_app.review.viewer.screenshot_review", lambda session, out, index: seen.update(name=session.cases[index].name))
    result = cli("review", five.images, five.predictions, "--order", "risk", "--screenshot", five.predictions.parent / "x.png")
    assert result.exit_code == 0, result.output
    assert seen["name"] == "spleen_2" and "spleen_2" in result.output


def test_voxel_entropy_known_values():
    uniform = np.full((4, 2, 2, 2), 0.25, np.float32)
    certain = np.zeros((3, 2, 2, 2), np.float32)
    certain[1] = 1
    half = np.stack([np.full((1, 1, 1), 0.5), np.full((1, 1, 1), 0.5), np.zeros((1, 1, 1))]).astype(np.float32)
    assert np.allclose(voxel_entropy(uniform), 1.0) and np.allclose(voxel_entropy(certain), 0.0, atol=1e-6)
    assert voxel_entropy(half)[0, 0, 0] == pytest.approx(np.log(2) / np.log(3), rel=1e-5)


def _probabilities(folder, name, foreground):
    p = np.stack([1 - foreground, foreground]).astype(np.float16)
    np.savez(folder / f"{name}_probabilities.npz", probabilities=p, affine=LPS_AFFINE, temperature=np.float32([1, 1]))


def test_uncertainty_map_in_display_order_and_skipped_on_another_grid(review_folders, caplog):
    foreground = np.zeros(SHAPE, np.float32)
    foreground[3, 4, 5] = 0.5  # one uncertain voxel: entropy ln 2 / ln 2 = 1
    _probabilities(review_folders.predictions, "spleen_1", foreground)
    np.savez(review_folders.predictions / "spleen_2_probabilities.npz", probabilities=np.full((2, 4, 4, 4), 0.5, np.float16))
    session = ReviewSession(review_folders.images, review_folders.predictions)
    opened = session.open(0)
    expected = np.zeros(SHAPE, np.float32)
    expected[3, 4, 5] = 1.0
    assert np.allclose(opened.uncertainty, opened.grid.to_display(expected), atol=1e-3)
    assert session.open(1).uncertainty is None and "not on the grid" in caplog.text
    assert session.open(2).uncertainty is None  # no probabilities saved


def test_multichannel_scan_has_every_channel(tmp_path):
    folders = make_review_folders(tmp_path, cases=1)
    t2, adc = ct_scan(seed=1).astype(np.float32) + 1000, np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    write_nifti(folders.images / "spleen_1.nii.gz", np.stack([t2, adc, 2 * adc], axis=-1), LPS_AFFINE)
    (folders.images.parent / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC", "2": "DWI"}}))
    opened = ReviewSession(folders.images, folders.predictions).open(0)
    assert np.array_equal(opened.image, opened.grid.to_display(t2))
    assert list(opened.channels) == ["channel 1 (ADC)", "channel 2 (DWI)"]
    assert np.array_equal(opened.channels["channel 2 (DWI)"], opened.grid.to_display(2 * adc))


def test_layers_for_channels_and_uncertainty_on_a_viewer_model(tmp_path):
    pytest.importorskip("napari")
    from napari.components import ViewerModel

    from unetr_app.review.layers import show_case

    folders = make_review_folders(tmp_path, cases=2)
    scan = ct_scan(seed=1).astype(np.float32)
    write_nifti(folders.images / "spleen_1.nii.gz", np.stack([scan, scan + 1, scan + 2], axis=-1), LPS_AFFINE)
    _probabilities(folders.predictions, "spleen_1", np.full(SHAPE, 0.5, np.float32))
    session = ReviewSession(folders.images, folders.predictions, folders.labels)
    viewer = ViewerModel()
    show_case(viewer, session.open(0), session.label_names, "abdomen")
    names = [layer.name for layer in viewer.layers]
    assert names == ["scan", "channel 1", "channel 2", "prediction", "reference", "uncertainty"]  # masks drawn above the channels
    assert not viewer.layers["channel 1"].visible and not viewer.layers["uncertainty"].visible
    assert np.allclose(viewer.layers["uncertainty"].data, 1.0, atol=1e-3)
    np.testing.assert_allclose(viewer.layers["channel 2"].scale, viewer.layers["scan"].scale)
    show_case(viewer, session.open(1), session.label_names, "abdomen")
    assert [layer.name for layer in viewer.layers] == ["scan", "prediction", "reference"]  # spleen_2: one channel, no probabilities
