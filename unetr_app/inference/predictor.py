"""One scan in, one mask out on the scan's own grid.

The checkpoint's preprocessing (the same MONAI transforms training used, minus file loading, which
`io.scans` does for every format) brings the scan to the network's orientation, spacing and
intensity range; MONAI's sliding-window inference with Gaussian blending predicts it window by
window; the class probabilities are then resampled from the preprocessed grid straight onto the
input's grid (the composition of the inverse crop, resampling and reorientation), so the argmax is
taken on the input's exact grid.

Several checkpoints (folds of one model, or different models) form an ensemble: each runs over the
scan in turn and their softmax probabilities are averaged, so only one scan is in memory at a time.
They must agree on labels and preprocessing, which is checked before any scan is read. A
`Postprocessing` decided on validation predictions is applied to the final label map.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai import transforms as mt
from monai.data import MetaTensor

from unetr_app.data.fingerprint import intensity_warnings
from unetr_app.data.transforms import IMAGE, LoadScand, preprocessing_transforms, volume_tensor
from unetr_app.errors import CheckpointError, InputError
from unetr_app.evaluation.postprocess import Postprocessing
from unetr_app.io.scans import Volume
from unetr_app.io.checkpoint import LoadedModel
from unetr_app.models.sliding_window import SlidingWindow
from unetr_app.quality.context import QualityKit

INPUT_GRID = "input_grid"
INTENSITY_WARNINGS = "intensity_warnings"
FLOAT_BYTES = 4
SLAB_VOXELS = 4_000_000  # voxels of the input grid resampled at a time (bounds the sampling grid's memory)
RESTORE_SLAB_BYTES = SLAB_VOXELS * FLOAT_BYTES * 8  # its grid, resampled probabilities and temporaries


@dataclass(frozen=True)
class PredictSettings:
    """How to run the network; `None` overlap / sw_batch_size mean "the checkpoint's"."""

    device: torch.device
    stitch_device: torch.device | None = None  # where windows are blended; None: same as device
    overlap: float | None = None
    sw_batch_size: int | None = None
    tta: bool | str = False  # "auto": mirror only the cases a first pass finds risky (see inference.batch)
    tta_risk: float = 0.5
    amp: bool | None = None  # None: float16 autocast on CUDA, full float32 on CPU (bfloat16 when True)
    channels_last: bool | None = None  # None: on CUDA (cuDNN's 3D convolutions prefer it); on this
    # project's CPU (oneDNN, 1-2 threads) it measured no faster, so the CPU keeps the default layout
    max_memory_bytes: float | None = None
    postprocessing: Postprocessing | None = None


@dataclass
class Passes:
    probabilities: torch.Tensor  # (classes, *preprocessed shape), averaged over every pass
    labels: list[np.ndarray]  # each pass's label map on the preprocessed grid (members x mirrors)
    count: int  # forward passes over the whole scan


@dataclass
class Prediction:
    labels: np.ndarray  # uint8, the input's (i, j, k) shape
    probabilities: np.ndarray | None  # float32 (i, j, k, classes), when asked for


class Predictor:
    """The model (or an ensemble of models), loaded once, and everything to run it on any number of scans."""

    def __init__(self, loaded: LoadedModel | Sequence[LoadedModel], settings: PredictSettings, quality: QualityKit | None = None):
        self.members = [loaded] if isinstance(loaded, LoadedModel) else list(loaded)
        self.quality = quality  # judges each mask (quality.context); None: no quality estimate
        check_ensemble(self.members)
        loaded = self.loaded = self.members[0]  # labels and preprocessing are the same for every member
        self.settings = settings
        self.num_classes = len(loaded.labels)
        pre = loaded.preprocessing
        with warnings.catch_warnings():  # MONAI's notice about Orientationd's future default is not for users
            warnings.simplefilter("ignore", FutureWarning)
            steps = preprocessing_transforms(pre, keys=(IMAGE,))
        # the batch reads each scan once itself (to write the mask on its grid), so no loading step here
        self.preprocess = mt.Compose([step for step in steps if not isinstance(step, LoadScand)])
        # back to the input grid: bilinear like the forward resampling; zero mass outside the crop
        inference = loaded.inference
        self.flips = _flip_axes(spatial_dims=3) if settings.tta is True else [()]
        # the passes --tta auto adds for a risky case: no mirrors where `unetr qc` found them harmful
        self.mirrors = [()] if quality is not None and quality.mirroring_lowers_dice() else _flip_axes(spatial_dims=3)
        on_cuda = settings.device.type == "cuda"
        self.use_amp = on_cuda if settings.amp is None else settings.amp
        self.amp_dtype = torch.float16 if on_cuda else torch.bfloat16
        channels_last = on_cuda if settings.channels_last is None else settings.channels_last
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        self.window = SlidingWindow(
            pre.roi_size, settings.sw_batch_size or inference.sw_batch_size,
            inference.overlap if settings.overlap is None else settings.overlap, inference.blend_mode,
            device=settings.device, stitch_device=settings.stitch_device, amp=self.use_amp, amp_dtype=self.amp_dtype,
            memory_format=self.memory_format,
        )
        self.inferer = self.window.inferer
        for member in self.members:
            member.model.to(memory_format=self.memory_format)

    # --- the three steps -------------------------------------------------------------------

    def prepare(self, volume: Volume) -> dict:
        """Preprocess on the CPU (safe to run in a prefetch thread while the model works)."""
        self.check_channels(volume)
        self.check_memory(volume)
        prepared = self.preprocess({IMAGE: volume_tensor(volume)})
        self.check_not_empty(volume, prepared[IMAGE])
        prepared[INPUT_GRID] = (volume.shape, volume.affine)
        prepared[INTENSITY_WARNINGS] = intensity_warnings(volume, self.loaded.fingerprint)
        return prepared

    def infer(self, prepared: dict) -> torch.Tensor:
        """Class probabilities (classes, *preprocessed shape) for a prepared scan, averaged over the ensemble."""
        return self.infer_passes(prepared).probabilities

    def infer_passes(self, prepared: dict, members: Sequence[LoadedModel] | None = None, flips=None) -> "Passes":
        """The averaged probabilities, plus each pass's own label map (one per member and mirror,
        the raw material of the agreement signal). A member's mirrored logits are averaged before
        its softmax; members' softmax probabilities are averaged."""
        image = prepared[IMAGE].as_tensor().unsqueeze(0)  # (1, C, D, H, W)
        members = self.members if members is None else members
        flips = self.flips if flips is None else flips
        total, labels = None, []
        with torch.inference_mode():
            for member in members:
                logits = None
                for axes in flips:
                    out = self.window(member.model, torch.flip(image, axes) if axes else image)[0].float()
                    out = torch.flip(out, [a - 1 for a in axes]) if axes else out  # (classes, *spatial): batch axis gone
                    labels.append(_argmax_uint8(out.cpu()).numpy())
                    logits = out if logits is None else logits.add_(out)
                probabilities = torch.softmax(logits / len(flips), dim=0)
                total = probabilities if total is None else total.add_(probabilities)
                del logits
        return Passes(total / len(members) if len(members) > 1 else total, labels, len(members) * len(flips))

    def restore(self, prepared: dict, probabilities: torch.Tensor, keep_probabilities: bool = False) -> Prediction:
        """Probabilities on the input's grid, and their argmax.

        Undoing crop, resampling and reorientation one after another (MONAI `Invertd`) samples the
        same points as one resampling from the preprocessed grid straight to the input grid, whose
        voxel-to-world affines are both known; done slab by slab, that never holds a whole-volume
        sampling grid (three floats per input voxel, 1.2 GB for 512 x 512 x 400)."""
        shape, affine = prepared[INPUT_GRID]
        labels = np.empty(shape, np.uint8)
        kept = np.empty((*shape, probabilities.shape[0]), np.float32) if keep_probabilities else None
        with torch.inference_mode():
            for start, stop, part in slabs_on_grid(probabilities.cpu(), prepared[IMAGE].affine, shape, affine):
                # outside the cropped body nothing was predicted (zero mass): that is background
                part[0] += 1.0 - part.sum(dim=0)
                labels[:, :, start:stop] = _argmax_uint8(part).numpy()
                if kept is not None:
                    kept[:, :, start:stop] = part.permute(1, 2, 3, 0).numpy()
        steps = self.settings.postprocessing
        if steps is not None:
            labels = steps.apply(labels, np.linalg.norm(affine[:3, :3], axis=0))
        return Prediction(labels, kept)

    def __call__(self, volume: Volume, keep_probabilities: bool = False) -> Prediction:
        prepared = self.prepare(volume)
        prediction = self.restore(prepared, self.infer(prepared), keep_probabilities)
        if prediction.labels.shape != volume.shape:
            raise RuntimeError(f"internal error: mask shape {prediction.labels.shape} != input {volume.shape}")
        return prediction

    # --- helpers -------------------------------------------------------------------------------

    def estimate_bytes(self, shape: tuple[int, ...], affine: np.ndarray) -> float:
        """Rough peak memory for one scan, from measurements on a 512 x 512 x 400 CT: about four
        floats per input voxel (the volume, its copy while reading, the forward resampling), and at
        the network's spacing the image, its sampling grid, logits, probabilities and blending weights."""
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        voxels = float(np.prod(shape[:3], dtype=np.float64))
        resampled = voxels * float(np.prod(spacing / np.asarray(self.loaded.preprocessing.spacing)))
        return FLOAT_BYTES * (4 * voxels + (1 + 3 + 3 * self.num_classes + 1) * resampled) + RESTORE_SLAB_BYTES

    def check_channels(self, volume: Volume) -> None:
        expected = self.loaded.in_channels
        if volume.num_channels != expected:
            names = [c["name"] for c in (self.loaded.fingerprint or {}).get("channels", [])]
            wanted = f" ({', '.join(names)})" if names else ""
            source = volume.source
            found = (f"{len(source.channel_paths)} channel files ({', '.join(p.name for p in source.files)})" if source.channel_paths
                     else f"a 4D image with {volume.num_channels} channels on the last axis" if volume.num_channels > 1 else "1 channel")
            raise InputError(
                f"{source.path}: case {source.name} has {found}; the model needs {expected} channel(s){wanted}, as "
                "CASE_0000, CASE_0001, ... files or one 4D NIfTI with channels last"
            )

    def check_not_empty(self, volume: Volume, image: torch.Tensor) -> None:
        """The foreground crop keeps the voxels nonzero after intensity normalisation; a scan with
        none (all zeros, or all air in a CT window) would leave nothing to slide a window over."""
        if 0 in image.shape[1:]:
            raise InputError(
                f"{volume.source.path}: empty scan: values {volume.array.min():g} to {volume.array.max():g} "
                "are all 0 after the checkpoint's intensity normalisation, so there is nothing to segment"
            )

    def check_memory(self, volume: Volume) -> None:
        limit = self.settings.max_memory_bytes
        if limit is None:
            return
        need = self.estimate_bytes(volume.shape, volume.affine)
        if need > limit:
            raise InputError(
                f"{volume.source.path}: too large: shape {tuple(volume.array.shape)} needs about "
                f"{need / 2**30:.1f} GB, over the memory limit of {limit / 2**30:.1f} GB (raise --max-memory-gb)"
            )


def check_ensemble(members: Sequence[LoadedModel]) -> None:
    """Averaging probabilities only makes sense over the same classes computed on the same grid."""
    if not members:
        raise CheckpointError("no checkpoint given")
    first = members[0]
    for other in members[1:]:
        for what, mine, theirs in (("label maps", first.labels, other.labels), ("preprocessing", first.preprocessing, other.preprocessing)):
            if mine != theirs:
                raise CheckpointError(
                    f"{other.path}: its {what} differ from {first.path}'s ({_describe(theirs)} vs {_describe(mine)}); "
                    "an ensemble needs checkpoints trained with the same labels and preprocessing"
                )


def _describe(value) -> str:
    return str(value.model_dump() if hasattr(value, "model_dump") else value)


def _argmax_uint8(scores: torch.Tensor) -> torch.Tensor:
    """`argmax` over the class axis (first wins ties), as uint8, by class-wise comparison: several
    times faster than `torch.argmax` across a leading axis, and no int64 volume."""
    labels = torch.zeros(scores.shape[1:], dtype=torch.uint8)
    best = scores[0].clone()
    for value in range(1, scores.shape[0]):
        better = scores[value] > best
        labels[better] = value
        torch.maximum(best, scores[value], out=best)
    return labels


def slabs_on_grid(values: torch.Tensor, affine, shape: tuple[int, ...], target_affine: np.ndarray):
    """(start, stop, slab) of (channels, *grid) `values` at voxel-to-world `affine`, resampled
    (bilinear, zero outside) onto the grid of `shape` at `target_affine`, slab by slab along its
    last axis, so no whole-volume sampling grid is ever held (1.2 GB for 512 x 512 x 400)."""
    resample = mt.SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
    source = MetaTensor(values, affine=torch.as_tensor(affine))
    slab = max(1, SLAB_VOXELS // (shape[0] * shape[1]))
    for start in range(0, shape[2], slab):
        stop = min(shape[2], start + slab)
        part = resample(source, dst_affine=_shifted(target_affine, start), spatial_size=(*shape[:2], stop - start))
        yield start, stop, part.as_tensor() if isinstance(part, MetaTensor) else part  # plain ops from here


def _shifted(affine: np.ndarray, slices: int) -> torch.Tensor:
    """The affine of the same grid starting `slices` voxels further along the last axis."""
    shift = np.eye(4)
    shift[2, 3] = slices
    return torch.from_numpy(affine @ shift)


def _flip_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes of (B, C, *spatial): identity plus 2**dims - 1 mirrors."""
    axes = range(2, 2 + spatial_dims)
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]
