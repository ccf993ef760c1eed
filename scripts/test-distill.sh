#!/usr/bin/env bash
# MOHAWK distillation through the command line (tessera distill): 2 ranks equal 1 rank in every
# stage (mpirun and tessera launch; data, sequence (ring and Ulysses) and expert layouts), an interrupted run resumes exactly, a stage's checkpoint
# through `tessera ckpt serve`, clear errors, and a small end-to-end distillation of a teacher
# trained on the default corpus. Tiny models: a few minutes on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
plan 24   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-distill.XXXXXX)

# A tiny teacher on the default corpus (configs/tiny.yaml's data), trained briefly.
teacher=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
         --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=8
         --set train.steps=30 --set train.log_every=10 --set eval.every=0 --set eval.batches=2 --set checkpoint.every=0)
check "distill: train a tiny teacher" "$TESSERA" train "${teacher[@]}" --set run.dir="$work/teacher"
# Every stage, a few steps each, every step logged.
cat >"$work/distill.yaml" <<YAML
distill:
  chunk_size: 8
  stage1_steps: 6
  stage2_steps: 6
  stage3_steps: 6
  data_loss_weight: 0.5
train:
  global_batch: 8
  log_every: 1
eval:
  batches: 2
checkpoint:
  keep: 3
YAML
distill=(distill --teacher "$work/teacher" --config "$work/distill.yaml")

# distills_like REFERENCE_DIR RUN_DIR COMMAND...: COMMAND (a launcher and its distill arguments;
# run.dir RUN_DIR appended) succeeds and its metrics.jsonl matches REFERENCE_DIR's within 1e-5.
distills_like() {
  local reference=$1 dir=$2; shift 2
  "$@" --set run.dir="$dir" || { echo "distill exited with status $?"; return 1; }
  python3 scripts/compare_distill.py "$reference/metrics.jsonl" "$dir/metrics.jsonl" --rtol 1e-5
}
check "distill: 1 rank, every stage" "$TESSERA" "${distill[@]}" --set run.dir="$work/d1"
check "distill: mpirun 2 ranks equal 1 rank in every stage (1e-5)" distills_like "$work/d1" "$work/mpi2" mpi 2 "${distill[@]}"
check "distill: tessera launch 2 ranks equal 1 rank in every stage (1e-5)" distills_like "$work/d1" "$work/tcp2" \
  "$TESSERA" launch --nproc 2 -- "${distill[@]}"

# tessera report: each stage's losses per layer (stage 3: kd, data, total), drawn and as text.
reports() {
  local out
  out=$("$TESSERA" report "$1") || return 1
  echo "$out"
  grep -q "^  layer 0 " <<<"$out" && grep -q "^  kd " <<<"$out" && grep -q "^stage 2: student validation loss" <<<"$out" \
    && grep -q "stage 1 matrix distance" "$1/report.svg"
}
check "distill: tessera report shows each stage's losses per layer" reports "$work/d1"

# Stopped mid-stage (step 8: stage 2, step 2 of 6) and resumed with --resume RUN_DIR alone (its
# checkpoint names the teacher and holds the config): the same records as the uninterrupted run.
stop_and_resume() {
  local dir=$work/resumed status out
  mpi 2 "${distill[@]}" --set run.dir="$dir" --stop-at 8; status=$?
  [ "$status" -eq 0 ] || { echo "the run stopped at step 8 (--stop-at) exited with $status, not 0"; return 1; }
  out=$(mpi 2 distill --resume "$dir" 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || { echo "the resumed run exited with $status"; return 1; }
  grep -q "resumed from step 8 (stage 2, step 2 of 6)" <<<"$out" || { echo "it did not say where it resumed"; return 1; }
  python3 scripts/compare_distill.py "$work/d1/metrics.jsonl" "$dir/metrics.jsonl" --rtol 1e-6
}
check "distill: stopped mid-stage 2 and resumed on 2 ranks equals the uninterrupted run (1e-6)" stop_and_resume

# The sequence sharded over 2 ranks (ring attention in the teacher, the student's Mamba-2 layers
# gathering the sequence): every stage's records equal one rank's.
check "distill: mpirun 2 sequence ranks (parallel.sequence=2, ring) equal 1 rank in every stage (1e-5)" \
  distills_like "$work/d1" "$work/seq2" mpi 2 "${distill[@]}" --set parallel.sequence=2

# stop_and_resume_like REFERENCE_DIR RUN_DIR DISTILL_ARGS...: on 2 ranks, stopped at step 8 (stage 2,
# step 2 of 6), resumed with --resume RUN_DIR alone: the records of REFERENCE_DIR bit for bit.
stop_and_resume_like() {
  local reference=$1 dir=$2 status; shift 2
  mpi 2 "$@" --set run.dir="$dir" --stop-at 8; status=$?
  [ "$status" -eq 0 ] || { echo "the run stopped at step 8 exited with $status"; return 1; }
  mpi 2 distill --resume "$dir" || return 1
  python3 scripts/compare_distill.py "$reference/metrics.jsonl" "$dir/metrics.jsonl" --exact
}
check "distill: sequence-parallel run stopped mid-stage 2 and resumed equals the uninterrupted run bit for bit" \
  stop_and_resume_like "$work/seq2" "$work/seq2-resumed" "${distill[@]}" --set parallel.sequence=2

# Ulysses attention (all-to-all to head shards: heads and kv_heads divisible by parallel.sequence)
# needs a teacher with 2 kv heads; the student keeps layer 1's attention, so its backward runs
# through Ulysses too. 2 sequence ranks equal one rank in every stage, the checkpoint records the
# mode, and a run stopped mid-stage 2 and resumed logs the uninterrupted run's records bit for bit.
ulysses_distill=(distill --teacher "$work/kv2-teacher" --config "$work/distill.yaml" --set distill.keep_attention=1)
ulysses=(--set parallel.sequence=2 --set parallel.sequence_mode=ulysses)
ulysses_layout() {
  "$TESSERA" train "${teacher[@]}" --set model.kv_heads=2 --set train.steps=10 --set run.dir="$work/kv2-teacher" \
    >"$work/kv2-teacher.log" 2>&1 || { cat "$work/kv2-teacher.log"; return 1; }
  "$TESSERA" "${ulysses_distill[@]}" --set run.dir="$work/ulysses1" >"$work/ulysses1.log" 2>&1 || { cat "$work/ulysses1.log"; return 1; }
  distills_like "$work/ulysses1" "$work/ulysses2" mpi 2 "${ulysses_distill[@]}" "${ulysses[@]}" || return 1
  grep -q 'sequence_mode: "\?ulysses' "$(ls -d "$work/ulysses2"/checkpoints/step-* | tail -n 1)/run.yaml" \
    || { echo "the checkpoint's run.yaml does not record parallel.sequence_mode ulysses"; return 1; }
}
check "distill: a 2-kv-head teacher on mpirun 2 sequence ranks with Ulysses attention equals 1 rank in every stage (1e-5)" ulysses_layout
check "distill: Ulysses run stopped mid-stage 2 and resumed equals the uninterrupted run bit for bit" \
  stop_and_resume_like "$work/ulysses2" "$work/ulysses-resumed" "${ulysses_distill[@]}" "${ulysses[@]}"

# An MoE teacher (4 experts, top 2) with its experts over 2 ranks (parallel.expert=2): equals one
# rank, and a run stopped mid-stage 2 and resumed (rank 0 reads, the experts are handed out)
# logs the uninterrupted run's records bit for bit.
moe_distill=(distill --teacher "$work/moe-teacher" --config "$work/distill.yaml")
expert_layout() {
  "$TESSERA" train "${teacher[@]}" --set moe.experts=4 --set moe.top_k=2 --set moe.expert_hidden=32 \
    --set train.steps=10 --set run.dir="$work/moe-teacher" >"$work/moe-teacher.log" 2>&1 || { cat "$work/moe-teacher.log"; return 1; }
  "$TESSERA" "${moe_distill[@]}" --set run.dir="$work/moe1" >"$work/moe1.log" 2>&1 || { cat "$work/moe1.log"; return 1; }
  distills_like "$work/moe1" "$work/moe2" mpi 2 "${moe_distill[@]}" --set parallel.expert=2
}
check "distill: an MoE teacher on mpirun 2 expert ranks (parallel.expert=2) equals 1 rank in every stage (1e-5)" expert_layout
check "distill: expert-parallel run stopped mid-stage 2 and resumed equals the uninterrupted run bit for bit" \
  stop_and_resume_like "$work/moe2" "$work/moe-resumed" "${moe_distill[@]}" --set parallel.expert=2
check "distill: a layout that does not fit the world is named" expect_failure 30 "parallel.sequence" \
  "$TESSERA" "${distill[@]}" --set parallel.sequence=2 --set run.dir="$work/never"

# Ctrl-C to `tessera launch` mid-stage: every rank stops at the same step with a checkpoint and
# rank 0 prints the command that continues the distillation.
ctrl_c() {
  local dir=$work/interrupted launcher status
  timeout -k 5 120 "$TESSERA" launch --nproc 2 -- "${distill[@]}" --set run.dir="$dir" --set distill.stage1_steps=100000 >"$work/ctrl-c.log" 2>&1 &
  launcher=$!
  for _ in $(seq 100); do grep -q "stage 1 step 2/" "$work/ctrl-c.log" && break; sleep 0.2; done
  kill -INT "$launcher"; wait "$launcher"; status=$?
  cat "$work/ctrl-c.log"
  [ "$status" -ne 0 ] || { echo "the interrupted run exited with 0"; return 1; }
  grep -q "continue with: .*launch --nproc 2 -- distill --resume" "$work/ctrl-c.log" || { echo "no resume command printed"; return 1; }
  python3 -c "import json,sys; p=json.load(open(sys.argv[1])); sys.exit(0 if p['stage'] == 1 and p['stageStep'] >= 2 else f'progress {p}')" \
    "$(ls -d "$dir"/checkpoints/step-* | tail -n 1)/distill_progress.json"
}
check "distill: Ctrl-C to tessera launch stops every rank with a checkpoint and prints the resume command" ctrl_c

# Per-stage checkpoints through the checkpoint service, then evaluated from the service's directory.
through_service() {
  local dir=$work/service-run root=$work/service-root status
  export TESSERA_JOB_TOKEN=$("$TESSERA" token)
  serve "$root" "$work/service.log" --keep 3 || return 1
  mpi 2 "${distill[@]}" --set run.dir="$dir" --set checkpoint.service=127.0.0.1:$port --set distill.stage3_steps=0; status=$?
  [ "$status" -eq 0 ] || { kill $server; cat "$work/service.log"; echo "distill through the service exited with $status"; return 1; }
  ! ls "$dir/checkpoints"/step-* >/dev/null 2>&1 || { kill $server; echo "checkpoints were written under run.dir, not streamed"; return 1; }
  "$TESSERA" ckpt verify "$root" || { kill $server; return 1; }
  kill $server; wait $server 2>/dev/null
  for step in 6 12; do
    [ -f "$root/$(printf 'step-%08d' $step)/distill_progress.json" ] \
      || { ls "$root"; echo "the checkpoint of the stage ending at step $step is not in the service's root"; return 1; }
  done
  "$TESSERA" eval --checkpoint "$root" --batches 2
}
check "distill: per-stage checkpoints through tessera ckpt serve, evaluated" through_service

# Distillation as a job of the checkpoint service: the teacher a path on its node, the student
# written under ROOT/distills/NAME, verified and evaluated; the same name again is refused.
service_job() {
  local root=$work/job-root out status
  export TESSERA_JOB_TOKEN=$("$TESSERA" token)
  serve "$root" "$work/job-service.log" --allow-path "$work" --allow-path "$PWD/data" || return 1
  # A job refused for its config is named and leaves nothing behind, so the name stays free.
  out=$(timeout -k 5 60 "$TESSERA" distill --service 127.0.0.1:$port --teacher "$work/teacher" --config "$work/distill.yaml" \
    --output student --set distill.stage1_lr=0 2>&1); status=$?
  [ "$status" -ne 0 ] && grep -q "distill.stage1_lr = 0.0 must be positive" <<<"$out" && [ ! -e "$root/distills/student" ] \
    || { kill $server; echo "$out"; echo "a job with a bad key was not refused cleanly (status $status)"; return 1; }
  out=$(timeout -k 5 300 "$TESSERA" distill --service 127.0.0.1:$port --teacher "$work/teacher" --config "$work/distill.yaml" --output student \
    --set distill.stage3_steps=2 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || { kill $server; cat "$work/job-service.log"; echo "the distill job failed with $status"; return 1; }
  grep -q "student distilled by the service at 127.0.0.1:$port: $root/distills/student/checkpoints/step-00000014" <<<"$out" \
    && grep -q "^stage 3 step 2/2" <<<"$out" || { kill $server; echo "no stage log or final checkpoint reported"; return 1; }
  out=$(timeout -k 5 300 "$TESSERA" distill --service 127.0.0.1:$port --teacher "$work/teacher" --config "$work/distill.yaml" --output student 2>&1); status=$?
  kill $server; wait $server 2>/dev/null
  [ "$status" -ne 0 ] && grep -q "distills/student on the service already exists" <<<"$out" \
    || { echo "$out"; echo "a second job with the same --output was not refused"; return 1; }
  "$TESSERA" ckpt verify "$root/distills/student" && "$TESSERA" eval --checkpoint "$root/distills/student" --batches 2
}
check "distill: a distillation as a job of tessera ckpt serve (teacher on its node, student under distills/), verified and evaluated" service_job

# Errors: one line naming the file or key, non-zero exit, quickly.
echo "model: {d_model: 64}" >"$work/with-model.yaml"
check "distill: a model key in the distill config is named" expect_failure 30 "with-model.yaml:1: model.d_model is the teacher's" \
  "$TESSERA" distill --teacher "$work/teacher" --config "$work/with-model.yaml"
check "distill: a bad distill key is named" expect_failure 30 "distill.stage9_steps" \
  "$TESSERA" "${distill[@]}" --set distill.stage9_steps=3
check "distill: a missing teacher checkpoint is named" expect_failure 30 "$work/nowhere" \
  "$TESSERA" distill --teacher "$work/nowhere" --config "$work/distill.yaml"
mkdir -p "$work/broken" && cp -r "$work/teacher/checkpoints/step-00000030" "$work/broken/" \
  && printf 'x' >>"$work/broken/step-00000030/model-00001-of-00001.safetensors"
check "distill: a corrupt teacher checkpoint is named" expect_failure 30 "broken/step-00000030/model-00001-of-00001.safetensors" \
  "$TESSERA" distill --teacher "$work/broken/step-00000030" --config "$work/distill.yaml" --set run.dir="$work/never"
check "distill: train a tiny Mamba-2 model (no attention)" "$TESSERA" train "${teacher[@]}" --set train.steps=2 \
  --set model.sequence_mixer=mamba2 --set model.ssm_chunk_size=8 --set run.dir="$work/mamba"
check "distill: a teacher without attention is refused, naming the layer" expect_failure 30 "teacher layer 0 is not an attention layer" \
  "$TESSERA" distill --teacher "$work/mamba" --config "$work/distill.yaml" --set run.dir="$work/never"
check "distill: a run directory with checkpoints is not overwritten" expect_failure 30 "already holds distillation checkpoint" \
  "$TESSERA" "${distill[@]}" --set run.dir="$work/d1"

# End to end: the default run's model (configs/tiny.yaml) on the default corpus, trained 150
# steps on 2 ranks, distilled on 2 ranks with configs/distill.yaml at 40/40/80 steps; stage-1
# distance falls at least 2x in every layer and the student's validation loss (tessera eval on
# its checkpoint) ends within 15% of the teacher's. About a minute and a half on 2 idle cores.
end_to_end() {
  local t=$work/e2e-teacher s=$work/e2e-student tl sl
  mpi 2 train --config configs/tiny.yaml --progress lines --set train.steps=150 --set train.log_every=50 --set eval.every=0 \
    --set checkpoint.every=0 --set run.dir="$t" || return 1
  mpi 2 distill --teacher "$t" --config configs/distill.yaml --set run.dir="$s" \
    --set distill.stage1_steps=40 --set distill.stage2_steps=40 --set distill.stage3_steps=80 || return 1
  python3 - "$s/metrics.jsonl" <<'PY' || return 1
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"layer_losses"' in l]
stage1 = [r for r in rows if r["stage"] == 1]
first, last = stage1[0]["layer_losses"], stage1[-1]["layer_losses"]
for layer in first:
    print(f"stage 1 layer {layer}: {first[layer]:.4g} -> {last[layer]:.4g} ({first[layer] / last[layer]:.2f}x)")
    if not first[layer] >= 2 * last[layer]:
        sys.exit(f"stage-1 distance of layer {layer} fell less than 2x")
PY
  tl=$("$TESSERA" eval --checkpoint "$t" --batches 8 | sed -n 's/.*validation loss \([0-9.]*\).*/\1/p')
  sl=$("$TESSERA" eval --checkpoint "$s" --batches 8 | sed -n 's/.*validation loss \([0-9.]*\).*/\1/p')
  echo "teacher validation loss $tl, student $sl"
  python3 -c "import sys; t, s = $tl, $sl; sys.exit(0 if s <= 1.15 * t else f'student {s} is more than 15% above the teacher {t}')"
}
check "distill: end to end on the default corpus (stage-1 distance falls 2x per layer, student within 15% of the teacher)" end_to_end
