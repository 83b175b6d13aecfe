"""A CT-like DICOM series written with SimpleITK, with the tags a DICOM SEG references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

STUDY_UID = "1.2.826.0.1.3680043.2.1125.7"
SERIES_UID = "1.2.826.0.1.3680043.2.1125.7.2"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.2.1125.7.3"


def write_ct_series(volume: np.ndarray, spacing, origin, direction, folder: Path) -> list[Path]:
    """One file per slice k of `volume` (i, j, k); returns the files in slice order."""
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.swapaxes(volume.astype(np.int16), 0, 2))
    image.SetSpacing(spacing), image.SetOrigin(origin), image.SetDirection(direction)
    d = direction
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))  # row, column cosines
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(volume.shape[2]):
        slice_ = image[:, :, k]
        for tag, value in (
            ("0008|0060", "CT"),
            ("0010|0020", "PHANTOM1"),
            ("0020|000d", STUDY_UID),
            ("0020|000e", SERIES_UID),
            ("0020|0052", FRAME_OF_REFERENCE_UID),
            ("0020|0011", "3"),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0013", str(k + 1)),
            ("0018|0050", f"{spacing[2]:.6f}"),
        ):
            slice_.SetMetaData(tag, value)
        files.append(folder / f"slice{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(slice_)
    return files


def blank_uids(files: list[Path], keywords: tuple[str, ...]) -> dict[str, list[str]]:
    """Blank these UIDs in every file's dataset, as anonymisers do (the file meta keeps the SOP
    Class / Instance UIDs); returns the values they had, per keyword, in file order."""
    import pydicom

    before: dict[str, list[str]] = {keyword: [] for keyword in keywords}
    for path in files:
        dataset = pydicom.dcmread(path)
        for keyword in keywords:
            before[keyword].append(str(getattr(dataset, keyword)))
            setattr(dataset, keyword, "")
        dataset.save_as(path)
    return before
