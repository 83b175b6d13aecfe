"""Unlabelled scans for self-supervised pretraining, and DINO's multi-crop augmentation in 3D.

Scans are read by the one scan reader (`unetr_app.io.scans`: NIfTI, NRRD, MetaImage, DICOM series)
and preprocessed once with the task's orientation, spacing, intensity window and body crop (the
same steps as training and prediction, `data.transforms.preprocessing_transforms`). An unreadable
scan is skipped with a warning; a set of folders with no readable scan is an error.

Each sample is then cut into views, with MONAI transforms (DINO's recipe, Caron et al. 2021, in 3D):

    global crops (2)   a box of `global_scale` (fraction of the body crop's volume) resized to `global_size`
    local crops (N)    a box of `local_scale` resized to `local_size`
    every crop         random flips on each axis, intensity scale/shift jitter, Gaussian blur
                       (probability 1.0 for the first global crop, 0.1 for the second, 0.5 for local crops)

The box is drawn per axis (aspect ratio varies) with each side between scale_low^(1/3) and
scale_high^(1/3) of the body crop's side, so its volume fraction spans [scale_low, scale_high].
A sample is {"global_crops": (G, C, *global_size), "local_crops": (L, C, *local_size)}.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai import transforms as mt

from unetr_app.config import PreprocessingConfig
from unetr_app.data.transforms import IMAGE, LoadScand, preprocessing_transforms, volume_tensor
from unetr_app.errors import InputError, UsageError
from unetr_app.io.scans import CaseSource, find_cases, read_volume

log = logging.getLogger(__name__)


# --- reading and preprocessing -------------------------------------------------------------------


def find_scans(folders: Sequence[str | Path]) -> list[CaseSource]:
    """Every scan in the folders (or files), in order; the same case name twice is kept once per folder."""
    if not folders:
        raise UsageError("give at least one folder of scans")
    return [case for folder in folders for case in find_cases(folder)]


def preprocessing_after_load(pre: PreprocessingConfig) -> mt.Compose:
    """The shared preprocessing without its file loading (scans come from our reader)."""
    steps = [s for s in preprocessing_transforms(pre, keys=(IMAGE,))
             if not isinstance(s, (LoadScand, mt.LoadImaged, mt.EnsureChannelFirstd))]
    return mt.Compose(steps)


def preprocess_scans(cases: Sequence[CaseSource], pre: PreprocessingConfig,
                     on_case: Callable[[str], None] | None = None) -> list[dict]:
    """[{image: (1, *size) float tensor at the task's grid, case: name}]; unreadable scans are skipped."""
    prepare = preprocessing_after_load(pre)
    samples, skipped = [], []
    for source in cases:
        try:
            image = prepare({IMAGE: volume_tensor(read_volume(source))})[IMAGE]
        except InputError as err:
            log.warning("skipping %s", err)
            skipped.append(source.path)
        else:
            samples.append({IMAGE: torch.as_tensor(image).float().contiguous(), "case": source.name})
        if on_case:
            on_case(source.name)
    if not samples:
        first = f" (first: {skipped[0]})" if skipped else ""
        raise UsageError(f"none of the {len(cases)} scans could be read{first}")
    return samples


# --- multi-crop --------------------------------------------------------------------------------------


def crop_transform(size: Sequence[int], scale: tuple[float, float], blur_prob: float) -> mt.Compose:
    """One view: a random box of `scale` of the volume, resized to `size`, flipped, jittered, blurred."""
    side_low, side_high = (s ** (1 / 3) for s in scale)
    return mt.Compose([
        mt.RandScaleCropd(keys=IMAGE, roi_scale=side_low, max_roi_scale=side_high, random_size=True),
        mt.Resized(keys=IMAGE, spatial_size=tuple(size), mode="trilinear", anti_aliasing=False),
        *(mt.RandFlipd(keys=IMAGE, prob=0.5, spatial_axis=axis) for axis in range(3)),
        mt.RandScaleIntensityd(keys=IMAGE, factors=0.2, prob=0.8),
        mt.RandShiftIntensityd(keys=IMAGE, offsets=0.1, prob=0.8),
        mt.RandGaussianSmoothd(keys=IMAGE, sigma_x=(0.1, 1.0), sigma_y=(0.1, 1.0), sigma_z=(0.1, 1.0), prob=blur_prob),
    ])


class MultiCropd(mt.Randomizable, mt.Transform):
    """{"image": (C, *size)} -> {"global_crops": (G, C, *global_size), "local_crops": (L, C, *local_size)}."""

    def __init__(self, global_size: Sequence[int], local_size: Sequence[int], global_crops: int = 2,
                 local_crops: int = 8, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)) -> None:
        blur = [1.0, 0.1] + [0.5] * max(global_crops - 2, 0)
        self.global_views = [crop_transform(global_size, global_scale, blur[i]) for i in range(global_crops)]
        self.local_view = crop_transform(local_size, local_scale, 0.5)
        self.local_crops = local_crops
        self.local_size = tuple(local_size)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> MultiCropd:
        # every view's transforms draw from their own stream, all derived from this one seed
        base = seed if seed is not None else int((state or np.random).randint(2**31))
        for offset, view in enumerate([*self.global_views, self.local_view]):
            view.set_random_state(seed=(base + 7919 * offset) % 2**32)
        return self

    def randomize(self, data=None) -> None:  # the views hold all the randomness
        pass

    def __call__(self, data: dict) -> dict:
        image = data[IMAGE]
        global_crops = [self._view(view, image) for view in self.global_views]
        local_crops = [self._view(self.local_view, image) for _ in range(self.local_crops)]
        empty = image.new_zeros((0, image.shape[0], *self.local_size))
        return {
            "global_crops": torch.stack(global_crops),
            "local_crops": torch.stack(local_crops) if local_crops else empty,
            "case": data.get("case", ""),
        }

    @staticmethod
    def _view(view: mt.Compose, image: torch.Tensor) -> torch.Tensor:
        out = view({IMAGE: image})[IMAGE]
        return torch.as_tensor(out).float()


def multicrop_loader(samples: list[dict], crops: MultiCropd, batch_size: int, seed: int, num_workers: int = 0,
                     rank: int = 0, world_size: int = 1):
    """A shuffling loader of multi-crop batches (a DistributedSampler under torchrun), which the
    trainer reseeds every epoch (`set_rnd` reaches MultiCropd through the dataset)."""
    from monai.data import DataLoader, Dataset
    from torch.utils.data import DistributedSampler

    dataset = Dataset(samples, transform=crops)
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed) if world_size > 1 else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler, generator=generator,
                      num_workers=num_workers, drop_last=len(dataset) >= batch_size * world_size,
                      persistent_workers=num_workers > 0)
