"""`unetr probe`: what a run's frozen encoder knows about a label, against the references beside it.

    unetr probe RUN DATASET_DIR [--fit-fraction 0.5] [--label spleen]

1. Load the run's (or checkpoint's) network spec and preprocessing; build the encoder three ways:
   the run's own (a pretraining run's teacher by default, `--init-key student` for its student;
   a training run's encoder), the same architecture randomly initialised, and no encoder at all
   (the patch's own voxels, what any encoder starts from).
2. Preprocess each labelled scan of DATASET_DIR as the run does and cut it into ROI-sized windows
   (the grid the position embedding was trained on). Every patch that lies wholly inside the scan
   gives one token per encoder and its label occupancy.
3. Fit a ridge probe per feature set on the first cases (a seeded shuffle; the penalty by leaving
   one of them out at a time) and score it on the others (`unetr_app.evaluation.token_probe`):
   held-out R^2 of the occupancy and AUROC of the patches mostly inside the label.

An encoder that learned something the decoder can use beats the random one; one that beats the
voxels has learned more than a linear function of the patch intensities.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unetr_app.config import PreprocessingConfig
from unetr_app.data.dataset import labelled_cases
from unetr_app.data.transforms import IMAGE, LABEL, eval_transforms
from unetr_app.errors import InputError, UsageError
from unetr_app.evaluation.token_probe import probe_scores, patch_occupancy
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.models import create_model
from unetr_app.models.attention_maps import TokenEncoder, encode_tokens, find_token_encoder
from unetr_app.training.init import init_encoder, run_checkpoint
from unetr_app.training.objectives import patchify

FEATURES = ("encoder", "random_encoder", "voxels")
WINDOWS_PER_PASS = 4


def token_probe(checkpoint: str | Path, fit_cases: list[dict], test_cases: list[dict], key: str = "teacher",
                label: str | None = None, seed: int = 0, on_case: Callable[[str], None] | None = None) -> dict:
    """Probe the run's encoder, a random one and the voxels; cases are {image, label[, case]} dicts."""
    data = load_checkpoint(run_checkpoint(Path(checkpoint)))
    spec, labels = data["model"], dict(data.get("labels") or {})
    name, value = probe_label(labels, label, checkpoint)
    encoders = {}
    for feature, source in (("encoder", checkpoint), ("random_encoder", None)):
        torch.manual_seed(seed)
        model = create_model(spec["name"], **spec["kwargs"])
        if source is not None:
            init_encoder(model, source, key, spec["name"])
        encoders[feature] = find_token_encoder(model.eval(), spec["name"])
    pre = PreprocessingConfig.model_validate(data["preprocessing"])
    collected = {}
    for part, cases in (("fit", fit_cases), ("test", test_cases)):
        tokens = [case_tokens(case, pre, encoders, value) for case in _announced(cases, on_case)]
        collected[part] = {k: np.concatenate([t[k] for t in tokens]) for k in (*FEATURES, "occupancy")}
        collected[part]["case"] = np.concatenate([np.full(len(t["occupancy"]), i) for i, t in enumerate(tokens)])
    fit, test = collected["fit"], collected["test"]
    scores = {feature: probe_scores(fit[feature], fit["occupancy"], test[feature], test["occupancy"], fit["case"])
              for feature in FEATURES}
    return {"checkpoint": str(checkpoint), "key": key, "label": name, "seed": seed,
            "fit_cases": [_case_name(c) for c in fit_cases], "test_cases": [_case_name(c) for c in test_cases],
            "patch_size": list(encoders["encoder"].patch_size), "window": list(pre.roi_size), "features": scores}


def split_cases(data_dir: str | Path, fit_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """The labelled cases of a dataset folder, shuffled by `seed`, the first `fit_fraction` to fit."""
    if not 0 < fit_fraction < 1:
        raise UsageError(f"--fit-fraction must be between 0 and 1 (exclusive), got {fit_fraction}")
    cases = labelled_cases(Path(data_dir), None)
    random.Random(seed).shuffle(cases)
    fit = min(max(round(fit_fraction * len(cases)), 1), len(cases) - 1)
    return cases[:fit], cases[fit:]


def probe_label(labels: dict[str, int], label: str | None, checkpoint) -> tuple[str, int]:
    """(name, value) of the probed label: the one named, else the first foreground label."""
    foreground = {n: int(v) for n, v in labels.items() if int(v) != 0}
    if not foreground:
        raise UsageError(f"{checkpoint}: its checkpoint names no foreground label to probe")
    if label is None:
        name = min(foreground, key=foreground.get)
        return name, foreground[name]
    if label not in foreground:
        raise UsageError(f"--label {label!r}: {checkpoint} has labels {', '.join(foreground)}")
    return label, foreground[label]


@torch.no_grad()
def case_tokens(case: dict, pre: PreprocessingConfig, encoders: dict[str, TokenEncoder], value: int) -> dict[str, np.ndarray]:
    """{feature: (n, d) tokens, occupancy: (n,)} for the patches wholly inside one preprocessed case."""
    try:
        prepared = eval_transforms(pre)({IMAGE: case["image"], LABEL: case["label"]})
    except Exception as err:  # MONAI wraps every loader error; name the case and what failed
        raise InputError(f"{case['image']}: cannot be read and preprocessed ({str(err).splitlines()[-1]})") from None
    image = torch.as_tensor(prepared[IMAGE]).float()
    mask = (torch.as_tensor(prepared[LABEL]) == value).float()
    inside = torch.ones_like(mask)
    roi = tuple(pre.roi_size)
    windows = [_windows(t, roi) for t in (image, mask, inside)]
    patch = encoders["encoder"].patch_size
    keep = patch_occupancy(windows[2], patch).flatten() == 1.0
    out = {"occupancy": patch_occupancy(windows[1], patch).flatten()[keep].numpy(),
           "voxels": patchify(windows[0], patch).flatten(0, 1)[keep].numpy()}
    for feature in ("encoder", "random_encoder"):
        encoder = encoders[feature]
        skip = encoder.num_prefix_tokens
        parts = [encode_tokens(encoder, windows[0][i:i + WINDOWS_PER_PASS])[0][:, skip:]
                 for i in range(0, len(windows[0]), WINDOWS_PER_PASS)]
        out[feature] = torch.cat(parts).flatten(0, 1)[keep].numpy()
    return out


def _windows(volume: torch.Tensor, roi: tuple[int, ...]) -> torch.Tensor:
    """(C, *size) -> (W, C, *roi): the volume zero-padded at the end of each axis to whole windows."""
    size = volume.shape[1:]
    padded = [math.ceil(s / r) * r for s, r in zip(size, roi)]
    volume = F.pad(volume, [v for s, p in reversed(list(zip(size, padded))) for v in (0, p - s)])
    for axis, r in enumerate(roi):
        volume = volume.unfold(axis + 1, r, r)  # (C, *counts, *roi) once every axis is unfolded
    dims = len(roi)
    return volume.permute(*range(1, dims + 1), 0, *range(dims + 1, 2 * dims + 1)).reshape(-1, volume.shape[0], *roi)


def _case_name(case: dict) -> str:
    return case.get("case") or Path(str(case["image"])).name


def _announced(cases: list[dict], on_case):
    for case in cases:
        yield case
        if on_case:
            on_case(_case_name(case))
