"""An MRI-like prostate phantom in the Medical Segmentation Decathlon Task05_Prostate layout.

Two channels per case, stored as one 4D NIfTI with the channels on the last axis (as MSD does):
T2-weighted and an apparent diffusion coefficient (ADC) map. Labels: 1 peripheral zone (PZ, the
posterior and lateral shell of the gland, bright on T2 and high on ADC), 2 transition zone (TZ,
the central gland, darker on both). Around the gland: pelvic fat, muscle, the bladder (anterior,
superior; very bright on T2) and the rectum (posterior; dark). MRI intensities have no absolute
scale, so each case gets its own gain and a smooth bias field: only per-scan normalisation works.
Geometry as on real prostate MRI: thick slices (3-4 mm) and several orientation codes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from unetr_app.data.phantom import ORIENTATIONS, _Canvas, _orient, _rotation, write_msd_layout

LABELS = {"background": 0, "peripheral_zone": 1, "transition_zone": 2}
CHANNELS = {"T2": "MRI", "ADC": "MRI"}
FIELD_OF_VIEW = 96.0  # mm in-plane
# Acquisition grids: (in-plane spacing in mm, slice thicknesses in mm). "thick" is the embedded
# default; "fine" is the sub-millimetre in-plane, 4 mm-slice grid of a clinical T2 (0.8 x 0.8 x 4 mm).
GRIDS = {"thick": (2.0, (3.0, 3.6, 4.0)), "fine": (0.8, (4.0,))}
# tissue -> (T2 signal, ADC in 1e-6 mm^2/s)
TISSUE = {
    "air": (0.0, 0.0),
    "fat": (650.0, 150.0),
    "muscle": (260.0, 1400.0),
    "bladder": (1300.0, 2900.0),
    "rectum": (120.0, 600.0),
    "pz": (900.0, 1750.0),
    "tz": (430.0, 1150.0),
}


def make_prostate_case(seed: int, grid: str = "thick") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (x, y, z, 2) int16, label (x, y, z) uint8, affine) in the file's voxel order, on one of `GRIDS`."""
    if grid not in GRIDS:
        raise ValueError(f"phantom grid {grid!r}: choose one of {', '.join(GRIDS)}")
    in_plane, slices = GRIDS[grid]
    rng = np.random.default_rng(seed)
    spacing = np.array([in_plane, in_plane, rng.choice(slices)])
    shape = (int(round(FIELD_OF_VIEW / in_plane)),) * 2 + (int(round(72 / spacing[2])),)
    t2 = _Canvas(shape, spacing, rng)
    adc = np.zeros(shape, np.float32)

    def paint(mask, tissue: str, label: int | None = None, box=None):
        region = (slice(None),) * 3 if box is None else box
        t2.hu[region][mask], adc[region][mask] = TISSUE[tissue]
        if label is not None:
            t2.label[region][mask] = label

    t2.hu[:] = TISSUE["air"][0]
    paint(t2.cylinder((0, 0), (rng.uniform(80, 95), rng.uniform(60, 75))), "fat")
    for side in (-1, 1):  # obturator internus / levator muscles beside the gland
        paint(t2.cylinder((side * rng.uniform(30, 38), rng.uniform(-8, 4)), (9, 22)), "muscle")
    box, mask = t2.ellipsoid((rng.uniform(-4, 4), rng.uniform(16, 24), rng.uniform(24, 34)), rng.uniform([22, 16, 16], [30, 22, 22]))
    paint(mask, "bladder", box=box)
    paint(t2.cylinder((rng.uniform(-3, 3), -rng.uniform(24, 28)), (11, 9)), "rectum")
    centre = np.array([rng.uniform(-3, 3), rng.uniform(-6, 0), rng.uniform(-6, 6)])
    radii = rng.uniform([17, 13, 15], [23, 17, 21])
    rotation = _rotation(rng, 0.15)
    box, gland = t2.ellipsoid(centre, radii, rotation, wobble=rng.normal(0, 0.06, 5))
    paint(gland, "pz", label=1, box=box)
    box, central = t2.ellipsoid(centre + [0, rng.uniform(2, 5), 0], radii * rng.uniform(0.5, 0.7, 3), rotation)
    paint(central, "tz", label=2, box=box)
    image = np.stack([_acquire(t2.hu, spacing, rng, gain=rng.uniform(0.6, 1.6)), _acquire(adc, spacing, rng, gain=1.0)], axis=-1)
    code = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    oriented = [_orient(image[..., c], t2.label, spacing, code, table_z=rng.uniform(-80, 40), tilt=0.0) for c in range(2)]
    return np.stack([o.image for o in oriented], axis=-1), oriented[0].label, oriented[0].affine


def _acquire(signal: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, gain: float) -> np.ndarray:
    """Blur, a smooth multiplicative bias field, per-case gain and Rician-like noise (never negative)."""
    blurred = gaussian_filter(signal, sigma=(1.0 / spacing[0], 1.0 / spacing[1], 0.4), mode="nearest")
    bias = np.exp(gaussian_filter(rng.normal(0, 1, signal.shape), (16 / spacing[0], 16 / spacing[1], 8)) * 4.0)
    sigma = 0.03 * float(signal.max())
    noisy = np.hypot(blurred * bias * gain + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))
    return np.clip(np.rint(noisy), 0, 32767).astype(np.int16)


def write_prostate_dataset(out_dir: str | Path, cases: int = 32, test_cases: int = 16, seed: int = 0, progress=None,
                           grid: str = "thick") -> Path:
    """`cases` labelled training and `test_cases` test cases in MSD Task05_Prostate layout."""
    description = {
        "name": "PROSTATE",
        "description": f"MRI-like prostate phantom in MSD Task05_Prostate layout (unetr data synth, seed {seed}, {grid} grid)",
        "tensorImageSize": "4D",
        "modality": {str(c): name for c, name in enumerate(CHANNELS)},
        "labels": {str(v): k for k, v in LABELS.items()},
    }
    make = lambda index: make_prostate_case(seed * 100_003 + index, grid)  # noqa: E731
    return write_msd_layout(out_dir, cases, test_cases, make, lambda index: f"prostate_{index:02d}.nii.gz", description, progress)
