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

# expect_failure SECONDS PATTERN COMMAND...: COMMAND must exit non-zero within SECONDS and a
# line of its output must match PATTERN (grep -E; anchor it to say whose line it must be).
expect_failure() { expect_failure_within 0 "$@"; }

# expect_failure_within MIN MAX PATTERN COMMAND...: as expect_failure with MAX seconds, and it
# must take at least MIN seconds: a deadline check that fails sooner than the deadline failed
# for some other reason.
expect_failure_within() {
  local min=$1 limit=$2 pattern=$3; shift 3
  local out status start elapsed
  start=$(now_ms)
  out=$(timeout -k 5 "$limit" "$@" 2>&1); status=$?
  elapsed=$(( $(now_ms) - start ))
  echo "$out"
  echo "exited with status $status after $(seconds "$elapsed") s"
  if [ "$status" -eq 124 ] || [ "$elapsed" -ge $((limit * 1000)) ]; then echo "timed out after $limit s: it hung"; return 1; fi
  if [ "$status" -eq 0 ]; then echo "exited 0, expected a failure"; return 1; fi
  grep -qE "$pattern" <<<"$out" || { echo "no line of the output matches /$pattern/"; return 1; }
  if [ "$elapsed" -lt $((min * 1000)) ]; then echo "failed after $(seconds "$elapsed") s, sooner than the $min s it must take"; return 1; fi
}

# conformance COMMAND...: COMMAND runs the communicator conformance suite (`tessera selftest
# comm`); it must exit 0 and print the line "N passed, 0 failed" with N > 0 ("10 failed" is a
# failure, and so is a suite that ran nothing).
conformance() {
  local out status
  out=$("$@" 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || { echo "exited with status $status"; return 1; }
  grep -qE '^[1-9][0-9]* passed, 0 failed$' <<<"$out" || { echo "no line 'N passed, 0 failed' with N > 0"; return 1; }
}

# trains_like REFERENCE_DIR RUN_DIR [--exact] COMMAND...: COMMAND (a launcher and its `train`
# arguments; run.dir RUN_DIR is appended) must succeed, and its metrics.jsonl must match
# REFERENCE_DIR's step by step in loss and gradient norm (scripts/compare_losses.py).
trains_like() {
  local reference=$1 dir=$2 exact=(); shift 2
  [ "$1" = --exact ] && { exact=(--exact); shift; }
  "$@" --set run.dir="$dir" || { echo "training exited with status $?"; return 1; }
  python3 scripts/compare_losses.py "$reference/metrics.jsonl" "$dir/metrics.jsonl" "${exact[@]}"
}

# generates CHECKPOINT PROMPT TOKENS: greedy generation prints PROMPT followed by TOKENS bytes
# (and the newline), and a second greedy run prints the same.
generates() {
  local checkpoint=$1 prompt=$2 tokens=$3 first second
  first=$(mktemp); second=$(mktemp)
  "$TESSERA" generate --checkpoint "$checkpoint" --prompt "$prompt" --tokens "$tokens" --temperature 0 >"$first" \
    || { echo "generate exited with status $?"; rm -f "$first" "$second"; return 1; }
  "$TESSERA" generate --checkpoint "$checkpoint" --prompt "$prompt" --tokens "$tokens" --temperature 0 >"$second" \
    || { echo "the second generate exited with status $?"; rm -f "$first" "$second"; return 1; }
  python3 - "$first" "$second" "$prompt" "$tokens" <<'PY'
import sys
first, second = (open(p, "rb").read() for p in sys.argv[1:3])
prompt, tokens = sys.argv[3].encode(), int(sys.argv[4])
print("generated:", first)
assert first.startswith(prompt) and first.endswith(b"\n"), f"not the prompt {prompt!r}, some text and a newline: {first!r}"
new = first[len(prompt):-1]
assert len(new) == tokens, f"{len(new)} bytes after the prompt, asked for {tokens}: {new!r}"
assert first == second, f"greedy generation differs between two runs: {first!r} vs {second!r}"
PY
  local status=$?; rm -f "$first" "$second"; return $status
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

mpi() { scripts/mpirun.sh "$@"; }
