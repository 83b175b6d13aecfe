"""Masked image modelling: a ViT encoder learns to fill in masked patches of unlabelled scans
(SimMIM, Xie et al., CVPR 2022; the reconstruction form of MAE, He et al., CVPR 2022), in 3D.

Each scan gives one random crop (DINO's global-crop augmentation: a box of `crop_scale` of the
body crop, resized to the ROI, flipped, intensity-jittered, blurred). A fraction `mask_ratio` of
its patch tokens is replaced by a learned mask token before the position embedding; the encoder
runs over every token (SimMIM: no token is dropped, so the encoder sees the grid it is fine-tuned
on), and a linear head predicts the voxels of each patch. The loss is the L1 (SimMIM) or squared
(MAE) error on the masked patches only (`unetr_app.training.objectives.masked_reconstruction_loss`).

Unlike DINO nothing can collapse: a constant prediction costs the masked patches' variance. The
encoder keeps the name and layout it has in the segmentation model (`encoder.*`), so
`unetr train --init-from RUN` loads it key for key; the mask token and the head are left behind.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from unetr_app.data.multicrop import MultiCropd, multicrop_loader
from unetr_app.models.attention_maps import TokenEncoder, encode_tokens, find_token_encoder
from unetr_app.training.objectives import masked_reconstruction_loss, patchify, random_token_mask
from unetr_app.training.recipes.base import Recipe, RecipeParams, fraction_range, one_of, register_recipe


class MaskedParams(RecipeParams):
    """`recipe.params` of the masked recipe (validated; errors name the key)."""

    mask_ratio: float = Field(0.6, gt=0, lt=1, description="fraction of patch tokens masked (SimMIM 0.6, MAE 0.75)")
    loss: str = Field("l1", description="l1 (SimMIM) or l2 (MAE)")
    normalise_target: bool = Field(False, description="each patch's target standardised by its own mean and std (MAE)")
    crop_scale: tuple[float, float] = Field((0.4, 1.0), description="the crop's share of the body crop's volume")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, value: str) -> str:
        return one_of(value, ("l1", "l2"))

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value):
        return fraction_range(value)


class MaskedImageNetwork(nn.Module):
    """A ViT encoder + a mask token + a linear head from each token to its patch's voxels."""

    def __init__(self, encoder: TokenEncoder, in_channels: int) -> None:
        super().__init__()
        self.encoder = encoder.module
        self.grid, self.patch_size, self.prefix = encoder.grid, encoder.patch_size, encoder.num_prefix_tokens
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(encoder.embed_dim, in_channels * math.prod(self.patch_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, *size), mask (B, N) -> predicted patches (B, N, C * prod(patch))."""
        encoder = TokenEncoder(self.encoder, "encoder", self.grid, self.patch_size)
        tokens, _ = encode_tokens(encoder, x, mask=mask, mask_token=self.mask_token)
        return self.head(tokens[:, self.prefix:])


@register_recipe
class Masked(Recipe):
    """Batches: {"global_crops": (B, 1, C, *roi)} from data.multicrop (one crop, no local crops)."""

    name = "masked"
    Params = MaskedParams
    self_supervised = True
    pretrain_profile = "cpu-masked"

    @classmethod
    def unlabelled_loader(cls, config: Any, samples: list[dict], shard: Any):
        params, train = cls.parse_params(config.recipe.params), config.training
        roi = config.preprocessing.roi_size
        crops = MultiCropd(roi, roi, global_crops=1, local_crops=0, global_scale=params.crop_scale)
        return multicrop_loader(samples, crops, train.batch_size, train.seed, train.num_workers, shard.rank, shard.world_size)

    def __init__(self, model: nn.Module, config: Any, **params: Any) -> None:
        name = getattr(getattr(config, "model", None), "name", "this model")
        encoder = find_token_encoder(model, name)
        in_channels = int(encoder.module.patch_embedding.patch_embeddings.in_channels)
        super().__init__(MaskedImageNetwork(encoder, in_channels), config, **params)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image = batch["global_crops"][:, 0]
        target = patchify(image, self.model_patch_size())
        mask = random_token_mask(image.shape[0], target.shape[1], self.settings.mask_ratio, device=image.device)
        prediction = self.model(image, mask)
        loss = masked_reconstruction_loss(prediction, target, mask, self.settings.loss, self.settings.normalise_target)
        return {"loss": loss, "output": prediction}

    def model_patch_size(self) -> tuple[int, ...]:
        return getattr(self.model, "module", self.model).patch_size
