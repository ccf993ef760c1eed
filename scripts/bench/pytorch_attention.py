#!/usr/bin/env python3
"""PyTorch's CPU attention on the shapes of `tessera bench attention` (B 1, H 8, D 64, causal),
for side-by-side comparison: forward+backward of `scaled_dot_product_attention` (PyTorch picks
its CPU flash kernel for these shapes), one JSON line per N like Tessera's bench.

usage: pytorch_attention.py [--n 2048 4096] [--threads 1] [--runs 3] [--warmup 1]   (needs torch)"""
import argparse, json, statistics, time
import torch
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--n", type=int, nargs="+", default=[2048, 4096])
p.add_argument("--threads", type=int, default=1)
p.add_argument("--runs", type=int, default=3)
p.add_argument("--warmup", type=int, default=1)
args = p.parse_args()
torch.set_num_threads(args.threads)
B, H, D = 1, 8, 64
for n in args.n:
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, H, n, D, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.ones(B, H, n, D)

    def call():
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"bench": "attention", "impl": f"pytorch-{torch.__version__}-sdpa", "threads": args.threads,
                      "B": B, "H": H, "D": D, "N": n, "causal": True, "mode": "fwdbwd", "unit": "ms",
                      "median": round(statistics.median(times), 4), "min": round(min(times), 4), "max": round(max(times), 4)}))
