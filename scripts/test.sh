#!/usr/bin/env bash
# The whole test suite: set-up, the Markdown links, unit tests (swift test), then the
# multi-rank, multi-node and Slurm tests. Prints PASS/FAIL per check and ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh || { echo "0 passed, 1 failed"; exit 1; }
source scripts/lib.sh
echo "==> logs in $LOG_DIR"

check "docs: every relative Markdown link points to a file in the repository" python3 scripts/check_links.py
check "swift test (unit tests)" swift test
grep -E "Test run with|Executed" "$LOG_DIR/swift_test_(unit_tests).log" | tail -n 2
scripts/test-newuser.sh
scripts/test-multirank.sh
scripts/test-distill.sh
scripts/test-soup.sh
scripts/test-student.sh
scripts/test-checkpoint-faults.sh
scripts/test-ckpt-service.sh
scripts/test-multinode.sh
scripts/test-slurm.sh

passed=$(grep -c '^pass$' "$RESULTS"); failed=$(grep -c '^fail$' "$RESULTS"); skipped=$(grep -c '^skip$' "$RESULTS")
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
