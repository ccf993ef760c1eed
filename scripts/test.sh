#!/usr/bin/env bash
# The whole test suite: set-up, the Markdown links, unit tests (swift test), then the
# multi-rank, multi-node and Slurm tests. Prints PASS/FAIL/SKIP per check (a skip with its reason)
# and ends with "N passed, M failed, K skipped (D declared)". Each driver declares how many checks
# it runs (`plan N`); the suite fails when a check fails, when a check was aborted (it began and
# printed neither PASS nor FAIL), when a driver exits non-zero or runs fewer checks than it plans,
# and when fewer checks ran in all than the plans declare.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
source scripts/lib.sh
echo "==> logs in $LOG_DIR"
own_from=$(wc -l <"$RESULTS")
plan $([ "$(uname -m)" = x86_64 ] && echo 6 || echo 5)   # this script's own checks below; the drivers plan theirs

check "docs: every relative Markdown link points to a file in the repository" python3 scripts/check_links.py
check "docs: the module graph in docs/ARCHITECTURE.md is the one Package.swift gives" python3 scripts/check_architecture.py --check
# The unit tests link OpenBLAS in-process and do not re-execute themselves as tessera does to
# pick its core (scripts/test-blas.sh checks that): run them on the core tessera chooses for
# this machine (on a CPU the library does not know, its SSE3 fallback is 4x slower), unless
# OPENBLAS_CORETYPE is set already. Then the suites whose numbers pass through BLAS again on
# the SSE3 Prescott kernels, which every x86-64 CPU runs: their verdict must not depend on the core.
core=${OPENBLAS_CORETYPE:-$("$TESSERA" selftest blas --core-name 2>/dev/null)}
echo "==> unit tests on OpenBLAS's ${core:-own} kernels"
check "swift test (unit tests)" env ${core:+OPENBLAS_CORETYPE=$core} swift test
grep -E "Test run with|Executed" "$LOG_DIR/swift_test_(unit_tests).log" | tail -n 2
swift_skips "$LOG_DIR/swift_test_(unit_tests).log"
if [ "$(uname -m)" = x86_64 ]; then
  check "swift test: kernels, pinned losses and N-ranks-equal-one-rank suites on OpenBLAS's Prescott kernels" \
    env OPENBLAS_CORETYPE=Prescott swift test --skip-build \
    --filter "KernelsTests|PinnedLossTests|ReferenceDecoderTests|DataParallelExactnessTests|SequenceParallelExactnessTests|ExpertParallelTrainingTests|MoEGradientTests"
fi
# The release binary (-Ounchecked, AVX2 + FMA: code the debug unit tests never run) against the
# references: every fast kernel against its naive Float64 twin on awkward sizes, on 1 and 2
# kernel threads, and the pinned run's losses and gradient norms against PinnedRun's pins (the
# values and tolerance PinnedLossTests uses). Under a second here, in the binary set-up built;
# `swift test -c release` would compile every module again with testing enabled (the test
# targets use @testable imports) and every test target optimised, besides the product.
# On x86-64 both run again on OpenBLAS's SSE3 Prescott kernels: their verdict must not depend on the core.
prescott=$([ "$(uname -m)" = x86_64 ] && echo Prescott || true)
on_prescott() {   # selftest ARGS on the Prescott kernels, which it must name
  [ -z "$prescott" ] && return 0
  local out
  out=$(conformance env OPENBLAS_CORETYPE=Prescott "$TESSERA" selftest "$@") || { echo "$out"; return 1; }
  echo "$out"
  grep -q "OpenBLAS's Prescott kernels)$" <<<"$out" || { echo "it did not run on OpenBLAS's Prescott kernels"; return 1; }
}
release_kernels() {
  conformance "$TESSERA" selftest kernels && conformance "$TESSERA" selftest kernels --threads 2 && on_prescott kernels --threads 2
}
release_pinned() { conformance "$TESSERA" selftest pinned && on_prescott pinned; }
check "release binary: fast kernels equal their naive twins on 1 and 2 threads${prescott:+, and on Prescott} (selftest kernels)" release_kernels
check "release binary: the pinned run's losses and gradient norms${prescott:+, also on Prescott} (selftest pinned)" release_pinned
account scripts/test.sh "$own_from" 0
run_driver scripts/test-comparators.sh
run_driver scripts/test-blas.sh
run_driver scripts/test-newuser.sh
run_driver scripts/test-multirank.sh
run_driver scripts/test-distill.sh
run_driver scripts/test-soup.sh
run_driver scripts/test-student.sh
run_driver scripts/test-checkpoint-faults.sh
run_driver scripts/test-ckpt-service.sh
run_driver scripts/test-hostile-network.sh
run_driver scripts/test-multinode.sh
run_driver scripts/test-slurm.sh

summary
