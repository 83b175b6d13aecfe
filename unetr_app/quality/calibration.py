"""Temperature scaling of class probabilities (Guo et al. 2017), one temperature per class.

A trained segmentation network's probabilities sit near 0 and 1 whether or not it is right. One
positive temperature per class, dividing that class's logit, is fitted by minimising the negative
log-likelihood of validation voxels; it changes how confident the probabilities are, and the
fitted values are kept as RUN/temperature.json. The network's log-probabilities serve as logits:
softmax is unchanged by a constant per voxel, so softmax(log p / T) is the tempered softmax.
The expected calibration error is MONAI's (per foreground class, equal-width bins).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from monai.metrics import CalibrationErrorMetric

from unetr_app.io.atomic import atomic_write_text

TEMPERATURE_NAME = "temperature.json"
ECE_BINS = 15
EPS = 1e-6


def fit_temperature(logits: np.ndarray, labels: np.ndarray, steps: int = 100) -> np.ndarray:
    """Per-class temperatures (classes,) minimising NLL of softmax(logits / T) for `logits` (N, classes)."""
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.detach().exp().numpy()


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, np.float32), EPS, 1.0))


def apply_temperature(probabilities: np.ndarray, temperature, axis: int = 0) -> np.ndarray:
    """softmax(log p / T) along the class `axis` (float32)."""
    shape = [1] * probabilities.ndim
    shape[axis] = -1
    z = log_probabilities(probabilities) / np.asarray(temperature, np.float32).reshape(shape)
    z -= z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def remove_temperature(tempered: np.ndarray, temperature, axis: int = 0) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T log q) undoes q = softmax(log p / T)."""
    return apply_temperature(tempered, 1.0 / np.asarray(temperature, np.float32), axis=axis)


def ece_before_after(tempered: np.ndarray, temperature, labels: np.ndarray) -> dict:
    """ECE of saved (tempered) probabilities (classes, *spatial) and of the same before the
    temperature, against a label map."""
    return {"ece_before": expected_calibration_error(remove_temperature(tempered, temperature), labels),
            "ece_after": expected_calibration_error(tempered, labels)}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean over foreground classes of the ECE of `probabilities` (classes, *spatial) against a label map."""
    p = torch.as_tensor(np.asarray(probabilities, np.float32))[None]
    onehot = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(labels, np.int64)), p.shape[1])
    onehot = onehot.movedim(-1, 0)[None].float().contiguous()  # MONAI's bucketize copies (and warns) otherwise
    metric = CalibrationErrorMetric(num_bins=bins, include_background=False, calibration_reduction="expected", metric_reduction="mean")
    return float(metric(p, onehot).nanmean())


def write_temperature(path: Path, temperature: np.ndarray, labels: dict[str, int], details: dict) -> None:
    names = sorted(labels, key=labels.get)
    atomic_write_text(Path(path), json.dumps({"temperature": {n: float(t) for n, t in zip(names, temperature)}, **details}, indent=2) + "\n")


def read_temperature(data: dict, labels: dict[str, int]) -> np.ndarray:
    """The temperatures in class order (1 for a class the file does not name)."""
    values = data.get("temperature", {})
    return np.asarray([float(values.get(name, 1.0)) for name in sorted(labels, key=labels.get)], np.float32)
