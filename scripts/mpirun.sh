#!/usr/bin/env bash
# mpirun with the settings Tessera needs on one machine: root allowed (containers), more ranks
# than cores allowed, one OpenBLAS thread per rank unless OPENBLAS_NUM_THREADS says otherwise.
# Usage: scripts/mpirun.sh NP tessera-arguments...
#
# Ctrl-C and SIGTERM reach the ranks as SIGUSR1 (a stop request: every rank stops after the
# current step with a checkpoint and exits 0), at once. Given to mpirun itself, SIGINT or SIGTERM
# aborts the job: OpenMPI 4 sends its ranks SIGCONT, SIGTERM only `odls_base_sigkill_timeout`
# seconds later (1 by default) and SIGKILL as long again after that, which is often too short to
# save. So mpirun runs in a process group of its own (a terminal's Ctrl-C reaches only this
# script) and this script forwards each signal as SIGUSR1, which mpirun passes on to every rank.
# A second Ctrl-C (half a second or more after the first) stops the ranks at once.
set -euo pipefail
# A job started with & by a script has SIGINT ignored, and a shell cannot trap a signal ignored
# on entry: start again with the default dispositions (same pid), so Ctrl-C and `kill -INT` reach
# the trap below in every case (coreutils 8.31 or later; older ones skip this).
if [ -z "${TESSERA_MPIRUN_SH_SIGNALS:-}" ] && env --default-signal=INT true 2>/dev/null; then
  TESSERA_MPIRUN_SH_SIGNALS=1 exec env --default-signal=INT,TERM "$0" "$@"
fi
unset TESSERA_MPIRUN_SH_SIGNALS
usage() { echo "usage: scripts/mpirun.sh NP tessera-arguments...   (e.g. scripts/mpirun.sh 2 train --config configs/tiny.yaml)" >&2; exit 2; }
[ $# -ge 2 ] || usage
[[ $1 =~ ^[1-9][0-9]*$ ]] || { echo "scripts/mpirun.sh: NP must be a positive number of ranks, got '$1'" >&2; usage; }
np=$1; shift
extra=()
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
if [ "$np" -gt "$(nproc)" ]; then extra+=(--oversubscribe); fi
# A job of its own (its own process group) would be stopped reading a terminal it does not own;
# tessera reads no standard input.
if [ -t 0 ]; then exec </dev/null; fi
set -m
mpirun -np "$np" "${extra[@]}" --bind-to none -x OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" \
  "$(cd "$(dirname "$0")/.." && pwd)/.build/release/tessera" "$@" &
job=$!
set +m
trap 'kill -USR1 "$job" 2>/dev/null || true' INT TERM
status=0
while true; do
  wait "$job" && status=0 || status=$?
  # A signal ends `wait` early (status > 128) while mpirun still runs (or is not yet reaped).
  kill -0 "$job" 2>/dev/null || { wait "$job" && status=0 || status=$?; break; }
done
exit "$status"
