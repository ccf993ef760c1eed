#!/usr/bin/env bash
# The checkpoint service and the rendezvous on a hostile network (issue 20), through the
# executable on 127.0.0.1: numbers over their limits refused and the service kept serving (a
# part of 2^40 ranks; the same left on disk by an older build, moved aside at start-up), steps
# beyond 32 bits under their own names, tampered frames refused, weak tokens refused, slow and silent strangers that
# delay neither an honest client nor a rendezvous; the training mesh sealed (parallel.tcp_seal) gives
# the numbers it gives in clear, and a tampering proxy on it ends the job naming the rank. scripts/hostile_client.py plays the stranger.
set -uo pipefail
cd "$(dirname "$0")/.."
standalone=${RESULTS:-yes}
source scripts/lib.sh
plan 12   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-hostile.XXXXXX)
export TESSERA_JOB_TOKEN=$("$TESSERA" token)
hostile=(python3 scripts/hostile_client.py)   # an array, not a function: $! of a background one is python itself
sha=$(printf 'ab%.0s' $(seq 32))

part_of_2_40_ranks() {
  local out
  serve "$work/root-ranks" "$work/ranks.log" || return 1
  out=$("${hostile[@]}" part 127.0.0.1 "$port" "{\"step\": 3, \"rank\": 0, \"ranks\": 1099511627776, \"files\": []}" 2>&1)
  echo "$out"
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --steps 1 --ranks 1 --bytes 1000 || { kill "$server"; return 1; }
  kill "$server"; wait "$server" 2>/dev/null
  cat "$work/ranks.log"
  grep -q "ranks 1099511627776 is outside 1...65536" <<<"$out" || { echo "the refusal does not name the field and the limit"; return 1; }
  ! ls -A "$work/root-ranks" | grep -q '^\.step-00000003' || { echo "something of the refused part is on disk"; return 1; }
}

tampered_frames() {
  local mode out
  serve "$work/root-tamper" "$work/tamper.log" || return 1
  for mode in flip replay inject; do
    out=$("${hostile[@]}" tamper 127.0.0.1 "$port" "$mode" 2>&1)
    echo "$mode: $out"
    grep -q "reply 21 .*fails authentication" <<<"$out" || { kill "$server"; echo "$mode: no refusal naming the failed authentication"; return 1; }
  done
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --from 10 --steps 1 --ranks 1 --bytes 1000 || { kill "$server"; return 1; }
  kill "$server"; wait "$server" 2>/dev/null
  cat "$work/tamper.log"
  [ "$(grep -c "at 127.0.0.1:[0-9]* failed: .*fails authentication" "$work/tamper.log")" -eq 3 ] || { echo "the log does not name the peer of each"; return 1; }
  [ ! -e "$work/root-tamper/step-00000009" ] || { echo "a tampered part was committed"; return 1; }
}

manifest_of_2_40_ranks_on_disk() {
  local root=$work/root-disk
  mkdir -p "$root/.step-00000005.parts" "$root/.step-00000005.partial"
  echo "{\"step\": 5, \"rank\": 0, \"ranks\": 1099511627776, \"files\": [{\"name\": \"a\", \"size\": 1, \"sha256\": \"$sha\"}]}" \
    >"$root/.step-00000005.parts/rank-0.json"
  serve "$root" "$work/disk.log" || return 1
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --from 6 --steps 1 --ranks 2 --bytes 1000 --latest || { kill "$server"; return 1; }
  kill "$server"; wait "$server" 2>/dev/null
  cat "$work/disk.log"
  grep -q "moved step 5's unfinished state aside to $root/.rejected/step-00000005-" "$work/disk.log" || return 1
  [ -f "$root/step-00000006/DONE" ] && [ ! -e "$root/.step-00000005.parts" ]
}

step_beyond_32_bits() {
  local step=4294967301
  serve "$work/root-big" "$work/big.log" || return 1
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --from 500 --steps 1 --ranks 1 --bytes 1000 &&
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --from $step --steps 1 --ranks 2 --bytes 1000 --latest \
    --fetch $step --cache "$work/cache-big" >"$work/big.out" || { kill "$server"; return 1; }
  kill "$server"; wait "$server" 2>/dev/null
  cat "$work/big.out"; ls "$work/root-big"
  [ -f "$work/root-big/step-$step/DONE" ] && [ -f "$work/root-big/step-00000500/DONE" ] || { echo "not both step-$step and step-00000500"; return 1; }
  grep -qx "$step" "$work/big.out" && grep -qx "$work/cache-big/step-$step" "$work/big.out" || return 1
  "$TESSERA" ckpt verify "$work/root-big/step-$step"
}

slow_strangers_and_an_honest_client() {
  local root=$work/root-slow start elapsed out
  port=$(free_port)
  (ulimit -n 256; exec "$TESSERA" ckpt serve --root "$root" --listen "127.0.0.1:$port" --io-timeout 60) >>"$work/slow.log" 2>&1 &
  server=$!
  "${hostile[@]}" silent 127.0.0.1 "$port" 300 9 --trickle >"$work/strangers.out" 2>&1 &
  local strangers=$!
  for _ in $(seq 1 100); do grep -q ready "$work/strangers.out" && break; sleep 0.1; done
  grep -q ready "$work/strangers.out" || { cat "$work/strangers.out"; kill "$server" "$strangers"; return 1; }
  start=$(now_ms)
  out=$(timeout 10 "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --latest 2>&1); local status=$?
  elapsed=$(( $(now_ms) - start ))
  wait "$strangers"
  kill "$server"; wait "$server" 2>/dev/null
  cat "$work/strangers.out"; tail -n 3 "$work/slow.log"
  echo "honest client: status $status after $(seconds "$elapsed") s: $out"
  [ "$status" -eq 0 ] && [ "$elapsed" -lt 2000 ] || { echo "the honest client was not served within 2 s"; return 1; }
  grep -q "closed by the other end: 300 of 300" "$work/strangers.out" || { echo "strangers sending a byte a second were kept past the handshake deadline"; return 1; }
}

# The ranks are started by hand (as tessera launch starts them) so that the strangers are
# surely in rank 0's accept queue before rank 1: rank 1 starts once they are connected.
silent_strangers_and_a_rendezvous() {
  local master start elapsed s0 s1 r0 strangers
  master=$(free_port)
  local env=(env TESSERA_WORLD_SIZE=2 TESSERA_MASTER_ADDR=127.0.0.1 TESSERA_MASTER_PORT="$master")
  timeout -k 5 90 "${env[@]}" TESSERA_RANK=0 "$TESSERA" selftest comm --backend tcp >"$work/rank0.out" 2>&1 & r0=$!
  "${hostile[@]}" silent 127.0.0.1 "$master" 12 40 >"$work/launch-strangers.out" 2>&1 & strangers=$!
  for _ in $(seq 1 100); do grep -q ready "$work/launch-strangers.out" && break; sleep 0.1; done
  grep -q ready "$work/launch-strangers.out" || { echo "the strangers never connected"; kill "$r0" "$strangers"; return 1; }
  start=$(now_ms)
  timeout -k 5 90 "${env[@]}" TESSERA_RANK=1 "$TESSERA" selftest comm --backend tcp >"$work/rank1.out" 2>&1; s1=$?
  wait "$r0"; s0=$?
  elapsed=$(( $(now_ms) - start ))
  kill "$strangers" 2>/dev/null; wait "$strangers" 2>/dev/null
  cat "$work/rank0.out"; grep -v '^PASS' "$work/rank1.out"
  echo "ranks exited with $s0 and $s1 $(seconds "$elapsed") s after rank 1 started (the strangers stay 40 s)"
  [ "$s0" -eq 0 ] && [ "$s1" -eq 0 ] && [ "$elapsed" -lt 15000 ] || { echo "the rendezvous waited for the strangers"; return 1; }
}

distill_outside_root() {
  local a b
  serve "$work/root-jobs" "$work/jobs.log" || return 1
  a=$(timeout 30 "$TESSERA" distill --service "127.0.0.1:$port" --teacher "$PWD/configs" --config configs/distill.yaml --output s 2>&1)
  b=$(timeout 30 "$TESSERA" distill --service "127.0.0.1:$port" --teacher "$PWD/no-such-dir" --config configs/distill.yaml --output s 2>&1)
  kill "$server"; wait "$server" 2>/dev/null
  echo "$a"; echo "$b"
  grep -q "the job input $PWD/configs is not under the service's root" <<<"$a" || return 1
  [ "${a//configs/X}" = "${b//no-such-dir/X}" ] || { echo "the refusals differ beyond the path: they tell whether it exists"; return 1; }
}

# A 2-rank training run (2000 steps, a few seconds) streaming a checkpoint every 50 steps; the service is killed (SIGKILL, at a
# random moment around saves, so sometimes mid-commit) and started again 12 s later: the ranks
# retry, the run completes, and every step that was due is on the service and verifies.
outage() {
  local root=$work/root-outage dir=$work/run-outage log=$work/outage.log steps=2000 every=50 status missing=()
  port=$(free_port)
  local tiny=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
              --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12
              --set train.steps=$steps --set eval.every=0 --set eval.batches=1 --set checkpoint.every=$every
              --set checkpoint.service=127.0.0.1:$port --set checkpoint.service_retry_seconds=60 --set run.dir="$dir")
  "$TESSERA" ckpt serve --root "$root" --listen "127.0.0.1:$port" --keep 1000 2>>"$log" & server=$!
  timeout -k 5 180 "$TESSERA" launch --nproc 2 -- train "${tiny[@]}" >"$work/outage-train.log" 2>&1 & local job=$!
  wait_for_checkpoint_after "$root" 0 60 || { kill -9 "$job" "$server"; tail -n 5 "$work/outage-train.log"; return 1; }
  sleep "0.$((RANDOM % 5))$((RANDOM % 10))"
  kill -9 "$server"; wait "$server" 2>/dev/null
  local killed_at; killed_at=$(ls "$root" | grep -c '^step-')
  sleep 12   # longer than a connection attempt's 10 s, so the ranks' retries (not connect's) bridge it
  "$TESSERA" ckpt serve --root "$root" --listen "127.0.0.1:$port" --keep 1000 2>>"$log" & server=$!
  wait "$job"; status=$?
  kill "$server"; wait "$server" 2>/dev/null
  tail -n 4 "$work/outage-train.log"; grep -m 3 "not delivered" "$work/outage-train.log"
  echo "killed the service with $killed_at steps committed; the run exited with status $status"
  [ "$status" -eq 0 ] || { echo "the run did not survive the outage"; return 1; }
  grep -q "not delivered" "$work/outage-train.log" || { echo "no rank retried: the kill missed the saves"; return 1; }
  for ((s = every; s <= steps; s += every)); do
    [ -f "$root/$(printf 'step-%08d' $s)/DONE" ] || missing+=("$s")
  done
  [ ${#missing[@]} -eq 0 ] || { echo "steps due but not on the service: ${missing[*]}"; return 1; }
  "$TESSERA" ckpt verify "$root" >/dev/null
}

# A 2-rank launch with its payloads through the sockets (not same-host memory), sealed and in
# clear: the losses of every step are bitwise equal, and the sealed run says it sealed.
tiny_mesh=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
           --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12 --set train.steps=30
           --set train.log_every=1 --set eval.every=0 --set eval.batches=1 --set checkpoint.every=0)
sealed_training_equals_clear() {
  local seal
  for seal in off on; do
    TESSERA_TCP_SAME_HOST=socket timeout -k 5 120 "$TESSERA" launch --nproc 2 -- train "${tiny_mesh[@]}" \
      --set parallel.tcp_seal=$seal --set run.dir="$work/mesh-$seal" >"$work/mesh-$seal.log" 2>&1 \
      || { tail -n 5 "$work/mesh-$seal.log"; echo "the run with tcp_seal=$seal failed"; return 1; }
  done
  grep "connections (parallel.tcp_seal" "$work/mesh-on.log"
  grep -q "rank 0 seals 1 of its 1 connections (parallel.tcp_seal=on)" "$work/mesh-on.log" || { echo "the sealed run did not seal"; return 1; }
  ! grep -q "parallel.tcp_seal=" "$work/mesh-off.log" || { echo "the run in clear says it sealed"; return 1; }
  python3 scripts/compare_losses.py "$work/mesh-off/metrics.jsonl" "$work/mesh-on/metrics.jsonl" --exact
}

# A proxy between rank 1 and rank 0 (the ranks started by hand, rank 1 pointed at the proxy)
# flips a byte, injects 64 bytes or drops 1000 of rank 1's sealed traffic once 200 kB have gone
# through: rank 0 ends the job naming rank 1 well before the 30 s deadline, not a hang, and
# rank 1, told by rank 0's abort notice, names the same tampering rather than a lost rank.
tampering_proxy_on_the_mesh() {
  local mode master relay proxy r0 s0 s1 start elapsed
  local env=(env TESSERA_WORLD_SIZE=2 TESSERA_MASTER_ADDR=127.0.0.1 TESSERA_TCP_SAME_HOST=socket)
  local bench=(bench comm --backend tcp --tcp-seal on --timeout 30 --op allreduce --mib 1 --runs 50)
  for mode in flip inject drop; do
    master=$(free_port); relay=$(free_port)
    "${hostile[@]}" proxy "$relay" "$master" "$mode" 200000 >"$work/proxy-$mode.out" 2>&1 & proxy=$!
    for _ in $(seq 1 100); do grep -q ready "$work/proxy-$mode.out" && break; sleep 0.1; done
    start=$(now_ms)
    timeout -k 5 60 "${env[@]}" TESSERA_RANK=0 TESSERA_MASTER_PORT="$master" "$TESSERA" "${bench[@]}" >"$work/mesh0-$mode.out" 2>&1 & r0=$!
    timeout -k 5 60 "${env[@]}" TESSERA_RANK=1 TESSERA_MASTER_PORT="$relay" "$TESSERA" "${bench[@]}" >"$work/mesh1-$mode.out" 2>&1; s1=$?
    wait "$r0"; s0=$?
    elapsed=$(( $(now_ms) - start ))
    kill "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null
    echo "$mode: $(head -n 1 "$work/proxy-$mode.out" | tr -d '\n'), $(grep tampered "$work/proxy-$mode.out"); ranks exited with $s0 and $s1 after $(seconds "$elapsed") s"
    echo "  rank 0: $(grep -v '^{' "$work/mesh0-$mode.out" | tail -n 1)"
    echo "  rank 1: $(grep -v '^{' "$work/mesh1-$mode.out" | tail -n 1)"
    grep -q "tampered at" "$work/proxy-$mode.out" || { echo "$mode: the proxy never tampered"; return 1; }
    [ "$s0" -ne 0 ] && [ "$s1" -ne 0 ] || { echo "$mode: a rank exited 0 over a tampered link"; return 1; }
    grep -q "a sealed frame from rank 1 failed authentication during allReduce" "$work/mesh0-$mode.out" \
      || { echo "$mode: rank 0 did not name rank 1's failed authentication"; return 1; }
    grep -q "a sealed frame from rank 1 failed authentication during allReduce" "$work/mesh1-$mode.out" \
      || { echo "$mode: rank 1 did not name the tampering (rank 0's abort notice names it)"; return 1; }
    [ "$elapsed" -lt 20000 ] || { echo "$mode: the ranks took $(seconds "$elapsed") s: a hang until the deadline, not a named error"; return 1; }
  done
}

check "hostile: a part of 2^40 ranks is refused naming the field and the limit; the service serves" part_of_2_40_ranks
check "hostile: sealed frames: a flipped, replayed or injected frame ends the connection naming the peer, nothing committed" tampered_frames
check "hostile: a manifest of 2^40 ranks on disk is moved aside at start-up, named in one line; the service serves" manifest_of_2_40_ranks_on_disk
check "hostile: step 2^32+5 round-trips under its own name (step-4294967301) beside step 500" step_beyond_32_bits
check "hostile: ckpt serve refuses a token under 128 bits, saying how to make one" expect_failure 10 "tessera token" \
  env TESSERA_JOB_TOKEN=hunter2 "$TESSERA" ckpt serve --root "$work/weak" --listen 127.0.0.1:0
check "hostile: launch refuses a token under 128 bits, saying how to make one" expect_failure 10 "tessera token" \
  env TESSERA_JOB_TOKEN=hunter2 "$TESSERA" launch --nproc 2 -- selftest comm
check "hostile: 300 strangers sending a byte a second under ulimit -n 256; an honest client is served within 2 s, the strangers dropped at the handshake deadline" \
  slow_strangers_and_an_honest_client
check "hostile: 12 silent connections queued on rank 0's master port before rank 1; the 2-rank rendezvous completes at once" \
  conformance silent_strangers_and_a_rendezvous
check "hostile: kill -9 of the service around saves, restarted 12 s later: the ranks retry, the run completes, every step due is delivered and verifies" outage
check "hostile: a distill job's teacher outside --root is refused alike whether it exists or not" distill_outside_root
check "hostile: a 2-rank launch with parallel.tcp_seal=on (payloads through the sockets) gives bitwise the losses of the same run in clear" \
  sealed_training_equals_clear
check "hostile: a proxy flipping, injecting or dropping bytes of the sealed mesh ends the job naming rank 1 within seconds" \
  tampering_proxy_on_the_mesh
rm -rf "$work"

if [ "$standalone" = yes ]; then
  account "$0" 0 0
  summary
fi
