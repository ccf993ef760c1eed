#!/usr/bin/env python3
"""The bench-dense model of docs/BENCHMARKS.md in PyTorch eager, for a side-by-side `tessera bench train`.

usage: pytorch_train.py [--threads N] [--steps 20] [--warmup 5]
Prints one JSON line with the keys of docs/BENCHMARKS.md (impl "pytorch-eager"). Not part of Tessera: run
it with a PyTorch you installed (pip install torch) to compare on the same machine."""
import argparse, json, math, resource, time
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--warmup", type=int, default=5)
p.add_argument("--compile", action="store_true", help="torch.compile the model (not eager)")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
V, D, L, H, FF, T, B = 256, 256, 4, 4, 768, 256, 8
HD = D // H

def rope(x, cos, sin):  # rotate-half, x: (B, H, T, HD)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = nn.RMSNorm(D, eps=1e-5), nn.RMSNorm(D, eps=1e-5)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.gate, self.up = nn.Linear(D, FF, bias=False), nn.Linear(D, FF, bias=False)
        self.down = nn.Linear(FF, D, bias=False)

    def forward(self, x, cos, sin):
        h = self.n1(x)
        q, k, v = (m(h).view(B, T, H, HD).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.norm = nn.RMSNorm(D, eps=1e-5)
        self.head = nn.Linear(D, V, bias=False)
        inv = 10000.0 ** (-torch.arange(0, HD, 2).float() / HD)
        ang = torch.arange(T).float()[:, None] * inv[None, :]
        self.register_buffer("cos", ang.cos()); self.register_buffer("sin", ang.sin())

    def forward(self, tokens, targets):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.view(-1, V), targets.reshape(-1))

model = Model()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
step_fn = torch.compile(model) if args.compile else model
data = torch.randint(0, V, (args.warmup + args.steps, B, T + 1))

def step(i):
    loss = step_fn(data[i, :, :-1], data[i, :, 1:])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

for i in range(args.warmup):
    step(i)
rates = []
for i in range(args.warmup, args.warmup + args.steps):
    t = time.perf_counter(); step(i); rates.append(B * T / (time.perf_counter() - t))
rates.sort()
print(json.dumps({"bench": "train", "impl": "pytorch-compile" if args.compile else "pytorch-eager", "threads": args.threads, "ranks": 1,
                  "model": "dense", "data": 1, "sequence": 1, "unit": "tokens/s", "min": round(rates[0], 1),
                  "median": round(rates[len(rates) // 2], 1), "max": round(rates[-1], 1), "runs": len(rates),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters())}, sort_keys=True))
