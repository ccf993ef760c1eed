#!/usr/bin/env bash
# The suite's own judges (~3 s, no build needed): the comparators that decide "equals one rank"
# (compare_params.py, compare_losses.py, compare_distill.py) must call NaN a difference wherever
# it appears; lib.sh's bookkeeping must count a check that was aborted, a driver that died and a
# driver that ran fewer checks than it plans as failures; and set-up must fail when the build does.
set -uo pipefail
cd "$(dirname "$0")/.."
standalone=${RESULTS:-yes}
source scripts/lib.sh
plan 9   # checks this driver runs (skips count); scripts/test.sh fails when fewer ran
work=$(mktemp -d /tmp/tessera-comparators.XXXXXX)
trap 'rm -rf "$work"' EXIT

# checkpoint DIR VALUES...: DIR/model.safetensors with one F32 tensor "w" holding VALUES (nan allowed).
checkpoint() {
  mkdir -p "$1"
  python3 - "$@" <<'PY'
import json, struct, sys
directory, values = sys.argv[1], [float(v) for v in sys.argv[2:]]
data = struct.pack(f"<{len(values)}f", *values)
header = json.dumps({"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, len(data)]}}).encode()
open(f"{directory}/model.safetensors", "wb").write(struct.pack("<Q", len(header)) + header + data)
PY
}
checkpoint "$work/reference" 1 2 3 4
checkpoint "$work/same" 1 2 3 4
checkpoint "$work/nan-first" nan 2 3.5 4        # NaN, then a finite error larger than 0 later on
checkpoint "$work/nan-last" 1 2.5 3 nan

params() {
  python3 scripts/compare_params.py "$work/reference" "$work/same" || { echo "equal parameters were called different"; return 1; }
  expect_failure 10 'parameters differ: w\[0\] 1\.0 vs nan' python3 scripts/compare_params.py "$work/reference" "$work/nan-first" || return 1
  expect_failure 10 'parameters differ: w\[3\] 4\.0 vs nan' python3 scripts/compare_params.py "$work/reference" "$work/nan-last" --rtol 1 || return 1
}
check "compare_params.py: a NaN parameter is a difference, whatever finite errors follow or precede it" params

# losses FILE LOSS...: a metrics.jsonl with one training record per step.
losses() {
  local file=$1 step=0 loss; shift
  : >"$file"
  for loss in "$@"; do step=$((step + 1)); echo "{\"step\": $step, \"loss\": $loss, \"grad_norm\": 1.0}" >>"$file"; done
}
losses "$work/losses.jsonl" 5.5 5.4 5.3
losses "$work/losses-nan.jsonl" 5.5 NaN 5.3
check "compare_losses.py: a NaN loss differs, with and without --exact" bash -c "
  python3 scripts/compare_losses.py '$work/losses.jsonl' '$work/losses.jsonl' || exit 1
  ! python3 scripts/compare_losses.py '$work/losses.jsonl' '$work/losses-nan.jsonl' && \
  ! python3 scripts/compare_losses.py '$work/losses.jsonl' '$work/losses-nan.jsonl' --exact"

# distill FILE KD: a distillation metrics.jsonl: a stage-1 record and a stage-3 record.
distill() {
  printf '{"stage": 1, "step": 1, "layer_losses": {"0": 0.5}}\n{"stage": 3, "step": 2, "kd": %s, "data": 2.0, "total": 3.0}\n' "$2" >"$1"
}
distill "$work/distill.jsonl" 1.0
distill "$work/distill-nan.jsonl" NaN
distill_nan() {
  python3 scripts/compare_distill.py "$work/distill.jsonl" "$work/distill.jsonl" || { echo "equal runs were called different"; return 1; }
  expect_failure 10 '^stage 3 step 2: kd 1\.0 vs nan' python3 scripts/compare_distill.py "$work/distill.jsonl" "$work/distill-nan.jsonl" || return 1
  expect_failure 10 '^stage 3 step 2: kd nan vs 1\.0' python3 scripts/compare_distill.py "$work/distill-nan.jsonl" "$work/distill.jsonl" --rtol 10 || return 1
}
check "compare_distill.py: a NaN loss differs (in either file)" distill_nan

# bookkeeping DRIVER_BODY PATTERN...: runs a driver made of DRIVER_BODY through run_driver and
# summary with results of its own; summary must fail and the output must hold every PATTERN.
bookkeeping() {
  local body=$1 out pattern; shift
  printf '#!/usr/bin/env bash\nset -uo pipefail\nsource scripts/lib.sh\n%s\n' "$body" >"$work/driver.sh"
  chmod +x "$work/driver.sh"
  out=$(RESULTS="$work/results-$RANDOM" LOG_DIR="$work/logs" bash -c 'source scripts/lib.sh; run_driver "$1"; summary' _ "$work/driver.sh" 2>&1)
  local status=$?
  echo "$out"
  [ "$status" -ne 0 ] || { echo "summary exited 0"; return 1; }
  for pattern in "$@"; do grep -qE "$pattern" <<<"$out" || { echo "no line matches /$pattern/"; return 1; }; done
}
check "test.sh bookkeeping: a check aborted by an expansion error counts as failed" bookkeeping \
  'plan 2; aborted() { local x=$((1 / 0)); }; check "ok" true; check "aborted one" aborted' \
  '^FAIL aborted one: it began and printed neither PASS nor FAIL' '^PASS ok' '^1 passed, [12] failed, 0 skipped \(2 declared\)$'
check "test.sh bookkeeping: a driver that dies (set -u) counts its check as failed and its missing checks" bookkeeping \
  'plan 3; check "ok" true; dies() { echo "$no_such_variable"; }; check "dies" dies; check "never runs" true' \
  '^FAIL dies: it began and printed neither PASS nor FAIL' 'exited with status 1$' 'ran 2 of the 3 checks it plans'
check "test.sh bookkeeping: a driver that skips is named with its reason and still fails short of its plan" bookkeeping \
  'plan 3; skip "no frobnicator" "needs /dev/frob"; check "ok" true' \
  '^SKIP no frobnicator: needs /dev/frob$' 'ran 2 of the 3 checks it plans' '^1 passed, 1 failed, 1 skipped \(3 declared\)$'
check "test.sh bookkeeping: skip_rest counts every remaining planned check as skipped" bash -c "
  out=\$(RESULTS='$work/results-rest' LOG_DIR='$work/logs' bash -c 'source scripts/lib.sh; plan 4; check ok true; skip_rest \"later ones\" \"no cluster\"; account x 0 0; summary' 2>&1)
  status=\$?; echo \"\$out\"
  [ \$status -eq 0 ] && grep -q '^SKIP later ones (3 checks): no cluster\$' <<<\"\$out\" && grep -q '^1 passed, 0 failed, 3 skipped (4 declared)\$' <<<\"\$out\""

# scripts/setup.sh with a `swift` that fails its build while an older binary is still in .build
# (a copy of the scripts, the corpus linked): set-up must fail, naming the build; with a `swift`
# whose build succeeds it must pass.
setup_with_swift() {
  local status=$1 tree=$work/setup-$1
  mkdir -p "$tree/.build/release" "$tree/bin" && cp -r scripts "$tree/" && ln -s "$PWD/data" "$tree/data" || return 1
  printf '#!/bin/sh\necho "tessera.swift:1:1: error: stale on purpose"\nexit 0\n' >"$tree/.build/release/tessera"
  printf '#!/bin/sh\necho "Compiling Tessera"\n[ %s -eq 0 ] || echo "x.swift:1:1: error: cannot find y in scope"\nexit %s\n' "$status" "$status" >"$tree/bin/swift"
  chmod +x "$tree/.build/release/tessera" "$tree/bin/swift"
  PATH="$tree/bin:$PATH" "$tree/scripts/setup.sh"
}
export -f setup_with_swift; export work
check "setup.sh: a failed build fails set-up, though an older binary exists" expect_failure 60 \
  "^setup: the release build failed \(swift build exited with status 1" bash -c 'setup_with_swift 1'
check "setup.sh: a build that succeeds passes set-up" bash -c 'setup_with_swift 0 && echo "set-up passed"'

if [ "$standalone" = yes ]; then
  account "$0" 0 0
  summary
fi
