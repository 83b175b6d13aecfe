"""Masks as DICOM Segmentation objects (highdicom), for PACS and DICOM viewers.

A SEG written for a DICOM-series case references its source: same study, same frame of reference,
one frame per source slice and label, each frame naming the source instance it segments. The mask
array (i, j, k) of a series read by `io.scans` holds SimpleITK's index order: i = column, j = row,
k = the k-th file of GDCM's sorted series; so the frame for source slice k is `mask[:, :, k].T`.

Anonymisers often blank UIDs. The SOP Class and Instance UIDs are also in each file's meta header
(MediaStorageSOPClassUID / MediaStorageSOPInstanceUID) and are taken from there; a blank Study,
Series or Frame of Reference UID cannot be recovered, and a SEG that cannot name its source is
refused with `SegReferenceError` (callers still write the NIfTI mask).
"""

from __future__ import annotations

from importlib import metadata as package_metadata
from pathlib import Path

import numpy as np

from unetr_app.errors import InputError
from unetr_app.extras import require_feature
from unetr_app.io.atomic import atomic_path
from unetr_app.io.scans import LPS_TO_RAS, CaseSource, Volume

SEG_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.66.4"
# SNOMED CT codes of organs our tasks segment; other labels are coded as a generic anatomical structure
ANATOMY_CODES = {
    "spleen": ("78961009", "Spleen"),
    "liver": ("10200004", "Liver"),
    "kidney": ("64033007", "Kidney"),
    "pancreas": ("15776009", "Pancreas"),
    "aorta": ("15825003", "Aorta"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
}
ANATOMICAL_STRUCTURE = ("123037004", "Anatomical Structure")
POSITION_TOLERANCE_MM = 0.01
# what a SEG references its source by, and where each UID sits
SERIES_REFERENCES = {
    "StudyInstanceUID": "Study Instance UID (0020,000D)",
    "SeriesInstanceUID": "Series Instance UID (0020,000E)",
    "FrameOfReferenceUID": "Frame of Reference UID (0020,0052)",
}
# dataset keyword -> the file meta keyword holding the same UID
FILE_META_UIDS = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}


class SegReferenceError(InputError):
    """The series lacks a UID a DICOM SEG must reference; the mask can still be written as NIfTI."""


def write_dicom_seg(volume: Volume, mask: np.ndarray, labels: dict[str, int], path: Path) -> Path:
    """Write `mask` (the volume's (i, j, k) shape, values = label values) as a DICOM SEG at `path`."""
    hd = require_feature("--output-format dicom-seg")["highdicom"]

    check_seg_input(volume.source)
    sources = source_datasets(volume)
    frames = np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8)  # (slices, rows, columns)
    names = {value: name for name, value in labels.items() if value != 0}
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(value, names[value]) for value in sorted(names)],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="unetr",
        manufacturer_model_name="unetr",
        software_versions=_version(),
        device_serial_number="0",
        series_description="unetr segmentation",
        omit_empty_frames=False,  # one frame per source slice and segment: viewers page through it like the CT
    )
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def check_seg_input(source: CaseSource) -> None:
    if source.kind != "dicom":
        raise InputError(f"{source.path}: a DICOM SEG needs a DICOM series input (this is {source.kind}); use --output-format nifti or both")


def segment_description(value: int, name: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    code, meaning = ANATOMY_CODES.get(name.lower(), ANATOMICAL_STRUCTURE)
    return hd.seg.SegmentDescription(
        segment_number=value,
        segment_label=name,
        segmented_property_category=Code(ANATOMICAL_STRUCTURE[0], "SCT", ANATOMICAL_STRUCTURE[1]),
        segmented_property_type=Code(code, "SCT", meaning),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="unetr", version=_version(), family=codes.cid7162.ArtificialIntelligence
        ),
    )


def source_datasets(volume: Volume) -> list:
    """The series' datasets in the volume's slice order, their UIDs recovered where the file meta
    has them, checked against the volume's geometry."""
    import pydicom
    import SimpleITK as sitk

    folder = volume.source.path
    series = volume.source.series
    if series is None:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series)
    datasets = [recover_uids(pydicom.dcmread(name)) for name in files]
    if len(datasets) != volume.array.shape[2]:
        raise InputError(f"{folder}: {len(datasets)} files in series {series or '(blank UID)'} but {volume.array.shape[2]} slices were read")
    check_references(folder, datasets)
    lps_affine = np.linalg.inv(LPS_TO_RAS) @ volume.affine
    for k, dataset in enumerate(datasets):
        expected = (lps_affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
        found = np.asarray([float(v) for v in dataset.ImagePositionPatient])
        if np.abs(found - expected).max() > POSITION_TOLERANCE_MM:
            raise InputError(f"{files[k]}: slice position {found.tolist()} is not slice {k} of the series grid {expected.tolist()}")
    return datasets


def recover_uids(dataset):
    """Fill a blank SOP Class / Instance UID from the file meta header, where that has it."""
    meta = getattr(dataset, "file_meta", None)
    for keyword, meta_keyword in FILE_META_UIDS.items():
        if not str(getattr(dataset, keyword, "") or "").strip() and meta is not None and getattr(meta, meta_keyword, None):
            setattr(dataset, keyword, str(getattr(meta, meta_keyword)))
    return dataset


def check_references(folder: Path, datasets: list) -> None:
    """Refuse in one line a series whose SEG could not name its source, listing every missing UID."""
    missing = [name for keyword, name in SERIES_REFERENCES.items()
               if any(not str(getattr(d, keyword, "") or "").strip() for d in datasets)]
    blank_instances = sum(not str(getattr(d, "SOPInstanceUID", "") or "").strip() for d in datasets)
    if blank_instances:
        missing.append(f"SOP Instance UID (0008,0018) in {blank_instances} of {len(datasets)} files")
    if missing:
        raise SegReferenceError(
            f"{folder}: no DICOM SEG: the series has no {_listing(missing)}, which a SEG references its source by "
            "(blanked by an anonymiser?); restore them from the original export, or use --output-format nifti"
        )


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _version() -> str:
    try:
        return package_metadata.version("unetr")
    except package_metadata.PackageNotFoundError:
        return "0"
