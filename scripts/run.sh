#!/usr/bin/env bash
# The main job: set up, then train the default model (configs/tiny.yaml) on two data-parallel
# ranks under mpirun, report the curves and sample some text. Extra arguments go to `tessera train`
# (e.g. --set train.steps=200).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
run_dir="runs/tiny-$(date +%Y%m%d-%H%M%S)"
echo "==> training configs/tiny.yaml on 2 ranks into $run_dir"
start=$(date +%s)
scripts/mpirun.sh 2 train --config configs/tiny.yaml --set run.dir="$run_dir" --progress lines "$@"
echo "==> trained in $(( $(date +%s) - start )) s"
.build/release/tessera report "$run_dir"
latest=$(ls -d "$run_dir"/checkpoints/step-* | tail -n 1)
echo "==> a sample from $latest:"
.build/release/tessera generate --checkpoint "$latest" --prompt "ROMEO:" --tokens 240
