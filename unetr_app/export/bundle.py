"""A trained model as a MONAI bundle: a folder that `python -m monai.bundle run` executes on its own.

    NAME/
      configs/metadata.json    MONAI's required keys and network_data_format (inputs, outputs)
      configs/inference.json   LoadImaged -> EnsureChannelFirstd -> Orientationd -> Spacingd ->
                               ScaleIntensityRanged (or NormalizeIntensityd) -> CropForegroundd;
                               SlidingWindowInferer; softmax -> Invertd -> background fill -> argmax ->
                               SaveImaged
      models/model.pt          the state dict (MONAI's key names where the network is MONAI's)
      scripts/                 the network's code, when MONAI has no equivalent class
      LICENSE, docs/README.md
      docs/MODEL_CARD.md, docs/model_card.json   the run's model card, when the checkpoint is a run's

The preprocessing is the checkpoint's, transform for transform (unetr_app.data.transforms), so the
bundle's masks match `unetr predict` up to interpolation details at label boundaries.
"""

from __future__ import annotations

import json
import shutil
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unetr_app.evaluation.postprocess import postprocessing_for
from unetr_app.export.card import CARD_JSON, CARD_MARKDOWN, build_card, find_card_runs, render_markdown, sha256
from unetr_app.export.monai_weights import MonaiNetwork, NotMonaiEquivalent, monai_network
from unetr_app.io.checkpoint import LoadedModel
from unetr_app.io.atomic import atomic_path, atomic_write_text

MODELS_SOURCE = Path(__file__).resolve().parent.parent / "models"
ERRORS_SOURCE = Path(__file__).resolve().parent.parent / "errors.py"
REGISTRY_SOURCE = Path(__file__).resolve().parent.parent / "registry.py"
VENDORED = "scripts.unetr_models"
LICENSE_TEXT = (
    "The code in this bundle is Apache-2.0 (see https://www.apache.org/licenses/LICENSE-2.0).\n"
    "The weights are derived from the training data named in docs/README.md; their use follows that\n"
    "data's license (MSD Task09_Spleen: CC-BY-SA 4.0). Not for diagnostic use.\n"
)


def write_bundle(loaded: LoadedModel, out_dir: Path, name: str, run_info: dict[str, Any] | None = None) -> Path:
    """Write the bundle folder `out_dir`; returns it."""
    try:
        network = monai_network(loaded)
        network_def, state_dict = {"_target_": network.target, **network.kwargs}, network.state_dict
    except NotMonaiEquivalent:
        network_def, state_dict = _vendor_models(loaded, out_dir), loaded.model.state_dict()
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "models" / "model.pt") as tmp:
        torch.save({k: v.detach().cpu() for k, v in state_dict.items()}, tmp)
    _write_json(out_dir / "configs" / "inference.json", inference_config(loaded, network_def))
    _write_json(out_dir / "configs" / "metadata.json", bundle_metadata(loaded, name, network_def, run_info or {}))
    atomic_write_text(out_dir / "LICENSE", LICENSE_TEXT)
    (out_dir / "docs").mkdir(exist_ok=True)
    atomic_write_text(out_dir / "docs" / "README.md", _readme(loaded, name, network_def, run_info or {}))
    _embed_card(loaded, out_dir)
    return out_dir


def _embed_card(loaded: LoadedModel, out_dir: Path) -> None:
    """The model card of the run the checkpoint belongs to (RUN/checkpoints/NAME), with the
    checksum of the bundle's own weights beside the run's."""
    run = loaded.path.parent.parent if loaded.path.parent.name == "checkpoints" else loaded.path.parent
    if not find_card_runs(run) or find_card_runs(run)[0].path != run:
        return  # a loose checkpoint file: no run records to describe it
    card = build_card(run)
    card["bundle"] = {"checkpoint": str(loaded.path.relative_to(run)), "weights": {"file": "models/model.pt", "sha256": sha256(out_dir / "models" / "model.pt")}}
    atomic_write_text(out_dir / "docs" / CARD_JSON, json.dumps(card, indent=2) + "\n")
    atomic_write_text(out_dir / "docs" / CARD_MARKDOWN, render_markdown(card))


def inference_config(loaded: LoadedModel, network_def: dict[str, Any]) -> dict[str, Any]:
    """MONAI bundle config for folder inference, built from the checkpoint's preprocessing."""
    pre, inference = loaded.preprocessing, loaded.inference
    return {
        "imports": ["$import glob", "$import os", "$import numpy"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) + glob.glob(os.path.join(@dataset_dir, '*.nii')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(pre)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": {
            "_target_": "SlidingWindowInferer", "roi_size": list(pre.roi_size), "sw_batch_size": inference.sw_batch_size,
            "overlap": inference.overlap, "mode": inference.blend_mode,
        },
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            # back through crop, resampling and reorientation onto each scan's own grid; probabilities
            # are resampled (bilinear) and only then turned into labels, as `unetr predict` does
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            # outside the body crop nothing was predicted (zero probability mass): that is background
            {"_target_": "Lambdad", "keys": "pred",
             "func": "$lambda p: torch.cat([p[:1] + 1.0 - p.sum(0, keepdim=True), p[1:]])"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            *_postprocessing_steps(loaded),
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "separate_folder": False, "resample": False, "print_log": False},
        ]},
        "handlers": [
            {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'", "load_dict": {"model": "@network"}},
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
            "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
            "val_handlers": "@handlers", "amp": False,
        },
        "run": ["$@evaluator.run()"],
    }


def _postprocessing_steps(loaded: LoadedModel) -> list[dict[str, Any]]:
    """The post-processing `unetr predict` applies beside this checkpoint, as MONAI transforms (largest
    component per label, 26-connected like cc3d's). MONAI's transform has no guard for organ-sized
    components and none removes small components from a label map: the bundle's README names both."""
    steps = postprocessing_for(loaded.path)
    return [{"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [value], "is_onehot": False,
             "connectivity": 3} for value in (steps.largest_component if steps else ())]


def _preprocessing(pre) -> list[dict[str, Any]]:
    """The same steps as `unetr_app.data.transforms.preprocessing_transforms`, as bundle config."""
    if pre.intensity_window is None:
        intensity = {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}
    else:
        low, high = pre.intensity_window
        intensity = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high,
                     "b_min": 0.0, "b_max": 1.0, "clip": True}
    return [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": pre.orientation,
         "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
        {"_target_": "Spacingd", "keys": "image", "pixdim": list(pre.spacing), "mode": "bilinear"},
        intensity,
        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "allow_smaller": True},
        {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
    ]


def bundle_metadata(loaded: LoadedModel, name: str, network_def: dict, run_info: dict[str, Any]) -> dict[str, Any]:
    """configs/metadata.json with the keys the MONAI bundle specification requires."""
    pre = loaded.preprocessing
    classes = {str(v): k for k, v in sorted(loaded.labels.items(), key=lambda item: item[1])}
    packages = {"einops": _version("einops"), "nibabel": _version("nibabel")}
    if network_def["_target_"].startswith(VENDORED):
        packages["unetr (vendored in scripts/)"] = _version("unetr")
    modality = loaded.modality
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "exported by unetr"},
        "monai_version": _version("monai"),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": packages,
        "name": name,
        "task": f"{run_info.get('task') or 'segmentation'} segmentation ({', '.join(k for k in loaded.labels if loaded.labels[k])})",
        "description": f"{loaded.name} ({network_def['_target_']}) trained with unetr; sliding window {list(pre.roi_size)} "
                       f"at {list(pre.spacing)} mm, masks written on each input's own grid",
        "authors": run_info.get("authors", "unetr user"),
        "copyright": run_info.get("copyright", "Copyright (c) the model's authors"),
        "data_type": "nibabel",
        "image_classes": f"{int(loaded.kwargs.get('in_channels', 1))} channel {modality} image",
        "label_classes": ", ".join(f"{v}: {k}" for v, k in classes.items()),
        "pred_classes": ", ".join(f"{v}: {k}" for v, k in classes.items()),
        "intended_use": "Research only, not for diagnostic use",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if pre.intensity_window else "magnitude", "modality": modality,
                "num_channels": int(loaded.kwargs.get("in_channels", 1)), "spatial_shape": list(pre.roi_size),
                "dtype": "float32", "value_range": [0, 1] if pre.intensity_window else [], "is_patch_data": True,
                "channel_def": {"0": "image"},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": len(loaded.labels),
                "spatial_shape": list(pre.roi_size), "dtype": "float32", "value_range": [0, 1],
                "is_patch_data": True, "channel_def": classes,
            }},
        },
    }


def _vendor_models(loaded: LoadedModel, out_dir: Path) -> dict[str, Any]:
    """Copy our model code into scripts/unetr_models (imports renamed) for networks MONAI lacks."""
    target = out_dir / "scripts" / "unetr_models"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    atomic_write_text(out_dir / "scripts" / "__init__.py", '"""Code this bundle needs: unetr\'s model registry."""\n')
    sources = {path.name: path.read_text(encoding="utf-8") for path in MODELS_SOURCE.glob("*.py")}
    sources["_errors.py"] = ERRORS_SOURCE.read_text(encoding="utf-8")
    sources["_registry.py"] = REGISTRY_SOURCE.read_text(encoding="utf-8")
    for filename, text in sources.items():
        text = text.replace("unetr_app.models", VENDORED).replace("unetr_app.errors", f"{VENDORED}._errors")
        text = text.replace("unetr_app.registry", f"{VENDORED}._registry")
        atomic_write_text(target / filename, text)
    return {"_target_": f"{VENDORED}.create_model", "name": loaded.name, **loaded.kwargs}


def _readme(loaded: LoadedModel, name: str, network_def: dict, run_info: dict[str, Any]) -> str:
    pre = loaded.preprocessing
    return f"""# {name}

{loaded.name} segmentation model exported by `unetr export` (network: `{network_def['_target_']}`).

Labels: {', '.join(f'{v} {k}' for k, v in sorted(loaded.labels.items(), key=lambda i: i[1]))}.
Preprocessing: orientation {pre.orientation}, spacing {list(pre.spacing)} mm, intensity window
{list(pre.intensity_window) if pre.intensity_window else 'z-score per image'}, crop to the body; sliding
window {list(pre.roi_size)}, overlap {loaded.inference.overlap}, {loaded.inference.blend_mode} blending.
Source checkpoint: {run_info.get('checkpoint', loaded.path.name)}.

## Run inference on a folder of NIfTI scans

```
cd {name}
python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/scans --output_dir /path/to/masks
```

Each mask (`<scan>_seg.nii.gz`, uint8 labels) lies on its scan's own grid (shape and affine).
{_postprocessing_note(loaded)}
Not for diagnostic use.
"""


def _postprocessing_note(loaded: LoadedModel) -> str:
    steps = postprocessing_for(loaded.path)
    if steps is None or steps.is_identity:
        return "No post-processing was decided for this model.\n"
    note = ""
    if steps.largest_component:
        note += f"Post-processing decided on validation cases, in `configs/inference.json`: keep the largest component of labels {list(steps.largest_component)}.\n"
    if guards := {v: steps.largest_component_guard_mm3[v] for v in steps.largest_component if v in steps.largest_component_guard_mm3}:
        note += ("`unetr predict` also keeps the other components of at least "
                 + ", ".join(f"{v:g} mm3 of label {k}" for k, v in guards.items())
                 + " (the smallest largest component on validation: where a false positive outgrows the organ, the organ stays);"
                 " MONAI's transform keeps the largest alone, so on such a scan the bundle's mask loses the organ.\n")
    if steps.min_volume_mm3:
        note += ("Post-processing decided on validation cases but not in the bundle (no MONAI transform does it on a label map): remove components smaller than "
                 + ", ".join(f"{v:g} mm3 of label {k}" for k, v in steps.min_volume_mm3.items()) + "; `unetr predict` applies it.\n")
    return note


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _version(package: str) -> str:
    try:
        return package_metadata.version(package)
    except package_metadata.PackageNotFoundError:
        return "unknown"


__all__ = ["MonaiNetwork", "bundle_metadata", "inference_config", "write_bundle"]
