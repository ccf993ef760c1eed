# Shared helpers of the test drivers (sourced, not run).
# check NAME COMMAND...: runs COMMAND with its output in $LOG_DIR/NAME.log, prints PASS or FAIL
# (with the log's last lines) and counts the result in $RESULTS.
#
# $RESULTS holds one line per event: `plan N` (a driver declares the checks it runs), `begin NAME`
# (a check started), `pass`, `fail`, `skip`, and `driver SCRIPT` / `enddriver SCRIPT` around each
# driver that run_driver runs. A check that began and wrote neither pass nor fail was aborted (an
# expansion error ends the command, `set -u` the whole driver): run_driver counts it as failed,
# and a driver that ran fewer checks than its plan fails too.
TESSERA="${TESSERA:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.build/release/tessera}"
LOG_DIR="${LOG_DIR:-$(mktemp -d /tmp/tessera-tests.XXXXXX)}"
RESULTS="${RESULTS:-$LOG_DIR/results}"
mkdir -p "$LOG_DIR"
touch "$RESULTS"
export TESSERA LOG_DIR RESULTS

# TESSERA_ONLY=REGEX runs only the checks whose names match it (grep -E), e.g. while fixing one.
check() {
  local name=$1; shift
  # (A check filtered out counts as skipped, so the driver's plan still adds up.)
  if [ -n "${TESSERA_ONLY:-}" ] && ! grep -qE -- "$TESSERA_ONLY" <<<"$name"; then echo skip >>"$RESULTS"; return 0; fi
  local log="$LOG_DIR/$(echo "$name" | tr ' /' '__').log"
  local start=$SECONDS
  echo "begin $name" >>"$RESULTS"
  if "$@" >"$log" 2>&1; then
    echo "PASS $name ($((SECONDS - start)) s)"
    echo pass >>"$RESULTS"
  else
    echo "FAIL $name ($((SECONDS - start)) s); last lines of $log:"
    tail -n 15 "$log" | sed 's/^/    /'
    echo fail >>"$RESULTS"
  fi
}

# skip NAME REASON: a check that cannot run here, printed with its reason and counted.
skip() {
  echo "SKIP $1: $2"
  echo skip >>"$RESULTS"
}

# swift_skips LOG: every test that `swift test` skipped (Swift Testing's `.enabled(if:)` and
# `.disabled` traits, XCTSkip) printed with its reason and counted as skipped; they are not
# checks of a driver's plan.
swift_skips() {
  local line
  while IFS= read -r line; do
    echo "SKIP swift test: $line"
    echo swiftskip >>"$RESULTS"
  done < <(grep -E "Test [^ ].* skipped|Test Case .* skipped" "$1" 2>/dev/null | sed -E 's/^[^A-Za-z]*//')
}

# plan N: this driver runs N checks (skips count). Call it once, right after sourcing lib.sh.
plan() {
  PLANNED=$1 PLAN_FROM=$(wc -l <"$RESULTS")
  echo "plan $1" >>"$RESULTS"
}

# skip_rest NAME REASON: none of this driver's remaining planned checks can run here: counts
# each as skipped and prints one line with their number and the reason.
skip_rest() {
  local done rest
  done=$(tail -n +"$((PLAN_FROM + 1))" "$RESULTS" | grep -cE '^(pass|fail|skip)$')
  rest=$((PLANNED - done)); [ "$rest" -gt 0 ] || rest=1
  echo "SKIP $1 ($rest checks): $2"
  for _ in $(seq 1 "$rest"); do echo skip >>"$RESULTS"; done
}

# account SCOPE FROM STATUS: the bookkeeping of the results written after line FROM of
# $RESULTS at the top level (not inside a nested driver): every check that began and wrote
# neither pass nor fail is printed and counted as failed; so is a non-zero STATUS, a missing
# plan, and fewer checks than planned.
account() {
  local scope=$1 from=$2 status=$3 name planned ran
  while IFS= read -r name; do
    echo "FAIL $name: it began and printed neither PASS nor FAIL (aborted, e.g. by an expansion error); last lines of its log:"
    tail -n 5 "$LOG_DIR/$(echo "$name" | tr ' /' '__').log" 2>/dev/null | sed 's/^/    /'
    echo fail >>"$RESULTS"
  done < <(tail -n +"$((from + 1))" "$RESULTS" | awk '
    /^driver / { depth++; next } /^enddriver / { depth--; next } depth > 0 { next }
    /^begin / { if (open != "") print open; open = substr($0, 7); next }
    /^(pass|fail)$/ { open = "" }
    END { if (open != "") print open }')
  read -r planned ran < <(tail -n +"$((from + 1))" "$RESULTS" | awk '
    /^driver / { depth++; next } /^enddriver / { depth--; next } depth > 0 { next }
    /^plan / { planned += $2; plans++ } /^(pass|fail|skip)$/ { ran++ }
    END { print (plans ? planned : -1), ran + 0 }')
  if [ "$status" -ne 0 ]; then
    echo "FAIL $scope exited with status $status"; echo fail >>"$RESULTS"
  fi
  if [ "$planned" -lt 0 ]; then
    echo "FAIL $scope declares no plan (call 'plan N' after sourcing lib.sh)"; echo fail >>"$RESULTS"
  elif [ "$ran" -lt "$planned" ]; then
    echo "FAIL $scope ran $ran of the $planned checks it plans (it stopped early?)"; echo fail >>"$RESULTS"
  elif [ "$ran" -gt "$planned" ]; then
    echo "NOTE $scope ran $ran checks and plans $planned: raise its plan"
  fi
}

# run_driver SCRIPT [ARGS...]: runs a test driver and accounts for its checks (see account).
run_driver() {
  local from status
  from=$(wc -l <"$RESULTS")
  echo "driver $1" >>"$RESULTS"
  "$@"; status=$?
  account "$1" "$((from + 1))" "$status"
  echo "enddriver $1" >>"$RESULTS"
}

# summary: the totals of $RESULTS, "N passed, M failed, K skipped (D declared)"; fails when a
# check failed or fewer checks ran than all the plans declare.
summary() {
  local passed failed skipped declared
  passed=$(grep -c '^pass$' "$RESULTS"); failed=$(grep -c '^fail$' "$RESULTS"); skipped=$(grep -cE '^(swift)?skip$' "$RESULTS")
  declared=$(awk '/^plan / { n += $2 } END { print n + 0 }' "$RESULTS")
  echo "$passed passed, $failed failed, $skipped skipped ($declared declared)"
  if [ $((passed + failed + $(grep -c '^skip$' "$RESULTS"))) -lt "$declared" ]; then
    echo "FAIL fewer checks ran than the drivers declare ($declared)"; return 1
  fi
  [ "$failed" -eq 0 ]
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
# failure, and so is a suite that ran nothing), optionally followed by a parenthesis (the BLAS core).
conformance() {
  local out status
  out=$("$@" 2>&1); status=$?
  echo "$out"
  [ "$status" -eq 0 ] || { echo "exited with status $status"; return 1; }
  grep -qE '^[1-9][0-9]* passed, 0 failed( \(.*\))?$' <<<"$out" || { echo "no line 'N passed, 0 failed' with N > 0"; return 1; }
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
# (and the newline), and a second greedy run prints the same. `generate` prints valid UTF-8, each
# invalid byte sequence as one U+FFFD, which stands for 1 to 3 generated bytes: with any in the
# output the count can only be bounded (an undertrained model does emit such bytes).
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
new = first[len(prompt):-1].decode("utf-8")
replaced = new.count("\ufffd")
kept = len(new.encode()) - 3 * replaced
assert kept + replaced <= tokens <= kept + 3 * replaced, \
    f"{kept} bytes and {replaced} replaced sequence(s) of 1-3 bytes after the prompt, asked for {tokens}: {new!r}"
assert first == second, f"greedy generation differs between two runs: {first!r} vs {second!r}"
PY
  local status=$?; rm -f "$first" "$second"; return $status
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
seconds() { printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)); }

mpi() { scripts/mpirun.sh "$@"; }

# job_ranks PID: "PID RANK" for every rank below the launcher PID (mpirun, tessera launch, or
# a `timeout` around either), the rank read from its OMPI_COMM_WORLD_RANK or TESSERA_RANK.
job_ranks() {
  local p rank exe; exe=$(readlink -f "$TESSERA")
  for p in $(pgrep -P "$1"); do
    rank=$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | sed -n 's/^\(OMPI_COMM_WORLD_RANK\|TESSERA_RANK\)=//p' | head -n 1)
    if [ -n "$rank" ] && [ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$exe" ]; then echo "$p $rank"; else job_ranks "$p"; fi
  done
}

# wait_for_exit PID SECONDS: waits for the background job PID (a child of this shell) and
# returns its exit status; if it is still running after SECONDS, kills it and what runs below
# it (SIGKILL), says so and returns 124.
wait_for_exit() {
  local pid=$1 deadline=$((SECONDS + $2)) below
  while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    below=$(pgrep -P "$pid"); below="$below $(for p in $below; do pgrep -P "$p"; done)"
    echo "pid $pid was still running $2 s later: killed it and the processes below it"
    kill -9 "$pid" $below 2>/dev/null; wait "$pid" 2>/dev/null
    return 124
  fi
  wait "$pid"
}

# gone_within SECONDS PID...: every PID has exited within SECONDS (a zombie counts as gone);
# names those still running.
gone_within() {
  local limit=$1 deadline p left; shift
  deadline=$((SECONDS + limit))
  while :; do
    left=""
    for p in "$@"; do
      [ -e "/proc/$p" ] && [ "$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null)" != Z ] && left="$left $p"
    done
    [ -z "$left" ] && return 0
    [ "$SECONDS" -ge "$deadline" ] && break
    sleep 0.1
  done
  echo "still running $limit s later:$left"
  ps -o pid=,stat=,args= -p "${left# }" 2>/dev/null | cut -c1-120 | sed 's/^/    /' 
  return 1
}

# wait_for_checkpoint_after ROOT STEP SECONDS: waits until ROOT holds a complete step-* newer than
# STEP; fails after SECONDS.
wait_for_checkpoint_after() {
  local newest deadline=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$deadline" ]; do
    newest=$(ls "$1" 2>/dev/null | grep '^step-[0-9]*$' | tail -n 1)
    [ -n "$newest" ] && [ $((10#${newest#step-})) -gt "$2" ] && [ -f "$1/$newest/DONE" ] && return 0
    sleep 0.05
  done
  echo "no checkpoint after step $2 appeared in $1 within $3 s"; return 1
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# serve ROOT LOG [ARGS...]: starts `tessera ckpt serve --root ROOT` (and ARGS) on a free port in
# the background, its pid in $server and port in $port, and waits until it answers (10 s at most).
serve() {
  local root=$1 log=$2; shift 2
  port=$(free_port)
  "$TESSERA" ckpt serve --root "$root" --listen "127.0.0.1:$port" "$@" >>"$log" 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    "$TESSERA" ckpt upload-test --service "127.0.0.1:$port" --latest >/dev/null 2>&1 && return 0
    kill -0 "$server" 2>/dev/null || { cat "$log"; echo "the service exited"; return 1; }
    sleep 0.1
  done
  echo "the service did not answer within 10 s"; return 1
}
