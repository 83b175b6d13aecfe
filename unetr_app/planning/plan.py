"""A plan for a target device: spacing, normalisation, window, batch and network, from a fingerprint.

GPU (`cuda`): nnU-Net's 3d_fullres rules under the device's memory (see `rules`), UNETR-B as
published, the published step budget. CPU: the same rules under a compute budget instead, since
time, not memory, binds on a CPU: a window of CPU_WINDOW_VOXELS voxels (cpu-demo's 48^3, which
this 2-core machine trains at about 1.7 steps/s with 4 crops: benchmarks/results/time_to_dice.json),
the grid coarsened in nnU-Net's 3d_lowres steps (the finer axes first, until isotropic) until that
window covers 25% of the median image, CPU_TRAIN_MINUTES of training timed by the trainer. For 40
scans that is about 10 minutes in all (planning, reading and resampling the scans once, plus the
training minutes).
Every choice that differs from the full-resolution plan is listed under `traded`.

Transformers: UNETR takes the token rule (`rules.enough_tokens`): patches of 8 voxels where the
model accepts them (Primus's tokens), else 16, and a warning when the window cannot hold
MIN_TOKENS tokens within the budget.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from unetr_app.planning import rules

CPU_WINDOW_VOXELS = 48**3
CPU_TRAIN_MINUTES = 8.0
CPU_CROPS = 4  # crops per step from one volume (UNETR's recipe)
CPU_UNETR = {"feature_size": 8, "hidden_size": 192, "mlp_dim": 768, "num_heads": 4}  # cpu-demo's width
GPU_UNETR = {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12}  # UNETR-B
GPU_PASSES = 500  # passes over the training cases (the published UNETR spleen recipe: 16,500 steps for 33 cases)
DEFAULT_GPU_GB = rules.REFERENCE_GB  # planning for cuda on a machine without one: nnU-Net's reference GPU
TRAIN_SHARE = 0.8  # cases that train (the rest validate) under the default val_fraction


def make_plan(fingerprint: dict, device: str, memory_gb: float) -> dict[str, Any]:
    """The plan for `device` (cpu or cuda) with `memory_gb`: its choices, what it traded, warnings
    and the profile `unetr train` runs (a profile YAML's keys)."""
    spacings = np.array([c["spacing"] for c in fingerprint["per_case"] if c["case"] in fingerprint["planned_cases"]])
    shapes = np.array([c["shape"] for c in fingerprint["per_case"] if c["case"] in fingerprint["planned_cases"]])
    task = fingerprint["task"]
    channels, classes = int(task["in_channels"]), len(task["labels"])
    fullres = rules.target_spacing(spacings, shapes)
    budget = rules.reference_units(memory_gb)
    traded, warnings = [], []
    if device == "cpu":
        spacing = rules.coarsen_until_covered(fullres, spacings, shapes, CPU_WINDOW_VOXELS)
        if spacing != fullres:
            traded.append(f"spacing {_mm(fullres)} -> {_mm(spacing)} mm, so the CPU window of {CPU_WINDOW_VOXELS} voxels "
                          f"covers {rules.LOWRES_COVERAGE:.0%} of the median image (nnU-Net's 3d_lowres rule, the finer axes first until isotropic)")
        unetr = _cpu_unetr(spacing, rules.median_shape_at(spacing, spacings, shapes), channels, classes, budget, warnings)
        traded.append(f"window {_x(unetr['roi'])} from the CPU compute budget ({CPU_WINDOW_VOXELS} voxels), not the memory "
                      f"rule; UNETR {CPU_UNETR['hidden_size']} wide (cpu-demo's), not UNETR-B")
    else:
        spacing = fullres
        unetr = _gpu_unetr(spacing, rules.median_shape_at(spacing, spacings, shapes), channels, classes, budget, warnings,
                           fingerprint["voxels"])
    median = rules.median_shape_at(spacing, spacings, shapes)
    cnn = _dynunet(spacing, median, channels, classes, budget, fingerprint["voxels"], device)
    normalise = [rules.normalisation(c) for c in fingerprint["channels"]]
    coverage = float(np.prod(cnn["patch"]) / np.prod(median))
    plan = {
        "device": device,
        "memory_gb": round(float(memory_gb), 2),
        "fullres_spacing": fullres,
        "spacing": spacing,
        "median_shape": median,
        "normalisation": {c["name"]: n for c, n in zip(fingerprint["channels"], normalise)},
        "unetr": unetr,
        "dynunet": cnn,
        "lowres_recommended": device != "cpu" and coverage < rules.LOWRES_COVERAGE,
        "traded": traded,
        "warnings": warnings,
    }
    plan["profile"] = planned_profile(plan, fingerprint)
    return plan


def accepts_patch_size(model: str = "unetr") -> bool:
    """Whether the registered model builds with `patch_size` (else it is fixed at 16)."""
    from unetr_app.models import get_model_entry

    return "patch_size" in inspect.signature(get_model_entry(model).builder).parameters


def _token_patches() -> tuple[int, ...]:
    return rules.TOKEN_PATCHES if accepts_patch_size() else (16,)


def _cpu_unetr(spacing, median, channels, classes, budget, warnings) -> dict:
    """The CPU window at the budget's voxels; the smallest accepted token patch that fills it with enough tokens."""
    options = []
    for patch in _token_patches():
        roi = rules.window_for(spacing, median, CPU_WINDOW_VOXELS, patch)
        options.append((rules.enough_tokens(roi, patch), patch, roi))
    return _choose_tokens(options, "cpu", warnings, CPU_UNETR, channels, classes)


def _gpu_unetr(spacing, median, channels, classes, budget, warnings, dataset_voxels: float) -> dict:
    """nnU-Net's patch rule with UNETR-B's memory estimate, for each accepted token patch."""
    options = []
    for patch in _token_patches():
        start = rules.round_to(rules.initial_patch(spacing, median), patch, ceiling=median)
        units = lambda roi, p=patch: rules.unetr_units(roi, p, channels, classes, **_widths(GPU_UNETR))  # noqa: E731
        roi = rules.fit_patch(start, median, units, budget, lambda roi, p=patch: [p] * 3)
        options.append((rules.enough_tokens(roi, patch), patch, roi))
    chosen = _choose_tokens(options, "cuda", warnings, GPU_UNETR, channels, classes)
    chosen["batch"] = rules.batch_size(rules.unetr_units(chosen["roi"], chosen["patch"], channels, classes, **_widths(GPU_UNETR)),
                                       budget, chosen["roi"], dataset_voxels)
    return chosen


def _choose_tokens(options, device, warnings, widths, channels, classes) -> dict:
    good = [o for o in options if o[0]]
    _, patch, roi = good[0] if good else max(options, key=lambda o: rules.token_count(o[2], o[1]))
    tokens = rules.token_count(roi, patch)
    if not good:
        fix = "a ViT-family model built with patch_size 8 (as configs/profiles/cpu-recipes.yaml does), " if 8 not in _token_patches() else ""
        more = "--device cuda (the CPU window is bounded by time)" if device == "cpu" else "more --memory"
        warnings.append(f"unetr on {device}: a {_x(roi)} window in {patch}^3 patches holds {tokens} tokens, fewer than the "
                        f"{rules.MIN_TOKENS} of UNETR's published 6x6x6 grid; try {fix}or {more}")
    return {"patch": patch, "roi": roi, "tokens": tokens, "grid": [r // patch for r in roi], "widths": widths}


def _widths(widths: dict) -> dict:
    return {"feature_size": widths["feature_size"], "hidden": widths["hidden_size"], "mlp": widths["mlp_dim"], "heads": widths["num_heads"]}


def _dynunet(spacing, median, channels, classes, budget, dataset_voxels, device) -> dict:
    """nnU-Net's topology and patch (GPU: memory-bound from 256^3; CPU: the CPU window's voxels) and batch."""
    base, top = (8, 64) if device == "cpu" else (32, 320)
    units = lambda p: rules.unet_units(rules.pooling(spacing, p), channels, classes, base, top)  # noqa: E731
    if device == "cpu":
        patch = rules.pooling(spacing, rules.initial_patch(spacing, median, CPU_WINDOW_VOXELS)).patch
    else:
        start = rules.initial_patch(spacing, median)
        patch = rules.pooling(spacing, rules.fit_patch(start, median, units, budget, lambda p: rules.pooling(spacing, p).divisor)).patch
    topology = rules.pooling(spacing, patch)
    batch = CPU_CROPS if device == "cpu" else rules.batch_size(units(topology.patch), budget, topology.patch, dataset_voxels)
    return {"patch": topology.patch, "kernels": topology.kernels, "strides": topology.strides, "batch": batch,
            "filters": rules.unet_filters(len(topology.strides), base, top)}


def planned_profile(plan: dict, fingerprint: dict) -> dict[str, Any]:
    """The profile `unetr train --profile auto` runs: a profile YAML's keys."""
    device, unetr, cnn = plan["device"], plan["unetr"], plan["dynunet"]
    ct = [n for n in plan["normalisation"].values() if n["scheme"] == "CT"]
    train_cases = max(1, round(len(fingerprint["planned_cases"]) * TRAIN_SHARE))
    params = dict(unetr["widths"], **({"patch_size": unetr["patch"]} if accepts_patch_size() else {}))
    cnn_size = {"kernel_size": cnn["kernels"], "strides": cnn["strides"], "roi_size": cnn["patch"]}
    if device == "cpu":
        budget, crops, batch = {"minutes": CPU_TRAIN_MINUTES}, CPU_CROPS, 1
        intervals = {"val_every_steps": 150, "log_every_steps": 30, "checkpoint_every_steps": 30}
        optimizer, warmup, amp, workers = {"name": "adamw", "lr": 1.0e-3, "weight_decay": 1.0e-5}, 0.04, True, 0
    else:
        crops = min(unetr["batch"], 4)
        budget, batch = {"steps": GPU_PASSES * train_cases}, math.ceil(unetr["batch"] / crops)
        intervals = {"val_every_steps": 10 * train_cases, "log_every_steps": train_cases, "checkpoint_every_steps": 10 * train_cases}
        optimizer, warmup, amp, workers = {"name": "adamw", "lr": 1.0e-4, "weight_decay": 1.0e-5}, 0.1, True, 4
    return {
        "profile": f"auto-{device}",
        "model": {"name": "unetr", "params": params, "sizes": {"dynunet": cnn_size, "dynunet_small": cnn_size}},
        "preprocessing": {
            "orientation": "RAS",
            "spacing": plan["spacing"],
            "intensity_window": ct[0]["clip"] if ct else None,
            "roi_size": unetr["roi"],
        },
        "augmentation": {"flip_prob": 0.1, "rot90_prob": 0.1, "intensity_shift_prob": 0.5, "intensity_shift_offset": 0.1},
        "training": {"budget": budget, "batch_size": batch, "num_samples": crops, "pos_neg_ratio": [1, 1], **intervals,
                     "val_fraction": round(1 - TRAIN_SHARE, 3), "seed": 0, "amp": amp, "cache_rate": 1.0, "num_workers": workers},
        "recipe": {"name": "supervised"},
        "optimizer": optimizer,
        "schedule": {"name": "warmup_cosine", "warmup_fraction": warmup},
        "loss": {"name": "dice_ce"},
        "inference": {"overlap": 0.5, "sw_batch_size": 4, "blend_mode": "gaussian"},
    }


def _mm(spacing) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)


def _x(shape) -> str:
    return "x".join(str(int(s)) for s in shape)
