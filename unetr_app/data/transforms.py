"""MONAI dictionary transforms built from the preprocessing config.

`preprocessing_transforms` is the one definition of "how a scan becomes network input", shared by
training, validation and prediction; the checkpoint stores its config, so prediction repeats it
exactly and can invert it (MONAI `Invertd`) to put masks back on the input's grid.
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from unetr_app.config import AugmentationConfig, PreprocessingConfig, TrainingConfig
from unetr_app.io.scans import Volume, read_volume, source_for

IMAGE, LABEL = "image", "label"


class LoadScand(mt.MapTransform):
    """Read each key's scan (a file, a DICOM series folder, or a list of channel files) through
    `io.scans`, the reader prediction uses, into a channel-first MetaTensor with its RAS affine."""

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = volume_tensor(read_volume(source_for(d[key])))
        return d


def volume_tensor(volume: Volume) -> MetaTensor:
    """(channels, i, j, k) float32 with the scan's affine, as MONAI's spatial transforms expect."""
    array = volume.array[np.newaxis] if volume.array.ndim == 3 else np.moveaxis(volume.array, -1, 0)
    meta = {"filename_or_obj": str(volume.source.path), "original_channel_dim": -1 if volume.array.ndim == 4 else "no_channel"}
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=torch.from_numpy(volume.affine), meta=meta)


def preprocessing_transforms(pre: PreprocessingConfig, keys: tuple[str, ...] = (IMAGE, LABEL)) -> list:
    """Load (channel first), reorient, resample, normalise intensities per channel, crop to the body.

    The image is the first key; any further keys are label maps (nearest-neighbour resampling).
    """
    image, labels = keys[0], keys[1:]
    modes = ("bilinear",) + ("nearest",) * len(labels)
    steps = [
        LoadScand(keys=keys),
        mt.Orientationd(keys=keys, axcodes=pre.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=keys, pixdim=pre.spacing, mode=modes),
        NormalizeChannelsd(keys=image, modalities=pre.modalities, window=pre.intensity_window),
        # crop to the body (windowed air is 0) so crops and sliding windows skip empty space
        mt.CropForegroundd(keys=keys, source_key=image, allow_smaller=True),
    ]
    return steps


class NormalizeChannelsd(mt.MapTransform):
    """Intensity normalisation per channel by its modality, as nnU-Net does: a CT channel is mapped
    from its Hounsfield window to [0, 1] and clipped; an MRI channel (no absolute scale) is z-scored
    over its nonzero voxels. Without modalities (older checkpoints) every channel follows the window:
    windowed when there is one, z-scored otherwise."""

    def __init__(self, keys, modalities: tuple[str, ...] | None, window: tuple[float, float] | None):
        super().__init__(keys)
        self.modalities = modalities
        self.scale = None if window is None else mt.ScaleIntensityRange(window[0], window[1], 0.0, 1.0, clip=True)
        self.zscore = mt.NormalizeIntensity(nonzero=True)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            out = image.clone()
            for c in range(image.shape[0]):
                modality = self.modalities[c] if self.modalities else ("CT" if self.scale else "MRI")
                step = self.scale if modality == "CT" and self.scale is not None else self.zscore
                out[c] = step(out[c : c + 1])[0]  # on the copy: NormalizeIntensity works in place, and the
                # input may share memory with the caller's scan (volume_tensor does not copy float32 arrays)
            d[key] = out
        return d


def train_transforms(pre: PreprocessingConfig, aug: AugmentationConfig, train: TrainingConfig) -> mt.Compose:
    """Preprocessing, then positive/negative ROI crops and light augmentation (UNETR recipe)."""
    keys = (IMAGE, LABEL)
    pos, neg = train.pos_neg_ratio
    return mt.Compose(
        preprocessing_transforms(pre, keys)
        + [
            mt.SpatialPadd(keys=keys, spatial_size=pre.roi_size),  # volumes smaller than the ROI
            mt.RandCropByPosNegLabeld(
                keys=keys,
                label_key=LABEL,
                spatial_size=pre.roi_size,
                pos=pos,
                neg=neg,
                num_samples=train.num_samples,
                image_key=IMAGE,
                image_threshold=0,
            ),
            mt.RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=0),
            mt.RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=1),
            mt.RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=2),
            mt.RandRotate90d(keys=keys, prob=aug.rot90_prob, max_k=3),
            mt.RandShiftIntensityd(keys=IMAGE, offsets=aug.intensity_shift_offset, prob=aug.intensity_shift_prob),
        ]
    )


def eval_transforms(pre: PreprocessingConfig, keys: tuple[str, ...] = (IMAGE, LABEL)) -> mt.Compose:
    return mt.Compose(preprocessing_transforms(pre, keys))
