"""The review widget in a real napari viewer (pytest-qt, under Xvfb): layers, verdicts, corrections,
resume and the screenshot."""

from __future__ import annotations

import csv
import hashlib

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from unetr_app.review.cases import label_color
from unetr_app.review.session import ReviewSession

from .conftest import ORGAN, SHAPE, needs_display

pytestmark = needs_display


@pytest.fixture
def review(make_napari_viewer, review_folders):
    """(viewer, widget, folders) with the tiny folders open and the widget docked."""
    from unetr_app.review.widget import ReviewWidget

    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, ReviewSession(review_folders.images, review_folders.predictions, review_folders.labels))
    viewer.window.add_dock_widget(widget, name="UNETR review")
    return viewer, widget, review_folders


def _rows(folders) -> dict[str, dict]:
    return {row["case"]: row for row in csv.DictReader((folders.corrections / "review.csv").open())}


def test_opening_a_case_sets_layers_scale_colours_and_window(review):
    viewer, widget, _ = review
    assert [layer.name for layer in viewer.layers] == ["scan", "prediction", "reference"]
    for layer in viewer.layers:
        np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.9))  # LPS file (0.9, 0.8, 2.5) -> (S, P, L)
        assert layer.data.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    prediction, reference = viewer.layers["prediction"], viewer.layers["reference"]
    np.testing.assert_allclose(prediction.colormap.map(np.array([1]))[0], label_color(1))
    assert prediction.colormap.map(np.array([0]))[0][3] == 0  # background transparent
    assert list(prediction.features["name"]) == ["background", "spleen"]
    assert reference.contour == 1 and not reference.editable
    assert viewer.layers["scan"].contrast_limits == [-160.0, 240.0]  # CT: abdomen W400/L40
    assert viewer.layers.selection.active is prediction
    assert viewer.dims.point[0] == pytest.approx(widget.opened.grid.display_scale[0] * np.argmax((prediction.data > 0).sum(axis=(1, 2))))
    assert "Dice 0.833" in widget.labels_info.text() and "spleen" in widget.labels_info.text()
    widget.window_box.setCurrentIndex(3)  # lung
    assert viewer.layers["scan"].contrast_limits == [-1350.0, 150.0]


def test_accept_reject_flag_and_next_write_review_csv(review, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, folders = review
    assert widget.session.index == 0
    widget.note.setText("clean")
    qtbot.mouseClick(widget.buttons["accept"], Qt.MouseButton.LeftButton)
    assert widget.session.index == 1  # a verdict moves on
    qtbot.mouseClick(widget.buttons["next"], Qt.MouseButton.LeftButton)
    assert widget.session.index == 2 and widget.opened.case.name == "spleen_3"
    widget.note.setText("misses the tip")
    qtbot.mouseClick(widget.buttons["reject"], Qt.MouseButton.LeftButton)
    qtbot.mouseClick(widget.buttons["previous"], Qt.MouseButton.LeftButton)
    widget.flag()
    rows = _rows(folders)
    assert [(rows[c]["status"], rows[c]["note"]) for c in folders.names] == [
        ("accepted", "clean"), ("flagged", ""), ("rejected", "misses the tip")]
    assert widget.table.item(0, 2).text() == "accepted"
    viewer.window._qt_viewer.canvas._scene_canvas.events  # the canvas exists: the viewer is real


def test_keyboard_shortcuts_move_between_cases_and_judge(review, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, folders = review
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_PageDown)
    assert widget.session.index == 1
    qtbot.keyClick(canvas, Qt.Key.Key_PageUp)
    assert widget.session.index == 0
    qtbot.keyClick(canvas, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier)
    assert _rows(folders)["spleen_1"]["status"] == "flagged" and widget.session.index == 1


def test_edit_then_save_correction_on_the_scan_grid(review, qtbot):
    from qtpy.QtCore import Qt

    viewer, widget, folders = review
    prediction_file = folders.predictions / "spleen_1.nii.gz"
    before = hashlib.sha256(prediction_file.read_bytes()).hexdigest()
    layer = viewer.layers["prediction"]
    edited = layer.data.copy()
    edited[:] = 0
    edited[1, 2:4, 3:6] = 1  # 6 voxels on display slice 1, rows 2-3, columns 3-5
    layer.data = edited
    qtbot.mouseClick(widget.buttons["save"], Qt.MouseButton.LeftButton)

    saved = folders.corrections / "spleen_1.nii.gz"
    scan = nib.load(folders.images / "spleen_1.nii.gz")
    corrected = nib.load(saved)
    assert corrected.shape == scan.shape and np.array_equal(corrected.affine, scan.affine)
    # display (slice, row, col) = (k, P, L); the file is LPS: i runs left, j runs posterior
    expected = np.zeros(SHAPE, np.uint8)
    expected[3:6, 2:4, 1] = 1
    np.testing.assert_array_equal(np.asarray(corrected.dataobj), expected)
    scan_itk, corrected_itk = sitk.ReadImage(str(folders.images / "spleen_1.nii.gz")), sitk.ReadImage(str(saved))
    assert (corrected_itk.GetOrigin(), corrected_itk.GetSpacing(), corrected_itk.GetDirection()) == (
        scan_itk.GetOrigin(), scan_itk.GetSpacing(), scan_itk.GetDirection())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(corrected_itk).transpose(2, 1, 0), expected)
    assert hashlib.sha256(prediction_file.read_bytes()).hexdigest() == before
    reference = np.zeros(SHAPE, bool)
    reference[ORGAN] = True
    changed = 144 + 6 - 2 * int((np.roll(reference, 1, axis=0) & expected.astype(bool)).sum())
    assert _rows(folders)["spleen_1"]["voxels_changed"] == str(changed)
    assert "voxels changed" in widget.message.text()


def test_reopening_resumes_at_first_pending_case(make_napari_viewer, review_folders):
    from unetr_app.review.widget import ReviewWidget

    first = ReviewSession(review_folders.images, review_folders.predictions)
    first.set_status("accepted")
    first.go_to(1)
    first.set_status("rejected", "wrong side")
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, ReviewSession(review_folders.images, review_folders.predictions))
    assert widget.session.index == 2 and widget.opened.case.name == "spleen_3"
    assert "spleen_3" in widget.title.text() and "pending" in widget.title.text()


def test_plugin_reader_and_writer_round_trip_through_napari(make_napari_viewer, review_folders, tmp_path):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(review_folders.labels / "spleen_1.nii.gz"), plugin="unetr")
    assert layer._type_string == "labels"
    np.testing.assert_allclose(layer.scale, (2.5, 0.8, 0.9))
    [image] = viewer.open(str(review_folders.images / "spleen_1.nii.gz"), plugin="unetr")
    assert image._type_string == "image" and image.contrast_limits == [-160.0, 240.0]
    layer.data[0, 0, 0] = 2  # an edit, so the write is not a copy of the file
    [written] = layer.save(str(tmp_path / "edited.nii.gz"), plugin="unetr")
    original, saved = nib.load(review_folders.labels / "spleen_1.nii.gz"), nib.load(written)
    assert np.array_equal(saved.affine, original.affine) and saved.shape == original.shape
    expected = np.asarray(original.dataobj).copy()
    expected[0, 0, 0] = 2  # display (0, 0, 0) = inferior, anterior, patient's right = file (0, 0, 0) in LPS
    np.testing.assert_array_equal(np.asarray(saved.dataobj), expected)
    assert sitk.ReadImage(written).GetDirection() == sitk.ReadImage(str(review_folders.labels / "spleen_1.nii.gz")).GetDirection()


def test_screenshot_shows_label_colour_over_the_scan(review_folders, tmp_path, cli):
    out = tmp_path / "shot.png"
    result = cli("review", review_folders.images, review_folders.predictions, "--labels", review_folders.labels,
                 "--case", "spleen_2", "--screenshot", out)
    assert result.exit_code == 0, result.output
    assert "spleen_2" in result.output
    pixels = (matplotlib.image.imread(out)[..., :3] * 255).astype(int)
    assert pixels.shape[0] > 500 and pixels.std() > 20  # not blank
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # label 1 (0.90, 0.10, 0.12) at opacity 0.5 over grey: red well above green and blue, green ~ blue
    overlay = (red - green > 60) & (red - blue > 60) & (abs(green - blue) < 25)
    # the 6x6-voxel organ slice at 0.9x0.8 mm, zoomed to fill the canvas, covers thousands of pixels;
    # the widget's and layer panel's colour swatches alone are a few hundred
    assert overlay.sum() > 3000
    rows, cols = np.nonzero(overlay)
    assert np.median(cols) < pixels.shape[1] * 0.75  # on the canvas, not in the dock on the right
    assert not (review_folders.corrections / "spleen_2.nii.gz").exists()


def test_bad_case_name_is_one_line_error(review_folders, cli):
    result = cli("review", review_folders.images, review_folders.predictions, "--case", "nope", "--screenshot", "x.png")
    assert result.exit_code == 2
    assert "error: --case 'nope' is not among the 3 cases" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("answer, moves, saved", [("Cancel", False, False), ("Discard", True, False), ("Save", True, True)])
def test_leaving_a_case_with_unsaved_edits_asks_first(review, monkeypatch, answer, moves, saved):
    from qtpy.QtWidgets import QMessageBox

    viewer, widget, folders = review
    asked = []
    monkeypatch.setattr(QMessageBox, "question", lambda *args: asked.append(args) or getattr(QMessageBox.StandardButton, answer))
    widget.next_case()
    assert not asked and widget.session.index == 1  # no edits: no question
    layer = viewer.layers["prediction"]
    edited = layer.data.copy()
    edited[0, 0, :4] = 1
    layer.data = edited
    widget.previous_case()
    assert len(asked) == 1
    assert widget.session.index == (0 if moves else 1)
    assert (folders.corrections / "spleen_2.nii.gz").exists() == saved


def test_widget_from_the_plugin_menu_starts_empty(make_napari_viewer):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("unetr", "UNETR review")
    assert widget.session is None and widget.open_button.isEnabled()
    assert not widget.buttons["save"].isEnabled()
    widget.save_correction()  # nothing open: a message, not a crash


def test_empty_prediction_shows_the_slice_of_what_was_missed(make_napari_viewer, review_folders):
    from unetr_app.review.widget import ReviewWidget

    from .conftest import LPS_AFFINE, write_nifti

    write_nifti(review_folders.predictions / "spleen_1.nii.gz", np.zeros(SHAPE, np.uint8), LPS_AFFINE)
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, ReviewSession(review_folders.images, review_folders.predictions, review_folders.labels))
    # the reference organ spans file k = 3..6 -> display slices 3..6 (all equal): the first, 3, at 2.5 mm
    assert viewer.dims.point[0] == pytest.approx(3 * 2.5)
    assert "Dice 0.000" in widget.labels_info.text()


def test_a_broken_prediction_is_reported_and_the_others_stay_usable(make_napari_viewer, review_folders):
    from unetr_app.review.widget import ReviewWidget

    broken = review_folders.predictions / "spleen_2.nii.gz"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated gzip
    viewer = make_napari_viewer()
    widget = ReviewWidget(viewer, ReviewSession(review_folders.images, review_folders.predictions))
    widget.fill_all_volumes()
    assert widget.table.item(1, 3).text() == "unreadable" and widget.table.item(2, 3).text().startswith("spleen")
    assert not widget.show_case(1)  # clicking it: reported, the reviewer stays where they were
    assert widget.session.index == 0 and widget.opened.case.name == "spleen_1"
    assert "error:" in widget.message.text() and "spleen_2.nii.gz" in widget.message.text()
    widget.next_case()  # Next skips the broken case
    assert widget.session.index == 2 and widget.opened.case.name == "spleen_3" and viewer.layers["prediction"].data.any()
    widget.previous_case()
    assert widget.session.index == 0


def test_canvas_is_radiological_patient_left_on_screen_right_anterior_up(make_napari_viewer, review_folders):
    """The organ sits at the patient's left-anterior (file i 12-17 of 24 running left, j 6-11 of 20
    running posterior, LPS): on screen it must be right of centre and above it."""
    from unetr_app.review.widget import ReviewWidget

    viewer = make_napari_viewer(show=True)
    ReviewWidget(viewer, ReviewSession(review_folders.images, review_folders.predictions))
    viewer.layers["prediction"].opacity = 1.0
    pixels = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    red, green = pixels[..., 0], pixels[..., 1]
    rows, cols = np.nonzero((red > 180) & (green < 80))  # label 1 at full opacity: (230, 26, 31)
    assert rows.size > 500
    assert np.median(cols) > pixels.shape[1] / 2 and np.median(rows) < pixels.shape[0] / 2


def test_case_table_shows_risk_and_flag_in_risk_order(make_napari_viewer, review_folders):
    from unetr_app.review.widget import ReviewWidget

    (review_folders.predictions / "qc.csv").write_text(
        "case,status,predicted_dice,risk,flag\nspleen_1,ok,0.8,0.2,\nspleen_2,ok,0.1,0.9,organ cut by the field of view\n")
    session = ReviewSession(review_folders.images, review_folders.predictions, order="risk")
    widget = ReviewWidget(make_napari_viewer(), session)
    assert [widget.table.item(r, 0).text() for r in range(3)] == ["spleen_2", "spleen_1", "spleen_3"]
    assert [widget.table.item(r, 1).text() for r in range(3)] == ["0.90 ⚑", "0.20", ""]
    assert widget.table.item(0, 1).toolTip() == "organ cut by the field of view"
    assert "risk 0.90 (organ cut by the field of view)" in widget.title.text()
