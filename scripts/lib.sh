# Shared helpers of the test drivers (sourced, not run).
# check NAME COMMAND...: runs COMMAND with its output in $LOG_DIR/NAME.log, prints PASS or FAIL
# (with the log's last lines) and counts the result in $RESULTS.
TESSERA="${TESSERA:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.build/release/tessera}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/tessera-tests.XXXXXX)}"
RESULTS="${RESULTS:-$LOG_DIR/results}"
mkdir -p "$LOG_DIR"
touch "$RESULTS"
export TESSERA LOG_DIR RESULTS

check() {
  local name=$1; shift
  local log="$LOG_DIR/$(echo "$name" | tr ' /' '__').log"
  local start=$SECONDS
  if "$@" >"$log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)"
    echo pass >>"$RESULTS"
  else
    echo "FAIL $name ($((SECONDS - start)) s); last lines of $log:"
    tail -n 15 "$log" | sed 's/^/    /'
    echo fail >>"$RESULTS"
  fi
}

skip() {
  echo "SKIP $1: $2"
  echo skip >>"$RESULTS"
}

# expect_failure SECONDS PATTERN COMMAND...: COMMAND must exit non-zero within SECONDS and its
# output must match PATTERN (grep -E).
expect_failure() {
  local limit=$1 pattern=$2; shift 2
  local out status
  out=$(timeout "$limit" "$@" 2>&1); status=$?
  echo "$out"
  if [ "$status" -eq 124 ]; then echo "timed out after $limit s: it hung"; return 1; fi
  if [ "$status" -eq 0 ]; then echo "exited 0, expected a failure"; return 1; fi
  echo "$out" | grep -qE "$pattern" || { echo "output does not match /$pattern/"; return 1; }
}

mpi() { scripts/mpirun.sh "$@"; }
