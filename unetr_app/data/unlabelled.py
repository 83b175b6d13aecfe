"""Unlabelled scans for semi-supervised training (`unetr train --recipe distill --unlabelled DIR`).

The scans are found and preprocessed as `unetr pretrain` does (`data.multicrop.find_scans` and
`preprocess_scans`: the task's orientation, spacing, intensity window and body crop, once per scan),
then cut, forever, into random ROI crops with the labelled loader's augmentation
(`data.transforms.train_transforms`, on the image alone): `scans_per_batch` scans a draw,
`num_samples` crops of `roi_size` from each, as the labelled loader draws `batch_size` volumes of
`num_samples` crops. Crops are uniform over the body crop: with no label there is nothing to centre
a positive crop on.

`check_unlabelled_folders` refuses, before a run starts, a folder that is missing or holds no scan,
a scan with another channel count than the task's, and a scan that is also a labelled one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from unetr_app.config import AugmentationConfig
from unetr_app.data.multicrop import find_scans
from unetr_app.data.transforms import IMAGE
from unetr_app.errors import UsageError
from unetr_app.io.scans import CaseSource, find_cases, read_header_shape, read_volume

SCANS = "NIfTI, NRRD, MetaImage files or DICOM series folders"


def unlabelled_scans(folder: str | Path) -> list[CaseSource]:
    """The scans of one --unlabelled folder; a missing or empty folder is a one-line error."""
    path = Path(folder)
    if not path.exists():
        raise UsageError(f"--unlabelled {path}: no such folder; give a folder of scans ({SCANS})")
    try:
        return find_scans([path])
    except UsageError:
        raise UsageError(f"--unlabelled {path}: holds no scans; give a folder of {SCANS}") from None


def scan_channels(source: CaseSource) -> int:
    """A scan's channel count, from the NIfTI header where there is one (no voxels decoded)."""
    if source.channel_paths:
        return len(source.channel_paths)
    shape = read_header_shape(source)
    if shape:
        return int(shape[3]) if len(shape) == 4 else 1
    return read_volume(source).num_channels


def check_unlabelled_folders(folders: Iterable[str | Path], in_channels: int, labelled_images: Iterable[str | list[str]],
                             labelled_folder: Path | None = None) -> None:
    """Refuse a folder that is missing or holds no scans, a scan whose channel count is not the
    task's, or a scan that is a labelled one: the same file (resolved paths), or the same case name
    as a scan of `labelled_folder` (the dataset's imagesTr: a copy of a labelled scan)."""
    labelled_files = {Path(p).resolve() for entry in labelled_images for p in ([entry] if isinstance(entry, str) else entry)}
    labelled_names = {c.name for c in find_cases(labelled_folder)} if labelled_folder is not None and labelled_folder.is_dir() else set()
    for folder in folders:
        for scan in unlabelled_scans(folder):
            channels = scan_channels(scan)
            if channels != in_channels:
                raise UsageError(f"--unlabelled {folder}: {scan.path} has {channels} channels, the task has {in_channels}; "
                                 f"give scans with the task's channels")
            same_file = next((p for p in scan.files if p.resolve() in labelled_files), None)
            if same_file is not None or scan.name in labelled_names:
                which = f"is the labelled scan {same_file.resolve()}" if same_file else f"has the name of a scan in {labelled_folder}"
                raise UsageError(f"--unlabelled {folder}: {scan.path} overlaps the labelled training set ({which}); "
                                 f"unlabelled scans must be other scans: move it out of the folder")


def image_crops(roi_size: Sequence[int], num_samples: int, aug: AugmentationConfig) -> mt.Compose:
    """`num_samples` random crops of `roi_size` of one preprocessed image, with the labelled crops'
    augmentation (the image's part of `train_transforms`)."""
    return mt.Compose([
        mt.SpatialPadd(keys=IMAGE, spatial_size=tuple(roi_size)),  # volumes smaller than the ROI
        mt.RandSpatialCropSamplesd(keys=IMAGE, roi_size=tuple(roi_size), num_samples=num_samples, random_size=False),
        *(mt.RandFlipd(keys=IMAGE, prob=aug.flip_prob, spatial_axis=axis) for axis in range(3)),
        mt.RandRotate90d(keys=IMAGE, prob=aug.rot90_prob, max_k=3),
        mt.RandShiftIntensityd(keys=IMAGE, offsets=aug.intensity_shift_offset, prob=aug.intensity_shift_prob),
    ])


class UnlabelledCrops:
    """An endless stream of crop batches (N, C, *roi_size) of preprocessed scans (`preprocess_scans`'s
    samples), N = scans_per_batch * num_samples.

    Draw k is made with its own random state, derived from (seed, rank, k) alone: the same seed and
    rank give the same stream, each rank of a torchrun draws other crops, and setting `draws` to
    the count a checkpoint recorded continues the stream exactly where it stopped."""

    def __init__(self, samples: list[dict], roi_size: Sequence[int], num_samples: int, scans_per_batch: int,
                 augmentation: AugmentationConfig, seed: int, rank: int = 0) -> None:
        if not samples:
            raise UsageError("no unlabelled scans to draw crops from")
        self.samples = samples
        self.crops = image_crops(roi_size, num_samples, augmentation)
        self.scans_per_batch = scans_per_batch
        self.seed, self.rank = seed, rank
        self.draws = 0

    def __iter__(self) -> UnlabelledCrops:
        return self

    def __next__(self) -> torch.Tensor:
        random = np.random.RandomState([self.seed, self.rank, self.draws])
        self.draws += 1
        chosen = random.choice(len(self.samples), size=self.scans_per_batch, replace=len(self.samples) < self.scans_per_batch)
        self.crops.set_random_state(seed=int(random.randint(2**31)))
        crops = [crop[IMAGE] for index in chosen for crop in self.crops({IMAGE: self.samples[index][IMAGE]})]
        return torch.stack([_plain(c).float() for c in crops])


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
