"""Does self-supervised pretraining leave DINO's uniform phase on the recipes benchmark's scans?

Each variant pretrains cpu-recipes' student (the patch-8 DeiT encoder) on the scans
`benchmarks/recipes_fair.py` pretrains on (its 4 labelled cases' images and the 16-scan unlabelled
pool, never a held-out scan), with profile cpu-dino and the shipped 600-step budget, and records
the collapse monitors every 20 steps: the teacher's entropy over ln K (near 1: uniform), the
teacher-student KL (near 0: nothing learnt), the batch-mean entropy (near 0: one prototype), and
for iBOT the same three over patch tokens. DINO's target: the teacher's entropy below 0.9 ln K
with the KL well above 0 at the end of the budget.

    variant        recipe  change from cpu-dino
    dino           dino    -
    ibot           ibot    the masked patch-token term (weight 1, 30% of the global crops' tokens)
    ibot_lr5e-5    ibot    optimizer.lr 5e-5 (cpu-dino: 5e-4; DINO's rule lr = 5e-4 * batch / 256
    ibot_lr1e-5    ibot    optimizer.lr 1e-5          gives 8e-6 for 4 scans)

Before any training, the same network at random initialisation (2 seeds) on one whole-body 48^3
crop of each scan: the class token's mean cosine between scans, and the spread of the head's logits
in units of the teacher temperature (0.04) across scans and, for patch tokens, across the patches of
one scan. A spread well below 1 means centred targets near uniform from the first step.

    python benchmarks/ssl_monitors.py [--variants ...] [--work runs/recipes_fair]

Runs live in runs/ssl_monitors/VARIANT; a finished one (result.json, made with the same settings)
is read back. Writes benchmarks/results/ssl_monitors.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes_fair import PROFILE, dataset, read_back, settings_of, unlabelled_pool  # noqa: E402

from unetr_app.config import load_run_config  # noqa: E402
from unetr_app.data.multicrop import find_scans, preprocess_scans  # noqa: E402
from unetr_app.models import create_model  # noqa: E402
from unetr_app.training.recipes.dino_network import build_dino_network  # noqa: E402
from unetr_app.io.run_dir import RunDir  # noqa: E402
from unetr_app.pipelines.pretrain import pretrain  # noqa: E402
from unetr_app.training.objectives import dino_phase  # noqa: E402

VARIANTS = {
    "dino": ("dino", {}),
    "ibot": ("ibot", {}),
    "ibot_lr5e-5": ("ibot", {"optimizer": {"lr": 5e-5}}),
    "ibot_lr1e-5": ("ibot", {"optimizer": {"lr": 1e-5}}),
}
MONITORS = ("teacher_entropy_ratio", "teacher_student_kl", "batch_entropy_ratio")
PATCH_MONITORS = ("patch_entropy_ratio", "patch_student_kl", "patch_batch_entropy_ratio")


def pretraining_scans(work: Path) -> list[Path]:
    """recipes_fair's pretraining scans: its labelled training cases' images and the unlabelled pool."""
    layout = argparse.Namespace(train_cases=4, val_cases=4, held_out=16, unlabelled_scans=16)
    _, split = dataset(work, layout)
    return [Path(case["image"]) for case in split["train"]] + [unlabelled_pool(work, layout)]


def variant_config(name: str):
    method, overrides = VARIANTS[name]
    student = load_run_config("spleen", profile=PROFILE).model
    return load_run_config("spleen", model=student.name, profile="cpu-dino",
                           overrides={"model": {"params": dict(student.params)}, "recipe": {"name": method}, **overrides})


@torch.no_grad()
def spread_at_initialisation(scans: list[Path], seed: int) -> dict:
    config = variant_config("ibot")
    samples = preprocess_scans(find_scans(scans), config.preprocessing)
    crops = torch.stack([F.interpolate(s["image"][None], size=tuple(config.preprocessing.roi_size), mode="trilinear")[0]
                         for s in samples])
    torch.manual_seed(seed)
    params = config.recipe.params
    network = build_dino_network(create_model(config.model.name, **config.model_kwargs()), params["out_dim"],
                                 params["hidden_dim"], params["bottleneck_dim"]).eval()
    classes, patches = network.encode(crops)
    temperature = params["teacher_temp"]
    logits, patch_logits = network.head(classes) / temperature, network.head(patches) / temperature
    unit = F.normalize(classes, dim=-1)
    cosine = (unit @ unit.T)[~torch.eye(len(unit), dtype=torch.bool)].mean()
    return {"seed": seed, "scans": len(crops), "class_token_cosine_between_scans": round(float(cosine), 4),
            "class_logit_std_across_scans_over_temp": round(float(logits.std(0).mean()), 3),
            "patch_logit_std_across_patches_of_a_scan_over_temp": round(float(patch_logits.std(1).mean()), 3),
            "patch_logit_std_across_scans_over_temp": round(float(patch_logits.std(0).mean()), 3)}


def run_variant(name: str, scans: list[Path], out: Path) -> dict:
    method, overrides = VARIANTS[name]
    config = variant_config(name)
    settings = settings_of(config)
    run_dir = out / name
    if (finished := read_back(run_dir / "result.json", settings)) is not None:
        return finished
    if (run_dir / "summary.json").is_file() and settings_of(RunDir(run_dir).read_config()) == settings:
        summary = RunDir(run_dir).read_summary()  # finished before its result.json was written
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        summary = pretrain(config, run_dir, scans, "cpu")
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    names = MONITORS + (PATCH_MONITORS if method == "ibot" else ())
    monitored = [line for line in lines if all(key in line for key in names)]
    last = monitored[-1]
    result = {
        "method": method, "overrides": overrides, "steps": summary["steps"], "scans": summary["scans"],
        "seconds": summary["seconds"],
        "monitor_names": ["step", *names],
        "monitors": [[line["step"], *(round(float(line[key]), 4) for key in names)] for line in monitored],
        "phase_at_end": dino_phase(last["teacher_entropy_ratio"], last["batch_entropy_ratio"]) or "learning",
        "lowest_teacher_entropy_ratio": min(round(float(line["teacher_entropy_ratio"]), 4) for line in monitored),
        "settings": settings,
    }
    if method == "ibot":
        result["patch_phase_at_end"] = dino_phase(last["patch_entropy_ratio"], last["patch_batch_entropy_ratio"]) or "learning"
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("runs/recipes_fair"), help="recipes_fair's folder (its scans)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ssl_monitors"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ssl_monitors.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scans = pretraining_scans(args.work)
    at_start = [spread_at_initialisation(scans, seed) for seed in (0, 1)]
    print(f"at initialisation: {at_start}", flush=True)
    results = {}
    for name in args.variants:
        results[name] = run_variant(name, scans, args.runs)
        final = results[name]["monitors"][-1]
        print(f"{name}: {results[name]['steps']} steps in {results[name]['seconds']:.0f} s, phase at the end "
              f"{results[name]['phase_at_end']}, final {dict(zip(results[name]['monitor_names'], final))}", flush=True)
    report = {
        "benchmark": "DINO's collapse monitors over the shipped cpu-dino budget on the recipes benchmark's pretraining scans",
        "command": "python benchmarks/ssl_monitors.py " + " ".join(sys.argv[1:]),
        "target": "teacher entropy below 0.9 ln K and the teacher-student KL well above 0 at the end",
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "at_initialisation": at_start,
        "variants": results,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
