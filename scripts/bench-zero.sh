#!/usr/bin/env bash
# What the ZeRO stages cost in speed: `bench train` (tokens/s, state_mib, peak_rss_mib) of 2 ranks
# at parallel.zero = 0, 1, 2, 3, in interleaved rounds,
#   1. on one host (scripts/mpirun.sh 2);
#   2. across two simulated nodes (network namespaces joined by a veth pair, scripts/lib-netns.sh;
#      needs root), one rank each under `tessera launch` (clear TCP: tcp_seal off, so the figure is
#      the stages' own cost), the link unlimited or limited to RATE (e.g. 10gbit).
# Prints the `bench train` lines (key zero) with the setting on stderr.
# Usage: scripts/bench-zero.sh [ROUNDS=3] [CONFIG=configs/bench-dense.yaml] [RATE]
set -uo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3} config=${2:-configs/bench-dense.yaml} rate=${3:-}
B=$PWD/.build/release/tessera
export TESSERA_JOB_TOKEN=$("$B" token)
bench=(bench train --config "$PWD/$config" --steps 20 --warmup 5)

for ((i = 1; i <= rounds; i++)); do
  for zero in 0 1 2 3; do
    echo "one host, mpirun 2, round $i, zero=$zero" >&2
    scripts/mpirun.sh 2 "${bench[@]}" --set parallel.zero=$zero 2>/dev/null | grep '^{'
  done
done

source scripts/lib-netns.sh
two_nodes_available || { echo "bench-zero: two nodes need root, ip, unshare and network namespaces; skipped" >&2; exit 0; }
work=$(mktemp -d /tmp/tessera-zero.XXXXXX)
trap 'cleanup_two_nodes; rm -rf "$work"' EXIT
make_two_nodes "$work" "$rate" || { echo "bench-zero: could not make the namespaces" >&2; exit 1; }
cat >"$work/hosts.json" <<JSON
{"master_addr": "$SUBNET.1", "master_port": 29651, "token": "$TESSERA_JOB_TOKEN",
 "nodes": [{"host": "$SUBNET.1", "nproc": 1, "interface": "veth0"}, {"host": "$SUBNET.2", "nproc": 1, "interface": "veth0"}]}
JSON
for ((i = 1; i <= rounds; i++)); do
  for zero in 0 1 2 3; do
    echo "two nodes (veth${rate:+, $rate}), round $i, zero=$zero" >&2
    args="${bench[*]} --set parallel.zero=$zero --tcp-seal off"
    "$work/on" b "$B launch --hostfile $work/hosts.json --node-rank 1 -- $args" >/dev/null 2>&1 &
    other=$!
    "$work/on" a "$B launch --hostfile $work/hosts.json --node-rank 0 -- $args" 2>/dev/null | grep '^{'
    wait "$other"
  done
done
