#!/usr/bin/env bash
# Model soups and Hugging Face export through the command line, on a tiny model (~30 s):
# fine-tunes from one checkpoint (train --init-from), a greedy soup no worse than its best
# ingredient, eval and resume of the soup, refusals (weights, existing output, incompatible
# checkpoints), and an export whose files and names transformers expects.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
work=$(mktemp -d /tmp/tessera-soup.XXXXXX)
tiny=(--config configs/tiny.yaml --set model.d_model=32 --set model.layers=2 --set model.heads=4 --set model.kv_heads=2
      --set model.ffn_hidden=48 --set data.seq_len=32 --set eval.batches=2 --set train.log_every=10 --progress lines)

soup_round_trip() {
  set -e
  "$TESSERA" train "${tiny[@]}" --set train.steps=20 --set run.dir="$work/base"
  for seed in 1 2 3; do
    "$TESSERA" train "${tiny[@]}" --init-from "$work/base" --set train.seed=$seed --set train.steps=5 --set train.lr=1e-3 \
      --set train.warmup_steps=1 --set run.dir="$work/tune-$seed"
  done
  "$TESSERA" soup --method greedy --inputs "$work"/tune-{1,2,3} --val-data data/shakespeare --batches 4 --output "$work/greedy" | tee "$work/greedy.log"
  grep -q '^start from the best ingredient' "$work/greedy.log"
  [ "$(grep -cE '^(kept|left out) /' "$work/greedy.log")" -eq 2 ] || { echo "expected one decision per further ingredient"; return 1; }
  best=$(grep -E '^ingredient .*validation loss' "$work/greedy.log" | awk '{print $NF}' | sort -g | head -n 1)
  soup=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["soup_val_loss"])' "$work/greedy/soup.json")
  python3 -c "import sys; sys.exit(0 if $soup <= $best else 'greedy soup $soup is worse than its best ingredient $best')"
  "$TESSERA" eval --checkpoint "$work/greedy" --batches 2
  "$TESSERA" generate --checkpoint "$work/greedy" --tokens 20 --temperature 0
  step=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$work"/greedy/checkpoints/step-*/trainer_state.json)
  "$TESSERA" train --resume "$work/greedy" --set train.steps=$((step + 3)) --progress lines | tee "$work/resume.log"
  grep -q "resumed from step $step" "$work/resume.log"
  ls "$work"/greedy/checkpoints/step-$(printf %08d $((step + 3)))/DONE
}
check "soup: fine-tunes, greedy soup no worse than its best ingredient, eval/generate/resume of it" soup_round_trip
check "soup: weights that do not sum to 1 are refused" expect_failure 30 '^tessera: error: the weights sum to 0\.8' \
  "$TESSERA" soup --method weighted --inputs "$work/tune-1" "$work/tune-2" --weights 0.5 0.3 --output "$work/weighted"
check "soup: an existing output is refused and left as it was" expect_failure 30 'greedy already exists and is not an empty directory' \
  "$TESSERA" soup --method uniform --inputs "$work/tune-1" "$work/tune-2" --output "$work/greedy"
check "soup: checkpoints of different models are refused, naming the first mismatch" expect_failure 60 \
  '^tessera: error: cannot soup: tensor model.embed_tokens.weight has shape \[256, 32\] in .* but \[256, 16\] in ' \
  bash -c "'$TESSERA' train ${tiny[*]} --set model.d_model=16 --set train.steps=2 --set run.dir='$work/narrow' >/dev/null && \
           '$TESSERA' soup --method uniform --inputs '$work/tune-1' '$work/narrow' --output '$work/mixed'"

export_check() {
  set -e
  "$TESSERA" export hf --checkpoint "$work/greedy" --output "$work/hf"
  if python3 -c 'import safetensors, numpy' 2>/dev/null; then
    python3 scripts/check_hf.py "$work/hf" --checkpoint "$work/greedy" --tessera "$TESSERA" --numpy
  else
    ls "$work/hf/config.json" "$work/hf/model.safetensors.index.json" "$work/hf/model-00001-of-00001.safetensors"
    grep -q '"LlamaForCausalLM"' "$work/hf/config.json"
  fi
}
check "export hf: config.json, safetensors and index; names, shapes and loss as tessera eval (numpy forward)" export_check
rm -rf "$work"
