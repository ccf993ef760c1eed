#!/usr/bin/env bash
# The whole test suite: set-up, the Markdown links, unit tests (swift test), then the
# multi-rank, multi-node and Slurm tests. Prints PASS/FAIL per check and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }
source scripts/lib.sh
echo "==> logs in $LOG_DIR"

check "docs: every relative Markdown link points to a file in the repository" python3 scripts/check_links.py
# The unit tests link OpenBLAS in-process and do not re-execute themselves as tessera does to
# pick its core (scripts/test-blas.sh checks that): run them on the core tessera chooses for
# this machine (on a CPU the library does not know, its SSE3 fallback is 4x slower), unless
# OPENBLAS_CORETYPE is set already. Then the suites whose numbers pass through BLAS again on
# the SSE3 Prescott kernels, which every x86-64 CPU runs: their verdict must not depend on the core.
core=${OPENBLAS_CORETYPE:-$("$TESSERA" selftest blas --core-name 2>/dev/null)}
echo "==> unit tests on OpenBLAS's ${core:-own} kernels"
check "swift test (unit tests)" env ${core:+OPENBLAS_CORETYPE=$core} swift test
grep -E "Test run with|Executed" "$LOG_DIR/swift_test_(unit_tests).log" | tail -n 2
if [ "$(uname -m)" = x86_64 ]; then
  check "swift test: kernels, pinned losses and N-ranks-equal-one-rank suites on OpenBLAS's Prescott kernels" \
    env OPENBLAS_CORETYPE=Prescott swift test --skip-build \
    --filter "KernelsTests|PinnedLossTests|ReferenceDecoderTests|DataParallelExactnessTests|SequenceParallelExactnessTests|ExpertParallelTrainingTests|MoEGradientTests"
fi
scripts/test-blas.sh
scripts/test-newuser.sh
scripts/test-multirank.sh
scripts/test-distill.sh
scripts/test-soup.sh
scripts/test-student.sh
scripts/test-checkpoint-faults.sh
scripts/test-ckpt-service.sh
scripts/test-hostile-network.sh
scripts/test-multinode.sh
scripts/test-slurm.sh

passed=$(grep -c '^pass$' "$RESULTS"); failed=$(grep -c '^fail$' "$RESULTS"); skipped=$(grep -c '^skip$' "$RESULTS")
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
