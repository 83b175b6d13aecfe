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
    (the CPU unless asked and able, or AMP turned off in the config)."""

    enabled: bool
    dtype: torch.dtype | None
    grad_scaler: bool

    @property
    def name(self) -> str:
        """What the network computes in: float32, bfloat16 or float16."""
        return str(self.dtype if self.enabled else torch.float32).removeprefix("torch.")

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cuda", enabled=self.grad_scaler)


def mixed_precision(device: torch.device, amp: bool = True, cpu_amp: bool = False) -> MixedPrecision:
    """bfloat16 where the CUDA device computes it natively (compute capability 8.0 and up: A100,
    H100, RTX 30xx on), float16 with a GradScaler on older GPUs. On a CPU float32, unless `cpu_amp`
    asks for bfloat16 and the CPU has the instructions for it (emulated, it is slower than float32).
    Not the default: cpu-demo trained so lost Dice (benchmarks/results/cpu_precision.json). Unlike
    CUDA's, CPU autocast leaves layer norm and softmax in bfloat16 too (a possible cause, not measured)."""
    off = MixedPrecision(False, None, False)
    if not amp:
        return off
    if device.type == "cpu":
        return MixedPrecision(True, torch.bfloat16, False) if cpu_amp and cpu_computes_bfloat16() else off
    if device.type != "cuda":
        return off
    if _native_bfloat16(device):
        return MixedPrecision(True, torch.bfloat16, False)
    return MixedPrecision(True, torch.float16, True)


def cpu_computes_bfloat16() -> bool:
    """Whether this CPU has bfloat16 instructions that oneDNN's convolutions and matmuls use."""
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def _native_bfloat16(device: torch.device) -> bool:
    # torch.cuda.is_bf16_supported() also answers True for emulated bfloat16 on pre-Ampere GPUs,
    # which is slower than float16 there: ask for the hardware instead
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8
