"""The review logic without a display: orientation, cases, review.csv, measures, corrections."""

from __future__ import annotations

import csv
import hashlib
import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from nibabel.orientations import axcodes2ornt, inv_ornt_aff

from unetr_app.errors import InputError, UsageError
from unetr_app.review import measures
from unetr_app.review.cases import find_review_cases, label_name, read_label_names
from unetr_app.review.geometry import DisplayGrid
from unetr_app.review.session import ReviewSession
from unetr_app.review.status import ReviewLog
from unetr_app.review.windows import contrast_limits, default_preset

from .conftest import ORGAN, SHAPE, make_review_folders, write_nifti


# --- orientation ----------------------------------------------------------------------------------


def test_ras_volume_known_display_layout():
    """RAS (4, 3, 2) at 1x2x3 mm: display is (slice, row, col) = (k, anterior->posterior, right->left)."""
    grid = DisplayGrid(np.diag([1.0, 2.0, 3.0, 1.0]), (4, 3, 2))
    volume = np.arange(24).reshape(4, 3, 2)
    display = grid.to_display(volume)
    assert display.shape == (2, 3, 4) == grid.display_shape
    assert grid.display_scale == (3.0, 2.0, 1.0)
    # top-left of the first slice: most anterior (j = 2), patient's right (i = 3), lowest slice (k = 0)
    assert display[0, 0, 0] == volume[3, 2, 0]
    assert display[1, 2, 3] == volume[0, 0, 1]


def _axis_affine(codes: str, spacing=(0.7, 0.9, 2.5)) -> np.ndarray:
    """An affine storing a RAS grid in the given axis codes (e.g. "LPS", "SRA")."""
    ornt = axcodes2ornt(tuple(codes))
    shape = (5, 6, 7)
    return np.diag([*spacing, 1.0]) @ inv_ornt_aff(ornt, shape)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "LPI", "SRA", "PIL", "ASR"])
def test_display_axes_point_superior_posterior_left_for_every_storage(codes):
    """Whatever the file order, stepping along the display axes moves superior, posterior, left
    (radiological: anterior at the top, the patient's right on the screen's left)."""
    affine = _axis_affine(codes)
    shape = (5, 6, 7)
    grid = DisplayGrid(affine, shape)
    indices = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    world = (indices @ affine[:3, :3].T) + affine[:3, 3]  # (i, j, k, xyz)
    display_world = np.stack([grid.to_display(world[..., axis]) for axis in range(3)], axis=-1)
    along_slice = display_world[1, 0, 0] - display_world[0, 0, 0]
    along_row = display_world[0, 1, 0] - display_world[0, 0, 0]
    along_col = display_world[0, 0, 1] - display_world[0, 0, 0]
    assert along_slice[2] > 0 and along_row[1] < 0 and along_col[0] < 0
    np.testing.assert_allclose(grid.display_scale, [abs(along_slice[2]), abs(along_row[1]), abs(along_col[0])])


@pytest.mark.parametrize("codes", ["".join(p) for p in itertools.permutations("LPS")] + ["RAS", "LAI"])
def test_from_display_inverts_to_display(codes):
    grid = DisplayGrid(_axis_affine(codes), (5, 6, 7))
    volume = np.random.default_rng(0).integers(0, 9, (5, 6, 7))
    np.testing.assert_array_equal(grid.from_display(grid.to_display(volume)), volume)


def test_wrong_shape_is_refused():
    grid = DisplayGrid(np.eye(4), (5, 6, 7))
    with pytest.raises(ValueError, match=r"\(7, 6, 5\)"):
        grid.to_display(np.zeros((7, 6, 5)))


# --- cases and label names ------------------------------------------------------------------------


def test_cases_pair_scans_with_predictions_in_natural_order(tmp_path):
    folders = make_review_folders(tmp_path, cases=11)
    (folders.predictions / "spleen_4.nii.gz").unlink()  # a scan without prediction is left out
    (folders.images / "spleen_2.nii.gz").rename(folders.images / "spleen_2_0000.nii.gz")  # nnU-Net channel name
    cases = find_review_cases(folders.images, folders.predictions, folders.labels)
    assert [c.name for c in cases] == [f"spleen_{i}" for i in (1, 2, 3, 5, 6, 7, 8, 9, 10, 11)]
    assert cases[1].image.path.name == "spleen_2_0000.nii.gz"
    assert cases[1].reference.path == folders.labels / "spleen_2.nii.gz"


def test_no_matching_prediction_is_a_usage_error(tmp_path):
    folders = make_review_folders(tmp_path, cases=1)
    (folders.predictions / "spleen_1.nii.gz").unlink()
    with pytest.raises(UsageError, match="no prediction matches"):
        find_review_cases(folders.images, folders.predictions)


def test_label_names_from_report_or_numbered(tmp_path):
    folders = make_review_folders(tmp_path, cases=1)
    assert read_label_names(folders.predictions) == {1: "spleen"}
    (folders.predictions / "predict_report.json").unlink()
    assert read_label_names(folders.predictions) == {}
    assert label_name({}, 3) == "label_3"
    (folders.predictions / "predict_report.json").write_text('{"labels": ["spleen"]}')
    with pytest.raises(InputError, match="predict_report.json"):
        read_label_names(folders.predictions)


# --- review.csv -----------------------------------------------------------------------------------


def test_review_log_writes_rows_and_resumes_at_first_pending(tmp_path):
    path = tmp_path / "review.csv"
    log = ReviewLog(path, ["a", "b", "c"])
    log.set_status("a", "accepted")
    log.set_status("c", "flagged", "odd shape, 2nd look")
    log.record_correction("c", 42)
    rows = list(csv.DictReader(path.open()))
    assert [(r["case"], r["status"], r["note"], r["voxels_changed"]) for r in rows] == [
        ("a", "accepted", "", ""), ("b", "pending", "", ""), ("c", "flagged", "odd shape, 2nd look", "42")]
    assert rows[0]["time"].endswith("+00:00")
    again = ReviewLog(path, ["a", "b", "c"])
    assert again.first_pending() == 1 and again["c"].note == "odd shape, 2nd look"
    again.set_status("b", "rejected")
    assert ReviewLog(path, ["a", "b", "c"]).first_pending() == 0  # nothing pending: start at the top


def test_review_log_refuses_unknown_status_and_foreign_csv(tmp_path):
    log = ReviewLog(tmp_path / "review.csv", ["a"])
    with pytest.raises(ValueError, match="'done' is not one of pending, accepted"):
        log.set_status("a", "done")
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    with pytest.raises(InputError, match="not a review table"):
        ReviewLog(tmp_path / "other.csv", ["a"])


# --- measures and windows -------------------------------------------------------------------------


def test_dice_volumes_and_largest_region_known_answers():
    reference = np.zeros((10, 10, 10), np.uint8)
    reference[2:6, 2:6, 2:6] = 1  # 64 voxels
    prediction = np.roll(reference, 1, axis=0)  # overlap 3*4*4 = 48
    assert measures.dice(prediction, reference, 1) == pytest.approx(2 * 48 / 128)
    assert measures.dice(prediction, reference, 2) is None
    assert measures.label_counts(reference) == {0: 1000 - 64, 1: 64} == measures.label_counts(reference.astype(np.int32))
    assert measures.label_volumes_ml({0: 936, 1: 64}, 1.8 / 1000, [1, 2]) == {1: pytest.approx(64 * 0.0018), 2: 0.0}
    prediction[8, 0:2, 0:2] = 1  # a small separate blob: the largest region still decides
    prediction[3, 2:6, 2:4] = 0  # make slice 3 the thinnest of the box's slices 3..6
    prediction[5, 6, 2:6] = 1  # and slice 5 the fullest
    assert measures.largest_region_slice(prediction) == 5
    prediction[9, :, :] = 1  # now a whole slab is the largest region
    assert measures.largest_region_slice(prediction) == 9
    assert measures.largest_region_slice(np.zeros((3, 3, 3))) is None


def test_ct_window_presets_and_mri_auto_contrast():
    ct = np.full((4, 4, 4), -1000.0)
    assert default_preset(ct) == "abdomen" and contrast_limits(ct, "abdomen") == (-160.0, 240.0)
    assert contrast_limits(ct, "lung") == (-1350.0, 150.0)
    mri = np.concatenate([np.zeros(100), np.arange(1.0, 101.0)])
    assert default_preset(mri) == "auto"
    low, high = contrast_limits(mri, "auto")
    assert low == pytest.approx(1.99) and high == pytest.approx(99.01)
    with pytest.raises(ValueError, match="'brain' is not one of abdomen"):
        contrast_limits(ct, "brain")


# --- a session: opening, saving corrections ------------------------------------------------------


def test_session_opens_case_in_display_order_with_dice(review_folders):
    session = ReviewSession(review_folders.images, review_folders.predictions, review_folders.labels)
    assert session.corrections_dir == review_folders.corrections
    opened = session.open(0)
    assert opened.image.shape == (SHAPE[2], SHAPE[1], SHAPE[0])  # LPS file -> (S, P, L) display
    assert opened.grid.display_scale == pytest.approx((2.5, 0.8, 0.9))
    assert session.dice(opened) == {"spleen": pytest.approx(2 * 5 * 6 * 4 / (2 * 144))}
    assert session.volumes_ml(0) == {1: pytest.approx(144 * 0.9 * 0.8 * 2.5 / 1000)}


def test_save_correction_keeps_scan_grid_and_prediction_bytes(review_folders):
    session = ReviewSession(review_folders.images, review_folders.predictions, review_folders.labels)
    prediction_file = review_folders.predictions / "spleen_1.nii.gz"
    before = hashlib.sha256(prediction_file.read_bytes()).hexdigest()
    opened = session.open(0)
    edited = opened.grid.to_display(nib.load(review_folders.labels / "spleen_1.nii.gz").get_fdata().astype(np.uint8))
    expected_changed = int(np.count_nonzero(edited != opened.prediction))  # the shifted box's two faces
    assert expected_changed == 2 * 6 * 4

    assert session.save_correction(opened, edited) == expected_changed
    saved = review_folders.corrections / "spleen_1.nii.gz"
    scan = nib.load(review_folders.images / "spleen_1.nii.gz")
    corrected = nib.load(saved)
    assert corrected.shape == scan.shape and np.array_equal(corrected.affine, scan.affine)
    assert corrected.get_data_dtype() == np.uint8
    reference = np.zeros(SHAPE, np.uint8)
    reference[ORGAN] = 1
    np.testing.assert_array_equal(np.asarray(corrected.dataobj), reference)
    scan_itk, corrected_itk = sitk.ReadImage(str(review_folders.images / "spleen_1.nii.gz")), sitk.ReadImage(str(saved))
    assert corrected_itk.GetSize() == scan_itk.GetSize()
    assert corrected_itk.GetOrigin() == scan_itk.GetOrigin() and corrected_itk.GetSpacing() == scan_itk.GetSpacing()
    assert corrected_itk.GetDirection() == scan_itk.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(corrected_itk).transpose(2, 1, 0), reference)
    assert hashlib.sha256(prediction_file.read_bytes()).hexdigest() == before
    assert list(csv.DictReader((review_folders.corrections / "review.csv").open()))[0]["voxels_changed"] == str(expected_changed)
    # reopening shows the saved correction, still counted against the untouched prediction
    reopened = ReviewSession(review_folders.images, review_folders.predictions).open(0)
    assert reopened.corrected and np.array_equal(reopened.labels, edited)
    assert not np.array_equal(reopened.prediction, edited)


def test_corrections_inside_predictions_folder_refused_and_unknown_case(review_folders):
    with pytest.raises(UsageError, match="is the predictions folder"):
        ReviewSession(review_folders.images, review_folders.predictions, corrections_dir=review_folders.predictions)
    session = ReviewSession(review_folders.images, review_folders.predictions)
    with pytest.raises(UsageError, match="did you mean 'spleen_1'"):
        session.index_of("splen_1")


def test_prediction_of_another_shape_names_the_file(review_folders):
    write_nifti(review_folders.predictions / "spleen_2.nii.gz", np.zeros((5, 5, 5), np.uint8), np.eye(4))
    session = ReviewSession(review_folders.images, review_folders.predictions)
    with pytest.raises(InputError, match=r"spleen_2.nii.gz: mask shape \(5, 5, 5\) differs"):
        session.open(1)


def test_stale_display_is_not_reachable():
    from unetr_app.review.display import x_server_reachable

    assert not x_server_reachable(":987")  # no X socket: Qt would abort on it, so a private Xvfb is used
    assert not x_server_reachable("not-a-display")


def test_interactive_review_without_display_is_one_line_error(review_folders, cli, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = cli("review", review_folders.images, review_folders.predictions)
    assert result.exit_code == 2
    assert "error: no display for the napari viewer" in result.output and "--screenshot" in result.output
