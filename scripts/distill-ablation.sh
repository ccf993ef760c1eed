#!/usr/bin/env bash
# The MOHAWK ablation at this scale (not a pass/fail test): four students of one teacher, all
# given the same number of training tokens, and their validation losses:
#   three-stage   stages 1, 2 and 3 as the distill config says
#   stage-3-only  the same total steps, all in stage 3 (knowledge distillation only)
#   from-scratch  `tessera train` of the same Mamba-2 model (model.sequence_mixer=mamba2) on the
#                 data alone, the same total steps and batch
#   hybrid        three stages, keeping attention in one layer (distill.keep_attention)
# Usage: scripts/distill-ablation.sh [TEACHER [DISTILL_CONFIG [NP [OUT]]]]
#   defaults: runs/tiny configs/distill.yaml 2 runs/ablation   (runs/tiny: tessera train --config configs/tiny.yaml)
# Extra settings for every run: ABLATION_SET="--set distill.stage1_steps=20 ..." (distill keys only
# reach the distillations), KEEP_LAYER (default 1), EVAL_BATCHES (default 0: the whole validation
# split; every model is evaluated on the same batches of 16 sequences).
set -euo pipefail
cd "$(dirname "$0")/.."
teacher=${1:-runs/tiny} config=${2:-configs/distill.yaml} np=${3:-2} out=${4:-runs/ablation}
keep=${KEEP_LAYER:-1} batches=${EVAL_BATCHES:-0}
read -r -a extra <<<"${ABLATION_SET:-}"
tessera=.build/release/tessera
[ -x "$tessera" ] || { echo "distill-ablation.sh: build first (swift build -c release)" >&2; exit 2; }
[ -e "$out" ] && { echo "distill-ablation.sh: $out exists; remove it or pass another OUT" >&2; exit 2; }
run() { if [ "$np" -gt 1 ]; then scripts/mpirun.sh "$np" "$@"; else "$tessera" "$@"; fi; }
newest() { ls -d "$1"/checkpoints/step-* | sort | tail -n 1; }

echo "==> three-stage"
run distill --teacher "$teacher" --config "$config" "${extra[@]}" --set run.dir="$out/three-stage"
last=$(newest "$out/three-stage")
total=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$last/distill_progress.json")
echo "==> stage-3-only ($total steps)"
run distill --teacher "$teacher" --config "$config" "${extra[@]}" --set run.dir="$out/stage3-only" \
  --set distill.stage1_steps=0 --set distill.stage2_steps=0 --set distill.stage3_steps="$total"
echo "==> from-scratch ($total steps of train on the student's run config)"
scratch_set=()
for ((i = 0; i < ${#extra[@]}; i++)); do
  [[ ${extra[i]} == --set && ${extra[i+1]:-} != distill.* ]] && scratch_set+=(--set "${extra[i+1]}")
done
run train --config "$last/run.yaml" "${scratch_set[@]}" --progress lines --set run.dir="$out/from-scratch" --set train.steps="$total" \
  --set eval.every=0 --set checkpoint.every=0 --set checkpoint.service= --set parallel.data=0
echo "==> hybrid (attention kept in layer $keep)"
run distill --teacher "$teacher" --config "$config" "${extra[@]}" --set run.dir="$out/hybrid" --set distill.keep_attention="$keep"

echo
loss() { "$tessera" eval --checkpoint "$1" --batches "$batches" --set train.global_batch=16 2>/dev/null | sed -n 's/.*validation loss \([0-9.]*\).*/\1/p'; }
printf '%-14s %s\n' "model" "validation loss (nats/byte; $([ "$batches" -eq 0 ] && echo "whole validation split" || echo "$batches batches of 16"))"
printf '%-14s %s\n' "teacher" "$(loss "$teacher")"
for name in three-stage stage3-only from-scratch hybrid; do printf '%-14s %s\n' "$name" "$(loss "$out/$name")"; done
echo "(every student: $total steps of $(sed -n 's/^  global_batch: //p' "$last/run.yaml") sequences of $(sed -n 's/^  seq_len: //p' "$last/run.yaml") tokens)"
