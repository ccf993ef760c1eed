#!/usr/bin/env python3
"""Compares two distillation runs' metrics.jsonl (tessera distill) record by record: every
logged step's losses (stages 1-2: layer_losses per layer; stage 3: kd, data, total) and each
stage's student val_loss, keyed by (stage, step).

usage: compare_distill.py REFERENCE.jsonl OTHER.jsonl [--rtol 1e-5] [--exact]
Values agree when |a - b| <= rtol * max(1, |a|), or bitwise with --exact. Exits 1 naming the
first record that differs, a record logged twice in one file, or records logged in one file only."""
import json, sys


def records(path):
    """{(kind, stage, step): {name: value}} of the loss and validation records."""
    out = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"{path}:{number}: not JSON ({error})")
            if "stage" not in record:
                continue
            if "val_loss" in record:
                key, values = ("val", record["stage"], record["step"]), {"val_loss": record["val_loss"]}
            elif "layer_losses" in record:
                key, values = ("loss", record["stage"], record["step"]), {f"layer {k}": v for k, v in record["layer_losses"].items()}
            else:
                key, values = ("loss", record["stage"], record["step"]), {k: record[k] for k in ("kd", "data", "total")}
            if key in out:
                sys.exit(f"{path}:{number}: stage {key[1]} step {key[2]} is logged twice")
            out[key] = values
    if not out:
        sys.exit(f"{path}: no distillation records")
    return out


def main():
    args = sys.argv[1:]
    exact = "--exact" in args
    rtol = 1e-5
    if "--rtol" in args:
        rtol = float(args[args.index("--rtol") + 1])
    paths = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] != "--rtol")]
    if len(paths) != 2:
        sys.exit(__doc__)
    reference, other = records(paths[0]), records(paths[1])
    if set(reference) != set(other):
        only = sorted(set(reference) ^ set(other))[:3]
        sys.exit(f"records logged in one file only (kind, stage, step): {only}")
    worst = 0.0
    for key in sorted(reference):
        for name, a in reference[key].items():
            b = other[key].get(name)
            if b is None:
                sys.exit(f"stage {key[1]} step {key[2]}: {name} missing in {paths[1]}")
            difference = abs(a - b)
            # `not <=` so that NaN (in either file) differs; with --exact, NaN != NaN differs too.
            if (exact and a != b) or (not exact and not difference <= rtol * max(1.0, abs(a))):
                sys.exit(f"stage {key[1]} step {key[2]}: {name} {a!r} vs {b!r} (difference {difference:.3g})")
            worst = max(worst, difference / max(1.0, abs(a)))
    print(f"{len(reference)} records agree (largest relative difference {worst:.3g})")


main()
