"""Choosing the torch device from `--device auto|cpu|cuda`, and the mixed precision it trains with."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unetr_app.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    name = name.lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"--device {name!r}: expected auto, cpu or cuda")


@dataclass(frozen=True)
class MixedPrecision:
    """How a training step runs under autocast: the dtype, and whether its loss needs a GradScaler.

    bfloat16 has float32's exponent range, so gradients do not underflow and no scaler is needed;
    float16 does underflow, and keeps the scaler. `enabled` is False where autocast would not pay
    (CPU training, or AMP turned off in the config)."""

    enabled: bool
    dtype: torch.dtype | None
    grad_scaler: bool

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.grad_scaler)


def mixed_precision(device: torch.device, amp: bool = True) -> MixedPrecision:
    """bfloat16 where the CUDA device computes it natively (compute capability 8.0 and up: A100,
    H100, RTX 30xx on), float16 with a GradScaler on older GPUs; off on the CPU."""
    if not amp or device.type != "cuda":
        return MixedPrecision(False, None, False)
    if _native_bfloat16(device):
        return MixedPrecision(True, torch.bfloat16, False)
    return MixedPrecision(True, torch.float16, True)


def _native_bfloat16(device: torch.device) -> bool:
    # torch.cuda.is_bf16_supported() also answers True for emulated bfloat16 on pre-Ampere GPUs,
    # which is slower than float16 there: ask for the hardware instead
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8
