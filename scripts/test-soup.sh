#!/usr/bin/env bash
# Model soups and Hugging Face export through the command line, on a tiny model (~30 s):
# fine-tunes from one checkpoint (train --init-from), a greedy soup no worse than its best
# ingredient, eval and resume of the soup, refusals (weights, existing output, incompatible
# checkpoints), and Llama and Mixtral exports whose logits equal Tessera's element by element.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
plan 11   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-soup.XXXXXX)
tiny=(--config configs/tiny.yaml --set model.d_model=32 --set model.layers=2 --set model.heads=4 --set model.kv_heads=2
      --set model.ffn_hidden=48 --set data.seq_len=32 --set eval.batches=2 --set train.log_every=10 --progress lines)

# Every step says why it failed and returns: `set -e` does not apply inside a function that
# `check` calls from its `if`, so each assertion carries its own `|| { ...; return 1; }`.
soup_round_trip() {
  local seed best soup step status
  # 600 steps (2 s): long enough that the model uses its context, which the export check needs.
  "$TESSERA" train "${tiny[@]}" --set train.steps=600 --set run.dir="$work/base" || { echo "the base run exited with status $?"; return 1; }
  for seed in 1 2 3; do
    "$TESSERA" train "${tiny[@]}" --init-from "$work/base" --set train.seed=$seed --set train.steps=5 --set train.lr=1e-3 \
      --set train.warmup_steps=1 --set run.dir="$work/tune-$seed" || { echo "fine-tune $seed exited with status $?"; return 1; }
  done
  "$TESSERA" soup --method greedy --inputs "$work"/tune-{1,2,3} --val-data data/shakespeare --batches 4 --output "$work/greedy" >"$work/greedy.log" 2>&1 \
    || { status=$?; cat "$work/greedy.log"; echo "soup exited with status $status"; return 1; }
  cat "$work/greedy.log"
  grep -q '^start from the best ingredient' "$work/greedy.log" || { echo "no line 'start from the best ingredient'"; return 1; }
  [ "$(grep -cE '^(kept|left out) /' "$work/greedy.log")" -eq 2 ] || { echo "expected one decision per further ingredient"; return 1; }
  # The ingredients' losses come from tessera eval, not from the soup's own report of them.
  best=$(for seed in 1 2 3; do "$TESSERA" eval --checkpoint "$work/tune-$seed" --set data.dir=data/shakespeare --batches 4 \
           | sed -nE 's/.*validation loss ([0-9.]+) nats\/byte.*/\1/p'; done | sort -g | head -n 1)
  soup=$("$TESSERA" eval --checkpoint "$work/greedy" --set data.dir=data/shakespeare --batches 4 | sed -nE 's/.*validation loss ([0-9.]+) nats\/byte.*/\1/p')
  [ -n "$best" ] && [ -n "$soup" ] || { echo "eval printed no validation loss (best ingredient '$best', soup '$soup')"; return 1; }
  echo "tessera eval: best ingredient $best, greedy soup $soup nats/byte"
  python3 -c "import sys; sys.exit(0 if $soup <= $best else 'greedy soup $soup is worse than its best ingredient $best')" || return 1
  # The loss the soup reported is the loss of the checkpoint it wrote (eval prints 4 decimals).
  python3 -c 'import json, sys; reported = json.load(open(sys.argv[1]))["soup_val_loss"]
sys.exit(0 if abs(reported - float(sys.argv[2])) <= 5.1e-5 else f"soup.json reports {reported}, tessera eval of the soup gives {sys.argv[2]}")' \
    "$work/greedy/soup.json" "$soup" || return 1
  generates "$work/greedy" "ROMEO:" 20 || return 1
  step=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["step"])' "$work"/greedy/checkpoints/step-*/trainer_state.json) \
    || { echo "no trainer_state.json in the soup"; return 1; }
  "$TESSERA" train --resume "$work/greedy" --set train.steps=$((step + 3)) --progress lines >"$work/resume.log" 2>&1 \
    || { status=$?; cat "$work/resume.log"; echo "train --resume of the soup exited with status $status"; return 1; }
  cat "$work/resume.log"
  grep -q "resumed from step $step" "$work/resume.log" || { echo "the resumed run did not say 'resumed from step $step'"; return 1; }
  [ -f "$work/greedy/checkpoints/step-$(printf %08d $((step + 3)))/DONE" ] || { echo "no complete checkpoint at step $((step + 3))"; return 1; }
}
check "soup: fine-tunes, greedy soup no worse than its best ingredient, eval/generate/resume of it" soup_round_trip
check "soup: weights that do not sum to 1 are refused" expect_failure 30 '^tessera: error: the weights sum to 0\.8' \
  "$TESSERA" soup --method weighted --inputs "$work/tune-1" "$work/tune-2" --weights 0.5 0.3 --output "$work/weighted"
# eval --logits (what the export check compares with) refuses, in one line and writing nothing:
# more than its size limit, a path it cannot write, and a job of several ranks.
logits_refused() {
  expect_failure 30 '^tessera: error: --logits .*: 1600000 sequences × 32 positions × 256 tokens of float32 would be [0-9]+ MiB, over the 256 MiB limit; pass fewer --batches$' \
    "$TESSERA" eval --checkpoint "$work/greedy" --batches 100000 --logits "$work/big.npy" || return 1
  [ ! -e "$work/big.npy" ] || { echo "the refused --logits wrote $work/big.npy"; return 1; }
  expect_failure 30 "^tessera: error: cannot write $work/no-such-directory/logits.npy: " \
    "$TESSERA" eval --checkpoint "$work/greedy" --batches 1 --logits "$work/no-such-directory/logits.npy" || return 1
  expect_failure 60 'error: --logits writes from one process and this job has 2 ranks; run tessera eval --logits alone' \
    "$TESSERA" launch --nproc 2 -- eval --checkpoint "$work/greedy" --batches 1 --logits "$work/two.npy" || return 1
  [ ! -e "$work/two.npy" ] || { echo "the refused --logits under launch wrote $work/two.npy"; return 1; }
}
check "eval --logits: too large, unwritable, and several ranks are refused in one line" logits_refused
# snapshot DIR: every file under DIR with its size and checksum, to show a refusal changed nothing.
snapshot() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 -r sha256sum); }
refused_and_left_alone() {
  local before
  before=$(snapshot "$work/greedy") && [ -n "$before" ] || { echo "no soup to protect in $work/greedy"; return 1; }
  expect_failure 30 'greedy already exists and is not an empty directory' \
    "$TESSERA" soup --method uniform --inputs "$work/tune-1" "$work/tune-2" --output "$work/greedy" || return 1
  [ "$(snapshot "$work/greedy")" = "$before" ] || { echo "the refused soup changed $work/greedy"; return 1; }
}
check "soup: an existing output is refused and left as it was" refused_and_left_alone
check "soup: checkpoints of different models are refused, naming the first mismatch" expect_failure 60 \
  '^tessera: error: cannot soup: tensor model.embed_tokens.weight has shape \[256, 32\] in .* but \[256, 16\] in ' \
  bash -c "'$TESSERA' train ${tiny[*]} --set model.d_model=16 --set train.steps=2 --set run.dir='$work/narrow' >/dev/null && \
           '$TESSERA' soup --method uniform --inputs '$work/tune-1' '$work/narrow' --output '$work/mixed'"

# The exports, Llama (the soup) and Mixtral (an MoE model of 400 steps, one process): their files
# and config always; their logits element by element against `tessera eval --logits`, with a
# proof that attention matters to the model (scripts/check_hf.py), in the numpy forward and in
# transformers where python3 has what each needs, a SKIP naming what is missing otherwise.
export_files() {
  "$TESSERA" export hf --checkpoint "$work/greedy" --output "$work/hf" || { echo "export hf exited with status $?"; return 1; }
  ls "$work/hf/config.json" "$work/hf/model.safetensors.index.json" "$work/hf/model-00001-of-00001.safetensors" || return 1
  grep -q '"LlamaForCausalLM"' "$work/hf/config.json" || { echo "config.json does not name LlamaForCausalLM"; return 1; }
}
check "export hf: config.json, index and safetensors files, LlamaForCausalLM" export_files
moe_export_files() {
  "$TESSERA" train --config configs/moe.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2 \
    --set model.kv_heads=1 --set model.ffn_hidden=64 --set moe.expert_hidden=32 --set moe.layers=all --set data.seq_len=32 \
    --set train.global_batch=12 --set train.steps=400 --set train.log_every=100 --set eval.every=0 --set eval.batches=2 \
    --set checkpoint.every=0 --set run.dir="$work/moe" || { echo "the MoE run exited with status $?"; return 1; }
  "$TESSERA" export hf --checkpoint "$work/moe" --output "$work/moe-hf" || { echo "export hf exited with status $?"; return 1; }
  grep -q '"MixtralForCausalLM"' "$work/moe-hf/config.json" || { echo "config.json does not name MixtralForCausalLM"; return 1; }
}
check "export hf: an MoE model of 400 steps exports as MixtralForCausalLM" moe_export_files
if missing=$(python3 -c 'import numpy' 2>&1); then
  check "export hf: Llama logits element by element as tessera eval --logits, attention matters (numpy forward)" \
    python3 scripts/check_hf.py "$work/hf" --checkpoint "$work/greedy" --tessera "$TESSERA" --numpy
  check "export hf: Mixtral logits element by element as tessera eval --logits, attention matters (numpy forward)" \
    python3 scripts/check_hf.py "$work/moe-hf" --checkpoint "$work/moe" --tessera "$TESSERA" --numpy
else
  for model in Llama Mixtral; do
    skip "export hf: $model logits element by element as tessera eval --logits, attention matters (numpy forward)" \
      "python3 cannot import numpy ($(tail -n 1 <<<"$missing")); scripts/setup.sh installs python3-numpy"
  done
fi
# transformers needs torch (about 200 MB), which set-up does not install: a SKIP naming it.
if missing=$(python3 -c 'import numpy, torch, transformers' 2>&1); then
  check "export hf: transformers loads the Llama export; its logits and greedy text are tessera's" \
    python3 scripts/check_hf.py "$work/hf" --checkpoint "$work/greedy" --tessera "$TESSERA" --transformers
  check "export hf: transformers loads the Mixtral export; its logits and greedy text are tessera's" \
    python3 scripts/check_hf.py "$work/moe-hf" --checkpoint "$work/moe" --tessera "$TESSERA" --transformers
else
  for model in Llama Mixtral; do
    skip "export hf: transformers loads the $model export; its logits and greedy text are tessera's" \
      "python3 cannot import torch and transformers ($(tail -n 1 <<<"$missing")); pip install torch transformers to run it"
  done
fi
rm -rf "$work"
