"""Where does a DINO run lose its scans apart: the backbone, the head's bottleneck, or the logits?

    python benchmarks/dino_teacher_state.py RUN [RUN ...]     # run folders under runs/recipes_fair

For each pretraining run that `benchmarks/recipes_fair.py` made (renamed per setting), the final
teacher on one 48^3 crop (the whole body crop, resized) of each scan of the benchmark (its labelled
images and the unlabelled pool): the mean pairwise cosine between scans of the class token and of
the head's normalised bottleneck, the std across scans of each logit over the teacher temperature
(well below 1: the centred targets of every scan are near uniform), the std across prototypes, and
the teacher entropy over ln K. Prints one line per run; the numbers go into
benchmarks/results/recipes_fair_dino_monitors.json ("final_teacher_state").
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from unetr_app.config import PreprocessingConfig
from unetr_app.data.multicrop import preprocess_scans, find_scans
from unetr_app.io.checkpoint import load_checkpoint
from unetr_app.models import create_model
from unetr_app.training.init import run_checkpoint
from unetr_app.training.objectives import teacher_entropy_ratio
from unetr_app.training.recipes.dino_network import build_dino_network

SCAN_FOLDERS = (Path("runs/recipes_fair/Task09_Spleen/imagesTr"), Path("runs/recipes_fair/unlabelled"))


def mean_cosine_between(x: torch.Tensor) -> float:
    x = F.normalize(x, dim=-1)
    return round(float((x @ x.T)[~torch.eye(len(x), dtype=torch.bool)].mean()), 4)


def teacher_state(run: str) -> dict:
    path = Path("runs/recipes_fair") / run
    data = load_checkpoint(run_checkpoint(path))
    params = data["config"]["recipe"]["params"]
    model = create_model(data["model"]["name"], **data["model"]["kwargs"])
    net = build_dino_network(model, params["out_dim"], params["hidden_dim"], params["bottleneck_dim"])
    net.load_state_dict(data["recipe"]["extra_state"]["teacher"])
    net.eval()
    center = data["recipe"]["extra_state"]["center"]
    sources = find_scans(list(SCAN_FOLDERS))
    samples = preprocess_scans(sources, PreprocessingConfig.model_validate(data["preprocessing"]))
    crops = torch.stack([F.interpolate(s["image"][None], size=(48, 48, 48), mode="trilinear")[0] for s in samples])
    with torch.no_grad():
        emb = net.embed(crops)
        bottleneck = net.head.bottleneck(emb)
        logits = net.head.last_layer(bottleneck)
    ent = float(teacher_entropy_ratio(((logits - center) / params["teacher_temp_final"]).softmax(-1)))
    scaled = logits / params["teacher_temp_final"]
    return {"scans": len(samples), "backbone_cosine_between_scans": mean_cosine_between(emb),
            "bottleneck_cosine_between_scans": mean_cosine_between(bottleneck),
            "logit_std_across_scans_over_temp": round(float(scaled.std(0).mean()), 4),
            "logit_std_across_prototypes_over_temp": round(float(scaled.std(1).mean()), 4),
            "teacher_entropy_ratio_whole_scan": round(ent, 4)}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(name, json.dumps(teacher_state(name)), flush=True)
