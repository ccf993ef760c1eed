# Two simulated nodes (sourced by test-multinode.sh and bench-overlap.sh).
# two_nodes_available: true when namespaces can be made here (root, ip, unshare).
# make_two_nodes WORK [RATE]: namespaces $NODE_A and $NODE_B joined by a veth pair with
#   addresses $SUBNET.1 and $SUBNET.2, each with its own hostname; RATE (e.g. 1gbit) limits the
#   link with a token bucket. Defines $WORK/on (run a command on node a or b), $WORK/agent
#   (OpenMPI's launch agent) and $MPIRUN_ACROSS (mpirun over both nodes, add -np and --host).
#   Removed by cleanup_two_nodes.
SUBNET=10.231.77

two_nodes_available() {
  [ "$(id -u)" -eq 0 ] && command -v ip >/dev/null && command -v unshare >/dev/null || return 1
  local probe="tsr-probe-$$"
  ip netns add "$probe" 2>/dev/null || return 1
  ip netns del "$probe"
}

make_two_nodes() {
  local work=$1 rate=${2:-}
  NODE_A="tsr-a-$$" NODE_B="tsr-b-$$"
  ip netns add "$NODE_A" && ip netns add "$NODE_B" || return 1
  ip link add "va$$" type veth peer name "vb$$"
  ip link set "va$$" netns "$NODE_A" && ip link set "vb$$" netns "$NODE_B"
  ip -n "$NODE_A" link set "va$$" name veth0 && ip -n "$NODE_B" link set "vb$$" name veth0
  ip -n "$NODE_A" addr add $SUBNET.1/24 dev veth0 && ip -n "$NODE_B" addr add $SUBNET.2/24 dev veth0
  for ns in "$NODE_A" "$NODE_B"; do
    ip -n "$ns" link set veth0 up; ip -n "$ns" link set lo up
    [ -n "$rate" ] && ip netns exec "$ns" tc qdisc add dev veth0 root tbf rate "$rate" burst 256kb latency 100ms
  done
  cat >"$work/on" <<SH
#!/usr/bin/env bash
node=\$1; shift
case "\$node" in a|$SUBNET.1) ns=$NODE_A; name=node-a ;; b|$SUBNET.2) ns=$NODE_B; name=node-b ;; *) echo "no node \$node" >&2; exit 1 ;; esac
exec ip netns exec "\$ns" unshare --uts bash -c "hostname \$name; \$*"
SH
  chmod +x "$work/on"
  printf '#!/usr/bin/env bash\nhost=$1; shift\nexec %q "$host" "$@"\n' "$work/on" >"$work/agent"
  chmod +x "$work/agent"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  MPIRUN_ACROSS="mpirun --bind-to none --mca plm_rsh_agent $work/agent --mca btl self,vader,tcp \
    --mca btl_tcp_if_include $SUBNET.0/24 --mca oob_tcp_if_include $SUBNET.0/24 -x OPENBLAS_NUM_THREADS=1"
}

cleanup_two_nodes() {
  [ -n "${NODE_A:-}" ] && ip netns del "$NODE_A" 2>/dev/null
  [ -n "${NODE_B:-}" ] && ip netns del "$NODE_B" 2>/dev/null
  return 0
}

# Benchmarks over the two nodes, one rank each under `tessera launch` (token TESSERA_JOB_TOKEN).
# bench_two_nodes NAME PORT [RATE]: makes the nodes (cleaned up at exit) and $work/hosts.json,
# or says why not and returns 1 (then the caller skips).
bench_two_nodes() {
  local name=$1 port=$2 rate=${3:-}
  two_nodes_available || { echo "$name: two nodes need root, ip, unshare and network namespaces; skipped" >&2; return 1; }
  work=$(mktemp -d "/tmp/tessera-$name.XXXXXX")
  trap 'cleanup_two_nodes; rm -rf "$work"' EXIT
  make_two_nodes "$work" "$rate" || { echo "$name: could not make the namespaces" >&2; exit 1; }
  cat >"$work/hosts.json" <<JSON
{"master_addr": "$SUBNET.1", "master_port": $port, "token": "$TESSERA_JOB_TOKEN",
 "nodes": [{"host": "$SUBNET.1", "nproc": 1, "interface": "veth0"}, {"host": "$SUBNET.2", "nproc": 1, "interface": "veth0"}]}
JSON
}

# launch_two_nodes BINARY ARGS...: one launcher per node; node a's JSON lines on stdout.
launch_two_nodes() {
  local binary=$1; shift
  "$work/on" b "$binary launch --hostfile $work/hosts.json --node-rank 1 -- $*" >/dev/null 2>&1 &
  local other=$!
  "$work/on" a "$binary launch --hostfile $work/hosts.json --node-rank 0 -- $*" 2>/dev/null | grep '^{'
  wait "$other"
}
