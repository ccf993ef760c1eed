#!/usr/bin/env bash
# Model soup recipe (model-soups, Wortsman et al. 2022) on the default run:
#   1. train configs/tiny.yaml to a checkpoint (the default run, one rank);
#   2. fine-tune 3 copies of it for a few steps, each with its own train.seed (hence its own data
#      order), from its weights (`train --init-from`: fresh optimizer, its own short schedule);
#   3. soup them: uniform (the mean) and greedy (best first, add while the validation loss improves);
#   4. print every ingredient's and soup's validation loss on the whole validation split.
# usage: scripts/soup-recipe.sh [OUT_DIR]   (default runs/soup-recipe; it must not exist)
# Environment: BASE_STEPS (1000), TUNE_STEPS (100), TUNE_LR (3e-4), TESSERA (.build/release/tessera),
# BASE (a run or checkpoint directory to fine-tune instead of training step 1 again).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${TESSERA:-.build/release/tessera}
out=${1:-runs/soup-recipe}
base_steps=${BASE_STEPS:-1000}
tune_steps=${TUNE_STEPS:-100}
tune_lr=${TUNE_LR:-3e-4}
if [ -e "$out" ]; then echo "$out exists; pass a new directory" >&2; exit 1; fi

base=${BASE:-$out/base}
if [ -z "${BASE:-}" ]; then
  echo "==> 1. the default run, $base_steps steps, into $out/base"
  "$B" train --config configs/tiny.yaml --set run.dir="$out/base" --set train.steps="$base_steps" --progress lines | tail -n 2
fi

for seed in 1 2 3; do
  echo "==> 2. fine-tune $seed: $tune_steps steps from $base with train.seed=$seed, lr $tune_lr"
  "$B" train --config configs/tiny.yaml --init-from "$base" --set run.dir="$out/tune-$seed" --set train.seed="$seed" \
    --set train.steps="$tune_steps" --set train.lr="$tune_lr" --set train.min_lr="$tune_lr" --set train.warmup_steps=10 \
    --set eval.every=0 --set checkpoint.every=0 --progress lines | tail -n 1
done

echo "==> 3. soups"
"$B" soup --method uniform --inputs "$out"/tune-{1,2,3} --output "$out/uniform"
"$B" soup --method greedy --inputs "$out"/tune-{1,2,3} --val-data data/shakespeare --output "$out/greedy"

echo "==> 4. validation loss (nats/byte, whole validation split)"
for run in "$base" "$out"/tune-{1,2,3} "$out/uniform" "$out/greedy"; do
  printf '%-8s ' "$(basename "$run")"; "$B" eval --checkpoint "$run" 2>/dev/null | sed -E 's/.*validation loss ([0-9.]+) nats.*/\1/'
done
