"""napari plugin contributions (see `napari.yaml`): a NIfTI reader that keeps the file's grid, a
labels writer that restores it, and the review widget.

The reader shows a volume in the radiological axial view at its physical spacing, like `unetr
review`, and stores the file grid (affine, shape, spacing, qform/sform codes) in the layer's
`metadata`; the writer maps the labels back to that grid voxel for voxel. A labels layer with no
such metadata (drawn from scratch in napari) is written with napari's axes as file axes and its
`scale` as voxel size.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from unetr_app.errors import InputError
from unetr_app.io.scans import CaseSource, case_name, read_volume
from unetr_app.io.atomic import atomic_path
from unetr_app.review.geometry import DisplayGrid
from unetr_app.review.layers import label_colormap
from unetr_app.review.windows import contrast_limits, default_preset

NIFTI_SUFFIXES = (".nii", ".nii.gz")
MAX_LABELS = 64  # an integer volume with at most this many non-negative values opens as labels


def get_reader(path):
    """npe2 reader hook: our reader for one `.nii`/`.nii.gz` path (or a list of them), else None."""
    paths = path if isinstance(path, list) else [path]
    if not all(str(p).lower().endswith(NIFTI_SUFFIXES) for p in paths):
        return None
    return read_nifti


def read_nifti(path) -> list[tuple]:
    paths = path if isinstance(path, list) else [path]
    return [_layer_data(Path(p)) for p in paths]


def _layer_data(path: Path) -> tuple:
    volume = read_volume(CaseSource(case_name(path), path, "nifti"))
    grid = DisplayGrid(volume.affine, volume.shape)
    header = nib.load(path).header
    metadata = {**grid.as_metadata(), "source": str(path),
                "qform_code": int(header["qform_code"]), "sform_code": int(header["sform_code"])}
    data = grid.to_display(volume.channel(0))  # a multi-channel file shows its first channel
    attributes = {"name": case_name(path), "scale": grid.display_scale, "metadata": metadata}
    if looks_like_labels(data, header.get_data_dtype()):
        values = np.unique(data)
        return data.astype(np.int32), {**attributes, "colormap": label_colormap(values[values > 0])}, "labels"
    return data, {**attributes, "colormap": "gray", "contrast_limits": contrast_limits(data, default_preset(data))}, "image"


def looks_like_labels(data: np.ndarray, stored_dtype) -> bool:
    if not np.issubdtype(stored_dtype, np.integer) or data.min() < 0:
        return False
    return np.unique(data).size <= MAX_LABELS


def write_labels(path: str, data, meta: dict) -> list[str]:
    """npe2 single-layer writer: the labels on the grid they were read from (see module docstring)."""
    target = Path(path)
    if not target.name.lower().endswith(NIFTI_SUFFIXES):
        target = target.with_name(target.name + ".nii.gz")
    data = np.asarray(data)
    if data.ndim != 3:
        raise InputError(f"{target}: only 3D labels can be saved as NIfTI (this layer is {data.ndim}D)")
    metadata = meta.get("metadata") or {}
    if "affine" in metadata and "shape" in metadata:
        grid = DisplayGrid.from_metadata(metadata)
        array, affine = grid.from_display(data), grid.affine
        codes = metadata.get("qform_code", 1), metadata.get("sform_code", 1)
    else:
        array, affine, codes = data, np.diag([*meta.get("scale", (1.0, 1.0, 1.0)), 1.0]), (1, 1)
    write_mask(target, array, affine, *codes)
    return [str(target)]


def write_mask(target: Path, array: np.ndarray, affine: np.ndarray, qform_code: int = 1, sform_code: int = 1) -> None:
    dtype = np.uint8 if array.min(initial=0) >= 0 and array.max(initial=0) < 256 else np.int16
    image = nib.Nifti1Image(array.astype(dtype), None)
    image.set_qform(affine, code=int(qform_code) or 1)  # a qform always: SimpleITK falls back on it
    image.set_sform(affine, code=int(sform_code))
    image.header.set_intent("label")
    image.header.set_xyzt_units("mm", "sec")
    with atomic_path(target) as tmp:
        nib.save(image, tmp)
