#!/usr/bin/env python3
"""Compares the model parameters of two checkpoint directories (every *.safetensors file of
each, Float32 tensors by name).

usage: compare_params.py REFERENCE_CHECKPOINT OTHER_CHECKPOINT [--rtol 1e-5]
Values agree when |a - b| <= rtol * max(1, |a|). Exits 1 naming the tensor and element that
differ most, or tensors present in one checkpoint only."""
import array, glob, json, os, struct, sys


def tensors(directory):
    out = {}
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        sys.exit(f"{directory}: no .safetensors files")
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            data = f.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] != "F32":
                sys.exit(f"{path}: {name} is {info['dtype']}, not F32")
            start, end = info["data_offsets"]
            values = array.array("f")
            values.frombytes(data[start:end])
            out[name] = values
    return out


def main(argv):
    rtol = 1e-5
    if "--rtol" in argv:
        i = argv.index("--rtol")
        rtol, argv = float(argv[i + 1]), argv[:i] + argv[i + 2:]
    if len(argv) != 2:
        sys.exit(__doc__)
    args = argv
    reference, other = tensors(args[0]), tensors(args[1])
    if reference.keys() != other.keys():
        sys.exit(f"tensors in one checkpoint only: {sorted(reference.keys() ^ other.keys())}")
    worst = (0.0, None, None)
    for name, a in reference.items():
        b = other[name]
        if len(a) != len(b):
            sys.exit(f"{name}: {len(a)} values vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            error = abs(x - y) / max(1.0, abs(x))
            if error != error:   # NaN (in either): the worst there is; no finite error may replace it
                worst = (error, name, i)
                break
            if error > worst[0]:
                worst = (error, name, i)
        if worst[0] != worst[0]:
            break
    error, name, index = worst
    if not error <= rtol:   # NaN too
        sys.exit(f"parameters differ: {name}[{index}] {reference[name][index]} vs {other[name][index]} (error {error:.3g} > rtol {rtol})")
    print(f"{len(reference)} tensors agree (largest error {error:.3g}, rtol {rtol})")


if __name__ == "__main__":
    main(sys.argv[1:])
