#!/usr/bin/env bash
# mpirun with the settings Tessera needs on one machine: root allowed (containers), more ranks
# than cores allowed, one OpenBLAS thread per rank unless OPENBLAS_NUM_THREADS says otherwise.
# Usage: scripts/mpirun.sh NP tessera-arguments...
set -euo pipefail
usage() { echo "usage: scripts/mpirun.sh NP tessera-arguments...   (e.g. scripts/mpirun.sh 2 train --config configs/tiny.yaml)" >&2; exit 2; }
[ $# -ge 2 ] || usage
[[ $1 =~ ^[1-9][0-9]*$ ]] || { echo "scripts/mpirun.sh: NP must be a positive number of ranks, got '$1'" >&2; usage; }
np=$1; shift
extra=()
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
if [ "$np" -gt "$(nproc)" ]; then extra+=(--oversubscribe); fi
exec mpirun -np "$np" "${extra[@]}" --bind-to none -x OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" \
  "$(cd "$(dirname "$0")/.." && pwd)/.build/release/tessera" "$@"
