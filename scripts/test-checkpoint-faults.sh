#!/usr/bin/env bash
# Checkpoint faults, written directly to run.dir: a rank killed with SIGKILL at a random moment
# while the ranks save a checkpoint every step (20 trials). After each, every complete
# checkpoint verifies (checksums and structure), nothing unfinished counts, and the newest
# resumes on one rank.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
work=$(mktemp -d /tmp/tessera-ckfaults.XXXXXX)
tiny=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
      --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12
      --set train.steps=100000 --set train.log_every=1000 --set eval.every=0 --set eval.batches=1
      --set checkpoint.every=1 --set checkpoint.keep=3)

kill_a_rank_while_saving() {
  local trials=$1 trial dir launcher ranks victim latest step
  for trial in $(seq 1 "$trials"); do
    dir=$work/kill-$trial
    "$TESSERA" launch --nproc 2 -- train "${tiny[@]}" --set run.dir="$dir" >"$dir.log" 2>&1 & launcher=$!
    for _ in $(seq 1 200); do ls "$dir/checkpoints" 2>/dev/null | grep -q '^step-' && break; sleep 0.05; done   # saving has begun
    sleep "0.$((RANDOM % 10))$((RANDOM % 10))"
    ranks=($(pgrep -P "$launcher")); [ ${#ranks[@]} -gt 0 ] || { echo "trial $trial: the job ended before the kill:"; tail -n 5 "$dir.log"; return 1; }; victim=${ranks[$((RANDOM % ${#ranks[@]}))]}
    kill -9 "$victim" 2>/dev/null; wait "$launcher"
    "$TESSERA" ckpt verify "$dir" >"$dir.verify" 2>&1 || { echo "trial $trial: a complete checkpoint does not verify:"; cat "$dir.verify"; return 1; }
    latest=$(grep -o 'step-[0-9]*' "$dir.verify" | tail -n 1); step=$((10#${latest#step-}))
    echo "trial $trial: killed pid $victim; $(grep -c '^ok' "$dir.verify") complete checkpoints verify, newest $latest;" \
         "unfinished: $(ls -a "$dir/checkpoints" | grep -c '\.partial$')"
    if [ $((trial % 5)) -eq 0 ]; then   # the newest loads: one more step on one rank
      "$TESSERA" train --resume "$dir" --set parallel.data=0 --set train.steps=$((step + 1)) >"$dir.resume" 2>&1 \
        && grep -q "resumed from step $step of" "$dir.resume" || { echo "trial $trial: resuming $latest failed:"; tail -n 5 "$dir.resume"; return 1; }
    fi
  done
}
check "checkpoints: SIGKILL of a rank during saves (20 trials) leaves the newest complete checkpoint verifying and resumable" \
  kill_a_rank_while_saving 20
