"""Segmentation losses chosen by name (`loss: {name, params}`), all MONAI's, on (logits, integer labels).

    dice_ce      Dice + cross-entropy (the UNETR and nnU-Net default)
    dice_focal   Dice + focal
    dice         soft Dice alone
    ce           cross-entropy alone (DiceCE with the Dice term weighted 0)

Every loss takes logits (softmax inside) and labels shaped (B, 1, *spatial); `params` are passed
to the MONAI class, e.g. `loss: {name: dice_focal, params: {gamma: 3.0}}`.
"""

from __future__ import annotations

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


def build_loss(config: LossConfig) -> nn.Module:
    try:
        return _BUILDERS[config.name](**config.params)
    except TypeError as err:
        raise ConfigError(f"loss.params: {err} (see MONAI's {config.name} loss for its arguments)") from None
