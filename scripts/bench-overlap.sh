#!/usr/bin/env bash
# Does overlapping the gradient all-reduce with the backward pass help? Two simulated nodes
# (network namespaces) joined by a link limited to RATE (default 1gbit), one rank each, the
# bench-dense model, with parallel.overlap on and off. Prints the two `bench train` lines.
# Needs root. Usage: scripts/bench-overlap.sh [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-netns.sh
two_nodes_available || { echo "bench-overlap: needs root, ip, unshare and network namespaces" >&2; exit 1; }
work=$(mktemp -d /tmp/tessera-overlap.XXXXXX)
trap 'cleanup_two_nodes; rm -rf "$work"' EXIT
make_two_nodes "$work" "${1:-1gbit}"
for overlap in true false; do
  "$work/on" a "$MPIRUN_ACROSS --host $SUBNET.1:1,$SUBNET.2:1 -np 2 $PWD/.build/release/tessera bench train \
    --config $PWD/configs/bench-dense.yaml --set data.dir=$PWD/data/shakespeare --set parallel.overlap=$overlap" 2>/dev/null
done
