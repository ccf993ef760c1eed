#!/usr/bin/env python3
"""Checks that a Tessera checkpoint is a Hugging Face Llama checkpoint: loads it with
`transformers` (LlamaForCausalLM.from_pretrained on the directory, unchanged) and compares its
greedy byte continuation with `tessera generate --temperature 0`.

usage: check_hf.py CHECKPOINT_DIR [--prompt TEXT] [--tokens N]   (needs torch and transformers)"""
import argparse, subprocess, sys
import torch
from transformers import LlamaForCausalLM

p = argparse.ArgumentParser()
p.add_argument("checkpoint")
p.add_argument("--prompt", default="ROMEO:")
p.add_argument("--tokens", type=int, default=60)
p.add_argument("--tessera", default=".build/release/tessera")
args = p.parse_args()

model = LlamaForCausalLM.from_pretrained(args.checkpoint, torch_dtype=torch.float32).eval()
ids = torch.tensor([list(args.prompt.encode())])
with torch.no_grad():
    for _ in range(args.tokens):
        next_id = model(ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
hf = bytes(ids[0].tolist()).decode(errors="replace")
ours = subprocess.run([args.tessera, "generate", "--checkpoint", args.checkpoint, "--prompt", args.prompt,
                       "--tokens", str(args.tokens), "--temperature", "0"], capture_output=True, text=True, check=True).stdout.rstrip("\n")
print("transformers:", repr(hf))
print("tessera:     ", repr(ours))
sys.exit(0 if hf == ours else "the continuations differ")
