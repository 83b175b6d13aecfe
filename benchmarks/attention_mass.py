"""Where trained encoders look: last-block attention mass per structure and per head on held-out scans.

    python benchmarks/attention_mass.py [--work runs/recipes_fair_plain800] [--seeds 0 1 2 3 4]

Reads the runs `python benchmarks/recipes_fair.py` left in `--work` (nothing is trained here):
- `plain-S`: the supervised student after its whole budget (last checkpoint), seeds S;
- `ibot_pretrain`: the self-supervised pretraining run (DINO + masked patch tokens), its teacher;
- the same architecture with random weights, one per seed: the reference every trained map is
  read against (cropping the scan to the body already concentrates a random network's attention).

For every held-out scan (`Task09_Spleen/imagesTs` with `labelsTs`, scans no run trained or
pretrained on) it computes `unetr attention`'s maps on the scan's own grid and the share of each
head's attention inside:
- the body (HU > -500), the spleen (the label), bone (HU > 300 inside the body: the phantom's
  vertebrae; kidneys and aorta stay below 200 HU);
- beside each, the share of voxels (what uniform attention would give).
Two readings of the last block: the mean attention each patch receives from all patches (every
network has it), and the class token's attention (the self-supervised teacher and its random
reference only). Writes benchmarks/results/attention_mass.json and a montage of one held-out scan
per network (benchmarks/results/attention_mass_montage_*.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unetr_app.io.checkpoint import load_checkpoint  # noqa: E402
from unetr_app.io.scans import find_cases, read_volume  # noqa: E402
from unetr_app.models import create_model  # noqa: E402
from unetr_app.models.attention_maps import find_token_encoder  # noqa: E402
from unetr_app.pipelines.attention import attention_on_scan, load_attention_network, write_montage  # noqa: E402
from unetr_app.training.init import run_checkpoint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BODY_HU, BONE_HU = -500, 300
STRUCTURES = ("body", "spleen", "bone")


def structures(image: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    body = image > BODY_HU
    return {"body": body, "spleen": label > 0, "bone": body & (image > BONE_HU)}


def random_network(checkpoint: Path, seed: int, with_class_token: bool):
    """The run's architecture with fresh weights drawn from `seed`; a DINO-style class token (as
    DINO initialises it) when the trained network being compared has one."""
    spec = load_checkpoint(run_checkpoint(checkpoint))["model"]
    torch.manual_seed(seed)
    model = create_model(spec["name"], **spec["kwargs"]).eval()
    encoder = find_token_encoder(model, spec["name"])
    class_token = torch.nn.init.trunc_normal_(torch.zeros(1, 1, encoder.embed_dim), std=0.02) if with_class_token else None
    return encoder, class_token


def mass_on_scans(encoder, class_token, preprocessing: dict, scans: list[tuple[Path, Path]], montage: Path | None = None) -> dict:
    """Per head and per structure: attention share and voxel share, averaged over the scans."""
    shares, voxels = [], []
    for index, (image_path, label_path) in enumerate(scans):
        volume = read_volume(find_cases(image_path)[0])
        prepared, maps, on_input = attention_on_scan(encoder, class_token, preprocessing, volume)
        if montage is not None and index == 0:
            write_montage(prepared.as_tensor()[0].numpy(), maps.numpy(), montage, title=f"{montage.stem}: {image_path.name}")
        total = on_input.reshape(on_input.shape[0], -1).sum(axis=1)
        masks = structures(volume.array, np.asarray(nib.load(label_path).dataobj))
        shares.append({name: (on_input[:, mask].sum(axis=1) / total).tolist() for name, mask in masks.items()})
        voxels.append({name: float(mask.mean()) for name, mask in masks.items()})
    out = {}
    for name in STRUCTURES:
        per_scan_head = np.array([s[name] for s in shares])  # (scans, heads)
        uniform = float(np.mean([v[name] for v in voxels]))
        out[name] = {"attention_share_per_head": per_scan_head.mean(axis=0).round(4).tolist(),
                     "attention_share": round(float(per_scan_head.mean()), 4),
                     "voxel_share": round(uniform, 4),
                     "enrichment": round(float(per_scan_head.mean()) / max(uniform, 1e-12), 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "recipes_fair_plain800")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=RESULTS / "attention_mass.json")
    args = parser.parse_args()
    dataset = args.work / "Task09_Spleen"
    scans = sorted((p, dataset / "labelsTs" / p.name) for p in (dataset / "imagesTs").glob("*.nii.gz"))
    if not scans:
        sys.exit(f"{dataset}/imagesTs: no held-out scans; run benchmarks/recipes_fair.py first")
    started = time.time()
    networks: dict[str, dict] = {}

    def measure(name: str, encoder, class_token, preprocessing, seed_index: int) -> None:
        montage = RESULTS / f"attention_mass_montage_{name}.png" if seed_index == 0 else None
        networks.setdefault(name, {"runs": []})["runs"].append(mass_on_scans(encoder, class_token, preprocessing, scans, montage))
        print(f"{name} #{seed_index}: done ({time.time() - started:.0f} s)", flush=True)

    for index, seed in enumerate(args.seeds):
        run = args.work / f"plain-{seed}"
        encoder, _, data = load_attention_network(run)
        measure("supervised", encoder, None, data["preprocessing"], index)
        measure("random", *random_network(run, seed, with_class_token=False), data["preprocessing"], index)
    pretrain = args.work / "ibot_pretrain"
    if pretrain.is_dir():
        encoder, class_token, data = load_attention_network(pretrain)
        measure("ibot_teacher_class_token", encoder, class_token, data["preprocessing"], 0)
        measure("ibot_teacher", encoder, None, data["preprocessing"], 0)
        for index, seed in enumerate(args.seeds):
            measure("random_class_token", *random_network(pretrain, seed, with_class_token=True), data["preprocessing"], index)

    for entry in networks.values():  # mean over the networks of each kind (seeds)
        entry["mean"] = {s: {k: round(float(np.mean([r[s][k] for r in entry["runs"]])), 4) for k in ("attention_share", "voxel_share", "enrichment")}
                         for s in STRUCTURES}
    for name, entry in networks.items():  # the crop to the body alone concentrates a random network's attention: read against it
        reference = networks.get("random_class_token" if name.endswith("class_token") else "random")
        if reference is not None and reference is not entry:
            entry["share_over_random"] = {s: round(entry["mean"][s]["attention_share"] / reference["mean"][s]["attention_share"], 3) for s in STRUCTURES}
    result = {
        "benchmark": "attention_mass: last-block attention share per structure and head on held-out phantom scans",
        "command": "python " + " ".join(sys.argv),
        "held_out_scans": len(scans),
        "structures": {"body": f"HU > {BODY_HU}", "spleen": "the label", "bone": f"HU > {BONE_HU} inside the body"},
        "readings": {"mean received": "mean over query patches of the attention each patch receives (no class token)",
                     "class token": "the class token's attention to each patch (self-supervised teacher and its random reference)"},
        "networks": networks,
        "seconds": round(time.time() - started, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, entry in networks.items():
        print(name, {s: entry["mean"][s]["enrichment"] for s in STRUCTURES}, entry.get("share_over_random", ""))


if __name__ == "__main__":
    main()
