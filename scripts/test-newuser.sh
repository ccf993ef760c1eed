#!/usr/bin/env bash
# What a new user runs into first, through the built executable: a run directory is held by one
# run at a time, a second Ctrl-C says what it leaves behind, a stop request still checkpoints when
# the output is closed or stalled (or the signal arrives twice, as `timeout` sends it), and the
# launcher's usage mistakes are named. Needs the release build and the corpus (scripts/setup.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
standalone=${RESULTS:-yes}   # run alone (not from scripts/test.sh): print the totals at the end
source scripts/lib.sh
plan 60   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-newuser.XXXXXX)
trap 'rm -rf "$work"' EXIT

# A small model: a step takes milliseconds.
small=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
       --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12
       --set train.log_every=1 --set eval.every=0 --set eval.batches=2 --set checkpoint.every=0)

# wait_for FILE: until FILE exists and is not empty (30 s at most).
wait_for() { for _ in $(seq 1 300); do [ -s "$1" ] && return 0; sleep 0.1; done; echo "$1 did not appear"; return 1; }
# wait_exit PID SECONDS: waits for PID (a child of this shell) to exit; returns its status, or
# kills it and returns 124 when it is still running after SECONDS.
wait_exit() {
  local pid=$1 limit=$2
  for _ in $(seq 1 $((limit * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "still running $limit s later (kernel wait channel: $(cat /proc/"$pid"/wchan 2>/dev/null))"
    kill -KILL "$pid"; wait "$pid" 2>/dev/null; return 124
  fi
  wait "$pid"
}

# --- One run per run.dir ------------------------------------------------------------------
# Two runs with the same run.dir: the second is refused naming the first (its pid), the first
# completes with its metrics intact (every step once), and its lock goes with it.
second_run_refused() {
  local dir=$work/held steps=3000
  "$TESSERA" train "${small[@]}" --set train.steps=$steps --set run.dir="$dir" >"$work/held-first.out" 2>&1 &
  local first=$!
  wait_for "$dir/metrics.jsonl" || return 1
  local out status
  out=$("$TESSERA" train "${small[@]}" --set train.steps=$steps --set run.dir="$dir" 2>&1); status=$?
  echo "second run (first is pid $first) exited with $status: $out"
  kill -0 "$first" 2>/dev/null || echo "(the first run had already ended)"
  wait "$first"; local first_status=$?
  echo "first run exited with $first_status"; tail -n 2 "$work/held-first.out"
  [ "$status" -ne 0 ] || { echo "the second run was not refused"; return 1; }
  [ "$(echo "$out" | wc -l)" -eq 1 ] && echo "$out" | grep -q "pid $first" || { echo "not one line naming pid $first"; return 1; }
  [ "$first_status" -eq 0 ] || return 1
  python3 - "$dir/metrics.jsonl" "$steps" <<'PY' || return 1
import json, sys
steps = [json.loads(line)["step"] for line in open(sys.argv[1]) if '"loss"' in line]
assert steps == list(range(1, int(sys.argv[2]) + 1)), f"{len(steps)} loss records, first {steps[:5]}"
print("metrics.jsonl intact:", len(steps), "steps")
PY
  [ ! -e "$dir/.tessera.lock" ] || { echo "the lock outlived the run"; return 1; }
}
check "train: a second run on a held run.dir is refused naming the first's pid; the first's metrics are intact" second_run_refused

# Under tessera launch only rank 0 takes the lock, and the refusal reaches every rank.
launch_refused() {
  local dir=$work/held-launch
  "$TESSERA" train "${small[@]}" --set train.steps=3000 --set run.dir="$dir" >/dev/null 2>&1 & local first=$!
  wait_for "$dir/metrics.jsonl" || return 1
  local out; out=$(timeout 60 "$TESSERA" launch --nproc 2 -- train "${small[@]}" --set train.steps=3000 --set run.dir="$dir" 2>&1); local status=$?
  echo "$out"; kill "$first"; wait "$first"
  [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && echo "$out" | grep -q "rank 0: error: run.dir .*(pid $first on host" && echo "$out" | grep -q "rank 1: error: run.dir .*(pid $first on host"
}
check "launch: a held run.dir stops every rank, naming the holder" launch_refused

# --- A second Ctrl-C ---------------------------------------------------------------------------
# Steps of the default model with a large batch take seconds, so both signals land inside one.
slow=(--config configs/tiny.yaml --progress lines --set train.global_batch=128 --set train.steps=50 --set train.log_every=1 --set eval.batches=1
      --set eval.every=0 --set checkpoint.every=0)
# ctrl_c_twice DIR ARGS...: starts training, sends SIGINT twice 1 s apart, expects exit 130.
ctrl_c_twice() {
  local dir=$1; shift
  "$TESSERA" train "$@" >"$dir.out" 2>"$dir.err" & local pid=$!
  wait_for "$dir.out" || return 1   # the "training steps" line: the loop is starting
  kill -INT "$pid"; sleep 1; kill -INT "$pid"
  wait_exit "$pid" 60; local status=$?
  echo "exited with $status; standard error:"; cat "$dir.err"
  [ "$status" -eq 130 ]
}
second_ctrl_c_without_checkpoint() {
  local dir=$work/ctrl-c-fresh
  ctrl_c_twice "$dir" "${slow[@]}" --set run.dir="$dir" || return 1
  [ "$(wc -l <"$dir.err")" -eq 1 ] || { echo "expected one line"; return 1; }
  grep -q "without a checkpoint of this step; $dir holds no complete checkpoint" "$dir.err" || return 1
  [ ! -e "$dir/.tessera.lock" ] || { echo "the lock outlived the run"; return 1; }
}
check "train: a second Ctrl-C says there is no checkpoint yet" second_ctrl_c_without_checkpoint
second_ctrl_c_names_checkpoint() {
  local dir=$work/ctrl-c-resumed
  "$TESSERA" train "${slow[@]}" --set run.dir="$dir" --stop-at 1 >/dev/null 2>&1
  ls "$dir/checkpoints" | grep -q step-00000001 || { echo "no checkpoint of step 1 to start from"; return 1; }
  ctrl_c_twice "$dir" --resume "$dir" --progress lines || return 1
  grep -q "without a checkpoint of this step; the newest complete checkpoint is $dir/checkpoints/step-00000001" "$dir.err"
}
check "train: a second Ctrl-C names the newest complete checkpoint" second_ctrl_c_names_checkpoint

# --- A stop request with the output closed or stalled (and SIGTERM sent twice, as timeout does) ---
# The issue's command: the reader goes away, then timeout's SIGTERM (timeout signals the process,
# then its whole process group: tessera sees SIGTERM twice).
timeout_and_head() {
  local dir=$work/timeout-head
  timeout 8 "$TESSERA" train "${small[@]}" --set train.steps=100000 --set run.dir="$dir" 2>&1 | head -n 3
  echo "exit statuses: ${PIPESTATUS[*]}"
  ls "$dir/checkpoints" | grep -q step- || { echo "no stop checkpoint"; return 1; }
}
check "train: timeout 8 tessera train 2>&1 | head -n 3 writes the stop checkpoint" timeout_and_head
# The same request delivered twice, the second after the first was handled: still one request.
sigterm_twice() {
  local dir=$work/sigterm-twice
  "$TESSERA" train --config configs/tiny.yaml --progress lines --set train.log_every=1 --set eval.every=0 \
    --set checkpoint.every=0 --set run.dir="$dir" >/dev/null 2>"$dir.err" & local pid=$!
  wait_for "$dir/metrics.jsonl" || return 1
  kill -TERM "$pid"; sleep 0.05; kill -TERM "$pid"
  wait_exit "$pid" 60; local status=$?
  echo "exited with $status"; cat "$dir.err"
  [ "$status" -eq 130 ] && ls "$dir/checkpoints" | grep -q step- && grep -q "stopped at step" "$dir.err"
}
check "train: SIGTERM arriving twice 50 ms apart (one request) still checkpoints" sigterm_twice
# The reader has exited (writes fail with EPIPE), then SIGTERM.
reader_gone() {
  local dir=$work/reader-gone
  "$TESSERA" train "${small[@]}" --set train.steps=100000 --set run.dir="$dir" > >(head -n 2 >/dev/null) 2>&1 & local pid=$!
  wait_for "$dir/metrics.jsonl" || return 1
  sleep 1; kill -TERM "$pid"
  wait_exit "$pid" 30; local status=$?
  echo "exited with $status"
  [ "$status" -eq 130 ] && ls "$dir/checkpoints" | grep -q step-
}
check "train: SIGTERM after the reader of the output exited checkpoints" reader_gone
# The reader is alive but reads nothing: the pipe is full before the run starts, so its first line
# blocks. On resume two lines come before the first step (resumed from..., training steps...).
output_stalled() {
  local dir=$work/stalled fifo=$work/stalled.fifo
  "$TESSERA" train "${small[@]}" --set train.steps=100000 --set run.dir="$dir" --stop-at 5 >/dev/null 2>&1
  mkfifo "$fifo"
  sleep 120 <"$fifo" & local reader=$!
  exec 3>"$fifo"
  head -c 65536 /dev/zero >&3   # the pipe is full
  "$TESSERA" train --resume "$dir" --progress lines >&3 2>"$dir.err" & local pid=$!
  exec 3>&-
  # Blocked writing its first line (in write(2) on the pipe, or in poll(2) waiting for room).
  for _ in $(seq 1 100); do grep -qE "pipe|poll" "/proc/$pid/wchan" 2>/dev/null && break; sleep 0.1; done
  echo "before SIGTERM: wait channel $(cat /proc/"$pid"/wchan 2>/dev/null)"
  kill -TERM "$pid"
  wait_exit "$pid" 20; local status=$?
  kill "$reader" 2>/dev/null; wait "$reader" 2>/dev/null
  echo "exited with $status"; cat "$dir.err"; ls "$dir/checkpoints"
  [ "$status" -eq 130 ] && ls "$dir/checkpoints" | grep -q step-00000006 && grep -q "stopped at step 6" "$dir.err"
}
check "train: SIGTERM while the output pipe is full and not read stops with a checkpoint" output_stalled

# --- tessera launch usage --------------------------------------------------------------------
check "launch: the example hostfile names no address of this machine: one line listing this machine's addresses" \
  expect_failure 10 "hostfile cluster/hosts.example.json: no node is this machine.*127\.0\.0\.1" \
  "$TESSERA" launch --hostfile cluster/hosts.example.json -- selftest comm
check "launch: a command without -- is told to put -- before it" \
  expect_failure 10 "put -- before the command: tessera launch --nproc 2 -- train --config f" \
  "$TESSERA" launch --nproc 2 train --config f
check "launch: --nproc -1 is rejected as a value" expect_failure 10 "nproc -1: must be at least 1" "$TESSERA" launch --nproc -1 -- selftest comm
check "launch: --node-rank -1 is rejected as a value" expect_failure 10 "node-rank -1: must be 0 or more" "$TESSERA" launch --node-rank -1 -- selftest comm
check "launch: --grace-seconds -1 is rejected as a value" expect_failure 10 "grace-seconds -1: must be 0 or more" "$TESSERA" launch --grace-seconds -1 -- selftest comm
check "selftest: --timeout -1 is rejected as a value" expect_failure 10 "timeout -1: must be more than 0" "$TESSERA" selftest comm --timeout -1
check "train: --timeout -1 is rejected as a value" expect_failure 10 "timeout -1: must be more than 0" "$TESSERA" train "${small[@]}" --timeout -1

# --- The command line's own help and first contact ---------------------------------------
# Every command's --help prints its usage on standard output and exits 0 (it printed a
# CommandError on standard error and exited 1); so do `help CMD` and --version.
help_works() {
  local out status
  for words in "" train launch eval generate data "data prepare" report bench "bench gemm" "bench train" \
               "bench comm" "bench attention" selftest "selftest comm" soup export "export hf"; do
    out=$("$TESSERA" $words --help 2>"$work/help.err"); status=$?
    if [ "$status" -ne 0 ] || ! grep -q '^USAGE: tessera' <<<"$out" || [ -s "$work/help.err" ]; then
      echo "tessera $words --help: exit $status, stdout: $(head -c 200 <<<"$out"), stderr: $(head -c 300 "$work/help.err")"; return 1
    fi
  done
  out=$("$TESSERA" help train) || { echo "tessera help train exited $?"; return 1; }
  grep -q '^USAGE: tessera train' <<<"$out" || { echo "tessera help train: $out"; return 1; }
  out=$("$TESSERA" --version) || { echo "--version exited $?"; return 1; }
  [[ $out =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || { echo "--version printed '$out'"; return 1; }
}
check "every command's --help, help CMD and --version print and exit 0" help_works
check "a mistyped command names the nearest one" expect_failure 10 "'trian' is not a tessera command; did you mean 'train'" "$TESSERA" trian
check "a mistyped subcommand names its command and the nearest one" \
  expect_failure 10 "'prep' is not a subcommand of 'tessera data'; did you mean 'prepare'" "$TESSERA" data prep --input x --output y
# `tessera train` alone started a 9-minute run on built-in defaults into runs/default.
train_alone() {
  local out status
  out=$(cd "$work" && timeout 10 "$TESSERA" train 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 2 ] || { echo "exit $status, expected 2"; return 1; }
  grep -q -- "--config configs/tiny.yaml" <<<"$out" || return 1
  [ ! -e "$work/runs" ] || { echo "it started a run"; return 1; }
}
check "train with no config prints how to start and exits 2" train_alone
check "generate --tokens=-5 is refused, not an endless loop" expect_failure 10 "tokens -5 must be at least 1" "$TESSERA" generate --checkpoint "$work" --tokens=-5
check "generate --temperature -1 is refused" expect_failure 10 "temperature -1.0 must be 0" "$TESSERA" generate --checkpoint "$work" --temperature -1
check "bench gemm --runs 0 is refused" expect_failure 10 "runs 0 must be at least 1" "$TESSERA" bench gemm --runs 0
check "bench gemm --n 0 is refused" expect_failure 10 "n 0 must be at least 1" "$TESSERA" bench gemm --n 0
check "bench gemm --beta nan is refused" expect_failure 10 "beta nan must be a finite number" "$TESSERA" bench gemm --n 64 --beta nan
check "bench gemm --beta x is refused" expect_failure 10 "value 'x' is invalid for '--beta" "$TESSERA" bench gemm --n 64 --beta x
# --beta 1 --cold: training's way of adding into C (a weight gradient, in memory): the line says so,
# and both implementations report them; the default stays beta 0 into a warm C.
gemm_beta_cold() {
  local line
  line=$("$TESSERA" bench gemm --n 64 --runs 1 --warmup 0 --beta 1 --cold --impl tessera openblas | grep '^{') || return 1
  echo "$line"
  [ "$(grep -c '"beta":1' <<<"$line")" -eq 2 ] && [ "$(grep -c '"cold":true' <<<"$line")" -eq 2 ] || { echo "expected beta 1, cold true on both lines"; return 1; }
  line=$("$TESSERA" bench gemm --n 64 --runs 1 --warmup 0 | grep '^{') || return 1
  grep -q '"beta":0' <<<"$line" && grep -q '"cold":false' <<<"$line" || { echo "the default is not beta 0, warm: $line"; return 1; }
}
check "bench gemm --beta 1 --cold runs and reports beta and cold" gemm_beta_cold
check "bench train --steps 0 is refused" expect_failure 10 "steps 0 must be at least 1" "$TESSERA" bench train --steps 0
check "bench comm on one rank says it needs two" expect_failure 10 "traffic between ranks and this job has one" "$TESSERA" bench comm --mib 1
check "a bad --set value names --set, not the file" expect_failure 10 "^tessera: error: --set: train.steps = -5 must be at least 1" "$TESSERA" train --config configs/tiny.yaml --set train.steps=-5

# --- Paths and checkpoints from anywhere ------------------------------------------------------
# A short run; then eval and generate from another directory, given the run directory; the
# saved config holds absolute paths; a resume past train.steps is refused naming both steps.
paths_and_checkpoints() {
  local dir=$work/short
  "$TESSERA" train "${small[@]}" --set train.steps=6 --set run.dir="$dir" >"$work/short.out" 2>&1 || { cat "$work/short.out"; return 1; }
  grep -q "^  dir: \"/" "$dir"/checkpoints/step-00000006/run.yaml || { echo "run.yaml keeps relative paths:"; cat "$dir"/checkpoints/step-00000006/run.yaml; return 1; }
  local out
  out=$(cd / && "$TESSERA" eval --checkpoint "$dir" --batches 2 2>&1) || { echo "eval from /: $out"; return 1; }
  grep -q "using $dir/checkpoints/step-00000006" <<<"$out" && grep -q "bits/byte" <<<"$out" || { echo "eval: $out"; return 1; }
  out=$(cd / && "$TESSERA" generate --checkpoint "$dir/checkpoints" --tokens 5 --temperature 0 2>&1) || { echo "generate from /: $out"; return 1; }
  out=$("$TESSERA" train --resume "$dir" --set train.steps=4 2>&1) && { echo "a resume to step 4 of a run at step 6 exited 0: $out"; return 1; }
  grep -q "it is at step 6, and train.steps = 4" <<<"$out" || { echo "$out"; return 1; }
}
check "eval and generate take a run directory from any directory; resuming past train.steps is refused" paths_and_checkpoints
# The printed resume command can be pasted: the path of the executable that ran, quoting, the launcher.
pasteable_resume() {
  local dir="$work/with space"
  local out status
  out=$("$TESSERA" launch --nproc 2 -- train "${small[@]}" --set train.steps=8 --set run.dir="$dir" --stop-at 3 2>&1); status=$?
  [ "$status" -eq 0 ] || { echo "exit $status: $out"; return 1; }
  local line; line=$(grep -o "continue with: .*" <<<"$out" | head -n 1)
  echo "$line"
  # The executable as the ranks ran it: an absolute path (the launcher passes on its real path).
  [[ $line == "continue with: /"*"/tessera launch --nproc 2 -- train --resume '$dir'" ]] || { echo "not the expected command"; return 1; }
  eval "${line#continue with: }" >"$work/resumed.out" 2>&1 || { cat "$work/resumed.out"; return 1; }
  grep -q "resumed from step 3" "$work/resumed.out" || { echo "the pasted command did not resume:"; cat "$work/resumed.out"; return 1; }
  # The done line counts the steps this invocation ran (it said "8 steps" for 3→8).
  grep -q "^done: 5 steps (to step 8)" "$work/resumed.out" || { echo "done line:"; grep done: "$work/resumed.out"; return 1; }
  [ "$(grep -c '"loss"' "$dir/metrics.jsonl")" -eq 8 ] || { echo "expected 8 training records"; return 1; }
}
check "--stop-at prints a resume command that can be pasted (launcher, executable path, quoting) and resumes" pasteable_resume

# --- Data preparation and the helper scripts ------------------------------------------------
# data prepare names the files it took and skips (naming them) files that are not text,
# unless --binary; a negative --val-fraction is rejected as a value.
prepare_lists_and_skips() {
  mkdir -p "$work/texts"
  printf 'To be, or not to be, that is the question.\n%.0s' $(seq 1 40) >"$work/texts/play.txt"
  head -c 3000 /dev/urandom >"$work/texts/blob.bin"; printf '\0' >>"$work/texts/blob.bin"
  local out
  out=$("$TESSERA" data prepare --input "$work/texts" --output "$work/prepared" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -q "took $work/texts/play.txt" <<<"$out" && grep -q "skipped $work/texts/blob.bin: .*not text" <<<"$out" || return 1
  out=$("$TESSERA" data prepare --input "$work/texts" --output "$work/prepared-binary" --binary 2>&1) || { echo "$out"; return 1; }
  grep -q "took $work/texts/blob.bin" <<<"$out" || { echo "--binary did not take the binary file: $out"; return 1; }
}
check "data prepare lists the files it took and skips non-text files unless --binary" prepare_lists_and_skips
check "data prepare --val-fraction -0.1 is rejected as a value" \
  expect_failure 10 "val-fraction -0.1 must be between 0 and 1" "$TESSERA" data prepare --input README.md --output "$work/x" --val-fraction -0.1
# A relative data.dir that does not exist: the message names the directory it was resolved
# against and the key to set.
missing_relative_data() {
  local out config; config="$(pwd)/configs/tiny.yaml"
  out=$(cd "$work" && "$TESSERA" train "${small[@]/configs\/tiny.yaml/$config}" --set data.dir=no/such/data --set run.dir="$work/nodata" 2>&1) && { echo "exit 0"; return 1; }
  echo "$out"
  grep -q "no/such/data" <<<"$out" && grep -q "$work" <<<"$out" && grep -q -- "--set data.dir=" <<<"$out"
}
check "a missing relative data.dir names the directory it was resolved against and --set data.dir" missing_relative_data
check "scripts/mpirun.sh with no arguments prints its usage" expect_failure 10 "^usage: scripts/mpirun.sh NP" scripts/mpirun.sh

# --- Ctrl-C under mpirun ---------------------------------------------------------------------
# A terminal's Ctrl-C signals the whole foreground process group. scripts/mpirun.sh passes it on
# to the ranks as a stop request at once: every rank stops after its step, the stop checkpoint
# is complete, the lock is gone, and the run resumes. (mpirun alone sends its ranks SIGTERM only
# after odls_base_sigkill_timeout and SIGKILL as long again after that.)
mpirun_ctrl_c() {
  local dir=$work/mpirun-ctrl-c
  # (Started with &, it begins with SIGINT ignored; scripts/mpirun.sh restores the default itself.)
  setsid scripts/mpirun.sh 2 train "${small[@]}" --set train.steps=100000 --set run.dir="$dir" >"$dir.out" 2>"$dir.err" & local pid=$!
  wait_for "$dir/metrics.jsonl" || return 1
  sleep 1
  local start; start=$(now_ms)
  kill -INT -- -"$pid"
  wait_exit "$pid" 30; local status=$?
  echo "exited with $status after $(seconds $(( $(now_ms) - start ))) s; standard error:"; cat "$dir.err"
  [ "$status" -eq 0 ] || { echo "expected exit 0"; return 1; }
  [ $(( $(now_ms) - start )) -lt 10000 ] || { echo "took 10 s or more"; return 1; }
  local step; step=$(sed -n 's/.*stopped at step \([0-9]*\) on request.*/\1/p' "$dir.err" | head -n 1)
  [ -n "$step" ] || { echo "no 'stopped at step N on request' line"; return 1; }
  [ -f "$dir/checkpoints/$(printf 'step-%08d' "$step")/DONE" ] || { echo "no complete checkpoint of step $step"; ls -a "$dir/checkpoints"; return 1; }
  ! ls -a "$dir/checkpoints" | grep -q partial || { echo "a partial checkpoint was left"; ls -a "$dir/checkpoints"; return 1; }
  [ ! -e "$dir/.tessera.lock" ] || { echo "the lock outlived the run"; return 1; }
  "$TESSERA" ckpt verify "$dir" || return 1
  local out; out=$("$TESSERA" train --resume "$dir" --progress lines --set train.steps=$((step + 2)) 2>&1) || { echo "$out"; return 1; }
  grep -q "resumed from step $step " <<<"$out" || { echo "$out"; return 1; }
}
check "mpirun: Ctrl-C to scripts/mpirun.sh's process group stops every rank with a checkpoint, exit 0, and it resumes" mpirun_ctrl_c
# mpirun alone, interrupted: its SIGTERM comes 1 s after the abort starts and its SIGKILL 1 s
# later, too soon for a step of seconds. The ranks say so before the SIGKILL, the newest complete
# checkpoint stays as it was, and the lock is released. The interrupt comes just after step 1's
# checkpoint, so step 2 has run about 1 s at the SIGTERM: it must need well over the 0.75 s left
# (a step of 384 sequences took 1.8 s here after the kernels got faster, and the ranks then saved
# in time); 1,152 sequences take about 5 s.
mpirun_kill_too_soon() {
  local dir=$work/mpirun-kill
  [ "$(id -u)" -ne 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  setsid mpirun -np 2 --oversubscribe --bind-to none -x OPENBLAS_NUM_THREADS=1 "$TESSERA" train "${slow[@]}" \
    --set train.global_batch=1152 --set train.steps=1000 --set checkpoint.every=1 --set checkpoint.keep=0 \
    --set run.dir="$dir" >"$dir.out" 2>"$dir.err" & local pid=$!
  local _; for _ in $(seq 1 600); do [ -f "$dir/checkpoints/step-00000001/DONE" ] && break; sleep 0.1; done
  [ -f "$dir/checkpoints/step-00000001/DONE" ] || { echo "no first checkpoint within 60 s"; tail -n 5 "$dir.out" "$dir.err"; kill -KILL -- -"$pid"; return 1; }
  kill -INT "$pid"
  wait_exit "$pid" 30; local status=$?
  echo "mpirun exited with $status; standard error:"; cat "$dir.err"
  grep -q "mpirun sends SIGKILL 1.0 s after its SIGTERM (odls_base_sigkill_timeout), too soon to write this step's checkpoint; stopped without it: the newest complete checkpoint $dir/checkpoints/step-[0-9]* is kept" "$dir.err" \
    || { echo "no line saying the stop came too soon, naming the kept checkpoint"; return 1; }
  [ ! -e "$dir/.tessera.lock" ] || { echo "the lock outlived the run"; return 1; }
  "$TESSERA" ckpt verify "$dir" || return 1
}
check "mpirun: interrupted mpirun's SIGKILL comes too soon to save: the ranks say so, keep the newest checkpoint, release the lock" mpirun_kill_too_soon

# --- The checkpoint service, checked before step 1 ---------------------------------------------
service_missing() {
  local port; port=$(free_port)
  TESSERA_JOB_TOKEN=$("$TESSERA" token) expect_failure 30 "checkpoints to the checkpoint service at 127.0.0.1:$port, checked before the first step: checkpoint service at 127.0.0.1:$port is unreachable" \
    "$TESSERA" train "${small[@]}" --set train.steps=100000 --set checkpoint.service=127.0.0.1:$port --set run.dir="$work/no-service" || return 1
  ! grep -q '"loss"' "$work/no-service/metrics.jsonl" 2>/dev/null || { echo "it trained first"; return 1; }
}
check "train: a checkpoint.service nobody listens on fails before step 1, naming it" service_missing
service_other_token() {
  local root=$work/svc-root log=$work/svc.log
  TESSERA_JOB_TOKEN=$("$TESSERA" token) serve "$root" "$log" || return 1
  (unset TESSERA_JOB_TOKEN; expect_failure 60 "checked before the first step: checkpoint service at 127.0.0.1:$port: handshake failed" \
    "$TESSERA" launch --nproc 2 -- train "${small[@]}" --set train.steps=100000 --set checkpoint.service=127.0.0.1:$port --set run.dir="$work/svc-run")
  local status=$?; kill "$server"; wait "$server" 2>/dev/null; return $status
}
check "launch: a checkpoint service with another job token fails before step 1 on every rank" service_other_token
service_checkpoint_lines() {
  local root=$work/svc-lines log=$work/svc-lines.log out status
  export TESSERA_JOB_TOKEN=$("$TESSERA" token)
  serve "$root" "$log" || return 1
  out=$(scripts/mpirun.sh 2 train "${small[@]}" --set train.steps=4 --set checkpoint.every=2 --set checkpoint.service=127.0.0.1:$port \
        --set run.dir="$work/svc-lines-run" 2>&1); status=$?
  kill "$server"; wait "$server" 2>/dev/null; unset TESSERA_JOB_TOKEN
  echo "$out" | grep -i checkpoint
  [ "$status" -eq 0 ] || { echo "$out"; return 1; }
  grep -q "checkpoint of step 4 committed on the checkpoint service at 127.0.0.1:$port" <<<"$out" || { echo "no line for the last checkpoint"; return 1; }
}
check "train through the checkpoint service prints its checkpoint lines" service_checkpoint_lines

# --- Resuming from a chosen checkpoint -------------------------------------------------------------
resume_chosen() {
  local dir=$work/chosen out
  "$TESSERA" train "${small[@]}" --set train.steps=6 --set checkpoint.every=2 --set checkpoint.keep=0 --set run.dir="$dir" >/dev/null 2>&1 || return 1
  out=$("$TESSERA" train --resume "$dir/checkpoints/step-00000002" --progress lines --set train.steps=8 2>&1) || { echo "$out"; return 1; }
  echo "$out" | head -n 5
  grep -q "resumed from step 2 of $dir/checkpoints" <<<"$out" || { echo "not resumed from step 2"; return 1; }
  grep -q "moved the newer checkpoints step-00000004, step-00000006 and a copy of metrics.jsonl to $dir/superseded-after-step-2" <<<"$out" || { echo "no line about the newer checkpoints"; return 1; }
  [ -f "$dir/superseded-after-step-2/step-00000006/DONE" ] && [ -f "$dir/checkpoints/step-00000008/DONE" ] || { ls -R "$dir" | head -30; return 1; }
  out=$("$TESSERA" train --resume "$dir" --step 4 --progress lines --set train.steps=9 2>&1) || { echo "$out"; return 1; }
  grep -q "resumed from step 4 of" <<<"$out" || { echo "$out"; return 1; }
  out=$("$TESSERA" train --resume "$dir" --step 3 --set train.steps=9 2>&1) && { echo "--step 3 exited 0"; return 1; }
  echo "$out"
  grep -q "^tessera: error: --resume $dir --step 3: no complete checkpoint of step 3 under $dir/checkpoints; its complete checkpoints are of steps 2, 4, 6, 8, 9" <<<"$out"
}
check "train --resume RUN/checkpoints/step-N and --resume RUN --step N continue from that checkpoint, newer ones moved aside" resume_chosen

# --- MoE models generate ---------------------------------------------------------------------------
moe_generates() {
  local dir=$work/moe-gen one two
  "$TESSERA" train "${small[@]}" --set moe.experts=4 --set moe.top_k=2 --set moe.expert_hidden=32 --set train.steps=4 \
    --set run.dir="$dir" >/dev/null 2>&1 || { echo "training the MoE model failed"; return 1; }
  generates "$dir" "ROMEO:" 30 || return 1
  one=$("$TESSERA" generate --checkpoint "$dir" --tokens 30 --temperature 0 2>/dev/null) || { echo "generate failed"; return 1; }
  two=$(scripts/mpirun.sh 2 generate --checkpoint "$dir" --tokens 30 --temperature 0 2>"$work/moe-gen2.err") \
    || { echo "mpirun generate failed:"; cat "$work/moe-gen2.err"; return 1; }
  [ "$one" = "$two" ] || { echo "2 ranks printed other bytes: '$two' vs '$one'"; return 1; }
  "$TESSERA" launch --nproc 3 -- generate --checkpoint "$dir" --tokens 30 --temperature 0 >"$work/moe-gen3.out" 2>"$work/moe-gen3.err" \
    || { echo "launch --nproc 3 generate exited with status $?:"; cat "$work/moe-gen3.err"; return 1; }
  [ "$(cat "$work/moe-gen3.out")" = "$one" ] || { echo "3 ranks printed other bytes"; return 1; }
}
check "generate: an MoE checkpoint generates, the same bytes on 1, 2 (mpirun) and 3 (launch) ranks" moe_generates
moe_student_generates() {
  local teacher=$work/moe-gen
  [ -d "$teacher/checkpoints" ] || "$TESSERA" train "${small[@]}" --set moe.experts=4 --set moe.top_k=2 --set moe.expert_hidden=32 \
    --set train.steps=4 --set run.dir="$teacher" >/dev/null 2>&1 || return 1
  "$TESSERA" distill --teacher "$teacher" --config configs/distill.yaml --set distill.stage1_steps=2 --set distill.stage2_steps=0 \
    --set distill.stage3_steps=1 --set eval.batches=1 --set run.dir="$work/moe-student" >"$work/moe-student.out" 2>&1 \
    || { tail -n 5 "$work/moe-student.out"; return 1; }
  generates "$work/moe-student" "ROMEO:" 20
}
check "generate: a Mamba-2 student of an MoE teacher generates" moe_student_generates
# A finished distillation: resuming it says it cannot be extended (not "raise a stage's steps",
# which the resume rule then refused), and the command it advises trains the student further.
distill_finished_advice() {
  local out advised
  [ -d "$work/moe-student/checkpoints" ] || { echo "needs the student distilled by the check before"; return 1; }
  out=$(expect_failure 30 "cannot be extended; train the student further with tessera train --config .*/run.yaml --init-from" \
        "$TESSERA" distill --resume "$work/moe-student") || { echo "$out"; return 1; }
  echo "$out"
  grep -qi "raise" <<<"$out" && { echo "it still advises raising a stage's steps"; return 1; }
  advised=$(grep -o 'tessera train --config [^ ]*/run.yaml --init-from [^ ]*' <<<"$out" | head -n 1)
  [ -n "$advised" ] || { echo "no train command in the advice"; return 1; }
  # shellcheck disable=SC2086
  "$TESSERA" ${advised#tessera } --set run.dir="$work/student-further" --set train.steps=2 --set eval.every=0 --set eval.batches=1 \
    --progress lines || { echo "the advised command failed: $advised"; return 1; }
}
check "distill --resume of a finished run says it cannot be extended, and its advice trains the student further" distill_finished_advice

# --- Smaller things ---------------------------------------------------------------------------------
distill_stop_at() {
  local teacher=$work/short out status
  [ -d "$teacher/checkpoints" ] || "$TESSERA" train "${small[@]}" --set train.steps=6 --set run.dir="$teacher" >/dev/null 2>&1 || return 1
  out=$("$TESSERA" distill --teacher "$teacher" --config configs/distill.yaml --set distill.stage1_steps=3 --set distill.stage2_steps=0 \
        --set distill.stage3_steps=0 --set eval.batches=1 --set run.dir="$work/distill-stop" --stop-at 2 2>&1); status=$?
  echo "$out"; echo "exited with $status"
  [ "$status" -eq 0 ] && grep -q "stopped at step 2 (--stop-at)" <<<"$out"
}
check "distill --stop-at exits 0 like train --stop-at" distill_stop_at
eval_batches_set() {
  local dir=$work/short out
  [ -d "$dir/checkpoints" ] || "$TESSERA" train "${small[@]}" --set train.steps=6 --set run.dir="$dir" >/dev/null 2>&1 || return 1
  out=$("$TESSERA" eval --checkpoint "$dir" --set eval.batches=2 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -q "over 24 sequences" <<<"$out"
}
check "eval --set eval.batches=2 evaluates 2 batches" eval_batches_set
check "a --set value that breaks a cross-key rule names --set, not the file" expect_failure 20 \
  "^tessera: (rank [01]: )?error: --set: train.global_batch = 3 does not divide over parallel.data = 2" \
  scripts/mpirun.sh 2 train "${small[@]}" --set train.global_batch=3 --set run.dir="$work/bad-batch"
moe_config_floats() {
  local dir=$work/moe-floats
  "$TESSERA" train "${small[@]}" --set moe.experts=2 --set moe.top_k=1 --set moe.expert_hidden=16 --set moe.layers="every 2" --set train.steps=2 \
    --set run.dir="$dir" >/dev/null 2>&1 || return 1
  local config; config=$(ls -d "$dir"/checkpoints/step-*/ | tail -n 1)config.json
  cat "$config"
  grep -q '"router_jitter_noise": 0.0' "$config" || { echo "router_jitter_noise is not written as a float"; return 1; }
  grep -q '"tessera_note": "layers 0 are dense.*transformers cannot load this layout' "$config" || { echo "no note that this layout is not Mixtral-loadable"; return 1; }
}
check "an MoE checkpoint's config.json writes floats as floats and says a dense-between-MoE layout is not Mixtral-loadable" moe_config_floats

# --- Small cuts ----------------------------------------------------------------------------------
eval_once_under_mpirun() {
  local dir=$work/short out
  [ -d "$dir/checkpoints" ] || "$TESSERA" train "${small[@]}" --set train.steps=6 --set run.dir="$dir" >/dev/null 2>&1 || return 1
  out=$(scripts/mpirun.sh 2 eval --checkpoint "$dir" --batches 2 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  [ "$(grep -c "using $dir/checkpoints/step-" <<<"$out")" -eq 1 ] || { echo "the 'using' line is not printed once"; return 1; }
}
check "eval under mpirun prints its 'using ...' line once" eval_once_under_mpirun
check "model.attention_layers on an attention-only model is refused" expect_failure 10 \
  "^tessera: error: --set: model.attention_layers = 1 only applies with model.sequence_mixer: mamba2" \
  "$TESSERA" train "${small[@]}" --set model.attention_layers=1 --set run.dir="$work/attention-layers"
verify_partial_only() {
  mkdir -p "$work/partial-run/checkpoints/.step-00000017.partial"
  expect_failure 10 "^tessera: error: $work/partial-run/checkpoints holds no complete checkpoint to verify; unfinished saves .*: .step-00000017.partial" \
    "$TESSERA" ckpt verify "$work/partial-run" || return 1
  ! "$TESSERA" ckpt verify "$work/partial-run" 2>&1 | grep -qF 'step-*' || { echo "a literal step-* glob"; return 1; }
}
check "ckpt verify on a run with only an unfinished save names it, not a step-* glob" verify_partial_only
soup_val_data_missing() {
  local dir=$work/short
  [ -d "$dir/checkpoints" ] || "$TESSERA" train "${small[@]}" --set train.steps=6 --set run.dir="$dir" >/dev/null 2>&1 || return 1
  expect_failure 20 "error: --val-data data/nope does not exist" \
    "$TESSERA" soup --method greedy --inputs "$dir" "$dir" --val-data data/nope --output "$work/soup-nope" || return 1
  ! "$TESSERA" soup --method greedy --inputs "$dir" "$dir" --val-data data/nope --output "$work/soup-nope" 2>&1 | grep -q -- "--set data.dir" \
    || { echo "it suggests --set data.dir"; return 1; }
}
check "soup --val-data with a missing directory names --val-data" soup_val_data_missing
check "data prepare refuses an output directory that holds files" expect_failure 10 \
  "^tessera: error: --output $work/prepared already exists and is not empty" \
  "$TESSERA" data prepare --input "$work/texts" --output "$work/prepared"
check "train --resume RUN --set checkpoint.service=... without local checkpoints says to pass the config" expect_failure 10 \
  "resume $work/elsewhere with checkpoint.service: the run's checkpoints \(and its config\) are on the service; pass the config it started with too" \
  "$TESSERA" train --resume "$work/elsewhere" --set checkpoint.service=127.0.0.1:1

check "launch: an unknown option names the nearest one" expect_failure 10 "unknown option '--nrpoc' for tessera launch; did you mean '--nproc'" "$TESSERA" launch --nrpoc 2 -- selftest comm

soup_negative_weight() {
  local dir=$work/short
  [ -d "$dir/checkpoints" ] || "$TESSERA" train "${small[@]}" --set train.steps=6 --set run.dir="$dir" >/dev/null 2>&1 || return 1
  expect_failure 20 "^tessera: error: .*-0.5" "$TESSERA" soup --method weighted --inputs "$dir" "$dir" --weights -0.5 1.5 --output "$work/soup-negative" || return 1
  ! "$TESSERA" soup --method weighted --inputs "$dir" "$dir" --weights -0.5 1.5 --output "$work/soup-negative" 2>&1 | grep -q "Missing value" \
    || { echo "a negative weight is taken for a missing value"; return 1; }
}
check "soup --weights -0.5 1.5 names the negative weight" soup_negative_weight

serve_busy_port() {
  local port out; port=$(free_port)
  python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(15)' "$port" & local holder=$!
  sleep 0.5
  out=$(TESSERA_JOB_TOKEN=$("$TESSERA" token) expect_failure 10 "^tessera: error: --listen 127.0.0.1:$port: cannot listen there \(.*\); choose another --listen" \
    "$TESSERA" ckpt serve --root "$work/busy-root" --listen 127.0.0.1:$port); local status=$?
  kill "$holder"; wait "$holder" 2>/dev/null
  echo "$out"
  [ "$status" -eq 0 ] || return 1
  ! grep -q "TESSERA_MASTER_PORT\|unreachable" <<<"$out" || { echo "it names TESSERA_MASTER_PORT or says unreachable"; return 1; }
}
check "ckpt serve on a busy port names --listen, not TESSERA_MASTER_PORT" serve_busy_port

decode_fits_not_negative() {
  local out; out=$("$TESSERA" bench decode --model teacher student --kv-len 64 1024 --runs 1 2>&1) || { echo "$out"; return 1; }
  python3 - "$out" <<'PY'
import json, sys
fits = {k: v for line in sys.argv[1].splitlines() if line.startswith("{") for k, v in json.loads(line).items() if "_fit_us" in k}
print(fits)
assert fits and all(v >= 0 for v in fits.values()), f"a negative fit: {fits}"
PY
}
check "bench decode --model: the teacher's and student's fitted times are never negative" decode_fits_not_negative

# --- The docs agree with the product ---------------------------------------------------------------
check "every tessera command, subcommand, option, config and script the Markdown files name exists" \
  python3 scripts/check_doc_names.py "$TESSERA"
readme_parameters() {
  local dir=$work/tiny-count count
  "$TESSERA" train --config configs/tiny.yaml --set train.steps=1 --set train.global_batch=2 --set eval.batches=1 --set run.dir="$dir" >/dev/null 2>&1 || return 1
  count=$("$TESSERA" ckpt show "$dir" 2>/dev/null | sed -n 's/^tensors ([0-9]*, \([0-9]*\) parameters).*/\1/p')
  echo "ckpt show: $count parameters"
  [ -n "$count" ] && grep -q "$(printf "%'d" "$count" 2>/dev/null || echo "$count")" README.md \
    || grep -q "$(python3 -c "print(f'{$count:,}')")" README.md || { echo "README does not give tiny's $count parameters"; return 1; }
}
check "the README gives the default model's parameter count as ckpt show counts it" readme_parameters

if [ "$standalone" = yes ]; then
  account "$0" 0 0
  summary
fi
