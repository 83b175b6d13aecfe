"""Helpers for prediction tests: a test-only "label echo" model whose answer is known (it returns
the label it is given), the tiny UNETR config, checkpoint writers and small volumes in chosen geometries."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from unetr_app.models import create_model
from unetr_app.models.registry import register_model
from unetr_app.io.checkpoint import save_checkpoint

ECHO_MODEL = "label_echo_test"
TINY_UNETR = {
    "task": "segmentation",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "img_size": [32, 32, 32],
    "feature_size": 4,
    "hidden_size": 32,
    "mlp_dim": 64,
    "num_heads": 2,
}


class LabelEcho(nn.Module):
    """Input x = label / (classes - 1) (the window [0, classes-1] -> [0, 1]); logits peak at that label."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.register_buffer("classes", torch.arange(out_channels, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = x * (len(self.classes) - 1)  # (B, 1, *spatial)
        return -10.0 * (value - self.classes.view(1, -1, 1, 1, 1)) ** 2  # (B, classes, *spatial)


try:
    @register_model(ECHO_MODEL, family="test", spatial_dims=(3,), tasks=("segmentation",))
    def label_echo_test(*, task="segmentation", spatial_dims=3, in_channels=1, out_channels=3, img_size=(32, 32, 32)):
        return LabelEcho(out_channels)
except ValueError:  # conftest imported twice (e.g. rootdir change): already registered
    pass


def checkpoint_dict(model_name, kwargs, state_dict, spacing, window, labels, roi=(32, 32, 32), overlap=0.25):
    return {
        "model": {"name": model_name, "kwargs": kwargs},
        "state_dict": state_dict,
        "preprocessing": {"orientation": "RAS", "spacing": list(spacing), "intensity_window": window, "roi_size": list(roi)},
        "inference": {"overlap": overlap, "sw_batch_size": 2, "blend_mode": "gaussian"},
        "labels": labels,
        "task": "test",
        "modality": "CT",
        "in_channels": 1,
    }





def echo_checkpoint(folder: Path, spacing=(2.0, 2.0, 2.0), classes: int = 3) -> Path:
    kwargs = {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": classes, "img_size": [32, 32, 32]}
    labels = {"background": 0, **{f"organ{v}": v for v in range(1, classes)}}
    path = folder / f"echo_{'x'.join(str(s) for s in spacing)}.pt"
    save_checkpoint(path, checkpoint_dict(ECHO_MODEL, kwargs, LabelEcho(classes).state_dict(), spacing, [0.0, classes - 1.0], labels))
    return path


def blob_label(shape, seed: int = 0, classes: int = 3) -> np.ndarray:
    """A few overlapping boxes of labels 1..classes-1 inside an empty margin."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    for value in range(1, classes):
        for _ in range(2):
            lo = [int(rng.integers(2, max(3, s // 2))) for s in shape]
            hi = [min(s - 2, l + int(rng.integers(3, max(4, s // 2)))) for l, s in zip(lo, shape)]
            label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = value
    return label


def oblique_affine(spacing, degrees: float = 20.0, origin=(-40.0, 25.0, 110.0)) -> np.ndarray:
    t = np.deg2rad(degrees)
    rotation = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(t / 2), -np.sin(t / 2)], [0, np.sin(t / 2), np.cos(t / 2)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ tilt @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def axis_affine(code: str, spacing, origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    """Axis-aligned affine for 'RAS' or 'LPS' voxel order."""
    signs = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1), "LAI": (-1, 1, -1)}[code]
    affine = np.diag([*(s * d for s, d in zip(signs, spacing)), 1.0])
    affine[:3, 3] = origin
    return affine


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)
    return path


def tiny_unetr_checkpoint(path: Path) -> Path:
    """A real (untrained) tiny UNETR saved in the documented checkpoint format."""
    torch.manual_seed(0)
    model = create_model("unetr", **TINY_UNETR)
    save_checkpoint(
        path,
        checkpoint_dict("unetr", TINY_UNETR, model.state_dict(), (4.0, 4.0, 4.0), [-175.0, 250.0], {"background": 0, "spleen": 1}),
    )
    return path
