#!/usr/bin/env python3
"""Independent float64 reference of all-MiniLM-L6-v2's hidden states, for veritrace-model's tests.

A plain numpy implementation of the Hugging Face BertModel encoder (post-LayerNorm, exact erf
gelu, token type 0, absolute positions), written from the architecture and not from the Rust
code. It parses model.safetensors itself (8-byte little-endian header length, JSON header,
raw little-endian tensors) and config.json, runs a fixed token-id list in float64, and writes a
small JSON of reference values to crates/model/tests/data/minilm_ref.json:

* for every hidden state h_0 (embeddings after LayerNorm) .. h_6: the values at a few rows and
  columns, the sum of every row, and the sum, absolute sum and squared sum of the layer;
* the same for the last layer of a run in which the last MASKED positions have attention mask 0
  (masked keys get probability 0).

    python3 crates/model/reference/minilm_ref.py [MODEL_DIR]

MODEL_DIR defaults to $VERITRACE_MINILM, else models/all-MiniLM-L6-v2 at the repository root
(bash scripts/install-minilm.sh puts it there). Needs numpy only.
"""

import hashlib
import json
import math
import os
import struct
import sys

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
OUT = os.path.join(ROOT, "crates", "model", "tests", "data", "minilm_ref.json")

# "Verifiable inference: did the provider really run all-MiniLM-L6-v2 on this input?" as the
# model's tokenizer.json encodes it (27 ids, [CLS] ... [SEP]); any ids below the vocabulary do.
TOKENS = [101, 2310, 3089, 22749, 3468, 28937, 1024, 2106, 1996, 10802, 2428, 2448, 2035, 1011,
          7163, 13728, 1011, 1048, 2575, 1011, 1058, 2475, 2006, 2023, 7953, 1029, 102]
ROWS = [0, 13, 26]
COLS = list(range(0, 384, 24))
MASKED = 4  # the masked run gives the last MASKED positions attention mask 0


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start:base + end], dtype="<f4").reshape(info["shape"])
        tensors[name] = arr.astype(np.float64)
    return tensors, hashlib.sha256(data).hexdigest()


def layer_norm(x, g, b, eps):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


_erf = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def forward(w, cfg, tokens, mask):
    """Hidden states h_0 .. h_L, each [T, d], float64."""
    p = "bert." if "bert.embeddings.word_embeddings.weight" in w else ""
    t = len(tokens)
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"]
    hd = d // heads
    eps = cfg["layer_norm_eps"]
    x = (w[p + "embeddings.word_embeddings.weight"][tokens]
         + w[p + "embeddings.token_type_embeddings.weight"][0]
         + w[p + "embeddings.position_embeddings.weight"][:t])
    x = layer_norm(x, w[p + "embeddings.LayerNorm.weight"], w[p + "embeddings.LayerNorm.bias"], eps)
    states = [x]
    keep = np.array(mask, dtype=bool)
    for i in range(cfg["num_hidden_layers"]):
        q = lambda s: w[f"{p}encoder.layer.{i}.{s}"]
        lin = lambda v, s: v @ q(s + ".weight").T + q(s + ".bias")
        def heads_of(v):
            return v.reshape(t, heads, hd).transpose(1, 0, 2)  # [heads, T, hd]
        qh = heads_of(lin(x, "attention.self.query"))
        kh = heads_of(lin(x, "attention.self.key"))
        vh = heads_of(lin(x, "attention.self.value"))
        scores = qh @ kh.transpose(0, 2, 1) / math.sqrt(hd)
        scores = np.where(keep[None, None, :], scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        ctx = (probs @ vh).transpose(1, 0, 2).reshape(t, d)
        a = layer_norm(lin(ctx, "attention.output.dense") + x,
                       q("attention.output.LayerNorm.weight"), q("attention.output.LayerNorm.bias"), eps)
        m = gelu(lin(a, "intermediate.dense"))
        x = layer_norm(lin(m, "output.dense") + a,
                       q("output.LayerNorm.weight"), q("output.LayerNorm.bias"), eps)
        states.append(x)
    return states


def r(v):
    return float(f"{v:.12g}")


def summary(h):
    return {
        "values": [[r(h[row, col]) for col in COLS] for row in ROWS],
        "row_sums": [r(s) for s in h.sum(axis=1)],
        "sum": r(h.sum()),
        "abs_sum": r(np.abs(h).sum()),
        "sq_sum": r((h * h).sum()),
    }


def main():
    model_dir = (sys.argv[1] if len(sys.argv) > 1 else
                 os.environ.get("VERITRACE_MINILM") or os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["hidden_act"] == "gelu" and cfg.get("position_embedding_type", "absolute") == "absolute"
    w, sha = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    states = forward(w, cfg, TOKENS, [1] * len(TOKENS))
    masked = forward(w, cfg, TOKENS, [1] * (len(TOKENS) - MASKED) + [0] * MASKED)
    out = {
        "about": "float64 numpy reference of all-MiniLM-L6-v2 hidden states "
                 "(crates/model/reference/minilm_ref.py); values at rows x cols, per-row sums, "
                 "layer sums",
        "model_safetensors_sha256": sha,
        "tokens": TOKENS,
        "rows": ROWS,
        "cols": COLS,
        "layers": [summary(h) for h in states],
        "masked_positions": MASKED,
        "masked_last_layer": summary(masked[-1]),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    # One line per top-level key and per layer: small, and readable in a diff.
    lines = []
    for k, v in out.items():
        if k == "layers":
            inner = ",\n  ".join(json.dumps(layer) for layer in v)
            lines.append(f' "{k}": [\n  {inner}\n ]')
        else:
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}")
    with open(OUT, "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"wrote {OUT} ({len(states)} hidden states of {len(TOKENS)} tokens)")


if __name__ == "__main__":
    main()
