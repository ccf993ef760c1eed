#!/usr/bin/env bash
# Tessera's own GEMM against OpenBLAS, side by side in one process per round (`tessera bench gemm
# --impl tessera openblas`): squares n = 256 … 2048 and the bench models' products (bench-dense's
# linear layers forward / dx / dW and bench-moe's expert products), at 1 and 2 threads, in
# interleaved rounds. OpenBLAS runs the core CORE (default Cooperlake: its best for an AVX-512 +
# BF16 CPU; set the one your CPU's best is), or the one the environment already sets if CORE is
# "env". DTYPE bf16 runs Tessera's bf16 kernel and then OpenBLAS's Float32 sgemm on the same
# shapes, so the ratio is bf16's gain over the best Float32. Tessera's instruction set can be forced with TESSERA_GEMM_ISA (avx512, avx2, portable).
# In Float32 each round also runs the products training adds into a C that is in memory, not in
# cache (`--beta 1 --cold`: a ring of 256 MiB of C buffers, A and B warm): the weight gradients
# dW += dyᵀx (TN, k = the batch's 2048 rows, or an expert's rows) and the input gradients summed
# over layers sharing an input (NN), and n = 1024 (--n cannot be empty). The warm beta-0 shapes alone read at parity while training
# lost there (issue 24u); these rows show it.
# Prints the JSON lines, then a table of per-shape medians (mean over rounds) and each
# implementation's geometric-mean ratio to OpenBLAS, for the warm beta-0 and the cold beta-1 rows apart.
# Usage: scripts/bench-gemm.sh [ROUNDS=2] [CORE=Cooperlake] [DTYPE=fp32]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2} core=${2:-Cooperlake} dtype=${3:-fp32}
B=$PWD/.build/release/tessera
[ -x "$B" ] || { echo "bench-gemm.sh: build first (swift build -c release)" >&2; exit 1; }
[ "$core" = env ] || export OPENBLAS_CORETYPE=$core
shapes=(2048x256x256:NT 2048x768x256:NT 2048x256x768:NT 2048x256x256:NN 2048x256x768:NN 2048x768x256:NN
        256x256x2048:TN 768x256x2048:TN 256x768x2048:TN 512x384x256:NT 512x256x384:NT 512x384x256:NN
        512x256x384:NN 384x256x512:TN 256x384x512:TN)
accumulated=(256x256x2048:TN 768x256x2048:TN 256x768x2048:TN 384x256x512:TN 256x384x512:TN
             2048x256x256:NN 2048x256x768:NN 512x256x384:NN)
out=$(mktemp); trap 'rm -f "$out"' EXIT
for ((round = 1; round <= rounds; round++)); do
  for threads in 1 2; do
    run=("$B" bench gemm --threads $threads --runs 3 --n 256 512 1024 2048 --shape "${shapes[@]}")
    if [ "$dtype" = fp32 ]; then
      "${run[@]}" --impl tessera openblas | grep '^{' | tee -a "$out"
      "$B" bench gemm --threads $threads --runs 5 --beta 1 --cold --n 1024 --shape "${accumulated[@]}" --impl tessera openblas | grep '^{' | tee -a "$out"
    else  # Tessera's bf16 kernel against Float32 OpenBLAS, one after the other
      { "${run[@]}" --dtype "$dtype"; "${run[@]}" --impl openblas; } | grep '^{' | tee -a "$out"
    fi
  done
done
python3 - "$out" <<'EOF'
import collections, json, math, sys
rows, impls = collections.defaultdict(list), []
for line in open(sys.argv[1]):
    o = json.loads(line)
    shape = f"n={o['n']}" if 'm' not in o else f"{o['m']}x{o['n']}x{o['k']}:{o['transpose']}"
    shape += f" beta {o['beta']:g} cold" if o.get('cold') else f" beta {o['beta']:g}" if o.get('beta', 0) != 0 else ''
    name = o['impl'] + ('' if o['impl'] != 'openblas-sgemm' else f" ({o['blas_core']})")
    impls += [name] if name not in impls else []
    rows[(o['threads'], shape, name)].append(o['median'])
reference = next((i for i in impls if i.startswith('openblas')), None)
for threads in (1, 2):
    shapes = list(dict.fromkeys(s for (t, s, _) in rows if t == threads))
    print(f"\n{threads} thread(s), GFLOP/s (mean of the rounds' medians)" + (f", ratio to {reference}" if reference else ""))
    ratios = collections.defaultdict(list)  # (implementation, cold) -> per-shape ratios
    for s in shapes:
        cells = []
        for i in impls:
            v = rows.get((threads, s, i))
            if not v: cells.append('-'); continue
            mean = sum(v) / len(v)
            if reference:
                ref = sum(rows[(threads, s, reference)]) / len(rows[(threads, s, reference)])
                ratios[(i, s.endswith('cold'))].append(mean / ref); cells.append(f"{mean:.0f} ({mean / ref:.2f})")
            else:
                cells.append(f"{mean:.0f}")
        print(f"  {s:>29}  " + "  ".join(f"{i}: {c}" for i, c in zip(impls, cells)))
    for (i, cold), r in ratios.items():
        print(f"  geometric mean {i}{', beta 1 cold' if cold else ''}: {math.prod(r) ** (1 / len(r)):.3f}")
EOF
