#!/usr/bin/env python3
"""The bench-dense model of docs/BENCHMARKS.md in PyTorch eager (or, with --moe, the bench-moe model:
8 SwiGLU experts of width 384, top-2, softmax router with gates renormalised over the chosen two,
index_select / index_add dispatch, aux loss 0.01 and z-loss 0.001), for a side-by-side `tessera bench train`.

usage: pytorch_train.py [--threads N] [--steps 20] [--warmup 5] [--moe] [--bf16]
With --bf16 the forward pass runs under torch.autocast("cpu", dtype=torch.bfloat16) (oneDNN bf16 products,
Float32 master weights and optimizer: the peer of `train.precision: bf16`).
Prints one JSON line with the keys of docs/BENCHMARKS.md (impl "pytorch-eager", and "precision"). Not part of Tessera: run
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
p.add_argument("--moe", action="store_true", help="the bench-moe model (configs/bench-moe.yaml)")
p.add_argument("--bf16", action="store_true", help='forward under torch.autocast("cpu", dtype=torch.bfloat16)')
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
V, D, L, H, FF, T, B = 256, 256, 4, 4, 768, 256, 8
E, K, EF = 8, 2, 384   # bench-moe: experts, top-k, expert width
HD = D // H

def rope(x, cos, sin):  # rotate-half, x: (B, H, T, HD)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

class MoE(nn.Module):
    """Mixtral-style: softmax over all experts, top-k, gates renormalised; dropless."""
    def __init__(self):
        super().__init__()
        self.router = nn.Linear(D, E, bias=False)
        self.w1 = nn.ModuleList(nn.Linear(D, EF, bias=False) for _ in range(E))
        self.w3 = nn.ModuleList(nn.Linear(D, EF, bias=False) for _ in range(E))
        self.w2 = nn.ModuleList(nn.Linear(EF, D, bias=False) for _ in range(E))
        self.aux = torch.zeros(())

    def forward(self, x):
        flat = x.reshape(-1, D)
        logits = self.router(flat)
        probs = logits.softmax(-1)
        gates, chosen = probs.topk(K, dim=-1)
        gates = gates / gates.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        counts = torch.zeros(E)
        for e in range(E):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            counts[e] = token.numel()
            if token.numel() == 0:
                continue
            h = flat.index_select(0, token)
            y = self.w2[e](F.silu(self.w1[e](h)) * self.w3[e](h)) * gates[token, slot, None]
            out = out.index_add(0, token, y.to(out.dtype))
        fraction = counts / (flat.shape[0] * K)
        self.aux = 0.01 * E * (fraction * probs.mean(0)).sum() + 0.001 * torch.logsumexp(logits, -1).pow(2).mean()
        return out.view_as(x)

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = nn.RMSNorm(D, eps=1e-5), nn.RMSNorm(D, eps=1e-5)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.moe = MoE() if args.moe else None
        if not args.moe:
            self.gate, self.up = nn.Linear(D, FF, bias=False), nn.Linear(D, FF, bias=False)
            self.down = nn.Linear(FF, D, bias=False)

    def forward(self, x, cos, sin):
        h = self.n1(x)
        q, k, v = (m(h).view(B, T, H, HD).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(rope(q, cos, sin), rope(k, cos, sin), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, D))
        h = self.n2(x)
        if self.moe is not None:
            return x + self.moe(h)
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
        loss = F.cross_entropy(logits.view(-1, V), targets.reshape(-1))
        if args.moe:
            loss = loss + sum(b.moe.aux for b in self.blocks)
        return loss

model = Model()
decay = [p for p in model.parameters() if p.dim() >= 2]
no_decay = [p for p in model.parameters() if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True)
step_fn = torch.compile(model) if args.compile else model
data = torch.randint(0, V, (args.warmup + args.steps, B, T + 1))

def step(i):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
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
                  "model": "moe" if args.moe else "dense", "precision": "bf16" if args.bf16 else "fp32", "data": 1, "sequence": 1, "unit": "tokens/s", "min": round(rates[0], 1),
                  "median": round(rates[len(rates) // 2], 1), "max": round(rates[-1], 1), "runs": len(rates),
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                  "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters())}, sort_keys=True))
