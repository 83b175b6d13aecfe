#!/usr/bin/env bash
# The committed comparison (benchmarks/results/compare/), scored as `unetr compare` scores (last
# checkpoint, post-processing by nested cross-validation, paired interval against the reference):
# a transformer with enough tokens (vit_p8_unetr: 8^3-voxel patches, 216 tokens in a 48^3 window at
# 4 mm) against two small CNNs, 3 folds of the 12-case phantom, 800 steps of 2 crops (100 passes over
# 8 training cases), and an equal-wall-clock set of MINUTES per run beside it.
# Rerunning resumes; STEPS, MINUTES, SEEDS, MODELS, PROFILE, PROCESSES and EXP override the defaults.
# More seeds for the same run (about 2 h on a 2-core CPU, see docs/experiments.md): SEEDS=3 EXP=runs/compare_plateau benchmarks/compare_plateau.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${EXP:-/tmp/compare-plateau}
DATA=${DATA:-$EXP/data/Task09_Spleen}
STEPS=${STEPS:-800}
MINUTES=${MINUTES:-3}
SEEDS=${SEEDS:-1}
PROCESSES=${PROCESSES:-1}
PROFILE=${PROFILE:-cpu-recipes}
MODELS=${MODELS:-benchmarks/results/compare/vit_p8_unetr.yaml,segresnet_small,dynunet_small}
RESULTS=benchmarks/results/compare

[ -f "$DATA/dataset.json" ] || unetr data synth "$DATA" --cases 12 --test-cases 2 --seed 0
unetr compare --task spleen --models "$MODELS" \
    --folds 3 --seeds "$SEEDS" --steps "$STEPS" --minutes "$MINUTES" --processes "$PROCESSES" \
    --profile "$PROFILE" --data-dir "$DATA" --set training.num_samples=2 \
    --out "$EXP/exp"

# what the repository keeps: the report, its table and plots, and each model's decisions (no weights),
# in place of the last comparison's (the model files beside them stay)
mkdir -p "$RESULTS"
find "$RESULTS" -mindepth 1 -maxdepth 1 ! -name '*.yaml' -exec rm -rf {} +
cp "$EXP"/exp/{report.md,comparison.csv,compare.json,*.png} "$RESULTS"/
cp -r "$EXP/exp/receptive_fields" "$RESULTS"/ 2>/dev/null || true
(cd "$EXP/exp" && find . -name 'nested_postprocessing.json' -o -name 'postprocessing.json' -o -name 'compare_scores.json' -o -name 'summary.json') \
    | while read -r file; do mkdir -p "$RESULTS/$(dirname "$file")" && cp "$EXP/exp/$file" "$RESULTS/$file"; done
