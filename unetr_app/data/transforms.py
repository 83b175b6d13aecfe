"""MONAI dictionary transforms built from the preprocessing config.

`preprocessing_transforms` is the one definition of "how a scan becomes network input", shared by
training, validation and prediction; the checkpoint stores its config, so prediction repeats it
exactly and can invert it (MONAI `Invertd`) to put masks back on the input's grid.
"""

from __future__ import annotations

from monai import transforms as mt

from unetr_app.config import AugmentationConfig, PreprocessingConfig, TrainingConfig

IMAGE, LABEL = "image", "label"


def preprocessing_transforms(pre: PreprocessingConfig, keys: tuple[str, ...] = (IMAGE, LABEL)) -> list:
    """Load, channel first, reorient, resample, window intensities, crop to the body.

    The image is the first key; any further keys are label maps (nearest-neighbour resampling).
    """
    image, labels = keys[0], keys[1:]
    modes = ("bilinear",) + ("nearest",) * len(labels)
    steps = [
        mt.LoadImaged(keys=keys, image_only=True),
        mt.EnsureChannelFirstd(keys=keys),
        mt.Orientationd(keys=keys, axcodes=pre.orientation, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=keys, pixdim=pre.spacing, mode=modes),
        intensity_transform(pre, image),
        # crop to the body (windowed air is 0) so crops and sliding windows skip empty space
        mt.CropForegroundd(keys=keys, source_key=image, allow_smaller=True),
    ]
    return steps


def intensity_transform(pre: PreprocessingConfig, key: str = IMAGE):
    if pre.intensity_window is None:  # MRI: no absolute scale, normalise each image
        return mt.NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True)
    low, high = pre.intensity_window
    return mt.ScaleIntensityRanged(keys=key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)


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
