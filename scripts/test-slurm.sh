#!/usr/bin/env bash
# Runs cluster/slurm.sbatch for real on a single-node Slurm that this script starts (and stops):
# once with `srun --mpi=pmix`, once with mpirun inside the allocation.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
plan 3   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran

if [ "$(id -u)" -ne 0 ]; then skip_rest "Slurm tests" "need root to start slurmctld, slurmd and munged"; exit 0; fi
need=""
for p in slurmctld slurmd slurm-client munge; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need="$need $p"
done
if [ -n "$need" ]; then
  echo "==> installing$need"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null; } \
    || { echo "FAIL Slurm tests: apt-get could not install$need"; echo fail >>"$RESULTS"; exit 0; }
fi

scratch=$(mktemp -d /tmp/tessera-slurm.XXXXXX)
chmod 755 "$scratch"
node=tessera-node
host=$(hostname)
export SLURM_CONF="$scratch/slurm.conf"
# Two ports nothing listens on now (a fixed or pid-derived port can be taken by another job).
read -r ctld_port slurmd_port < <(python3 -c 'import socket
ports = []
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s)
print(*[p.getsockname()[1] for p in ports])')
cat >"$SLURM_CONF" <<CONF
ClusterName=tessera-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$scratch/state
SlurmdSpoolDir=$scratch/spool
SlurmctldPidFile=$scratch/slurmctld.pid
SlurmdPidFile=$scratch/slurmd.pid
SlurmctldLogFile=$scratch/slurmctld.log
SlurmdLogFile=$scratch/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=test Nodes=$node Default=YES MaxTime=30 State=UP
CONF
mkdir -p "$scratch/state" "$scratch/spool" "$scratch/munge"
chmod 755 "$scratch/munge"

munge_pid="" ctl_pid="" slurmd_pid=""
stop() {
  [ -n "$slurmd_pid" ] && kill "$slurmd_pid" 2>/dev/null
  [ -n "$ctl_pid" ] && kill "$ctl_pid" 2>/dev/null
  [ -n "$munge_pid" ] && kill "$munge_pid" 2>/dev/null
  sleep 1
  rm -rf "$scratch"
}
trap stop EXIT

# munged with its socket in the scratch folder (mode 0755), so it does not clash with a system one.
socket="$scratch/munge/munge.socket.2"
munged --force --socket="$socket" --pid-file="$scratch/munge/munged.pid" --log-file="$scratch/munge/munged.log" \
  --seed-file="$scratch/munge/seed" 2>"$scratch/munged.err" || { echo "FAIL Slurm tests: munged did not start: $(cat "$scratch/munged.err")"; echo fail >>"$RESULTS"; exit 0; }
munge_pid=$(cat "$scratch/munge/munged.pid")
# Slurm's munge plugins find the socket through this option.
echo "AuthInfo=socket=$socket" >>"$SLURM_CONF"
slurmctld -D -f "$SLURM_CONF" >"$scratch/ctl.out" 2>&1 & ctl_pid=$!
slurmd -D -N "$node" -f "$SLURM_CONF" >"$scratch/slurmd.out" 2>&1 & slurmd_pid=$!
ready=0
for _ in $(seq 1 60); do
  if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed)'; then ready=1; break; fi
  # A controller or node daemon that exited (a port taken, a bad config) will not come back.
  kill -0 "$ctl_pid" 2>/dev/null && kill -0 "$slurmd_pid" 2>/dev/null || break
  sleep 0.5
done
if [ "$ready" -ne 1 ]; then
  echo "FAIL Slurm tests: the node never became idle; slurmctld log:"; tail -n 20 "$scratch/slurmctld.log" "$scratch/slurmd.log" "$scratch/ctl.out" "$scratch/slurmd.out" 2>/dev/null | sed 's/^/    /'
  echo fail >>"$RESULTS"; exit 0
fi

# sbatch_run NAME LAUNCHER ARGS...: submits cluster/slurm.sbatch, waits, shows its output.
sbatch_run() {
  local launcher=$1; shift
  local out="$scratch/job-$launcher.out"
  TESSERA_LAUNCHER=$launcher OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    timeout 300 sbatch --wait --ntasks-per-node=2 --output="$out" cluster/slurm.sbatch "$@"
  local status=$?
  cat "$out"
  return $status
}
# The job must succeed (sbatch --wait exits with its status), pass the whole suite and run it
# on the MPI backend with the 2 tasks Slurm started.
srun_suite() {
  local out status
  out=$(conformance sbatch_run srun selftest comm --large 100003); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || return 1
  grep -qE '^PASS .* \[mpi, 2 ranks\]$' <<<"$out" || { echo "the suite did not run on the MPI backend with 2 ranks"; return 1; }
}
check "slurm: srun --mpi=pmix runs the conformance suite on 2 ranks" srun_suite
# The job must succeed, train on 2 ranks to step 10 and log step 10 in metrics.jsonl.
mpirun_trains() {
  local out status
  out=$(sbatch_run mpirun train --config configs/tiny.yaml --progress lines --set train.steps=10 --set eval.every=0 --set eval.batches=1 \
     --set model.d_model=32 --set model.layers=1 --set model.heads=2 --set model.kv_heads=2 --set model.ffn_hidden=32 \
     --set data.seq_len=32 --set run.dir="$scratch/run" 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || { echo "the job exited with status $status"; return 1; }
  grep -qE '^training steps 0→10, .*, 2 ranks$' <<<"$out" || { echo "it did not train on 2 ranks"; return 1; }
  grep -q '^done: 10 steps' <<<"$out" || { echo "no 'done: 10 steps'"; return 1; }
  python3 -c 'import json,sys; s=[json.loads(l)["step"] for l in open(sys.argv[1]) if "\"loss\"" in l]; assert s and s[-1]==10, s' "$scratch/run/metrics.jsonl"
}
check "slurm: mpirun inside the allocation trains 2 ranks" mpirun_trains
# Under srun --mpi=pmix each task switches its BLAS core in place before MPI_Init (a library
# that fell back to Prescott, simulated): the job trains on 2 ranks on the best core.
srun_switches_core() {
  local out status best
  best=$(env -u OPENBLAS_CORETYPE "$TESSERA" bench gemm --n 64 --runs 1 --warmup 0 2>/dev/null | sed -n 's/.*"blas_core":"\([^"]*\)".*/\1/p')
  out=$(TESSERA_TEST_BLAS_FALLBACK=1 OPENBLAS_CORETYPE=Prescott sbatch_run srun train --config configs/tiny.yaml --progress lines \
     --set train.steps=3 --set eval.every=0 --set eval.batches=1 --set model.d_model=32 --set model.layers=1 --set model.heads=2 \
     --set model.kv_heads=2 --set model.ffn_hidden=32 --set data.seq_len=32 --set run.dir="$scratch/run-switch" 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || { echo "the job exited with status $status"; return 1; }
  grep -qE '^training steps 0→3, .*, 2 ranks$' <<<"$out" || { echo "it did not train on 2 ranks"; return 1; }
  [ "$best" = Prescott ] && return 0
  grep -qE "^BLAS: OpenBLAS [0-9.]+, $best kernels \(chosen for .*; the library picked Prescott\)$" <<<"$out" \
    || { echo "no line saying the ranks switched to $best"; return 1; }
  grep -q "warning: ranks run different BLAS kernels" <<<"$out" && { echo "the ranks run different cores"; return 1; }
  return 0
}
check "slurm: srun --mpi=pmix tasks switch a fallback BLAS core in place and train 2 ranks" srun_switches_core
