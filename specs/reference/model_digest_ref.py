#!/usr/bin/env python3
"""Independent reference implementation of specs/model-digest.md.

Computes the engine-independent model digest of a Hugging Face checkpoint directory (config.json
and model.safetensors, or the shards of model.safetensors.index.json) from the files alone: no
torch, no numpy, no veritrace. Written from the specification document, not from the Rust code.

    pip install blake3
    python3 specs/reference/model_digest_ref.py CHECKPOINT_DIR [...]

Prints one line per directory, "<64 hex digits>  <dir>". Exits 0 on success, 1 when a directory
is refused (a config this digest does not define), 2 when it cannot run.
"""

import json
import math
import os
import struct
import sys

try:
    import blake3
except ImportError:  # pragma: no cover - depends on the environment
    print("model_digest_ref: the 'blake3' package is missing; install it with: pip install blake3",
          file=sys.stderr)
    sys.exit(2)

LABEL = b"veritrace/model-digest/v2"


class Refused(Exception):
    """The checkpoint is outside what the digest defines."""


def u64(n):
    return struct.pack("<Q", n)


def string(s):
    b = s.encode("utf-8")
    return u64(len(b)) + b


def digest(architecture, fields, tensors):
    """fields: [(name, int|float|str)] in the spec's order; tensors: {name: (shape, [f32...])}
    (values already f32-exact Python floats)."""
    h = blake3.blake3()
    h.update(LABEL)
    h.update(string(architecture))
    h.update(u64(len(fields)))
    for name, value in fields:
        h.update(string(name))
        if isinstance(value, bool):
            raise Refused(f"{name}: a boolean is not a digest field")
        if isinstance(value, int):
            h.update(b"\x00" + u64(value))
        elif isinstance(value, float):
            h.update(b"\x01" + struct.pack("<d", value))
        else:
            h.update(b"\x02" + string(value))
    names = sorted(tensors, key=lambda n: n.encode("utf-8"))
    h.update(u64(len(names)))
    for name in names:
        shape, raw = tensors[name]
        h.update(string(name))
        h.update(u64(len(shape)))
        for d in shape:
            h.update(u64(d))
        h.update(raw)
    return h.hexdigest()


# ---- safetensors, by hand (section "Tensors") ----

def _f16_to_f32_bytes(raw):
    n = len(raw) // 2
    vals = struct.unpack(f"<{n}e", raw)
    return struct.pack(f"<{n}f", *vals)


def _bf16_to_f32_bytes(raw):
    # A bf16 is the high half of an f32: widen by appending two zero bytes below (little-endian).
    out = bytearray(len(raw) * 2)
    out[2::4] = raw[0::2]
    out[3::4] = raw[1::2]
    return bytes(out)


def read_safetensors(path):
    """{name: (shape, f32 little-endian bytes)} of the float tensors of one file."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, (a, b) = info["dtype"], info["shape"], info["data_offsets"]
        raw = data[a:b]
        if dtype == "F32":
            f32 = raw
        elif dtype == "F16":
            f32 = _f16_to_f32_bytes(raw)
        elif dtype == "BF16":
            f32 = _bf16_to_f32_bytes(raw)
        else:
            out[name] = (shape, None)  # not a float tensor (e.g. position_ids); never hashed
            continue
        out[name] = (shape, f32)
    return out


def read_checkpoint(d):
    index = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(d, name)))
    return tensors


# ---- architectures (section "Fields and tensors") ----

def llama(config, tensors):
    """Llama, Qwen2 (architecture "qwen2": the same fields; its q/k/v biases are tensors) and
    Mistral (architecture "mistral": the same fields, then sliding_window, 0 when null)."""
    model_type = config.get("model_type", "llama")
    if model_type not in ("llama", "qwen2", "mistral"):
        raise Refused(f"model_type {model_type!r}")
    heads = config["num_attention_heads"]
    theta = config.get("rope_theta")
    rope = None
    for key in ("rope_scaling", "rope_parameters"):
        r = config.get(key)
        if r is None:
            continue
        if "rope_theta" in r:
            if theta is not None and float(theta) != float(r["rope_theta"]):
                raise Refused("rope_theta given twice, differently")
            theta = r["rope_theta"]
        rope_type = r.get("rope_type", r.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise Refused(f"rope type {rope_type!r}")
        if rope_type == "llama3":
            rope = r
    fields = [
        ("vocab_size", int(config["vocab_size"])),
        ("hidden_size", int(config["hidden_size"])),
        ("num_hidden_layers", int(config["num_hidden_layers"])),
        ("num_attention_heads", int(heads)),
        ("num_key_value_heads", int(config.get("num_key_value_heads") or heads)),
        ("intermediate_size", int(config["intermediate_size"])),
        ("rope_theta", float(10000.0 if theta is None else theta)),
        ("rms_norm_eps", float(config.get("rms_norm_eps", 1e-6))),
    ]
    if rope is None:
        fields.append(("rope_type", "default"))
    else:
        fields += [
            ("rope_type", "llama3"),
            ("factor", float(rope["factor"])),
            ("low_freq_factor", float(rope["low_freq_factor"])),
            ("high_freq_factor", float(rope["high_freq_factor"])),
            ("original_max_position_embeddings", int(rope["original_max_position_embeddings"])),
        ]
    if model_type == "mistral":
        fields.append(("sliding_window", int(config.get("sliding_window") or 0)))
    used = {n: t for n, t in tensors.items() if not n.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in used and config.get("tie_word_embeddings", False):
        used["lm_head.weight"] = used["model.embed_tokens.weight"]
    return model_type, fields, used


BERT_LAYER = [
    "attention.self.query.weight", "attention.self.query.bias",
    "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
]


def bert(config, tensors):
    fields = [
        ("vocab_size", int(config["vocab_size"])),
        ("hidden_size", int(config["hidden_size"])),
        ("num_hidden_layers", int(config["num_hidden_layers"])),
        ("num_attention_heads", int(config["num_attention_heads"])),
        ("intermediate_size", int(config["intermediate_size"])),
        ("hidden_act", config["hidden_act"]),
        ("max_position_embeddings", int(config["max_position_embeddings"])),
        ("type_vocab_size", int(config["type_vocab_size"])),
        ("layer_norm_eps", float(config["layer_norm_eps"])),
        ("position_embedding_type", config.get("position_embedding_type", "absolute")),
    ]
    wanted = [
        "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    for i in range(config["num_hidden_layers"]):
        wanted += [f"encoder.layer.{i}.{s}" for s in BERT_LAYER]
    used = {}
    for w in wanted:
        for name in (w, "bert." + w):
            if name in tensors:
                used[w] = tensors[name]
                break
        else:
            raise Refused(f"missing tensor {w}")
    return "bert", fields, used


def checkpoint_digest(d):
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    tensors = read_checkpoint(d)
    arch = bert if config.get("model_type") == "bert" else llama
    name, fields, used = arch(config, tensors)
    for n, (shape, raw) in used.items():
        if raw is None:
            raise Refused(f"tensor {n} is not a float tensor")
        if len(raw) != 4 * math.prod(shape):
            raise Refused(f"tensor {n}: {len(raw)} bytes for shape {shape}")
    return digest(name, fields, used)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    status = 0
    for d in argv[1:]:
        try:
            print(f"{checkpoint_digest(d)}  {d}")
        except Refused as e:
            print(f"model_digest_ref: {d}: refused: {e}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
