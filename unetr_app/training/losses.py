"""Segmentation losses chosen by name (`loss: {name, params}`), all MONAI's, on (logits, integer labels).

    dice_ce      Dice + cross-entropy (the UNETR and nnU-Net default)
    dice_focal   Dice + focal
    dice         soft Dice alone
    ce           cross-entropy alone (DiceCE with the Dice term weighted 0)

Every loss takes logits (softmax inside) and labels shaped (B, 1, *spatial); `params` are passed
to the MONAI class, e.g. `loss: {name: dice_focal, params: {gamma: 3.0}}`. The loss is computed in
float32 whatever the logits' dtype: under CPU autocast, softmax and the Dice sums would otherwise run
in bfloat16 (CUDA's autocast promotes them itself).
"""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss
from torch import nn

from unetr_app.config import LossConfig
from unetr_app.errors import ConfigError

_BUILDERS = {
    "dice_ce": lambda **p: DiceCELoss(to_onehot_y=True, softmax=True, **p),
    "dice_focal": lambda **p: DiceFocalLoss(to_onehot_y=True, softmax=True, **p),
    "dice": lambda **p: DiceLoss(to_onehot_y=True, softmax=True, **p),
    "ce": lambda **p: DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, **p),
}


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 up to float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class Float32Loss(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            return self.loss(at_least_float32(logits), labels)


def build_loss(config: LossConfig) -> nn.Module:
    try:
        return Float32Loss(_BUILDERS[config.name](**config.params))
    except TypeError as err:
        raise ConfigError(f"loss.params: {err} (see MONAI's {config.name} loss for its arguments)") from None
