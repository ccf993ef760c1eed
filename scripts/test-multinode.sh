#!/usr/bin/env bash
# Two "nodes" on one machine: network namespaces joined by a veth pair, each with its own
# hostname (so OpenMPI's shared-memory names do not collide). Runs one mpirun job and one
# TCP-backend job (`tessera launch` per node with a shared hostfile) across them: the
# conformance suite, and a training run that must equal one rank.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
plan 13   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran

source scripts/lib-netns.sh
if ! two_nodes_available; then skip_rest "multi-node tests" "need root, ip (iproute2), unshare and network namespaces"; exit 0; fi
work=$(mktemp -d /tmp/tessera-multinode.XXXXXX)
trap 'cleanup_two_nodes; rm -rf "$work"' EXIT
make_two_nodes "$work" || { echo "FAIL two nodes: could not create the namespaces"; echo fail >>"$RESULTS"; exit 0; }
mpirun_across="$MPIRUN_ACROSS --host $SUBNET.1:2,$SUBNET.2:2 -np 4"

# mpirun must exit 0 and the four ranks report exactly two of each host name.
placement() {
  local out counts
  out=$("$work/on" a "$mpirun_across hostname") || { echo "mpirun exited with status $?"; return 1; }
  counts=$(sort <<<"$out" | uniq -c | tr -s ' ' | sed 's/^ //')
  echo "$counts"
  [ "$counts" = $'2 node-a\n2 node-b' ] || { echo "expected 2 ranks on node-a and 2 on node-b"; return 1; }
}
check "two nodes: mpirun places 2 ranks on each node" placement
check "two nodes: mpirun conformance suite, 4 ranks" conformance "$work/on" a "$mpirun_across $TESSERA selftest comm --large 100003"

cat >"$work/hosts.json" <<JSON
{"master_addr": "$SUBNET.1", "master_port": 29631, "token": "$("$TESSERA" token)",
 "nodes": [{"host": "$SUBNET.1", "nproc": 2, "interface": "veth0"}, {"host": "$SUBNET.2", "nproc": 2, "interface": "veth0"}]}
JSON
# launch_across ARGS...: one `tessera launch` per node, both must succeed.
launch_across() {
  "$work/on" b "$TESSERA launch --hostfile $work/hosts.json --node-rank 1 -- $*" >"$work/node-b.out" 2>&1 &
  local other=$!
  "$work/on" a "$TESSERA launch --hostfile $work/hosts.json --node-rank 0 -- $*"
  local status=$?
  wait "$other" || { echo "node b failed:"; cat "$work/node-b.out"; return 1; }
  return $status
}
check "two nodes: TCP conformance suite, 4 ranks" conformance launch_across selftest comm --large 100003
# Ranks of one node read each other's memory, ranks of the other node go through the sockets.
payload_paths() {
  local out
  out=$(launch_across bench comm --op allreduce --mib 1 --runs 2) || { echo "the launchers exited with status $?"; return 1; }
  python3 -c 'import json,sys; r=json.loads(sys.stdin.readline()); assert r["ranks"]==4 and r["payload_path"]=="mixed", r' <<<"$out"
}
check "two nodes: TCP payloads by memory within a node, by socket across" payload_paths

tiny="--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2 --set model.kv_heads=1 \
  --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12 --set train.steps=10 --set train.log_every=1 \
  --set eval.every=0 --set eval.batches=2 --set checkpoint.every=0 --set data.dir=$PWD/data/shakespeare"
check "two nodes: 1-rank reference run" "$TESSERA" train $tiny --set run.dir="$work/one"
# Equal in loss and gradient norm at every step (trains_like appends --set run.dir=...).
check "two nodes: mpirun training equals one rank" trains_like "$work/one" "$work/mpi" "$work/on" a "$mpirun_across $TESSERA train $tiny"
check "two nodes: TCP training equals one rank" trains_like "$work/one" "$work/tcp" launch_across train $tiny
# parallel.tcp_seal=auto seals what crosses the link (rank 0's connections to node b's two ranks),
# not the connection within node a, and changes no number.
sealed_across() {
  launch_across train $tiny --set parallel.tcp_seal=auto "$@" 2>&1 | tee "$work/sealed.log"
  local status=${PIPESTATUS[0]}
  grep -q "rank 0 seals 2 of its 3 connections (parallel.tcp_seal=auto)" "$work/sealed.log" || { echo "rank 0 did not seal exactly its 2 connections across the link"; return 1; }
  return "$status"
}
check "two nodes: TCP training with parallel.tcp_seal=auto (sealed across the link, not within a node) equals one rank" \
  trains_like "$work/one" "$work/tcp-sealed" sealed_across
# One sequence over all 4 ranks (ring attention, zigzag chunks): K/V units cross the veth link
# between the nodes at every ring step.
check "two nodes: mpirun ring attention 1×4 (sequence over both nodes) equals one rank" \
  trains_like "$work/one" "$work/ring-mpi" "$work/on" a "$mpirun_across $TESSERA train $tiny --set parallel.sequence=4"
check "two nodes: TCP ring attention 1×4 equals one rank" trains_like "$work/one" "$work/ring-tcp" launch_across train $tiny --set parallel.sequence=4
# Mixture of experts across nodes: 4 ranks = 2 expert groups of 2 (one group per node with
# mpirun's placement), the experts' all-to-all crossing the veth link for the TCP launchers.
moe="$tiny --set moe.experts=4 --set moe.expert_hidden=32 --set moe.layers=all"
check "two nodes: 1-rank MoE reference run" "$TESSERA" train $moe --set run.dir="$work/moe-one"
check "two nodes: mpirun MoE data × expert 2×2 equals one rank" trains_like "$work/moe-one" "$work/moe-mpi" "$work/on" a "$mpirun_across $TESSERA train $moe --set parallel.expert=2"
check "two nodes: TCP MoE expert 4 (experts across nodes) equals one rank" trains_like "$work/moe-one" "$work/moe-tcp" launch_across train $moe --set parallel.expert=4
