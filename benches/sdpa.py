#!/usr/bin/env python3
"""PyTorch's scaled_dot_product_attention on the shapes of benches/gpu (crates/model/benches/gpu.rs)
and examples/gpu_report.rs: causal, batch 1, 8 heads, 2048 tokens, head size 64, f32 (and bf16 for
reference). GPU time from CUDA events, median of 5 runs of 10 calls each. Prints a markdown table, or with
--json one JSON object {"torch": version, "results": [{"dtype", "backend", "ms"}, ...]}: what
examples/gpu_report.rs reads to put veritrace's kernels and SDPA side by side in one run.

Exits 2 with a message when PyTorch or a GPU is missing."""
import json
import statistics
import sys


def main() -> int:
    as_json = "--json" in sys.argv[1:]
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("sdpa.py: PyTorch is not installed", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("sdpa.py: no CUDA device for PyTorch", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.rand(1, 8, 2048, 64, device="cuda", dtype=dtype, generator=g) - 0.5 for _ in range(3))
        for _ in range(3):
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 10)
        backend = "flash" if dtype != torch.float32 else "efficient or math (flash needs 16-bit)"
        results.append({"dtype": str(dtype).removeprefix("torch."), "backend": backend,
                        "ms": statistics.median(times)})
    if as_json:
        print(json.dumps({"torch": torch.__version__, "results": results}))
        return 0
    print("| PyTorch SDPA | dtype | backend chosen by PyTorch | ms per call |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| torch {torch.__version__} | {r['dtype']} | {r['backend']} | {r['ms']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
