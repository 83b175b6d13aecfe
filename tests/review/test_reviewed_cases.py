"""Reviewed cases as extra training cases: accepted and corrected in, rejected and pending out,
and each bad review folder a one-line error naming the file."""

from __future__ import annotations

import numpy as np
import pytest

from unetr_app.errors import InputError, UsageError
from unetr_app.quality.reviewed import reviewed_cases
from unetr_app.review.session import ReviewSession

from .conftest import LPS_AFFINE, SHAPE, make_review_folders, write_nifti


@pytest.fixture
def reviewed(tmp_path):
    """spleen_1 accepted, spleen_2 corrected (then accepted), spleen_3 rejected, spleen_4 corrected
    and left pending, spleen_5 flagged."""
    folders = make_review_folders(tmp_path, cases=5)
    session = ReviewSession(folders.images, folders.predictions, folders.labels)
    session.go_to(0), session.set_status("accepted")
    for index in (1, 3):
        opened = session.open(index)
        edited = opened.labels.copy()
        edited[0, 0, 0] = 1
        session.save_correction(opened, edited)
    session.go_to(1), session.set_status("accepted")
    session.go_to(2), session.set_status("rejected")
    session.go_to(4), session.set_status("flagged")
    return folders


def test_accepted_and_corrected_cases_become_training_entries(reviewed):
    entries = reviewed_cases(reviewed.corrections)
    assert [(e["case"], e["reviewed"]) for e in entries] == [("spleen_1", "accepted"), ("spleen_2", "corrected"), ("spleen_4", "corrected")]
    assert entries[0]["label"] == str(reviewed.predictions / "spleen_1.nii.gz")
    assert entries[1]["label"] == str(reviewed.corrections / "spleen_2.nii.gz")
    assert entries[0]["image"] == str(reviewed.images / "spleen_1.nii.gz")


def test_a_folder_without_verdicts_or_review_csv_is_one_line(tmp_path):
    folders = make_review_folders(tmp_path, cases=2)
    with pytest.raises(UsageError, match="review.csv: not found"):
        reviewed_cases(folders.corrections)
    session = ReviewSession(folders.images, folders.predictions)
    session.log.save()  # every case pending
    with pytest.raises(UsageError, match="no case has a verdict yet"):
        reviewed_cases(folders.corrections)


def test_a_correction_on_another_grid_is_refused_naming_it(reviewed):
    write_nifti(reviewed.corrections / "spleen_2.nii.gz", np.zeros((SHAPE[0] - 2, *SHAPE[1:]), np.uint8), LPS_AFFINE)
    with pytest.raises(InputError, match=r"spleen_2.nii.gz: on another grid than its scan"):
        reviewed_cases(reviewed.corrections)


def test_cases_already_in_training_are_refused(reviewed):
    training = [{"case": "other", "image": str(reviewed.images / "spleen_2.nii.gz"), "label": "x"}]
    with pytest.raises(UsageError, match="reviewed case 'spleen_2' is already a training case"):
        reviewed_cases(reviewed.corrections, training)
