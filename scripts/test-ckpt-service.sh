#!/usr/bin/env bash
# The checkpoint service under kill -9: `tessera ckpt serve` is killed at random moments while
# three synthetic ranks (`tessera ckpt upload-test`, a testing tool) upload parts, and in some
# trials an uploading client is killed instead. After each kill, every visible step-* directory
# must be complete (DONE), verify against its checksums.json, hold exactly the parts' files and
# load (`tessera ckpt verify`);
# the restarted service must report the newest of them and carry on, and a final clean run must
# commit and serve back identical files. Also: a wrong token is refused with the address named,
# and the service refuses to start without a token.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
work=$(mktemp -d /tmp/tessera-ckpt-service.XXXXXX)
TRIALS=${CKPT_KILL_TRIALS:-24}
RANKS=3

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# verify_root ROOT: prints the newest complete step (or "none"); fails when any visible step-*
# directory is incomplete, does not verify, holds other files than the parts', or does not load.
verify_root() {
  local newest
  newest=$(verify_files "$1") || return 1
  if [ "$newest" != none ]; then
    "$TESSERA" ckpt verify "$1" >/dev/null || { echo "tessera ckpt verify $1 failed" >&2; return 1; }
  fi
  echo "$newest"
}

# verify_files ROOT: the file-level checks of verify_root (the layout CheckpointCommit writes).
verify_files() {
  python3 - "$1" "$RANKS" <<'PY'
import hashlib, json, os, re, sys
root, ranks = sys.argv[1], int(sys.argv[2])
expected = {f"{kind}-{r + 1:05d}-of-{ranks:05d}.safetensors" for r in range(ranks) for kind in ("model", "optimizer")}
expected |= {"model.safetensors.index.json", "config.json", "trainer_state.json", "run.yaml", "checksums.json", "DONE"}
steps = []
for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    if name.startswith("."):
        continue   # assembly, manifests, deletions: invisible to readers by name
    m = re.fullmatch(r"step-(\d{8})", name)
    assert m, f"unexpected entry {name} in {root}"
    d = os.path.join(root, name)
    files = set(os.listdir(d))
    assert "DONE" in files, f"{d} is visible without DONE"
    assert files == expected, f"{d} holds {sorted(files)}, expected {sorted(expected)}"
    manifest = json.load(open(os.path.join(d, "checksums.json")))
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
      wait "$client" 2>/dev/null && { echo "trial $trial: the client did not notice the service was killed"; return 1; }
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
  export TESSERA_JOB_TOKEN=right-token
  start_service "$root" "$port" "$work/refusals.log" || return 1
  local out; out=$(TESSERA_JOB_TOKEN=wrong-token "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --steps 1 2>&1); local status=$?
  echo "$out"
  "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --steps 1 --bytes 1000 || { kill -9 "$server"; return 1; }
  kill -9 "$server"; wait "$server" 2>/dev/null
  cat "$work/refusals.log"
  [ "$status" -ne 0 ] && grep -q "checkpoint service at 127.0.0.1:$port: handshake failed" <<<"$out" || return 1
  grep -q "refused a connection from 127.0.0.1" "$work/refusals.log"
}

check "ckpt serve: kill -9 of the service or a client during uploads, $TRIALS trials: the newest with DONE verifies, nothing partial is visible, a restart carries on" kill_trials
check "ckpt serve: a wrong token is refused and logged, the right one is served" refusals
check "ckpt serve: refuses to start without a job token" expect_failure 10 "no job token for the checkpoint service" \
  env -u TESSERA_JOB_TOKEN "$TESSERA" ckpt serve --root "$work/no-token" --listen 127.0.0.1:0
rm -rf "$work"
