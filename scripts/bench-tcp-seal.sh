#!/usr/bin/env bash
# What parallel.tcp_seal costs: allreduce bandwidth (`bench comm`, GB/s per rank) of 2 ranks
# under `tessera launch`, sealed (--tcp-seal on) and in clear (off), in interleaved pairs.
#   1. one host, payloads through the loopback sockets (TESSERA_TCP_SAME_HOST=socket: what
#      crosses a network between hosts; same-host payloads read from memory are never sealed);
#   2. two simulated nodes (network namespaces joined by a veth pair, scripts/lib-netns.sh;
#      needs root), one rank each, the link unlimited or limited to RATE (e.g. 10gbit).
# Prints the `bench comm` lines (keys tcp_seal, payload_path) with the setting on stderr.
# Usage: scripts/bench-tcp-seal.sh [PAIRS=3] [MIB=16] [RATE]
set -uo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-3} mib=${2:-16} rate=${3:-}
B=$PWD/.build/release/tessera
export TESSERA_JOB_TOKEN=$("$B" token)
bench=(bench comm --op allreduce --mib "$mib" --runs 10 --warmup 2)

for ((i = 1; i <= pairs; i++)); do
  for seal in on off; do
    echo "one host, sockets, pair $i, tcp_seal=$seal" >&2
    TESSERA_TCP_SAME_HOST=socket "$B" launch --nproc 2 -- "${bench[@]}" --tcp-seal "$seal" 2>/dev/null | grep '^{'
  done
done

source scripts/lib-netns.sh
bench_two_nodes seal 29641 "$rate" || exit 0
for ((i = 1; i <= pairs; i++)); do
  for seal in on off; do
    echo "two nodes (veth${rate:+, $rate}), pair $i, tcp_seal=$seal" >&2
    launch_two_nodes "$B" "${bench[*]} --tcp-seal $seal"
  done
done
