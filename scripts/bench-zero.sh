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
bench_two_nodes zero 29651 "$rate" || exit 0
for ((i = 1; i <= rounds; i++)); do
  for zero in 0 1 2 3; do
    echo "two nodes (veth${rate:+, $rate}), round $i, zero=$zero" >&2
    launch_two_nodes "$B" "${bench[*]} --set parallel.zero=$zero --tcp-seal off"
  done
done
