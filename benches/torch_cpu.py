#!/usr/bin/env python3
"""veritrace's decoder beside PyTorch on the CPU, in one run (issue 17).

PyTorch runs transformers' LlamaModel with the `small` preset's shapes (hidden 512, 8 layers, 8
query heads and 4 key-value heads of 64, MLP 1376, vocabulary 2048; random weights: the time does
not depend on the values) in f32, with SDPA and with eager attention, on `--threads` threads;
then veritrace's `forward_timing` example runs the same shapes under the given setups on the same
number of threads (RAYON_NUM_THREADS). Each figure is the fastest of `--repeats` runs after a
warm-up (on a shared machine, the least disturbed one). Prints a markdown table of the times and of veritrace's ratio to PyTorch's faster
attention, or with --json every measurement as one JSON object.

With --generate P:G both engines also generate G tokens greedily after a P-token prompt (PyTorch:
`generate` with its KV cache; veritrace: `LlamaModel::generate`) and run one forward over P + G
tokens; the table gives generation / forward for each.

    cargo build --release -p veritrace-model --example forward_timing
    target/engines/bin/python benches/torch_cpu.py --threads 1 --tokens 128,512,2048 --generate 128:64

With --bert DIR the encoder in DIR (e.g. models/all-MiniLM-L6-v2) is measured instead: transformers'
BertModel loaded from DIR with SDPA and eager attention, beside veritrace's BERT encoder on the
same checkpoint (`forward_timing --bert DIR`), at each of --tokens.

    target/engines/bin/python benches/torch_cpu.py --threads 1 --tokens 128 --bert models/all-MiniLM-L6-v2

Exits 2 with a message when PyTorch, transformers or the example binary is missing."""
import argparse
import json
import os
import subprocess
import sys
import time


def fastest_time(repeats, f):
    f()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def tokens(n):
    return [(7 + 37 * i * i + 11 * i) % 2048 for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", default="128,512")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--generate", default="")
    ap.add_argument("--setups", default="f32/attn=eager,f32/attn=eager/kernels=invariant")
    ap.add_argument("--veritrace", default="target/release/examples/forward_timing")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bert", default="", help="a BERT checkpoint directory to measure instead")
    ap.add_argument("--malloc-thresholds", action="store_true",
                    help="run veritrace with glibc's mmap and trim thresholds raised (64 and 128 "
                         "MiB): shows what the allocator's churn on fresh large buffers costs")
    args = ap.parse_args()
    sizes = [int(s) for s in args.tokens.split(",") if s]
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as e:
        print(f"torch_cpu.py: {e} (install with scripts/install-engines.sh)", file=sys.stderr)
        return 2
    if not os.path.exists(args.veritrace):
        print(f"torch_cpu.py: {args.veritrace} is missing (cargo build --release -p "
              "veritrace-model --example forward_timing)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    if args.bert:
        from transformers import BertModel
        vocab = None
        for attn in ("sdpa", "eager"):
            model = BertModel.from_pretrained(args.bert, attn_implementation=attn,
                                              add_pooling_layer=False).to(torch.float32).eval()
            vocab = model.config.vocab_size
            with torch.inference_mode():
                for n in sizes:
                    ids = torch.tensor([[(7 + 37 * i * i + 11 * i) % vocab for i in range(n)]])
                    s = fastest_time(args.repeats, lambda: model(input_ids=ids))
                    rows.append({"engine": "torch", "setup": f"f32/{attn}", "what": "forward",
                                 "tokens": n, "threads": args.threads, "seconds": s})
    for attn in () if args.bert else ("sdpa", "eager"):
        cfg = LlamaConfig(vocab_size=2048, hidden_size=512, num_hidden_layers=8,
                          num_attention_heads=8, num_key_value_heads=4, intermediate_size=1376,
                          rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=4096,
                          tie_word_embeddings=False, attn_implementation=attn)
        model = LlamaForCausalLM(cfg).to(torch.float32).eval()
        with torch.inference_mode():
            for n in sizes:
                ids = torch.tensor([tokens(n)])
                s = fastest_time(args.repeats, lambda: model.model(input_ids=ids))
                rows.append({"engine": "torch", "setup": f"f32/{attn}", "what": "forward",
                             "tokens": n, "threads": args.threads, "seconds": s})
            if args.generate:
                p, g = (int(x) for x in args.generate.split(":"))
                ids = torch.tensor([tokens(p)])
                s = fastest_time(args.repeats, lambda: model.generate(
                    ids, max_new_tokens=g, min_new_tokens=g, do_sample=False, use_cache=True,
                    pad_token_id=0))
                rows.append({"engine": "torch", "setup": f"f32/{attn}", "what": "generate",
                             "prompt": p, "generated": g, "threads": args.threads, "seconds": s})
                full = torch.tensor([tokens(p + g)])
                s = fastest_time(args.repeats, lambda: model.model(input_ids=full))
                rows.append({"engine": "torch", "setup": f"f32/{attn}", "what": "forward",
                             "tokens": p + g, "threads": args.threads, "seconds": s})
    gen_sizes = sizes[:]
    if args.generate:
        p, g = (int(x) for x in args.generate.split(":"))
        gen_sizes.append(p + g)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    if args.malloc_thresholds:
        env.update(MALLOC_MMAP_THRESHOLD_=str(64 << 20), MALLOC_TRIM_THRESHOLD_=str(128 << 20))
    cmd = [args.veritrace] + (["--bert", args.bert] if args.bert else []) + [
           "--preset", "small", "--threads", str(args.threads), "--repeats", str(args.repeats), "--tokens", ",".join(str(n) for n in gen_sizes), "--setups",
           args.setups]
    if args.generate:
        cmd += ["--generate", args.generate]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if args.json:
        print(json.dumps({"torch": torch.__version__, "results": rows}))
        return 0
    print(f"torch {torch.__version__}, {args.threads} thread(s), fastest of {args.repeats} runs\n")
    print("| tokens | engine, setup | forward (ms) | / PyTorch's faster |")
    print("|---|---|---|---|")
    for n in gen_sizes:
        fw = [r for r in rows if r["what"] == "forward" and r["tokens"] == n]
        best = min(r["seconds"] for r in fw if r["engine"] == "torch")
        for r in fw:
            print(f"| {n} | {r['engine']} {r['setup']} | {1e3 * r['seconds']:.1f} | "
                  f"{r['seconds'] / best:.2f}x |")
    if args.generate:
        p, g = (int(x) for x in args.generate.split(":"))
        print(f"\n| engine, setup | generate {g} after {p} (ms) | one forward of {p + g} (ms) | "
              "ratio |")
        print("|---|---|---|---|")
        for r in rows:
            if r["what"] != "generate":
                continue
            fw = next(x for x in rows if x["what"] == "forward" and x["tokens"] == p + g
                      and x["engine"] == r["engine"] and x["setup"] == r["setup"])
            print(f"| {r['engine']} {r['setup']} | {1e3 * r['seconds']:.1f} | "
                  f"{1e3 * fw['seconds']:.1f} | {r['seconds'] / fw['seconds']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
