"""Contrast for the scan: CT window presets (width/level in Hounsfield units), MRI auto-contrast."""

from __future__ import annotations

import numpy as np

# name -> (width, level), as radiology workstations ship them
CT_WINDOWS = {
    "abdomen": (400.0, 40.0),
    "soft tissue": (350.0, 50.0),
    "bone": (1800.0, 400.0),
    "lung": (1500.0, -600.0),
}
AUTO = "auto"


def window_limits(width: float, level: float) -> tuple[float, float]:
    """napari contrast limits (lowest, highest value shown) of a width/level window."""
    return level - width / 2.0, level + width / 2.0


def auto_contrast(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> tuple[float, float]:
    """Percentile limits over the voxels above the image minimum (the air or padding around the body)."""
    inside = image[image > image.min()]
    if inside.size == 0:
        return float(image.min()), float(image.min()) + 1.0
    low, high = np.percentile(inside, [low_pct, high_pct])
    return float(low), float(max(high, low + 1e-6))


def looks_like_ct(image: np.ndarray) -> bool:
    """CT in Hounsfield units has air near -1000; MRI intensities are arbitrary and non-negative."""
    return float(image.min()) <= -500.0


def contrast_limits(image: np.ndarray, preset: str) -> tuple[float, float]:
    if preset == AUTO:
        return auto_contrast(image)
    if preset not in CT_WINDOWS:
        raise ValueError(f"window {preset!r} is not one of {', '.join([*CT_WINDOWS, AUTO])}")
    return window_limits(*CT_WINDOWS[preset])


def default_preset(image: np.ndarray) -> str:
    return "abdomen" if looks_like_ct(image) else AUTO
