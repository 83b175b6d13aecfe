"""Token encoders of any input size, and what their last block attends to (Caron et al., "Emerging
Properties in Self-Supervised Vision Transformers", ICCV 2021: DINO, figure 1).

A *token encoder* is a plain ViT: MONAI's `PatchEmbeddingBlock` (`patch_embedding`), a list of
`blocks` with global self-attention (`attn.qkv`, `attn.num_heads`) and a final `norm`. Ours
(`vit_*`, `deit_*`, the encoder of every plain segmentation model) and MONAI's ViT inside
`unetr` share that layout. `encode_tokens` runs one on crops of any size that the patch size
divides, interpolating the learned position embedding (DINO's local crops, whole scans).

Attention is captured with a forward hook on the last block's attention module: the hook
recomputes softmax(q k^T / sqrt(d)) from the module's own `qkv` weights and the input it received,
so the attention classes stay as they are (they call a fused kernel that never forms the matrix).

    encoder = find_token_encoder(model)                      # or a one-line UsageError
    with LastBlockAttention(encoder) as capture:
        encode_tokens(encoder, image, extra_prefix=cls_token)
    maps = capture.patch_maps(use_class_token=True)          # (B, heads, *grid)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unetr_app.errors import UsageError

# one colour per head, the same in the PNG montage and in `unetr review --attention`
HEAD_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
                "#bfef45", "#fabed4", "#469990", "#dcbeff")
ATTENTION_SUFFIX = "_attention_head"

# queries per chunk when averaging the attention every patch receives (bounds memory on whole scans)
_QUERY_CHUNK = 1024


@dataclass
class TokenEncoder:
    """A plain ViT found inside a model; `name` is its attribute path in that model ("" for itself)."""

    module: nn.Module
    name: str
    grid: tuple[int, ...]  # the patch grid its position embedding was built for
    patch_size: tuple[int, ...]

    @property
    def num_prefix_tokens(self) -> int:
        """Class/distillation tokens the encoder adds itself (0 for segmentation encoders)."""
        return int(getattr(self.module, "num_prefix_tokens", 0))

    @property
    def embed_dim(self) -> int:
        return int(self.module.patch_embedding.position_embeddings.shape[-1])

    @property
    def num_heads(self) -> int:
        return int(self.module.blocks[-1].attn.num_heads)


def find_token_encoder(model: nn.Module, model_name: str = "this model") -> TokenEncoder:
    """The plain ViT encoder of `model` (itself, `.encoder` or MONAI UNETR's `.vit`), or a one-line error."""
    for name in ("", "encoder", "vit"):
        module = model if not name else getattr(model, name, None)
        if isinstance(module, nn.Module) and _is_token_encoder(module):
            return TokenEncoder(module, name, _position_grid(model, module), _patch_size(module))
    if not any(_is_attention(m) for m in model.modules()):
        raise UsageError(f"{model_name} has no attention layers (a convolutional or MLP model); attention maps need a transformer")
    raise UsageError(
        f"{model_name}: attention maps and DINO need a plain ViT encoder (global self-attention over patch tokens, "
        "e.g. vit_*, deit_*, unetr); windowed, pooled or spatial-reduction attention is not supported"
    )


def _is_token_encoder(module: nn.Module) -> bool:
    embedding = getattr(module, "patch_embedding", None)
    blocks = getattr(module, "blocks", None)
    return (
        embedding is not None and isinstance(getattr(embedding, "position_embeddings", None), nn.Parameter)
        and isinstance(getattr(embedding, "patch_embeddings", None), nn.modules.conv._ConvNd)
        and isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and hasattr(module, "norm")
        and _is_attention(getattr(blocks[-1], "attn", None))
    )


def _is_attention(module) -> bool:
    return isinstance(getattr(module, "qkv", None), nn.Linear) and hasattr(module, "num_heads")


def _patch_size(module: nn.Module) -> tuple[int, ...]:
    return tuple(int(k) for k in module.patch_embedding.patch_embeddings.kernel_size)


def _position_grid(model: nn.Module, module: nn.Module) -> tuple[int, ...]:
    for owner in (module, model):  # our ViT keeps `grid`; MONAI's UNETR keeps `feat_size`
        for attr in ("grid", "feat_size"):
            if getattr(owner, attr, None) is not None:
                return tuple(int(g) for g in getattr(owner, attr))
    n, dims = module.patch_embedding.position_embeddings.shape[1], len(_patch_size(module))
    side = round(n ** (1 / dims))
    if side**dims != n:
        raise UsageError(f"cannot tell the patch grid of a position embedding with {n} positions")
    return (side,) * dims


def resize_position_embedding(pos: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """(1, N, D) learned position embedding on `grid` -> (1, N', D) on `new_grid` (linear interpolation)."""
    if tuple(grid) == tuple(new_grid):
        return pos
    mode = {2: "bilinear", 3: "trilinear"}[len(grid)]
    as_grid = pos.transpose(1, 2).reshape(1, pos.shape[-1], *grid)  # (1, D, *grid)
    resized = F.interpolate(as_grid, size=tuple(new_grid), mode=mode, align_corners=False)
    return resized.flatten(2).transpose(1, 2)


def encode_tokens(encoder: TokenEncoder, x: torch.Tensor, extra_prefix: torch.Tensor | None = None,
                  mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None):
    """(B, C, *size) -> (normed tokens (B, P + N, D), patch grid). `size` only has to be a multiple of
    the patch size; `extra_prefix` (1, K, D) tokens (DINO's class token) go before the patches;
    where `mask` (B, N) is True the patch's embedding is replaced by `mask_token` (1, 1, D) before
    the position embedding is added (SimMIM)."""
    module = encoder.module
    size = tuple(x.shape[2:])
    if any(s % p for s, p in zip(size, encoder.patch_size)):
        raise UsageError(f"input size {size} must be a multiple of the patch size {encoder.patch_size} on every axis")
    embedding = module.patch_embedding
    patches = embedding.patch_embeddings(x)  # (B, D, *grid)
    grid = tuple(patches.shape[2:])
    tokens = patches.flatten(2).transpose(1, 2)  # (B, N, D)
    if mask is not None:
        tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
    tokens = embedding.dropout(tokens + resize_position_embedding(embedding.position_embeddings, encoder.grid, grid))
    prefix = [module.prefix_tokens(x.shape[0])] if encoder.num_prefix_tokens else []
    if extra_prefix is not None:
        prefix.append(extra_prefix.expand(x.shape[0], -1, -1))
    tokens = torch.cat([*prefix, tokens], dim=1)
    for block in module.blocks:
        tokens = block(tokens)
    return module.norm(tokens), grid


class LastBlockAttention:
    """Context manager: hooks the last block's attention and keeps, per head, the first token's
    attention to every token and the mean attention every token receives (both (B, heads, P + N))."""

    def __init__(self, encoder: TokenEncoder) -> None:
        self.attention = encoder.module.blocks[-1].attn
        self.first_row: torch.Tensor | None = None
        self.received: torch.Tensor | None = None
        self._handle = None

    def __enter__(self) -> LastBlockAttention:
        self._handle = self.attention.register_forward_hook(self._capture)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()

    @torch.no_grad()
    def _capture(self, module: nn.Module, args: tuple, output) -> None:
        x = args[0]
        batch, tokens, _ = x.shape
        heads = module.num_heads
        # (B, N, 3C) -> q, k: (B, heads, N, C/heads), the layout both our and MONAI's attention use
        q, k, _ = module.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
        scale = q.shape[-1] ** -0.5
        self.first_row = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) * scale, dim=-1)[:, :, 0]
        received = torch.zeros(batch, heads, tokens, dtype=torch.float32, device=x.device)
        for start in range(0, tokens, _QUERY_CHUNK):
            rows = torch.softmax(q[:, :, start:start + _QUERY_CHUNK] @ k.transpose(-2, -1) * scale, dim=-1)
            received += rows.float().sum(dim=2)
        self.received = received / tokens

    def patch_maps(self, num_prefix_tokens: int, grid: Sequence[int]) -> torch.Tensor:
        """(B, heads, *grid): the class token's attention to each patch when there is one (renormalised
        over the patches), otherwise the mean attention each patch receives."""
        if self.first_row is None:
            raise RuntimeError("no forward pass went through the hooked attention")
        rows = self.first_row if num_prefix_tokens else self.received
        patches = rows[:, :, num_prefix_tokens:].float()
        patches = patches / patches.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        return patches.reshape(*patches.shape[:2], *grid)


@torch.no_grad()
def attention_volume(encoder: TokenEncoder, image: torch.Tensor, class_token: torch.Tensor | None = None) -> torch.Tensor:
    """(C, *size) image -> (heads, *size) last-block attention per voxel, each head summing to 1 over
    the patches. The image is zero-padded at the end of each axis to a multiple of the patch size;
    each patch's value fills its voxels (nearest upsampling, as DINO's figure)."""
    size = tuple(image.shape[1:])
    padded = tuple(-(-s // p) * p for s, p in zip(size, encoder.patch_size))
    x = F.pad(image[None], [v for s, t in reversed(list(zip(size, padded))) for v in (0, t - s)])
    with LastBlockAttention(encoder) as capture:
        _, grid = encode_tokens(encoder, x, extra_prefix=class_token)
    prefix = encoder.num_prefix_tokens + (class_token.shape[1] if class_token is not None else 0)
    maps = capture.patch_maps(prefix, grid)  # (1, heads, *grid)
    maps = F.interpolate(maps, size=padded, mode="nearest")[0]
    return maps[(slice(None), *(slice(0, s) for s in size))]
