"""Attention maps of a ViT's last block on one scan, on the scan's own grid (DINO's figure 1 in 3D).

    unetr attention RUN_OR_CHECKPOINT SCAN OUT_DIR

1. Load the network: a pretraining run gives its teacher's encoder and class token (the class
   token's attention to every patch, per head); a segmentation run gives its encoder (no class
   token: the mean attention each patch receives, per head).
2. Preprocess the scan as the checkpoint says (orientation, spacing, window, body crop).
3. Run the encoder on the whole preprocessed scan (position embedding interpolated to its grid)
   and read the last block's attention through forward hooks.
4. Resample the maps onto the input's grid (the preprocessed grid's affine to the input's), write
   one float NIfTI per head with the input's geometry, and a PNG montage with one colour per head.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from unetr_app.data.multicrop import preprocessing_after_load
from unetr_app.data.transforms import IMAGE, volume_tensor
from unetr_app.errors import UsageError
from unetr_app.inference.predictor import slabs_on_grid
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.io.scans import find_cases, nifti_output_path, read_volume, write_like
from unetr_app.models import create_model
from unetr_app.models.attention_maps import ATTENTION_SUFFIX, HEAD_COLOURS, TokenEncoder, attention_volume, find_token_encoder
from unetr_app.training.init import run_checkpoint, read_source_weights

log = logging.getLogger(__name__)


def attention(checkpoint: str | Path, scan: str | Path, out_dir: str | Path, overwrite: bool = False,
              key: str = "teacher") -> dict:
    """Write `<case>_attention_head<k>.nii.gz` per head and `<case>_attention.png`; return what was written."""
    encoder, class_token, data = load_attention_network(checkpoint, key)
    cases = find_cases(scan)
    if len(cases) != 1:
        raise UsageError(f"{scan}: holds {len(cases)} scans; give one scan (a file or one DICOM series folder)")
    out_dir = Path(out_dir)
    targets = [nifti_output_path(out_dir, f"{cases[0].name}{ATTENTION_SUFFIX}{h + 1}") for h in range(encoder.num_heads)]
    montage = out_dir / f"{cases[0].name}_attention.png"
    existing = [p for p in [*targets, montage] if p.exists()]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists; pass --overwrite to replace the attention maps in {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)

    volume = read_volume(cases[0])
    prepared, maps, on_input = attention_on_scan(encoder, class_token, data["preprocessing"], volume)
    for head, target in enumerate(targets):
        write_like(volume, on_input[head], target, dtype=np.float32)
    write_montage(prepared.as_tensor()[0].numpy(), maps.numpy(), montage, title=f"{cases[0].name}: last-block attention per head")
    return {"scan": str(cases[0].path), "heads": encoder.num_heads, "maps": [str(t) for t in targets], "montage": str(montage),
            "class_token": class_token is not None}


def load_attention_network(checkpoint: str | Path, key: str = "teacher") -> tuple[TokenEncoder, torch.Tensor | None, dict]:
    """(the encoder, DINO's class token or None, the checkpoint) from a pretraining or segmentation run."""
    data = load_checkpoint(run_checkpoint(Path(checkpoint)))
    spec = data["model"]
    model = create_model(spec["name"], **spec["kwargs"])
    encoder = find_token_encoder(model, spec["name"])  # a one-line error for models without attention
    weights, _, _ = read_source_weights(checkpoint, key)
    class_token = weights.get("cls_token")
    if class_token is not None:  # a DINO network: encoder.* + cls_token + head.*
        encoder.module.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    else:
        model.load_state_dict(weights)
    model.eval()
    return encoder, class_token, data


def attention_on_scan(encoder: TokenEncoder, class_token: torch.Tensor | None, preprocessing: dict, volume) -> tuple:
    """(the preprocessed image (C, *grid), its maps (heads, *grid), the maps on the scan's own grid
    (heads, *shape)) for one scan, preprocessed as the checkpoint's `preprocessing` says."""
    from unetr_app.config import PreprocessingConfig

    prepared = preprocessing_after_load(PreprocessingConfig.model_validate(preprocessing))({IMAGE: volume_tensor(volume)})[IMAGE]
    maps = attention_volume(encoder, prepared.as_tensor().float(), class_token)
    return prepared, maps, to_input_grid(maps, prepared.affine, volume.array.shape, volume.affine)


def to_input_grid(maps: torch.Tensor, affine, shape: tuple[int, ...], input_affine: np.ndarray) -> np.ndarray:
    """(heads, *preprocessed) maps with the preprocessed grid's affine -> (heads, *input shape) float32,
    resampled as prediction resamples probabilities."""
    out = np.empty((maps.shape[0], *shape[:3]), np.float32)
    with torch.inference_mode():
        for start, stop, part in slabs_on_grid(maps.float(), affine, tuple(shape[:3]), input_affine):
            out[:, :, :, start:stop] = part.numpy()
    return out


def write_montage(image: np.ndarray, maps: np.ndarray, path: Path, title: str = "", slices: int = 3) -> None:
    """Axial slices (rows) of the scan, then each head's map in its own colour, then all heads
    together (each voxel coloured by its strongest head, brightness by that head's attention)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    from unetr_app.io.atomic import atomic_path

    heads = maps.shape[0]
    colours = np.array([to_rgb(HEAD_COLOURS[h % len(HEAD_COLOURS)]) for h in range(heads)])
    scaled = maps / np.maximum(maps.reshape(heads, -1).max(axis=1), 1e-12)[:, None, None, None]
    depth = image.shape[2]
    picks = [int(depth * f) for f in np.linspace(0.25, 0.75, slices)]
    fig, axes = plt.subplots(slices, heads + 2, figsize=(1.6 * (heads + 2), 1.7 * slices), squeeze=False)
    for row, z in enumerate(picks):
        grey = np.clip(image[:, :, z], 0, 1)[..., None] * np.ones(3)
        panels = [grey] + [_overlay(grey, scaled[h, :, :, z], colours[h]) for h in range(heads)]
        strongest = scaled[:, :, :, z].argmax(axis=0)
        panels.append(_overlay(grey, scaled[:, :, :, z].max(axis=0), colours[strongest]))
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(np.transpose(panel, (1, 0, 2)), origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title("scan" if col == 0 else "all heads" if col == heads + 1 else f"head {col}",
                             fontsize=8, color="black" if col in (0, heads + 1) else HEAD_COLOURS[(col - 1) % len(HEAD_COLOURS)])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _overlay(grey: np.ndarray, weight: np.ndarray, colour: np.ndarray) -> np.ndarray:
    alpha = 0.75 * np.clip(weight, 0, 1)[..., None]
    # clipped: float rounding leaves values a hair above 1, which matplotlib warns about
    return np.clip(grey * (1 - alpha) + alpha * np.broadcast_to(colour, grey.shape), 0.0, 1.0)
