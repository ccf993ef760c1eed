#!/usr/bin/env python3
"""Checks a Hugging Face export of a Tessera checkpoint (`tessera export hf`) against Tessera.

1. names, shapes and dtypes: the safetensors files hold exactly the tensors LlamaForCausalLM
   (dense) or MixtralForCausalLM (MoE) expects for config.json, all F32;
2. loss: the exported model's mean cross-entropy on the first BATCHES validation batches (the
   windows `tessera eval --batches BATCHES` reads) equals what `tessera eval` prints;
3. (Llama, with transformers) greedy generation equals `tessera generate --temperature 0`.

The model runs in `transformers` (AutoModelForCausalLM.from_pretrained on the export,
unchanged) when torch is installed, otherwise (or with --numpy) in a numpy implementation of
the Llama / Mixtral forward pass written from the Hugging Face modeling code's equations.

usage: check_hf.py EXPORT_DIR --checkpoint CKPT [--data DIR] [--batches K] [--numpy | --transformers]
       (needs numpy; torch and transformers for the transformers check)"""
import argparse, glob, json, os, re, subprocess, sys
import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def load_file(path):
    """{name: array} of a .safetensors file (8-byte little-endian header size, a JSON header,
    then the raw little-endian data), so that the check needs numpy alone."""
    with open(path, "rb") as f:
        (size,) = np.frombuffer(f.read(8), dtype="<u8")
        header = json.loads(f.read(int(size)))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] in DTYPES, f"{path}: {name} has dtype {info['dtype']}"
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")).reshape(info["shape"])
    return out

p = argparse.ArgumentParser()
p.add_argument("export")
p.add_argument("--checkpoint", required=True, help="the Tessera checkpoint (or run directory) that was exported")
p.add_argument("--data", help="token shards (default: data.dir of the checkpoint's run.yaml)")
p.add_argument("--batches", type=int, default=2)
p.add_argument("--numpy", action="store_true", help="use the numpy forward even when torch is installed")
p.add_argument("--transformers", action="store_true", help="run transformers or fail: never fall back to the numpy forward")
p.add_argument("--prompt", default="ROMEO:")
p.add_argument("--tokens", type=int, default=40)
p.add_argument("--tessera", default=".build/release/tessera")
args = p.parse_args()

config = json.load(open(os.path.join(args.export, "config.json")))
index = json.load(open(os.path.join(args.export, "model.safetensors.index.json")))
tensors = {}
for file in sorted(set(index["weight_map"].values())):
    tensors.update(load_file(os.path.join(args.export, file)))
moe = config["architectures"] == ["MixtralForCausalLM"]

# 1. Names, shapes, dtypes.
d, V, L = config["hidden_size"], config["vocab_size"], config["num_hidden_layers"]
H, KV = config["num_attention_heads"], config["num_key_value_heads"]
hd, I = config.get("head_dim", d // H), config["intermediate_size"]
expected = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
if not config.get("tie_word_embeddings"):
    expected["lm_head.weight"] = (V, d)
for l in range(L):
    q = f"model.layers.{l}."
    expected.update({q + "input_layernorm.weight": (d,), q + "post_attention_layernorm.weight": (d,),
                     q + "self_attn.q_proj.weight": (H * hd, d), q + "self_attn.k_proj.weight": (KV * hd, d),
                     q + "self_attn.v_proj.weight": (KV * hd, d), q + "self_attn.o_proj.weight": (d, H * hd)})
    if moe:
        expected[q + "block_sparse_moe.gate.weight"] = (config["num_local_experts"], d)
        for e in range(config["num_local_experts"]):
            r = q + f"block_sparse_moe.experts.{e}."
            expected.update({r + "w1.weight": (I, d), r + "w2.weight": (d, I), r + "w3.weight": (I, d)})
    else:
        expected.update({q + "mlp.gate_proj.weight": (I, d), q + "mlp.up_proj.weight": (I, d), q + "mlp.down_proj.weight": (d, I)})
assert set(tensors) == set(expected), f"names differ: extra {set(tensors) - set(expected)}, missing {set(expected) - set(tensors)}"
for name, shape in expected.items():
    assert tensors[name].shape == shape, f"{name}: shape {tensors[name].shape}, expected {shape}"
    assert tensors[name].dtype == np.float32, f"{name}: dtype {tensors[name].dtype}"
print(f"names, shapes, dtypes: {len(tensors)} tensors as {config['architectures'][0]} expects")

# 2. The tokens `tessera eval --batches K` reads: validation windows 0 ..< K * global_batch.
tessera = args.tessera
resolved = subprocess.run([tessera, "eval", "--checkpoint", args.checkpoint, "--batches", str(args.batches)],
                          capture_output=True, text=True, check=True)
checkpoint_dir = re.search(r"checkpoint (\S+) \(step", resolved.stdout).group(1)
ours = float(re.search(r"validation loss ([0-9.]+) nats", resolved.stdout).group(1))
run = open(os.path.join(checkpoint_dir, "run.yaml")).read()
def key(section, name):
    return re.search(rf"^{section}:\n(?:  .*\n)*?  {name}: \"?([^\"\n]+)\"?", run, re.M).group(1)
data_dir, T, B = args.data or key("data", "dir"), int(key("data", "seq_len")), int(key("train", "global_batch"))
split = []
for shard in sorted(glob.glob(os.path.join(data_dir, "val-*.tok"))):
    raw = open(shard, "rb").read()
    width, count = int.from_bytes(raw[12:16], "little"), int.from_bytes(raw[16:24], "little")
    split.append(np.frombuffer(raw[32:32 + width * count], dtype={1: np.uint8, 2: "<u2", 4: "<u4"}[width]).astype(np.int64))
split = np.concatenate(split)
windows = (len(split) - 1) // T
starts = [(s % windows) * T for s in range(args.batches * B)]
batch = np.stack([split[s:s + T + 1] for s in starts])
inputs, targets = batch[:, :-1], batch[:, 1:]

def numpy_logits(x):
    """Llama / Mixtral forward (Hugging Face equations) in float64: logits (B, T, V)."""
    w = {k: v.astype(np.float64) for k, v in tensors.items()}
    eps, theta = config["rms_norm_eps"], config.get("rope_theta", 10000.0)
    def norm(h, g): return h / np.sqrt((h * h).mean(-1, keepdims=True) + eps) * g
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(x.shape[1])[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    def rope(t): return t * cos + np.concatenate([-t[..., hd // 2:], t[..., :hd // 2]], -1) * sin
    def silu(z): return z / (1 + np.exp(-z))
    h = w["model.embed_tokens.weight"][x]
    b, t = x.shape
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for l in range(L):
        q = f"model.layers.{l}."
        a = norm(h, w[q + "input_layernorm.weight"])
        Q = rope((a @ w[q + "self_attn.q_proj.weight"].T).reshape(b, t, H, hd).transpose(0, 2, 1, 3))
        K = rope((a @ w[q + "self_attn.k_proj.weight"].T).reshape(b, t, KV, hd).transpose(0, 2, 1, 3))
        Vv = (a @ w[q + "self_attn.v_proj.weight"].T).reshape(b, t, KV, hd).transpose(0, 2, 1, 3)
        K, Vv = np.repeat(K, H // KV, 1), np.repeat(Vv, H // KV, 1)
        s = Q @ K.transpose(0, 1, 3, 2) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
        h = h + (s @ Vv).transpose(0, 2, 1, 3).reshape(b, t, H * hd) @ w[q + "self_attn.o_proj.weight"].T
        a = norm(h, w[q + "post_attention_layernorm.weight"])
        if moe:
            E, k = config["num_local_experts"], config["num_experts_per_tok"]
            z = a @ w[q + "block_sparse_moe.gate.weight"].T
            pr = np.exp(z - z.max(-1, keepdims=True)); pr /= pr.sum(-1, keepdims=True)
            top = np.argsort(-pr, -1, kind="stable")[..., :k]
            gates = np.take_along_axis(pr, top, -1); gates /= gates.sum(-1, keepdims=True)
            out = np.zeros_like(a)
            for e in range(E):
                r = q + f"block_sparse_moe.experts.{e}."
                y = (silu(a @ w[r + "w1.weight"].T) * (a @ w[r + "w3.weight"].T)) @ w[r + "w2.weight"].T
                out += y * ((top == e) * gates).sum(-1, keepdims=True)
            h = h + out
        else:
            h = h + (silu(a @ w[q + "mlp.gate_proj.weight"].T) * (a @ w[q + "mlp.up_proj.weight"].T)) @ w[q + "mlp.down_proj.weight"].T
    head = w["model.embed_tokens.weight"] if config.get("tie_word_embeddings") else w["lm_head.weight"]
    return norm(h, w["model.norm.weight"]) @ head.T

def cross_entropy(logits):
    logits = logits - logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, targets[..., None], -1).mean())

try:
    if args.numpy: raise ImportError
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(args.export, dtype=torch.float32).eval()
    engine = f"transformers {type(model).__name__}"
    with torch.no_grad():
        theirs = cross_entropy(model(torch.tensor(inputs)).logits.double().numpy())
except ImportError as error:
    if args.transformers:
        sys.exit(f"--transformers: cannot import torch and transformers ({error}); install them or drop --transformers")
    model, engine = None, "numpy forward"
    theirs = cross_entropy(numpy_logits(inputs))
print(f"loss on {args.batches * B} validation sequences of {T} tokens: {engine} {theirs:.6f}, tessera eval {ours:.4f}")
ok = abs(theirs - ours) < 2e-4   # tessera eval prints 4 decimals
if model is not None and not moe:   # tessera generate has no KV cache path for MoE layers yet
    ids = torch.tensor([list(args.prompt.encode())])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False)
    hf = bytes(out[0].tolist()).decode(errors="replace")
    generated = subprocess.run([tessera, "generate", "--checkpoint", args.checkpoint, "--prompt", args.prompt, "--tokens", str(args.tokens),
                                "--temperature", "0"], capture_output=True, text=True, check=True).stdout.rstrip("\n")
    print("transformers generate:", repr(hf))
    print("tessera generate:     ", repr(generated))
    ok = ok and hf == generated
sys.exit(0 if ok else "the export and tessera disagree")
