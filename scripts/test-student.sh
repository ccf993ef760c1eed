#!/usr/bin/env bash
# Mamba-2 students through the command line (~30 s): a tiny all-Mamba model and a hybrid
# (attention kept in layer 1) trained a few steps with model.sequence_mixer=mamba2, then
# tessera eval, generate (recurrent state; 2 ranks under mpirun give the 1-rank bytes),
# ckpt verify/show/list, train --resume, export hf (refused in one line), and bench decode --model.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
plan 4   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-student.XXXXXX)
tiny=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
      --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=8 --set train.steps=10
      --set train.log_every=5 --set eval.every=0 --set eval.batches=2 --set checkpoint.every=0
      --set model.sequence_mixer=mamba2 --set model.ssm_chunk_size=8)

# student NAME MIXERS_LINE [SETTINGS...]: trains it, then every command that reads a checkpoint.
student() {
  local name=$1 mixers=$2; shift 2
  local dir="$work/$name" out
  "$TESSERA" train "${tiny[@]}" "$@" --set run.dir="$dir" || return 1
  out=$("$TESSERA" eval --checkpoint "$dir" --batches 2) || return 1; echo "$out"
  grep -qE 'validation loss [0-9]+\.[0-9]+ nats/byte' <<<"$out" || { echo "eval printed no finite validation loss"; return 1; }
  loss=$(sed -nE 's/.*validation loss ([0-9.]+) nats\/byte.*/\1/p' <<<"$out")
  python3 -c "import sys; sys.exit(0 if 0 < $loss < 6 else 'validation loss $loss is not sane for 256 bytes (ln 256 = 5.55)')" || return 1
  out=$("$TESSERA" generate --checkpoint "$dir" --tokens 20 --temperature 0 --prompt "ROMEO:") || return 1; echo "$out"
  [[ $out == ROMEO:* ]] || { echo "generate did not continue the prompt"; return 1; }
  [ "$(printf '%s' "$out" | wc -c)" -ge 26 ] || { echo "generate printed fewer than 20 bytes after the prompt"; return 1; }
  two=$(scripts/mpirun.sh 2 generate --checkpoint "$dir" --tokens 20 --temperature 0 --prompt "ROMEO:" 2>"$work/$name-mpi.err") || return 1
  cat "$work/$name-mpi.err"
  [ "$two" == "$out" ] || { echo "2 ranks generated other bytes than 1 rank: $two"; return 1; }
  grep -q "recurrent state .* is replicated on every rank" "$work/$name-mpi.err" || { echo "generate on 2 ranks did not say the state is replicated"; return 1; }
  "$TESSERA" ckpt verify "$dir" | grep '^ok ' || { echo "ckpt verify did not say ok"; return 1; }
  "$TESSERA" ckpt show "$dir" >"$work/$name-show.txt" || return 1
  grep -x "sequence mixers: $mixers" "$work/$name-show.txt" || { echo "ckpt show did not print 'sequence mixers: $mixers'"; return 1; }
  grep -q 'model.layers.0.mixer.in_proj.weight' "$work/$name-show.txt" || { echo "ckpt show lists no Phi-Mamba tensor"; return 1; }
  "$TESSERA" ckpt list "$dir" | grep '^10 ' || { echo "ckpt list shows no step 10"; return 1; }
  "$TESSERA" train --resume "$dir" --set train.steps=12 --progress lines | tee "$work/$name-resume.log" || return 1
  grep -q "resumed from step 10" "$work/$name-resume.log" || { echo "train --resume did not resume from step 10"; return 1; }
  python3 - "$dir"/checkpoints/step-00000010/config.json <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
assert c["architectures"] == ["LMHeadModel"], c["architectures"]
assert "discrete_mamba2" in c["mixer_types"], c["mixer_types"]
core = next(v for k, v in c.items() if k.startswith("Block") and v["CoreType"].endswith("discrete_mamba2"))["core_input"]
assert core["d_state"] == 16 and core["n_v_heads"] == 2 and core["chunk_size"] == 8, core
EOF
}
check "student: all-Mamba trains; eval, generate (1 and 2 ranks), ckpt verify/show/list, resume on it" student mamba "mamba2 in all 2 layers"
check "student: hybrid (attention in layer 1) trains; eval, generate (1 and 2 ranks), ckpt verify/show/list, resume on it" \
  student hybrid "mamba2 in layer 0; attention in layer 1" --set model.attention_layers=1
# refused_and_nothing_written OUTPUT PATTERN COMMAND...: COMMAND fails in one line matching
# PATTERN (expect_failure) and leaves no OUTPUT behind, not even an empty directory; an existing
# parent keeps the files it had.
refused_and_nothing_written() {
  local output=$1 pattern=$2 before; shift 2
  before=$(ls -A "$(dirname "$output")")
  expect_failure 30 "$pattern" "$@" || return 1
  [ ! -e "$output" ] || { echo "the refused command left $output:"; find "$output" | head -n 5; return 1; }
  [ "$(ls -A "$(dirname "$output")")" = "$before" ] || { echo "the refused command changed $(dirname "$output")"; return 1; }
}
check "student: export hf is refused in one line, nothing written" refused_and_nothing_written "$work/mamba-hf" \
  "^tessera: error: cannot export .*: layers \[0, 1\] are Mamba-2 mixers, which transformers cannot load" \
  "$TESSERA" export hf --checkpoint "$work/mamba" --output "$work/mamba-hf"

decode_bench() {
  local out
  out=$("$TESSERA" bench decode --model teacher student --config configs/bench-dense.yaml --kv-len 256 2048 --runs 3 --warmup 1) || return 1
  echo "$out"
  [ "$(grep -c '"impl":"teacher"' <<<"$out")" -eq 2 ] && [ "$(grep -c '"impl":"student"' <<<"$out")" -eq 2 ] || { echo "expected 2 teacher and 2 student lines"; return 1; }
  grep '"impl":"crossover"' <<<"$out" | grep -qE '"crossover_kv_len":(256|2048|null)' || { echo "no crossover line"; return 1; }
  # The student's state is one size at both contexts; the teacher's cache grows with it.
  [ "$(grep '"impl":"student"' <<<"$out" | grep -oE '"state_mib":[0-9.]+' | sort -u | wc -l)" -eq 1 ] || { echo "the student's state changed size"; return 1; }
}
check "student: bench decode --model teacher student prints both, a constant student state and the crossover" decode_bench
