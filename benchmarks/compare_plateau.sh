#!/usr/bin/env bash
# The committed comparison (benchmarks/results/compare/) at budgets where the models have plateaued:
# 64^3 windows at 4 mm (UNETR: 64 tokens of 16^3 voxels, not the 8 of a 32^3 window), 1000 steps
# (about 125 passes over 8 training cases), 3 seeds, and a 10-minute equal-wall-clock set beside it.
# Long: see docs/experiments.md for the time it takes. Rerunning resumes; STEPS, MINUTES, SEEDS,
# MODELS, PROCESSES and EXP override the defaults, e.g. SEEDS=2 MINUTES=6 benchmarks/compare_plateau.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${EXP:-/tmp/compare-plateau}
DATA=${DATA:-$EXP/data/Task09_Spleen}
STEPS=${STEPS:-1000}
MINUTES=${MINUTES:-10}
SEEDS=${SEEDS:-3}
PROCESSES=${PROCESSES:-1}
MODELS=${MODELS:-unetr,segformer_b0,benchmarks/results/compare/pvt_v2_b0_bn.yaml,unet_small,segresnet_small,dynunet_small}
RESULTS=benchmarks/results/compare

[ -f "$DATA/dataset.json" ] || unetr data synth "$DATA" --cases 12 --test-cases 2 --seed 0
unetr compare --task spleen --models "$MODELS" --reference unetr \
    --folds 3 --seeds "$SEEDS" --steps "$STEPS" --minutes "$MINUTES" --processes "$PROCESSES" \
    --profile cpu-demo --data-dir "$DATA" \
    --set training.num_samples=2 --set "preprocessing.roi_size=[64,64,64]" \
    --out "$EXP/exp"

# what the repository keeps: the report, its table and plots, and each model's decisions (no weights)
mkdir -p "$RESULTS"
cp "$EXP"/exp/{report.md,comparison.csv,compare.json,*.png} "$RESULTS"/
cp -r "$EXP/exp/receptive_fields" "$RESULTS"/ 2>/dev/null || true
(cd "$EXP/exp" && find . -name 'nested_postprocessing.json' -o -name 'postprocessing.json' -o -name 'compare_scores.json' -o -name 'summary.json') \
    | while read -r file; do mkdir -p "$RESULTS/$(dirname "$file")" && cp "$EXP/exp/$file" "$RESULTS/$file"; done
