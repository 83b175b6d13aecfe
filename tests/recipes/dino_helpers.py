"""Tiny checkpoints and scans for the DINO, init-from and attention tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from unetr_app.io.checkpoint import save_checkpoint
from unetr_app.models import create_model

PREPROCESSING = {"orientation": "RAS", "spacing": [8.0, 8.0, 8.0], "intensity_window": [-175, 250], "roi_size": [32, 32, 32]}
INFERENCE = {"overlap": 0.25, "sw_batch_size": 2, "blend_mode": "gaussian"}
TINY = {
    "vit_small_patch16": {"embed_dim": 32, "depth": 2, "num_heads": 2},
    "vit_tiny_patch16": {"embed_dim": 48, "depth": 2, "num_heads": 3},
    "unetr": {"feature_size": 8, "hidden_size": 64, "mlp_dim": 128, "num_heads": 2},
    "convmixer_768_32": {"embed_dim": 32, "depth": 2, "kernel_size": 3, "patch_size": 16},
}


def model_kwargs(name: str) -> dict:
    return {"task": "segmentation", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "img_size": [32, 32, 32], **TINY[name]}


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **model_kwargs(name))


def write_checkpoint(path: Path, name: str, state_dict: dict, **extra) -> Path:
    save_checkpoint(path, {
        "model": {"name": name, "kwargs": model_kwargs(name)},
        "state_dict": state_dict,
        "preprocessing": PREPROCESSING,
        "inference": INFERENCE,
        "labels": {"background": 0, "spleen": 1},
        **extra,
    })
    return path


def oblique_scan(path: Path, shape=(40, 30, 18), spacing=(3.0, 4.5, 9.0), degrees: float = 20.0) -> Path:
    """A bright ellipsoid body in air on an oblique (rotated about two axes), anisotropic grid."""
    a, b = np.radians(degrees), np.radians(degrees / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = [-60.0, 40.0, -75.0]
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    body = (grid**2).sum(0) < 0.7
    rng = np.random.default_rng(0)
    array = np.where(body, 40.0 + 20 * rng.standard_normal(shape), -1000.0).astype(np.float32)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


DINO = {"out_dim": 16, "hidden_dim": 32, "bottleneck_dim": 8, "local_crops": 0}


def pretrain_checkpoint(tmp_path: Path, name: str = "vit_small_patch16"):
    """What a pretraining run writes: the student's weights, the teacher in the recipe's extra state."""
    from unetr_app.training.recipes import build_recipe

    recipe = build_recipe("dino", tiny_model(name, seed=1), None, DINO)
    with torch.no_grad():  # make teacher and student differ
        for p in recipe.model.parameters():
            p.add_(0.5)
    path = write_checkpoint(tmp_path / "last.pt", name, recipe.model.state_dict(),
                            recipe={"name": "dino", "params": DINO, "extra_state": recipe.extra_state()})
    return path, recipe
