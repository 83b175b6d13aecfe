"""Between a file's voxel grid and the radiological axial view napari shows.

napari slices along the first array axis and draws the next two as rows (top to bottom) and
columns (left to right). The radiological axial convention looks at the patient from the feet:
anterior at the top, the patient's right on the screen's left. So the display array has axes
(slice: inferior -> superior, row: anterior -> posterior, column: patient right -> left), which in
nibabel's axis codes (the direction each index increases towards) is ("S", "P", "L").

The reorientation is a permutation plus flips of the voxel grid, never a resampling: every display
voxel is exactly one file voxel, so an edited mask maps back to the file's grid voxel for voxel. A slightly oblique scan is shown on its nearest axes, unresampled, as radiology
viewers do; the spacing is the true voxel size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

DISPLAY_AXCODES = ("S", "P", "L")


@dataclass(frozen=True)
class DisplayGrid:
    """How one file's (i, j, k) grid maps onto the display's (slice, row, column) axes."""

    affine: np.ndarray  # 4x4 voxel -> world (RAS, mm) of the file
    shape: tuple[int, int, int]  # the file's array shape

    @property
    def to_display_ornt(self) -> np.ndarray:
        return ornt_transform(io_orientation(self.affine), axcodes2ornt(DISPLAY_AXCODES))

    @property
    def from_display_ornt(self) -> np.ndarray:
        return ornt_transform(axcodes2ornt(DISPLAY_AXCODES), io_orientation(self.affine))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along each file axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def display_scale(self) -> tuple[float, float, float]:
        """Voxel size (mm) along each display axis: napari's `scale`."""
        scale = [0.0, 0.0, 0.0]
        for file_axis, (display_axis, _flip) in enumerate(self.to_display_ornt):
            scale[int(display_axis)] = self.spacing[file_axis]
        return tuple(scale)

    @property
    def display_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for file_axis, (display_axis, _flip) in enumerate(self.to_display_ornt):
            shape[int(display_axis)] = self.shape[file_axis]
        return tuple(shape)

    @property
    def voxel_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    def to_display(self, array: np.ndarray, copy: bool = True) -> np.ndarray:
        """File-ordered (i, j, k) array -> display-ordered (slice, row, column) array; with
        `copy=False` a strided view (no extra memory for a large scan that is only looked at)."""
        self._check(array.shape, self.shape, "file")
        view = apply_orientation(array, self.to_display_ornt)
        return np.ascontiguousarray(view) if copy else view

    def from_display(self, array: np.ndarray) -> np.ndarray:
        """The exact inverse of `to_display`."""
        self._check(array.shape, self.display_shape, "display")
        return np.ascontiguousarray(apply_orientation(array, self.from_display_ornt))

    def as_metadata(self) -> dict:
        """Plain data for a napari layer's `metadata`, enough to write the layer back on this grid."""
        return {"affine": self.affine.tolist(), "shape": list(self.shape), "spacing": list(self.spacing)}

    @classmethod
    def from_metadata(cls, metadata: dict) -> "DisplayGrid":
        return cls(np.asarray(metadata["affine"], dtype=np.float64), tuple(int(s) for s in metadata["shape"]))

    @staticmethod
    def _check(got: tuple, expected: tuple, kind: str) -> None:
        if tuple(got[:3]) != tuple(expected):
            raise ValueError(f"array of shape {tuple(got)} does not fit this {kind} grid of shape {tuple(expected)}")
