"""`unetr predict --output-format both` on a DICOM series: a DICOM SEG that references the source
series and whose frames are the NIfTI mask's slices (read back with pydicom and highdicom)."""

from __future__ import annotations

import json
import shutil

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from tests.predict.predict_helpers import blob_label, echo_checkpoint
from unetr_app.data.phantom import make_phantom_case

from .dicom_series import FRAME_OF_REFERENCE_UID, SERIES_UID, STUDY_UID, blank_uids, write_ct_series

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SPLEEN_SCT = "78961009"


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 2-class label volume as a CT series (the label-echo model returns it as the mask)."""
    root = tmp_path_factory.mktemp("seg")
    label = make_phantom_case(3).label[::2, ::2, :]
    label = np.maximum(label, blob_label(label.shape, seed=3, classes=2))
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rows along -y: not the identity
    files = write_ct_series(label, (2.0, 2.0, 4.0), (-80.0, 95.5, -310.0), direction, root / "inputs" / "abdomen_ct")
    return root, files


def test_dicom_seg_references_the_series_and_matches_the_nifti_mask(series, tmp_path, cli):
    root, files = series
    checkpoint = echo_checkpoint(root, spacing=(2.0, 2.0, 2.0), classes=2)
    labels = {"background": 0, "spleen": 1}
    ckpt_data = _relabel(checkpoint, labels)
    result = cli("predict", root / "inputs" / "abdomen_ct", tmp_path, "-c", ckpt_data, "--output-format", "both", "--quiet")
    assert result.exit_code == 0, result.output

    seg = hd.seg.segread(tmp_path / "abdomen_ct_seg.dcm")
    sources = [pydicom.dcmread(f) for f in files]
    assert seg.SOPClassUID == SEGMENTATION_STORAGE
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == SERIES_UID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {s.SOPInstanceUID for s in sources}
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "spleen" and segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == SPLEEN_SCT

    mask = nib.load(tmp_path / "abdomen_ct.nii.gz")
    mask_array = np.asarray(mask.dataobj)
    assert 0 < mask_array.sum() < mask_array.size
    to_voxel = np.linalg.inv(mask.affine)
    by_uid = {s.SOPInstanceUID: s for s in sources}
    pixels = seg.pixel_array  # (frames, rows, columns)
    assert pixels.shape[0] == len(sources)
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source_uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.array([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        np.testing.assert_allclose(position, [float(v) for v in by_uid[source_uid].ImagePositionPatient], atol=1e-3)
        ras = np.array([-position[0], -position[1], position[2], 1.0])  # DICOM's world is LPS
        i, j, k = np.rint(to_voxel @ ras)[:3].astype(int)
        assert (i, j) == (0, 0), "the frame's first pixel is the NIfTI slice's first voxel"
        # a frame is (rows, columns) = the NIfTI slice transposed
        np.testing.assert_array_equal(pixels[index] > 0, mask_array[:, :, k].T == 1, err_msg=f"frame {index}")


def test_dicom_seg_of_a_nifti_input_fails_that_case_with_one_line(series, tmp_path, cli):
    root, _ = series
    checkpoint = echo_checkpoint(root, spacing=(2.0, 2.0, 2.0), classes=2)
    image = nib.Nifti1Image(blob_label((32, 32, 8), seed=1, classes=2).astype(np.float32), np.eye(4))
    nib.save(image, tmp_path / "plain_0000.nii.gz")
    result = cli("predict", tmp_path / "plain_0000.nii.gz", tmp_path / "out", "-c", checkpoint, "--output-format", "dicom-seg", "--quiet")
    assert result.exit_code == 1
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))
    assert "needs a DICOM series input" in report["cases"][0]["error"]


def _anonymised(series, tmp_path, keywords):
    """A copy of the series with these UIDs blanked in every dataset; (folder, files, old UIDs)."""
    root, files = series
    folder = shutil.copytree(root / "inputs" / "abdomen_ct", tmp_path / "inputs" / "abdomen_ct")
    copies = [folder / f.name for f in files]
    return folder, copies, blank_uids(copies, keywords)


def test_blank_sop_uids_are_recovered_from_the_file_meta(series, tmp_path, cli):
    folder, files, before = _anonymised(series, tmp_path, ("SOPInstanceUID", "SOPClassUID"))
    checkpoint = _relabel(echo_checkpoint(series[0], spacing=(2.0, 2.0, 2.0), classes=2), {"background": 0, "spleen": 1})
    result = cli("predict", folder, tmp_path / "out", "-c", checkpoint, "--output-format", "dicom-seg", "--quiet")
    assert result.exit_code == 0, result.output

    seg = hd.seg.segread(tmp_path / "out" / "abdomen_ct_seg.dcm")
    (referenced,) = seg.ReferencedSeriesSequence
    assert [i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence] == before["SOPInstanceUID"]
    assert {i.ReferencedSOPClassUID for i in referenced.ReferencedInstanceSequence} == {"1.2.840.10008.5.1.4.1.1.2"}  # CT Image Storage


@pytest.mark.parametrize("output_format", ["both", "dicom-seg"])
def test_a_series_without_study_and_series_uids_still_gets_its_nifti_mask(series, tmp_path, cli, output_format):
    """The anonymised Siemens export: SOP, Study and Series Instance UIDs all blank."""
    folder, _, _ = _anonymised(series, tmp_path, ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"))
    checkpoint = echo_checkpoint(series[0], spacing=(2.0, 2.0, 2.0), classes=2)
    result = cli("predict", folder, tmp_path / "out", "-c", checkpoint, "--output-format", output_format)

    mask = np.asarray(nib.load(tmp_path / "out" / "abdomen_ct.nii.gz").dataobj)
    assert 0 < mask.sum() < mask.size
    assert not (tmp_path / "out" / "abdomen_ct_seg.dcm").exists()
    (case,) = json.loads((tmp_path / "out" / "predict_report.json").read_text(encoding="utf-8"))["cases"]
    line = case["warnings"][0] if output_format == "both" else case["error"]
    assert "no Study Instance UID (0020,000D) and Series Instance UID (0020,000E)," in line and "Frame of Reference" not in line
    assert "SOP Instance UID" not in line, "recovered from the file meta"
    assert "--output-format nifti" in line and "\n" not in line
    assert "Traceback" not in result.output and "KeyError" not in result.output
    if output_format == "both":  # the SEG is the extra: the case is done, with one warning
        assert result.exit_code == 0 and case["status"] == "ok" and case["output"].endswith("abdomen_ct.nii.gz")
    else:  # the SEG was all that was asked for: the case fails, its mask kept
        assert result.exit_code == 1 and case["status"] == "failed" and "written as NIfTI instead" in line


def _relabel(checkpoint, labels):
    """The echo checkpoint with the label map's names (organ1 -> spleen)."""
    from unetr_app.io.checkpoint import load_checkpoint, save_checkpoint

    data = load_checkpoint(checkpoint)
    data["labels"] = labels
    path = checkpoint.with_name("echo_spleen.pt")
    save_checkpoint(path, data)
    return path
