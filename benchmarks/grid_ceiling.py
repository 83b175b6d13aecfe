"""The Dice a perfect network could score on held-out scans, given the grid it works on.

    python benchmarks/grid_ceiling.py [--work runs/recipes_fair_plain800] [--run plain-0]

A network trained at 4 mm predicts 4-mm voxels; `unetr predict` resamples its probabilities onto
each scan's own grid (bilinear) and takes the argmax there. However good the network, the mask it
can return is limited by that round trip. Two oracles make it without any network, from the
held-out scans' own labels (`--work`/Task09_Spleen/imagesTs and labelsTs), with the preprocessing
of a run in `--work` (orientation, spacing, body crop):
- **training target**: the label as training sees it (nearest-neighbour to the 4-mm grid), as
  one-hot probabilities: a network that reproduces its training targets exactly;
- **area fraction**: each 4-mm voxel's share of spleen (the label smoothed by a box-like Gaussian
  of one 4-mm voxel, then sampled on the grid): the best soft map the grid can carry.
Both go back through prediction's own resampling (`inference.predictor.slabs_on_grid`) and argmax;
the Dice against the original label is the ceiling a recipe could lift a network to on that grid.
Writes benchmarks/results/grid_ceiling.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import monai.transforms as mt
import numpy as np
import torch
from monai.data import MetaTensor
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.config import PreprocessingConfig  # noqa: E402
from unetr_app.data.transforms import IMAGE, LABEL, eval_transforms  # noqa: E402
from unetr_app.evaluation.metrics import label_metrics  # noqa: E402
from unetr_app.inference.predictor import slabs_on_grid  # noqa: E402
from unetr_app.io.checkpoint import load_checkpoint  # noqa: E402
from unetr_app.io.scans import find_cases, read_volume  # noqa: E402
from unetr_app.training.init import run_checkpoint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BOX_TO_SIGMA = 1 / np.sqrt(12)  # the standard deviation of a box one voxel wide, in voxels


def back_on_input(foreground: torch.Tensor, affine, shape: tuple[int, ...], input_affine: np.ndarray) -> np.ndarray:
    """A foreground probability map on the preprocessed grid -> the mask `unetr predict` would write."""
    probabilities = torch.stack([1.0 - foreground, foreground]).float()
    mask = np.zeros(shape, np.uint8)
    for start, stop, part in slabs_on_grid(probabilities, affine, shape, input_affine):
        mask[:, :, start:stop] = (part[1] > part[0]).numpy()
    return mask


def area_fraction(label: np.ndarray, input_affine: np.ndarray, grid_affine, grid_shape, spacing_mm) -> torch.Tensor:
    """Each grid voxel's share of foreground: the label low-passed to the grid's voxel size, sampled there."""
    input_spacing = np.linalg.norm(input_affine[:3, :3], axis=0)
    sigma = [BOX_TO_SIGMA * max(target / source, 1.0) for target, source in zip(spacing_mm, input_spacing)]
    smooth = gaussian_filter((label > 0).astype(np.float32), sigma=sigma)
    resample = mt.SpatialResample(mode="bilinear", padding_mode="zeros", dtype=torch.float32)
    sampled = resample(MetaTensor(torch.from_numpy(smooth)[None], affine=torch.from_numpy(input_affine)),
                       dst_affine=torch.as_tensor(grid_affine), spatial_size=tuple(grid_shape))
    return torch.as_tensor(sampled)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "recipes_fair_plain800")
    parser.add_argument("--run", default="plain-0", help="the run in --work whose preprocessing is used")
    parser.add_argument("--out", type=Path, default=RESULTS / "grid_ceiling.json")
    args = parser.parse_args()
    started = time.time()
    warnings.filterwarnings("ignore", message="Setting affine")  # MONAI, on resampling a MetaTensor: nothing is lost
    pre = PreprocessingConfig.model_validate(load_checkpoint(run_checkpoint(args.work / args.run))["preprocessing"])
    dataset = args.work / "Task09_Spleen"
    scans = sorted((p, dataset / "labelsTs" / p.name) for p in (dataset / "imagesTs").glob("*.nii.gz"))
    if not scans:
        sys.exit(f"{dataset}/imagesTs: no held-out scans; run benchmarks/recipes_fair.py first")
    prepare = eval_transforms(pre)
    cases = []
    for image_path, label_path in scans:
        truth = read_volume(find_cases(label_path)[0])
        shape, affine = truth.array.shape[:3], truth.affine
        prepared = prepare({IMAGE: str(image_path), LABEL: str(label_path)})
        grid_affine, grid_shape = prepared[IMAGE].affine, prepared[IMAGE].shape[1:]
        target = (prepared[LABEL].as_tensor()[0] > 0).float()
        soft = area_fraction(truth.array, affine, grid_affine, grid_shape, pre.spacing)
        reference = (truth.array > 0).astype(np.uint8)
        row = {"scan": image_path.name, "spleen_ml": round(float(reference.sum()) * truth.voxel_ml, 1),
               "input_spacing_mm": [round(float(s), 3) for s in np.linalg.norm(affine[:3, :3], axis=0)]}
        for name, foreground in (("training_target", target), ("area_fraction", soft)):
            mask = back_on_input(foreground, grid_affine, shape, affine)
            metrics = label_metrics(mask, reference, tuple(row["input_spacing_mm"]))
            row[name], row[f"{name}_hd95_mm"] = round(metrics["dice"], 4), round(metrics["hd95_mm"], 2)
        cases.append(row)
        print(row, flush=True)
    summary = {name: {"mean": round(float(np.mean([c[name] for c in cases])), 4), "min": min(c[name] for c in cases),
                      "max": max(c[name] for c in cases)} for name in ("training_target", "area_fraction")}
    result = {
        "benchmark": "grid_ceiling: Dice of oracles limited to the network's grid, on the held-out phantom scans",
        "command": "python " + " ".join(sys.argv),
        "preprocessing": {"spacing_mm": list(pre.spacing), "orientation": pre.orientation, "from_run": str(args.work / args.run)},
        "held_out_scans": len(cases),
        "summary": summary,
        "cases": cases,
        "seconds": round(time.time() - started, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
