#!/usr/bin/env python3
"""Checks a Hugging Face export of a Tessera checkpoint (`tessera export hf`) against Tessera.

1. names, shapes and dtypes: the safetensors files hold exactly the tensors LlamaForCausalLM
   (dense) or MixtralForCausalLM (MoE) expects for config.json, all F32;
2. logits, element by element: Tessera's logits on the first BATCHES validation batches
   (`tessera eval --batches BATCHES --logits FILE`) against the exported model's, every element
   within ATOL + RTOL * |theirs|, and the losses equal. The exported model runs in a numpy
   implementation of the Llama / Mixtral forward pass (float64, written from the Hugging Face
   modeling code's equations) and, when torch and transformers import (or with --transformers,
   which fails without them), in transformers too (AutoModelForCausalLM.from_pretrained on the
   export, unchanged);
3. attention matters: in the numpy forward, the same model with its attention restricted to the
   diagonal (each position sees only itself) must lose at least --attention-margin nats more than
   with full causal attention, and its logits must be far outside the tolerance of step 2; so a
   model that has not learnt to use its context cannot make a wrong attention export (q and k
   heads swapped, a wrong RoPE) pass step 2;
4. (with transformers) greedy generation equals `tessera generate --temperature 0`.

usage: check_hf.py EXPORT_DIR --checkpoint CKPT [--data DIR] [--batches K] [--attention-margin NATS]
                   [--numpy | --transformers]
       (needs numpy; torch and transformers for the transformers part)"""
import argparse, glob, json, os, re, subprocess, sys, tempfile
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
p.add_argument("--numpy", action="store_true", help="the numpy forward only, even when transformers imports")
p.add_argument("--transformers", action="store_true", help="run transformers too, or fail: never the numpy forward alone")
p.add_argument("--attention-margin", type=float, default=0.1,
               help="nats the diagonal-attention loss must exceed the full model's by (step 3; 0: only report it)")
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

# 2. Tessera's logits and loss on the first K validation batches (`tessera eval --batches K
#    --logits`), and the tokens they are of: validation windows 0 ..< K * global_batch.
tessera = args.tessera
scratch = tempfile.mkdtemp(prefix="check_hf.")
logits_file = os.path.join(scratch, "logits.npy")
resolved = subprocess.run([tessera, "eval", "--checkpoint", args.checkpoint, "--batches", str(args.batches), "--logits", logits_file],
                          capture_output=True, text=True)
if resolved.returncode != 0:
    sys.exit(f"tessera eval --logits exited with status {resolved.returncode}: {resolved.stderr.strip()}")
checkpoint_dir = re.search(r"checkpoint (\S+) \(step", resolved.stdout).group(1)
ours_loss = float(re.search(r"validation loss ([0-9.]+) nats", resolved.stdout).group(1))
ours = np.load(logits_file)
os.remove(logits_file); os.rmdir(scratch)
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
assert ours.shape == (args.batches * B, T, V) and ours.dtype == np.float32, \
    f"tessera eval --logits wrote {ours.dtype} {ours.shape}, expected float32 {(args.batches * B, T, V)}"

def numpy_logits(x, diagonal=False):
    """Llama / Mixtral forward (Hugging Face equations) in float64: logits (B, T, V). With
    `diagonal`, each position attends to itself only (step 3's ablation)."""
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
    if diagonal:
        mask = np.where(np.eye(t, dtype=bool), 0.0, -np.inf)
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

ATOL, RTOL = 5e-5, 1e-5   # float32 against float64 (numpy) or float32 (transformers) through a few layers: the worst measured were 4.3e-6 and 7.6e-6 (each run prints its own)
def compare(engine, theirs):
    """Every element of Tessera's logits within ATOL + RTOL |theirs| of `theirs`, and the losses equal."""
    excess = np.abs(ours - theirs) - (ATOL + RTOL * np.abs(theirs))
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    loss = cross_entropy(theirs)
    ok = bool(np.all(excess <= 0)) and abs(loss - ours_loss) < 1e-4   # tessera eval prints 4 decimals
    print(f"{engine}: logits of {ours.shape[0]} sequences x {T} positions x {V}: max |difference| {np.abs(ours - theirs).max():.3g} "
          f"({np.count_nonzero(excess > 0)} of {excess.size} outside {ATOL:g} + {RTOL:g}|x|; worst at sequence {worst[0]}, "
          f"position {worst[1]}, token {worst[2]}: tessera {ours[worst]:.6f}, {engine} {theirs[worst]:.6f}); "
          f"loss {loss:.6f}, tessera eval {ours_loss:.4f}")
    return ok

failures = []
full = numpy_logits(inputs)
if not compare("numpy forward", full):
    failures.append("the numpy forward's logits")

# 3. Attention matters.
diagonal = numpy_logits(inputs, diagonal=True)
gain, apart = cross_entropy(diagonal) - cross_entropy(full), float(np.abs(diagonal - full).max())
print(f"attention matters: with attention restricted to the diagonal the loss is {cross_entropy(diagonal):.4f}, "
      f"{gain:+.4f} nats against the full model (required: at least {args.attention_margin:g}); logits up to {apart:.3g} apart")
if gain < args.attention_margin:
    failures.append(f"attention does not matter enough to this model ({gain:+.4f} nats, need {args.attention_margin:g}): train it longer")
if apart < 100 * ATOL:
    failures.append(f"the diagonal-attention logits are within {apart:.3g} of the full model's, not far outside the tolerance {ATOL:g}")

model = None
if not args.numpy:
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as error:
        if args.transformers:
            sys.exit(f"--transformers: cannot import torch and transformers ({error}); install them or drop --transformers")
    else:
        model = AutoModelForCausalLM.from_pretrained(args.export, dtype=torch.float32).eval()
        with torch.no_grad():
            theirs = model(torch.tensor(inputs)).logits.double().numpy()
        if not compare(f"transformers {type(model).__name__}", theirs):
            failures.append("transformers' logits")
if model is not None:
    ids = torch.tensor([list(args.prompt.encode())])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=args.tokens, do_sample=False)
    hf = bytes(out[0].tolist()).decode(errors="replace")
    generated = subprocess.run([tessera, "generate", "--checkpoint", args.checkpoint, "--prompt", args.prompt, "--tokens", str(args.tokens),
                                "--temperature", "0"], capture_output=True, text=True, check=True).stdout.rstrip("\n")
    print("transformers generate:", repr(hf))
    print("tessera generate:     ", repr(generated))
    if hf != generated:
        failures.append("greedy generation")
sys.exit("the export and tessera disagree: " + "; ".join(failures) if failures else 0)
