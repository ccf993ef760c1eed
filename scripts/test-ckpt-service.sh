#!/usr/bin/env bash
# The checkpoint service under kill -9: `tessera ckpt serve` is killed at random moments while
# three synthetic ranks (`tessera ckpt upload-test`, a testing tool) upload parts, and in some
# trials an uploading client is killed instead. After each kill, every visible step-* directory
# must be complete (DONE), verify against its checksums.json, hold exactly the parts' files and
# load (`tessera ckpt verify`);
# the restarted service must report the newest of them and carry on, and a final clean run must
# commit and serve back identical files. Also: a wrong token is refused with the address named,
# and the service refuses to start without a token. Then a real 2-rank training run streaming to
# the service, with the service or a rank killed around saves (training_kills), and jobs whose
# processes crash (crashed_jobs).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
plan 5   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-ckpt-service.XXXXXX)
TRIALS=${CKPT_KILL_TRIALS:-24}
RANKS=3


# verify_root ROOT [RANKS]: prints the newest complete step (or "none"); fails when any visible
# step-* directory is incomplete, does not verify, holds other files than the parts' (RANKS
# synthetic ranks' files, default $RANKS; 0: exactly those its checksums.json lists), or does not load.
verify_root() {
  local newest
  newest=$(verify_files "$1" "${2:-$RANKS}") || return 1
  if [ "$newest" != none ]; then
    "$TESSERA" ckpt verify "$1" >/dev/null || { echo "tessera ckpt verify $1 failed" >&2; return 1; }
  fi
  echo "$newest"
}

# verify_files ROOT RANKS: the file-level checks of verify_root (the layout CheckpointCommit writes).
verify_files() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, os, re, sys
root, ranks = sys.argv[1], int(sys.argv[2])
synthetic = {f"{kind}-{r + 1:05d}-of-{ranks:05d}.safetensors" for r in range(ranks) for kind in ("model", "optimizer")}
synthetic |= {"model.safetensors.index.json", "config.json", "trainer_state.json", "run.yaml", "checksums.json", "DONE"}
steps = []
for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    if name.startswith(".") or name in ("jobs", "soups", "distills"):
        continue   # assembly, manifests, deletions: invisible to readers by name; jobs' logs and outputs
    m = re.fullmatch(r"step-(\d{8,})", name)
    assert m, f"unexpected entry {name} in {root}"
    d = os.path.join(root, name)
    files = set(os.listdir(d))
    assert "DONE" in files, f"{d} is visible without DONE"
    manifest = json.load(open(os.path.join(d, "checksums.json")))
    expected = synthetic if ranks > 0 else set(manifest["files"]) | {"checksums.json", "DONE"}
    assert files == expected, f"{d} holds {sorted(files)}, expected {sorted(expected)}"
    assert {"model.safetensors.index.json", "trainer_state.json", "run.yaml"} <= files, f"{d} lacks rank 0's metadata"
    assert manifest["algorithm"] == "sha256" and manifest["step"] == int(m.group(1)), f"{d}/checksums.json: {manifest}"
    assert open(os.path.join(d, "DONE")).read() == f"step {int(m.group(1))}\n", f"{d}/DONE"
    sums = manifest["files"]
    assert set(sums) == expected - {"checksums.json", "DONE"}, f"{d}/checksums.json lists {sorted(sums)}"
    for f, h in sums.items():
        actual = hashlib.sha256(open(os.path.join(d, f), "rb").read()).hexdigest()
        assert actual == h, f"{d}/{f}: SHA-256 {actual} != {h}"
    state = json.load(open(os.path.join(d, "trainer_state.json")))
    assert state["step"] == int(m.group(1)), f"{d} holds step {state['step']}'s trainer state"
    steps.append(int(m.group(1)))
print(max(steps) if steps else "none")
PY
}

# start_service ROOT PORT LOG: starts it in the background (pid in $server) and waits until it answers.
start_service() {
  "$TESSERA" ckpt serve --root "$1" --listen "127.0.0.1:$2" --keep 3 --keep-best 1 --io-timeout 10 2>>"$3" &
  server=$!
  for _ in $(seq 1 100); do
    latest=$("$TESSERA" ckpt upload-test --service "127.0.0.1:$2" --latest 2>/dev/null) && return 0
    sleep 0.1
  done
  echo "the service did not answer within 10 s"; return 1
}

kill_trials() {
  local root=$work/root port log=$work/serve.log clients=$work/clients.log
  export TESSERA_JOB_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  port=$(free_port)
  local committed_total=0 service_kills=0 client_kills=0
  for trial in $(seq 1 "$TRIALS"); do
    start_service "$root" "$port" "$log" || return 1
    on_disk=$(verify_root "$root") || { echo "trial $trial: before uploading"; return 1; }
    [ "$latest" = "$on_disk" ] || { echo "trial $trial: the restarted service reports $latest, the newest complete on disk is $on_disk"; return 1; }
    "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --ranks $RANKS --from $((trial * 1000)) --steps 200 --bytes 300000 >>"$clients" 2>&1 &
    local client=$!
    sleep "0.$((RANDOM % 7 + 1))$((RANDOM % 10))"
    if [ $((trial % 4)) -eq 0 ]; then
      kill -9 "$client"; wait "$client" 2>/dev/null; client_kills=$((client_kills + 1))
      sleep 0.3
      verify_root "$root" >/dev/null || { echo "trial $trial: after killing a client, with the service running"; return 1; }
      kill -9 "$server"; wait "$server" 2>/dev/null
    else
      kill -9 "$server"; wait "$server" 2>/dev/null; service_kills=$((service_kills + 1))
      wait_for_exit "$client" 60; local client_status=$?
      [ "$client_status" -ne 0 ] && [ "$client_status" -ne 124 ] \
        || { echo "trial $trial: the client exited with status $client_status after the service was killed (0: not noticed; 124: it hung)"; return 1; }
    fi
    on_disk=$(verify_root "$root") || { echo "trial $trial: after the kill"; return 1; }
    echo "trial $trial: newest complete step $on_disk"
  done
  committed_total=$(grep -c '^committed step' "$clients")
  echo "$service_kills service kills, $client_kills client kills, $committed_total steps committed in all"
  [ "$committed_total" -gt "$TRIALS" ] || { echo "too few steps committed ($committed_total) for the kills to land during uploads"; return 1; }
  # Kills landed between the parts of a step: restarts found acknowledged parts of unfinished steps.
  local unfinished; unfinished=$(grep -cE 'kept; waiting for the others|removed the unfinished step' "$log")
  echo "$unfinished restart or commit messages about unfinished steps"
  [ "$unfinished" -gt 0 ] || { echo "no kill landed while a step was half delivered"; return 1; }

  # A clean run after all that: commits, reports, and serves back identical files.
  start_service "$root" "$port" "$log" || return 1
  local last=$(((TRIALS + 1) * 1000 + 2))
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --ranks $RANKS --from $((last - 2)) --steps 3 --bytes 300000 \
    --latest --fetch "$last" --cache "$work/cache" >"$work/final.out" 2>&1 || { cat "$work/final.out"; kill -9 "$server"; return 1; }
  kill -9 "$server"; wait "$server" 2>/dev/null
  cat "$work/final.out"
  grep -qx "$last" "$work/final.out" || { echo "latest is not $last"; return 1; }
  [ "$(verify_root "$root")" = "$last" ] || return 1
  diff -r "$root/step-$(printf %08d "$last")" "$work/cache/step-$(printf %08d "$last")" || { echo "fetched files differ"; return 1; }
}

refusals() {
  local root=$work/root-refusals port; port=$(free_port)
  export TESSERA_JOB_TOKEN=$("$TESSERA" token)
  start_service "$root" "$port" "$work/refusals.log" || return 1
  local out; out=$(TESSERA_JOB_TOKEN=$("$TESSERA" token) "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --steps 1 2>&1); local status=$?
  echo "$out"
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --steps 1 --bytes 1000 || { kill -9 "$server"; return 1; }
  kill -9 "$server"; wait "$server" 2>/dev/null
  cat "$work/refusals.log"
  [ "$status" -ne 0 ] && grep -q "checkpoint service at 127.0.0.1:$port: handshake failed" <<<"$out" || return 1
  grep -q "refused a connection from 127.0.0.1" "$work/refusals.log"
}

# A real training run (2 ranks, tessera launch, a checkpoint every step) streaming to the
# service. Trials alternate: the service is killed with SIGKILL at a random moment around saves
# (every rank then fails with one line naming the service once checkpoint.service_retry_seconds,
# 3 s here, have passed without it; the run stops and is resumed) and restarted; or a training rank is killed (a
# survivor names it; the service keeps serving). After each, every checkpoint the service holds
# verifies and loads, and the next trial resumes through the service (`--config F --resume DIR`)
# from the newest. The chain of runs must log the uninterrupted run's losses step by step
# (bitwise: the layout does not change).
TRAIN_STEPS=${SERVICE_TRAIN_STEPS:-400}   # the five trials end well before it, even on a quiet machine
tiny=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
      --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12
      --set train.steps=$TRAIN_STEPS --set train.log_every=1 --set eval.every=0 --set eval.batches=1 --set parallel.timeout_seconds=30)

training_kills() {
  local root=$work/train-root dir=$work/train-run reference=$work/train-reference log=$work/train-serve.log
  local port trial kind job pid rank survivor status start elapsed step=-1 on_disk latest out
  export TESSERA_JOB_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  port=$(free_port)
  "$TESSERA" launch --nproc 2 -- train "${tiny[@]}" --set checkpoint.every=0 --set run.dir="$reference" >"$reference.log" 2>&1 \
    || { echo "the uninterrupted run exited with status $?:"; tail -n 5 "$reference.log"; return 1; }
  # A short retry: these trials check that a service that stays away fails the run with one line.
  local run=("${tiny[@]}" --set checkpoint.every=1 --set checkpoint.keep=2 --set checkpoint.service=127.0.0.1:$port
             --set checkpoint.service_retry_seconds=3)
  server=
  for trial in 1 2 3 4 5 final; do
    case $trial in 1|3|5) kind=service ;; 2|4) kind=rank ;; *) kind=none ;; esac
    if [ -z "$server" ]; then
      start_service "$root" "$port" "$log" || return 1   # (a restart commits a step whose parts all arrived)
    else
      latest=$("$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --latest) || { kill -9 "$server"; return 1; }
    fi
    on_disk=$(verify_root "$root" 0) || { echo "trial $trial: before it started"; kill -9 "$server"; return 1; }
    [ "$latest" = "$on_disk" ] || { echo "trial $trial: the service reports $latest, the newest on disk is $on_disk"; kill -9 "$server"; return 1; }
    if [ "$trial" != 1 ]; then   # the run resumes from the newest the service holds
      [ "$latest" != none ] && [ "$latest" -ge "$step" ] || { echo "trial $trial: the service holds $latest, older than step $step"; kill -9 "$server"; return 1; }
      step=$latest
    fi
    local resume=(); [ "$step" -ge 0 ] && resume=(--resume "$dir")
    [ "$kind" = none ] && break
    timeout -k 5 120 "$TESSERA" launch --nproc 2 -- train "${run[@]}" --set run.dir="$dir" "${resume[@]}" >"$dir.$trial.log" 2>&1 & job=$!
    wait_for_checkpoint_after "$root" "$((step < 0 ? 0 : step))" 60 || { kill -9 "$job" "$server"; tail -n 5 "$dir.$trial.log"; return 1; }
    sleep "0.$((RANDOM % 5))$((RANDOM % 10))"   # 0-0.49 s: about 20 saves at full speed
    if [ "$kind" = service ]; then
      kill -9 "$server"; start=$(now_ms); wait "$server" 2>/dev/null; server=
    else
      pid=; rank=; read -r pid rank < <(job_ranks "$job" | shuf -n 1)
      [ -n "$pid" ] || { echo "trial $trial: the job ended before the kill:"; tail -n 5 "$dir.$trial.log"; kill -9 "$server"; return 1; }
      kill -9 "$pid"; start=$(now_ms)
    fi
    wait "$job"; status=$?; elapsed=$(( $(now_ms) - start ))
    [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$elapsed" -lt 45000 ] \
      || { echo "trial $trial: after the $kind kill the job exited with status $status $(seconds "$elapsed") s later (0: not noticed; 124: it hung)"; tail -n 8 "$dir.$trial.log"; [ -n "$server" ] && kill -9 "$server"; return 1; }
    [ "$step" -lt 0 ] || grep -qE "^(\[rank 0\] )?resumed from step $step of the checkpoint service at 127\.0\.0\.1:$port" "$dir.$trial.log" \
      || { echo "trial $trial: the run did not resume from step $step of the service:"; head -n 8 "$dir.$trial.log"; [ -n "$server" ] && kill -9 "$server"; return 1; }
    if [ "$kind" = service ]; then
      out=$(grep -E "^\[rank [01]\] tessera: rank [01]: error: .*checkpoint service at 127\.0\.0\.1:$port" "$dir.$trial.log" | head -n 1)
    else
      survivor=$((1 - rank))
      out=$(grep -E "^\[rank $survivor\] tessera: rank $survivor: error: rank $rank was lost" "$dir.$trial.log" | head -n 1)
    fi
    [ -n "$out" ] || { echo "trial $trial: no error line names the killed $kind:"; tail -n 8 "$dir.$trial.log"; [ -n "$server" ] && kill -9 "$server"; return 1; }
    on_disk=$(verify_root "$root" 0) || { echo "trial $trial: after the $kind kill"; [ -n "$server" ] && kill -9 "$server"; return 1; }
    ! ls "$dir/checkpoints" 2>/dev/null | grep -q '^step-' || { echo "checkpoints were written under run.dir, not streamed"; return 1; }
    echo "trial $trial: killed the $kind${rank:+ (rank $rank)}; the job ended $(seconds "$elapsed") s later with status $status: $out"
    echo "  newest complete step on the service: $on_disk (the previous trial resumed from: $step)"
    [ "$step" -ge 0 ] || step=0
    rank=
  done
  out=$("$TESSERA" launch --nproc 2 -- train "${run[@]}" --set run.dir="$dir" --resume "$dir" 2>&1); status=$?
  kill -9 "$server"; wait "$server" 2>/dev/null
  [ "$status" -eq 0 ] || { echo "$out" | tail -n 8; echo "the final resume exited with status $status"; return 1; }
  grep -qE "^(\[rank 0\] )?resumed from step $step of the checkpoint service at 127\.0\.0\.1:$port" <<<"$out" \
    || { echo "$out" | head -n 8; echo "the final run did not resume from step $step of the service"; return 1; }
  [ "$(verify_root "$root" 0)" = "$TRAIN_STEPS" ] || { echo "the service does not hold the last step $TRAIN_STEPS"; return 1; }
  echo "restart or commit messages about unfinished steps: $(grep -cE 'kept; waiting for the others|removed the unfinished step' "$log")"
  python3 scripts/compare_losses.py "$reference/metrics.jsonl" "$dir/metrics.jsonl" --exact
}

check "ckpt serve: kill -9 of the service or a client during uploads, $TRIALS trials: the newest with DONE verifies, nothing partial is visible, a restart carries on" kill_trials
check "ckpt serve: a wrong token is refused and logged, the right one is served" refusals
check "ckpt serve: training streams to it; SIGKILL of the service (3 trials) or of a rank (2) around saves: one clear line, no hang, every checkpoint verifies, resumes through the service log the uninterrupted losses (bitwise)" \
  training_kills
# Jobs run as child processes (`tessera ckpt job`): one made to crash through the test-only hook
# TESSERA_TEST_JOB_CRASH (a Swift trap, then SIGKILL) is reported to its client in one line naming
# the signal and its log under ROOT/jobs/, and the service serves uploads and further jobs.
crashed_jobs() {
  local crash root port out status log
  export TESSERA_JOB_TOKEN=$("$TESSERA" token)
  for crash in trap kill; do
    root=$work/root-crash-$crash; port=$(free_port)
    TESSERA_TEST_JOB_CRASH=$crash start_service "$root" "$port" "$work/crash-$crash.log" || return 1
    for attempt in 1 2; do
      out=$(timeout -k 5 60 "$TESSERA" soup --service "127.0.0.1:$port" --method uniform --inputs 1 2 --output s 2>&1); status=$?
      echo "$out"
      [ "$status" -ne 0 ] && [ "$(wc -l <<<"$out")" -eq 1 ] \
        && grep -qE "the soup job \(process [0-9]+\) was killed by signal [0-9]+ \(.+\); its output: $root/jobs/job-[0-9-]+\.log; the service goes on serving" <<<"$out" \
        || { kill -9 "$server"; echo "$crash, attempt $attempt: the crash was not reported in one line with its signal and log (status $status)"; return 1; }
      log=$(grep -oE "$root/jobs/job-[0-9-]+\.log" <<<"$out")
      [ -f "$log" ] || { kill -9 "$server"; echo "no job log at $log"; return 1; }
      "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --steps 1 --from "$attempt" --bytes 1000 \
        || { kill -9 "$server"; echo "$crash: the service did not serve an upload after the crash"; return 1; }
    done
    [ "$crash" != trap ] || grep -q "TESSERA_TEST_JOB_CRASH=trap" "$log" || { kill -9 "$server"; echo "the trap's message is not in $log"; return 1; }
    kill "$server"; wait "$server" 2>/dev/null
    cat "$work/crash-$crash.log"
    [ "$(verify_root "$root" 2)" = 2 ] || { echo "the uploads after the crashes are not both on the service"; return 1; }
  done
}
check "ckpt serve: a job whose process crashes (a trap, SIGKILL) is reported failed in one line with its signal and log; the service serves on" crashed_jobs
check "ckpt serve: refuses to start without a job token" expect_failure 10 "no job token for the checkpoint service" \
  env -u TESSERA_JOB_TOKEN "$TESSERA" ckpt serve --root "$work/no-token" --listen 127.0.0.1:0
rm -rf "$work"
