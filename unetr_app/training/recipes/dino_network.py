"""The network DINO trains: a segmentation model's ViT encoder, a class token and the DINO head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unetr_app.models.attention_maps import TokenEncoder, encode_tokens, find_token_encoder


class DinoHead(nn.Module):
    """3-layer MLP -> L2-normalised bottleneck -> weight-normalised linear layer to K prototypes.

    The last layer's weight is g * v / |v| per prototype with g fixed to 1 (not trained), as DINO.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> the unit vectors the prototypes are compared with (N, bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))


class DinoNetwork(nn.Module):
    """A ViT encoder + a class token + the DINO head: crops (B, C, *size) of any patch-divisible size -> (B, K).

    `encoder` keeps the name and layout it has in the segmentation model, so its weights load
    there unchanged; the class token belongs to this network (segmentation encoders have none).
    With `mask_token` (iBOT) the first group of views can have patch tokens masked, and the head
    also maps each patch token to the K prototypes.
    """

    def __init__(self, encoder: TokenEncoder, head: DinoHead, mask_token: bool = False) -> None:
        super().__init__()
        self.encoder = encoder.module
        self.head = head
        self.cls_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim)) if mask_token else None
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.grid, self.patch_size = encoder.grid, encoder.patch_size
        self.prefix = encoder.num_prefix_tokens  # the encoder's own tokens come before the class token

    def token_encoder(self) -> TokenEncoder:
        return TokenEncoder(self.encoder, "encoder", self.grid, self.patch_size)

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, *size) -> the class token's output (B, D) and the patch tokens' (B, N, D); where
        `mask` (B, N) is True a patch's embedding is the mask token."""
        tokens, _ = encode_tokens(self.token_encoder(), x, extra_prefix=self.cls_token, mask=mask, mask_token=self.mask_token)
        return tokens[:, self.prefix], tokens[:, self.prefix + 1:]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *size) -> the class token's output (B, D)."""
        return self.encode(x)[0]

    def forward(self, *views: torch.Tensor, mask: torch.Tensor | None = None,
                with_patches: bool = False) -> dict[str, torch.Tensor]:
        """Each argument holds all crops of one size, view-major (V*B, C, *size). Returns "logits"
        (sum V*B, K) and "bottleneck" (sum V*B, bottleneck: the head's L2-normalised vectors); with
        `with_patches` also "patch_logits" (V0*B, N, K) of the first argument's views, whose
        patches `mask` (V0*B, N) masks."""
        if mask is not None and self.mask_token is None:
            raise ValueError("this DINO network was built without a mask token (mask_token=True)")
        encoded = [self.encode(v, mask if index == 0 else None) for index, v in enumerate(views) if v.shape[0]]
        bottleneck = self.head.bottleneck(torch.cat([classes for classes, _ in encoded], dim=0))
        outputs = {"logits": self.head.last_layer(bottleneck), "bottleneck": bottleneck}
        if with_patches:
            outputs["patch_logits"] = self.head(encoded[0][1])
        return outputs


def build_dino_network(segmentation_model: nn.Module, out_dim: int, hidden_dim: int, bottleneck_dim: int,
                       model_name: str = "this model", mask_token: bool = False) -> DinoNetwork:
    """The segmentation model's ViT encoder (found by `find_token_encoder`) under a new DINO head."""
    encoder = find_token_encoder(segmentation_model, model_name)
    head = DinoHead(encoder.embed_dim, out_dim, hidden_dim, bottleneck_dim)
    return DinoNetwork(encoder, head, mask_token)
