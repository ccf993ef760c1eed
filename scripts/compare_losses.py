#!/usr/bin/env python3
"""Compares the training records of two runs' metrics.jsonl, step by step: the loss and the
gradient norm (grad_norm) of every logged step, and the MoE auxiliary loss (aux_loss) where
the reference logged one.

usage: compare_losses.py REFERENCE.jsonl OTHER.jsonl [--rtol 1e-5] [--exact]
Values agree when |a - b| <= rtol * max(1, |a|), or bitwise with --exact. Exits 1 naming the
first step that differs, a step whose training record appears twice in one file (a resume that
started again from step 0 appends steps already logged), steps that do not increase, or
steps logged in one file only."""
import json, sys

COMPARED = ("loss", "grad_norm")


def training_records(path):
    """{step: record} of the training records (those with a "loss"), checked to be logged once
    each and in increasing step order."""
    out, previous = {}, None
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"{path}:{number}: not JSON ({error})")
            if "loss" not in record:
                continue   # validation records
            step = record.get("step")
            if not isinstance(step, int):
                sys.exit(f"{path}:{number}: training record without an integer step: {line.strip()}")
            missing = [key for key in COMPARED if key not in record]
            if missing:
                sys.exit(f"{path}:{number}: step {step}'s training record has no {', '.join(missing)}")
            if step in out:
                sys.exit(f"{path}:{number}: step {step}'s training record appears twice "
                         f"(a resume that started again from an earlier step?)")
            if previous is not None and step < previous:
                sys.exit(f"{path}:{number}: steps are not increasing: step {step} after step {previous}")
            out[step], previous = record, step
    if not out:
        sys.exit(f"{path}: no training records")
    return out


def differs(a, b, exact, rtol):
    if exact:
        return a != b
    return not abs(a - b) <= rtol * max(1.0, abs(a))   # NaN differs


def main(args):
    paths = [a for i, a in enumerate(args) if not a.startswith("--") and (i == 0 or args[i - 1] != "--rtol")]
    if len(paths) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    exact = "--exact" in args
    rtol = float(args[args.index("--rtol") + 1]) if "--rtol" in args else 1e-5
    reference, other = training_records(paths[0]), training_records(paths[1])
    if sorted(reference) != sorted(other):
        only_ref, only_other = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
        sys.exit(f"logged steps differ: only in {paths[0]}: {only_ref[:10]}; only in {paths[1]}: {only_other[:10]}")
    for step in sorted(reference):
        for key in COMPARED + (("aux_loss",) if "aux_loss" in reference[step] else ()):
            if key not in other[step]:
                sys.exit(f"step {step}: {key} in {paths[0]} but not in {paths[1]}")
            a, b = reference[step][key], other[step][key]
            if differs(a, b, exact, rtol):
                sys.exit(f"step {step}: {key} {a!r} in {paths[0]} vs {b!r} in {paths[1]}")
    last = reference[max(reference)]
    print(f"{len(reference)} steps agree in {' and '.join(COMPARED)} ({'bitwise' if exact else f'rtol {rtol}'}); "
          f"last loss {last['loss']}, grad_norm {last['grad_norm']}")


if __name__ == "__main__":
    main(sys.argv[1:])
