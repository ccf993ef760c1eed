#!/usr/bin/env python3
"""Compares the training losses of two runs' metrics.jsonl, step by step.

usage: compare_losses.py REFERENCE.jsonl OTHER.jsonl [--rtol 1e-5] [--exact]
Exits 1 naming the first step that differs by more than the tolerance."""
import json, sys

def losses(path):
    out = {}
    for line in open(path):
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out

args = sys.argv[1:]
exact = "--exact" in args
rtol = float(args[args.index("--rtol") + 1]) if "--rtol" in args else 1e-5
reference, other = losses(args[0]), losses(args[1])
if sorted(reference) != sorted(other):
    only_ref, only_other = sorted(set(reference) - set(other)), sorted(set(other) - set(reference))
    sys.exit(f"logged steps differ: only in {args[0]}: {only_ref[:10]}; only in {args[1]}: {only_other[:10]}")
for step in sorted(reference):
    a, b = reference[step], other[step]
    if (a != b) if exact else abs(a - b) > rtol * max(1.0, abs(a)):
        sys.exit(f"step {step}: {a!r} vs {b!r}")
print(f"{len(reference)} steps agree ({'bitwise' if exact else f'rtol {rtol}'}); last loss {reference[max(reference)]}")
