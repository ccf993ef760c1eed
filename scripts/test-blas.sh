#!/usr/bin/env bash
# The BLAS kernel choice through the built executable: with OPENBLAS_CORETYPE unset the start
# line and every bench line name a core; a core set in the environment is kept and said to be;
# a library that fell back to a weak core (simulated: TESSERA_TEST_BLAS_FALLBACK=1 makes
# tessera treat OPENBLAS_CORETYPE as the library's own pick) is switched to the best core in the
# same process (same pid and argv, only OPENBLAS_CORETYPE changed in its environment); a switch
# whose check fails goes back in one line; mpirun ranks agree, and ranks on different cores are
# named in one warning. Needs the release build and the corpus (scripts/setup.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
standalone=${RESULTS:-yes}
source scripts/lib.sh
plan 7   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-blas.XXXXXX)
trap 'rm -rf "$work"' EXIT
if [ "$(id -u)" -eq 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi

small=(--config configs/tiny.yaml --progress lines --set model.d_model=32 --set model.layers=2 --set model.heads=2
       --set model.kv_heads=1 --set model.ffn_hidden=64 --set data.seq_len=32 --set train.global_batch=12
       --set train.steps=2 --set eval.every=0 --set eval.batches=2 --set checkpoint.every=0)
# The best core this library has for this CPU, as tessera sees it (the name its bench reports unset).
best=$(env -u OPENBLAS_CORETYPE "$TESSERA" bench gemm --n 64 --runs 1 --warmup 0 2>/dev/null | sed -n 's/.*"blas_core":"\([^"]*\)".*/\1/p')
echo "the library's best core here: ${best:-?}"

# json_key LINE KEY: the string value of KEY in a JSON line.
json_key() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ""))' "$1" "$2"; }

unset_names_a_core() {
  local out line core
  out=$(env -u OPENBLAS_CORETYPE "$TESSERA" train "${small[@]}" --set run.dir="$work/unset" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -qE '^BLAS: OpenBLAS [0-9.]+, [A-Za-z0-9_]+ kernels \(' <<<"$out" || { echo "no start line naming the BLAS core"; return 1; }
  line=$(env -u OPENBLAS_CORETYPE "$TESSERA" bench gemm --n 64 --runs 1 --warmup 0 2>/dev/null | grep '^{' | head -n 1)
  echo "$line"
  core=$(json_key "$line" blas_core)
  [ -n "$core" ] && [ -n "$(json_key "$line" cpu)" ] || { echo "bench line without blas_core or cpu"; return 1; }
  grep -q "^BLAS: OpenBLAS [0-9.]*, $core kernels" <<<"$out" || { echo "bench ran $core, the start line says otherwise"; return 1; }
  # On an x86-64 CPU with AVX2 or AVX-512 a fallback core would be a bug of the choice.
  if grep -qwE 'avx2|avx512f' /proc/cpuinfo; then
    grep -qiE '^(prescott|core2|nehalem|atom|katmai|generic)$' <<<"$core" && { echo "runs $core on a CPU with AVX2/AVX-512"; return 1; }
  fi
  return 0
}
check "BLAS: unset, the train start line and bench gemm's blas_core name the same (vector) core" unset_names_a_core

user_setting_kept() {
  local out line
  out=$(OPENBLAS_CORETYPE=Prescott "$TESSERA" train "${small[@]}" --set run.dir="$work/user" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  grep -qE '^BLAS: OpenBLAS [0-9.]+, Prescott kernels \(set by OPENBLAS_CORETYPE' <<<"$out" || { echo "Prescott not kept, or not said to be set"; return 1; }
  line=$(OPENBLAS_CORETYPE=Prescott "$TESSERA" bench gemm --n 64 --runs 1 --warmup 0 2>/dev/null | grep '^{' | head -n 1)
  echo "$line"
  [ "$(json_key "$line" blas_core)" = Prescott ] || { echo "bench did not run Prescott"; return 1; }
}
check "BLAS: OPENBLAS_CORETYPE=Prescott set by the user is kept and said to be set by the environment" user_setting_kept

# A fallback: the process switches itself and keeps its pid, argv and environment but for
# OPENBLAS_CORETYPE. The long-lived `ckpt serve` is looked at from outside through /proc.
fallback_switches_in_place() {
  [ -n "$best" ] || { echo "no best core"; return 1; }
  [ "$best" != Prescott ] || { echo "Prescott is the best core here: nothing to switch to"; return 0; }
  local port pid environ cmdline out
  port=$(free_port)
  local token=0123456789abcdef0123456789abcdef
  env -i PATH="$PATH" HOME="$HOME" TESSERA_JOB_TOKEN=$token TESSERA_TEST_BLAS_FALLBACK=1 OPENBLAS_CORETYPE=Prescott PROBE=kept \
    "$TESSERA" ckpt serve --root "$work/root" --listen "127.0.0.1:$port" >"$work/serve.out" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do grep -q "serving" "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.out"; echo "the service is not running as pid $pid"; return 1; }
  environ=$(tr '\0' '\n' <"/proc/$pid/environ" | sort)
  cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null
  echo "pid $pid: $cmdline"; echo "$environ"
  [ "$cmdline" = "$TESSERA ckpt serve --root $work/root --listen 127.0.0.1:$port " ] || { echo "argv changed"; return 1; }
  [ "$environ" = "$(printf '%s\n' "HOME=$HOME" "OPENBLAS_CORETYPE=$best" "PATH=$PATH" "PROBE=kept" "TESSERA_JOB_TOKEN=$token" "TESSERA_TEST_BLAS_FALLBACK=1" | sort)" ] \
    || { echo "the environment differs from the one started with by more than OPENBLAS_CORETYPE=$best"; return 1; }
  out=$(TESSERA_TEST_BLAS_FALLBACK=1 OPENBLAS_CORETYPE=Prescott "$TESSERA" train "${small[@]}" --set run.dir="$work/fallback" 2>&1) \
    || { echo "$out"; return 1; }
  echo "$out"
  grep -qE "^BLAS: OpenBLAS [0-9.]+, $best kernels \(chosen for .*; the library picked Prescott\)" <<<"$out"
}
check "BLAS: a library that fell back to Prescott is switched to the best core, same pid, argv and environment but OPENBLAS_CORETYPE" \
  fallback_switches_in_place

failed_check_goes_back() {
  [ "$best" != Prescott ] || return 0
  local out warnings
  out=$(TESSERA_TEST_BLAS_FALLBACK=1 TESSERA_TEST_BLAS_CHECK_FAILS=1 OPENBLAS_CORETYPE=Prescott \
        "$TESSERA" train "${small[@]}" --set run.dir="$work/back" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  warnings=$(grep -c "warning: the $best BLAS kernels failed the start-up check .*using the library's own Prescott kernels" <<<"$out")
  [ "$warnings" -eq 1 ] || { echo "$warnings warning lines, expected one"; return 1; }
  grep -qE "^BLAS: OpenBLAS [0-9.]+, Prescott kernels \(the library's own choice: $best failed the start-up check\)" <<<"$out"
}
check "BLAS: a switched core that fails its start-up check goes back to the library's choice, said in one line" failed_check_goes_back

# one_core_line OUTPUT: one start line (rank 0's) naming $best, and no warning that ranks differ.
one_core_line() {
  [ "$(grep -c '^BLAS: ' <<<"$1")" -eq 1 ] || { echo "not exactly one BLAS line (rank 0's)"; return 1; }
  grep -q "warning: ranks run different BLAS kernels" <<<"$1" && { echo "ranks differ"; return 1; }
  grep -q "^BLAS: OpenBLAS [0-9.]*, $best kernels" <<<"$1" || { echo "rank 0 does not run $best"; return 1; }
}

mpirun_ranks_agree() {
  local out
  out=$(env -u OPENBLAS_CORETYPE scripts/mpirun.sh 2 train "${small[@]}" --set run.dir="$work/mpi" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  one_core_line "$out" || return 1
  # Each rank switches itself before MPI_Init when the library fell back (simulated).
  out=$(TESSERA_TEST_BLAS_FALLBACK=1 OPENBLAS_CORETYPE=Prescott scripts/mpirun.sh 2 train "${small[@]}" --set run.dir="$work/mpi-switch" 2>&1) \
    || { echo "$out"; return 1; }
  echo "$out"
  one_core_line "$out" || return 1
  [ "$best" = Prescott ] || grep -q "the library picked Prescott)$" <<<"$out" || { echo "the ranks did not switch"; return 1; }
}
check "BLAS: under mpirun -np 2 every rank runs the same core, also after switching from a fallback" mpirun_ranks_agree

# Under tessera launch (which switches itself first; its ranks inherit OPENBLAS_CORETYPE or switch themselves) the ranks run the best core.
launch_ranks_inherit() {
  local out
  out=$(TESSERA_TEST_BLAS_FALLBACK=1 OPENBLAS_CORETYPE=Prescott "$TESSERA" launch --nproc 2 -- train "${small[@]}" --set run.dir="$work/launch" 2>&1) \
    || { echo "$out"; return 1; }
  echo "$out"
  one_core_line "$out"
}
check "BLAS: under tessera launch from a fallback both ranks run the best core" launch_ranks_inherit

mixed_cluster_warned() {
  local out rest=(--set run.dir="$work/mixed") np=()
  [ "$(nproc)" -lt 2 ] && np=(--oversubscribe)
  out=$(mpirun "${np[@]}" --bind-to none -x OPENBLAS_NUM_THREADS=1 \
          -np 1 -x OPENBLAS_CORETYPE=Prescott "$TESSERA" train "${small[@]}" "${rest[@]}" : \
          -np 1 -x OPENBLAS_CORETYPE="$best" "$TESSERA" train "${small[@]}" "${rest[@]}" 2>&1) || { echo "$out"; return 1; }
  echo "$out"
  [ "$best" != Prescott ] || return 0
  [ "$(grep -c "warning: ranks run different BLAS kernels (Prescott on rank 0; $best on rank 1)" <<<"$out")" -eq 1 ]
}
check "BLAS: ranks on different cores (mpirun MPMD) are named in one warning line, and the run completes" mixed_cluster_warned

if [ "$standalone" = yes ]; then
  account "$0" 0 0
  summary
fi
