"""A CT-like abdominal phantom in the Medical Segmentation Decathlon layout.

The embedded default dataset: the real Task09_Spleen cannot be downloaded everywhere, so the whole
pipeline runs on this instead, through the same code. Each case is an abdomen in Hounsfield units:
air, a body with a subcutaneous fat layer, vertebrae, aorta, liver, kidneys, a stomach with gas,
bowel gas, and a spleen of varied shape, size and position (label 1). The spleen's intensity
overlaps the liver's, so a model has to use shape and position, as on real scans.

Geometry is realistic: anisotropic spacing (thick slices), several orientation codes (RAS, LPS,
LAS, ...), scanner-like origins and, for some cases, a slightly oblique acquisition.
Organs are placed in patient coordinates (RAS+ world: +x patient's left-to-right, i.e. the spleen
is at negative x, the liver at positive x; +y anterior; +z superior).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform
from scipy.ndimage import gaussian_filter

from unetr_app.io.atomic import atomic_path

ORIENTATIONS = ("RAS", "LPS", "LAS", "RPS", "LPI")
AIR, FAT, SOFT_TISSUE = -1000.0, -100.0, 40.0
LABELS = {"background": 0, "spleen": 1}
# Acquisition grids: (in-plane spacing range in mm, slice thicknesses in mm). "thick" is the embedded
# default every profile was tuned on; "fine" is closer to a real portal-venous CT (sub-millimetre
# in-plane, thin slices), for testing on scans unlike the ones anything was tuned on.
GRIDS = {"thick": ((1.8, 2.4), (3.0, 4.0, 5.0)), "fine": ((0.7, 0.9), (1.5, 2.0, 2.5))}


@dataclass(frozen=True)
class PhantomCase:
    image: np.ndarray  # int16 Hounsfield units, in the file's voxel order
    label: np.ndarray  # uint8, 1 = spleen
    affine: np.ndarray  # 4x4 voxel -> world (RAS+ mm), as NIfTI stores it

    @property
    def orientation(self) -> str:
        return "".join(nib.aff2axcodes(self.affine))


class _Canvas:
    """An RAS voxel grid with world coordinates per axis, painted one structure at a time."""

    def __init__(self, shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator):
        self.spacing = spacing
        self.rng = rng
        # world coordinate (mm) of each voxel centre along x, y, z; the body centre is at x = y = 0
        self.axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
        self.hu = np.full(shape, AIR, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def ellipsoid(self, centre, radii, rotation=None, wobble=None) -> tuple[tuple[slice, ...], np.ndarray]:
        """Mask of a (rotated, optionally wobbly) ellipsoid, computed only inside its bounding box."""
        centre, radii = np.asarray(centre, float), np.asarray(radii, float)
        reach = radii.max() * 1.3
        box = tuple(self._span(axis, c, reach) for axis, c in zip(self.axes, centre))
        grids = np.meshgrid(*(a[s] - c for a, s, c in zip(self.axes, box, centre)), indexing="ij")
        points = np.stack(grids, axis=-1)  # (..., 3) offsets from the centre in mm
        if rotation is not None:
            points = points @ rotation  # rows are world offsets; into the ellipsoid's own frame
        scaled = points / radii
        distance = np.linalg.norm(scaled, axis=-1)
        if wobble is not None:
            # low-order surface bumps so no two organs share a shape
            unit = scaled / np.maximum(distance[..., None], 1e-6)
            distance = distance - unit @ wobble[:3] - wobble[3] * unit[..., 0] * unit[..., 2] - wobble[4] * unit[..., 1] ** 2
        return box, distance <= 1.0

    def paint(self, box, mask, value: float, label: int | None = None) -> None:
        region = self.hu[box]
        region[mask] = value
        if label is not None:
            self.label[box][mask] = label

    def cylinder(self, centre_xy, radius_xy, z_range=None) -> np.ndarray:
        """Full-volume mask of an elliptic cylinder along z."""
        x, y, z = np.meshgrid(*self.axes, indexing="ij", sparse=True)
        inside = ((x - centre_xy[0]) / radius_xy[0]) ** 2 + ((y - centre_xy[1]) / radius_xy[1]) ** 2 <= 1
        if z_range is not None:
            inside = inside & (z >= z_range[0]) & (z <= z_range[1])
        return np.broadcast_to(inside, self.hu.shape)

    @staticmethod
    def _span(axis: np.ndarray, centre: float, reach: float) -> slice:
        lo, hi = np.searchsorted(axis, [centre - reach, centre + reach])
        return slice(int(lo), int(max(hi, lo)))


def make_phantom_case(seed: int, orientation: str | None = None, grid: str = "thick") -> PhantomCase:
    """One abdominal CT phantom on one of `GRIDS`; the same seed and grid always give the same case."""
    if grid not in GRIDS:
        raise ValueError(f"phantom grid {grid!r}: choose one of {', '.join(GRIDS)}")
    (low, high), slices = GRIDS[grid]
    rng = np.random.default_rng(seed)
    in_plane = rng.uniform(low, high)
    spacing = np.array([in_plane, in_plane, rng.choice(slices)])
    fov, length = rng.uniform(330, 370), rng.uniform(190, 250)
    shape = (int(fov / spacing[0]), int(fov / spacing[1]), int(length / spacing[2]))
    canvas = _Canvas(shape, spacing, rng)
    _paint_anatomy(canvas, rng)
    image = _acquire(canvas.hu, spacing, rng)
    code = orientation or ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    oblique = rng.random() < 0.25
    return _orient(image, canvas.label, spacing, code, table_z=rng.uniform(-400, -100), tilt=rng.uniform(-6, 6) if oblique else 0.0)


def _paint_anatomy(canvas: _Canvas, rng: np.random.Generator) -> None:
    half_w, half_d = rng.uniform(135, 160), rng.uniform(95, 115)  # body half width / depth, mm
    z_top = canvas.axes[2][-1]
    canvas.hu[canvas.cylinder((0, 0), (half_w, half_d))] = FAT
    fat = rng.uniform(8, 20)
    canvas.hu[canvas.cylinder((0, 0), (half_w - fat, half_d - fat))] = SOFT_TISSUE + rng.normal(0, 5)
    _paint_spine(canvas, rng, depth=half_d)
    aorta = canvas.cylinder((rng.uniform(-25, -10), -half_d + 70), (11, 11))
    canvas.hu[aorta] = rng.uniform(150, 200)
    # liver: large, on the patient's right (+x), upper abdomen
    liver_hu = rng.uniform(95, 120)
    box, mask = canvas.ellipsoid(
        (rng.uniform(45, 70), rng.uniform(-5, 15), z_top - rng.uniform(40, 70)),
        (rng.uniform(75, 95), rng.uniform(65, 80), rng.uniform(60, 80)),
        _rotation(rng, 0.25),
        wobble=rng.normal(0, 0.08, 5),
    )
    canvas.paint(box, mask, liver_hu)
    for side in (-1, 1):  # kidneys, posterior, lower than the spleen
        box, mask = canvas.ellipsoid(
            (side * rng.uniform(55, 75), -half_d + rng.uniform(55, 70), z_top - rng.uniform(110, 140)),
            (rng.uniform(25, 32), rng.uniform(20, 26), rng.uniform(45, 58)),
            _rotation(rng, 0.3),
        )
        canvas.paint(box, mask, rng.uniform(150, 190))
    _paint_gas(canvas, rng, half_d)
    _paint_spleen(canvas, rng, half_w, half_d, z_top, liver_hu)


def _paint_spine(canvas: _Canvas, rng: np.random.Generator, depth: float) -> None:
    y = -depth + rng.uniform(38, 48)
    canvas.hu[canvas.cylinder((0, y), (18, 16))] = rng.uniform(250, 350)  # vertebral bodies
    period = rng.uniform(28, 34)
    for z in np.arange(canvas.axes[2][0], canvas.axes[2][-1], period):  # discs between vertebrae
        canvas.hu[canvas.cylinder((0, y), (18, 16), (z, z + 6))] = 90
    canvas.hu[canvas.cylinder((0, y - 24), (8, 8))] = 20  # spinal canal


def _paint_gas(canvas: _Canvas, rng: np.random.Generator, depth: float) -> None:
    z_top = canvas.axes[2][-1]
    box, mask = canvas.ellipsoid(  # stomach between liver and spleen, anterior-left, gas on top
        (rng.uniform(-50, -25), rng.uniform(25, 45), z_top - rng.uniform(50, 80)), (35, 28, 40), _rotation(rng, 0.4)
    )
    canvas.paint(box, mask, rng.uniform(15, 35))
    box, mask = canvas.ellipsoid((canvas.axes[0][box[0]].mean(), canvas.axes[1][box[1]].mean() + 15, canvas.axes[2][box[2]].mean()), (22, 10, 25))
    canvas.paint(box, mask, -900)
    for _ in range(int(rng.integers(4, 9))):  # bowel gas pockets, lower abdomen
        centre = (rng.uniform(-90, 90), rng.uniform(-10, depth - 30), z_top - rng.uniform(120, 220))
        box, mask = canvas.ellipsoid(centre, rng.uniform(6, 18, 3))
        canvas.paint(box, mask, rng.uniform(-950, -600))


def _paint_spleen(canvas, rng, half_w: float, half_d: float, z_top: float, liver_hu: float) -> None:
    """The target: posterolateral left upper quadrant, crescent-like, intensity near the liver's."""
    radii = np.array([rng.uniform(22, 38), rng.uniform(38, 60), rng.uniform(40, 65)])
    centre = np.array([-half_w + radii[0] + rng.uniform(25, 45), rng.uniform(-half_d * 0.55, -half_d * 0.1), z_top - rng.uniform(50, 95)])
    rotation = _rotation(rng, 0.5)
    box, mask = canvas.ellipsoid(centre, radii, rotation, wobble=rng.normal(0, 0.1, 5))
    # the hilum: a medial notch makes the crescent / bean shape of a real spleen
    notch_box, notch = canvas.ellipsoid(centre + np.array([radii[0] * 0.9, 0, 0]), radii * np.array([0.55, 0.45, 0.5]))
    full = np.zeros(canvas.hu.shape, bool)
    full[box] = mask
    full[notch_box] &= ~notch
    spleen_hu = liver_hu + rng.uniform(-5, 25)
    canvas.hu[full] = spleen_hu
    canvas.label[full] = 1


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A random rotation matrix with angles up to `max_angle` radians about each axis."""
    ax, ay, az = rng.uniform(-max_angle, max_angle, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _acquire(hu: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner blur (about 1 mm in plane, half a slice along z), texture and noise, to int16 HU."""
    blurred = gaussian_filter(hu, sigma=(1.0 / spacing[0], 1.0 / spacing[1], 0.5), mode="nearest")
    texture = gaussian_filter(rng.normal(0, 1, hu.shape).astype(np.float32), 1.5) * 25
    noisy = blurred + texture * (hu > -500) + rng.normal(0, rng.uniform(8, 18), hu.shape)
    return np.clip(np.rint(noisy), -1024, 3071).astype(np.int16)


def _orient(image, label, spacing, code: str, table_z: float, tilt: float) -> PhantomCase:
    """Store the RAS-ordered arrays in the voxel order of `code`, with a matching affine."""
    ras_affine = np.diag([*spacing, 1.0])
    ras_affine[:3, 3] = -(np.array(image.shape) - 1) / 2 * spacing + np.array([0.0, 0.0, table_z])
    if tilt:  # gantry-like tilt about the left-right axis, in degrees
        t = np.deg2rad(tilt)
        tilt_matrix = np.eye(4)
        tilt_matrix[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        ras_affine = tilt_matrix @ ras_affine
    transform = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(code)))
    affine = ras_affine @ inv_ornt_aff(transform, image.shape)
    return PhantomCase(apply_orientation(image, transform).astype(np.int16), apply_orientation(label, transform).astype(np.uint8), affine)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write with matching qform and sform (scanner codes) so every reader sees the same geometry."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def write_phantom_dataset(out_dir: str | Path, cases: int = 41, test_cases: int = 20, seed: int = 0, progress=None,
                          grid: str = "thick") -> Path:
    """Write `cases` labelled training and `test_cases` test cases in MSD Task09_Spleen layout."""

    def make(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        case = make_phantom_case(seed * 100_003 + index, grid=grid)
        return case.image, case.label, case.affine

    description = {
        "name": "Spleen",
        "description": f"CT-like abdominal phantom in MSD Task09_Spleen layout (unetr data synth, seed {seed}, {grid} grid)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(v): k for k, v in LABELS.items()},
    }
    return write_msd_layout(out_dir, cases, test_cases, make, lambda index: f"spleen_{index + 1}.nii.gz", description, progress)


def write_msd_layout(out_dir, cases: int, test_cases: int, make, file_name, description: dict, progress=None) -> Path:
    """Cases `make(index)` -> (image, label, affine), named `file_name(index)`, in the Medical
    Segmentation Decathlon layout (imagesTr, labelsTr, imagesTs, and labelsTs for evaluation) with
    its dataset.json."""
    out = Path(out_dir)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / folder).mkdir(parents=True, exist_ok=True)

    def write(index: int) -> None:
        image, label, affine = make(index)  # each case from its own seed: the order of making does not matter
        split = ("imagesTr", "labelsTr") if index < cases else ("imagesTs", "labelsTs")
        save_nifti(image, affine, out / split[0] / file_name(index))
        save_nifti(label, affine, out / split[1] / file_name(index))
        if progress is not None:
            progress()

    # numpy, scipy's filters and zlib release the GIL: two threads make the cases about twice as fast on two cores
    with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, 4)) as pool:
        list(pool.map(write, range(cases + test_cases)))
    training = [{"image": f"./imagesTr/{file_name(i)}", "label": f"./labelsTr/{file_name(i)}"} for i in range(cases)]
    test = [f"./imagesTs/{file_name(i)}" for i in range(cases, cases + test_cases)]
    listing = {"reference": "generated by unetr; not patient data", "licence": "CC0-1.0", **description,
               "numTraining": cases, "numTest": test_cases, "training": training, "test": test}
    with atomic_path(out / "dataset.json") as tmp:
        tmp.write_text(json.dumps(listing, indent=2))
    return out
