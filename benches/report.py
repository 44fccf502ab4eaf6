#!/usr/bin/env python3
"""Turns criterion's estimates (target/criterion) from `cargo bench --bench commit` into the
markdown tables of BENCHMARKS.md. Ratios compare benchmarks of the same run, so machine noise
that shifts the whole run cancels. Usage: python3 benches/report.py [target/criterion]"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def median_ns(*parts):
    path = root.joinpath(*parts, "new", "estimates.json")
    if not path.exists():
        sys.exit(f"missing {path}: run `cargo bench --bench commit` first")
    return json.loads(path.read_text())["median"]["point_estimate"]


MIB = 1 << 20
trace = 64 * MIB


def gbps(ns, nbytes):
    return nbytes / ns  # bytes per ns == GB/s


b3 = median_ns("commit_64mib", "blake3_hash_1t")
c1 = median_ns("commit_64mib", "commit_blake3", "1t")
c2 = median_ns("commit_64mib", "commit_blake3", "2t")
s1 = median_ns("commit_64mib", "commit_sha256_1t")
print("### Committing a 64 MiB f32 trace (64 cells of 1 MiB)\n")
print("| what | median | throughput | ratio | target |")
print("|---|---|---|---|---|")
print(f"| `blake3::hash` of the same bytes, 1 thread | {b3/1e6:.2f} ms | {gbps(b3, trace):.2f} GB/s | 1 (reference) | |")
print(f"| commit, BLAKE3, 1 thread | {c1/1e6:.2f} ms | {gbps(c1, trace):.2f} GB/s | {b3/c1:.3f}x of `blake3::hash` | >= 0.85x |")
print(f"| commit, BLAKE3, 2 threads | {c2/1e6:.2f} ms | {gbps(c2, trace):.2f} GB/s | {c1/c2:.3f}x of 1 thread | >= 1.6x |")
print(f"| commit, SHA-256, 1 thread | {s1/1e6:.2f} ms | {gbps(s1, trace):.2f} GB/s | {b3/s1:.3f}x of `blake3::hash` | |")

print("\n### Hashers: one node, and leaf data per MiB\n")
print("| hasher | node (64 B -> 32 B) | node vs BLAKE3 | leaf data, per MiB | per MiB vs BLAKE3 |")
print("|---|---|---|---|---|")
nb = median_ns("node", "blake3")
lb = median_ns("leaf_64kib", "blake3") * 16
for h in ["blake3", "sha256", "poseidon"]:
    n = median_ns("node", h)
    leaf = median_ns("leaf_64kib", h) * 16
    unit = f"{leaf/1e6:.3f} ms" if leaf < 1e9 else f"{leaf/1e9:.2f} s"
    print(f"| {h} | {n/1e3:.3f} us | {n/nb:.1f}x | {unit} | {leaf/lb:.0f}x |")

print("\n### Batch proofs in a 2^20-leaf tree (BLAKE3)\n")
print("| opening | prove | verify |")
print("|---|---|---|")
for name in ["contiguous64", "random64"]:
    p = median_ns("proof_2e20", f"prove_{name}")
    v = median_ns("proof_2e20", f"verify_{name}")
    print(f"| 64 {name[:-2]} leaves | {p/1e3:.1f} us | {v/1e3:.1f} us |")

proto = root / "protocol_32x64"
if proto.exists():
    print("\n### Protocol rounds on a 32-layer x 64-chunk trace (replay engine: protocol cost only)\n")
    print("| k | derive challenge | prover: build opening | verifier: check opening |")
    print("|---|---|---|---|")
    for k in [1, 4, 16, 64, 256]:
        ch = median_ns("protocol_32x64", "challenge", str(k))
        op = median_ns("protocol_32x64", "open", str(k))
        ve = median_ns("protocol_32x64", "verify", str(k))
        print(f"| {k} | {ch/1e3:.1f} us | {op/1e3:.1f} us | {ve/1e3:.1f} us |")


def optional(*parts):
    path = root.joinpath(*parts, "new", "estimates.json")
    return json.loads(path.read_text())["median"]["point_estimate"] if path.exists() else None


def setups_table(group, title, tokens=128):
    """One row per setup of a per-setup benchmark group: median, tokens/s, ratio to f32 eager."""
    if not group.exists():
        return
    print(f"\n### {title}\n")
    print("| setup | median | tokens/s | vs f32 eager |")
    print("|---|---|---|---|")
    rows = []
    for d in sorted(p for p in group.iterdir() if (p / "new" / "estimates.json").exists()):
        ns = json.loads((d / "new" / "estimates.json").read_text())["median"]["point_estimate"]
        # The benches write each setup string with "/" as "_" (criterion splits ids on "/");
        # setup strings contain no "_" of their own.
        fid = json.loads((d / "new" / "benchmark.json").read_text())["function_id"]
        rows.append((fid.replace("_", "/"), ns))
    base = dict(rows).get("f32/attn=eager")
    for name, ns in rows:
        ratio = f"{ns/base:.2f}x" if base else "-"
        print(f"| `{name}` | {ns/1e6:.1f} ms | {tokens/(ns/1e9):.0f} | {ratio} |")


if (root / "model_capture_tiny").exists() or (root / "model_capture").exists():
    print("\n### Model: trace capture overhead (128 tokens, chunk 16, f32 eager)\n")
    print("| model | forward, no trace | trace (every hidden state) | + attention keys | capture overhead | with keys | target |")
    print("|---|---|---|---|---|---|---|")
    for preset in ["tiny", "small"]:
        f = optional(f"model_capture_{preset}", "forward") or optional("model_capture", preset, "forward")
        t = optional(f"model_capture_{preset}", "trace") or optional("model_capture", preset, "trace")
        k = optional(f"model_capture_{preset}", "trace_keys") or optional("model_capture", preset, "trace_keys")
        if f and t and k:
            print(f"| {preset} | {f/1e6:.2f} ms | {t/1e6:.2f} ms | {k/1e6:.2f} ms | {100*(t/f-1):+.1f}% | {100*(k/f-1):+.1f}% | <= +5% |")
    print("\n### Model: one cell recomputed vs its layer's share of a forward (128 tokens, chunk 16, middle layer)\n")
    print("| model | forward | layer share (forward / L) | first cell | last cell | last cell / layer share | target |")
    print("|---|---|---|---|---|---|---|")
    for preset, layers in [("tiny", 4), ("small", 8)]:
        f = optional(f"model_cell_{preset}", "forward") or optional("model_cell", preset, "forward")
        c0 = optional(f"model_cell_{preset}", "cell", "first") or optional("model_cell", preset, "cell", "first")
        c1 = optional(f"model_cell_{preset}", "cell", "last") or optional("model_cell", preset, "cell", "last")
        if f and c0 and c1:
            share = f / layers
            print(f"| {preset} | {f/1e6:.2f} ms | {share/1e6:.2f} ms | {c0/1e6:.2f} ms | {c1/1e6:.2f} ms | {c1/share:.2f}x | <= 1.5x |")
    setups_table(root / "model_setups_tiny", "Model: traced forward per numeric setup (tiny, 128 tokens, chunk 16)")
if (root / "minilm_forward_128").exists():
    print("\n### MiniLM forward, 128 tokens (same run)\n")
    ct = optional("minilm_forward_128", "candle_transformers")
    print("| engine | median | vs candle-transformers | target |")
    print("|---|---|---|---|")
    print(f"| candle-transformers `BertModel` | {ct/1e6:.2f} ms | 1 | |")
    for d in sorted((root / "minilm_forward_128").iterdir()):
        if d.name.startswith("veritrace") and (d / "new" / "estimates.json").exists():
            ns = json.loads((d / "new" / "estimates.json").read_text())["median"]["point_estimate"]
            print(f"| veritrace, {d.name.split('_')[-1]} | {ns/1e6:.2f} ms | {ns/ct:.2f}x | <= 1.25x |")
setups_table(root / "minilm_setups_128", "MiniLM: traced forward per numeric setup (128 tokens, chunk 128)")
fast = optional("sim_fast", "32x64_k16_1thread")
if fast:
    print("\n### Simulator fast mode (32 x 64 cells, k = 16, one thread)\n")
    print(f"| trials per batch | median | trials/s | target |\n|---|---|---|---|\n| 262144 | {fast/1e6:.1f} ms | {262144/(fast/1e9)/1e6:.2f} M | >= 1 M |")
