"""A network run over a whole volume window by window: the one sliding-window core of prediction
(`inference/predictor.py`) and of validation during training (`training/validation.py`).

MONAI's `SlidingWindowInferer` cuts the volume into `roi_size` windows overlapping by `overlap`,
runs `sw_batch_size` of them at a time and blends their logits (`blend_mode`: gaussian or
constant weights). Each batch of windows goes to the network in `memory_format` under autocast
when `amp` is on; the logits come back as float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import SlidingWindowInferer
from torch import nn


class SlidingWindow:
    """`window(model, image)`: logits (B, classes, *spatial) of `model` over the image (B, C, *spatial)."""

    def __init__(self, roi_size: Sequence[int], sw_batch_size: int, overlap: float, blend_mode: str,
                 device: torch.device | None = None, stitch_device: torch.device | None = None, amp: bool = False,
                 amp_dtype: torch.dtype | None = None, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.inferer = SlidingWindowInferer(
            roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=blend_mode,
            sw_device=device, device=stitch_device or device,
            cache_roi_weight_map=True,  # the Gaussian weights are the same for every window and scan
        )
        self.amp, self.amp_dtype, self.memory_format = amp, amp_dtype, memory_format

    def network(self, model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
        """Logits of `model` for one batch of windows."""
        windows = windows.contiguous(memory_format=self.memory_format)
        with torch.autocast(windows.device.type, dtype=self.amp_dtype, enabled=self.amp):
            return model(windows).float()

    def __call__(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        return self.inferer(image, lambda windows: self.network(model, windows))
