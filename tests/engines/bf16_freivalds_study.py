#!/usr/bin/env python3
"""Freivalds in bf16 across engines (issue 16): transformers runs a small Llama checkpoint in
bfloat16 and commits its sub-layer values claiming `bf16/attn=eager/kernels=invariant`; the
verifier checks challenged cells with the key of the bf16 weights (derived from the
checkpoint's key) and per-map scales calibrated on veritrace's own bf16 runs (`keygen
--calibrate-bound 600 --calibration-setup bf16/attn=eager/kernels=invariant --bound-method
exponential-tail`), the nonlinear parts within a relative L-infinity tolerance of 2e-2. Counts
the honest sessions rejected (transformers' own bf16 values, never seen by the calibration) and
the sessions of int8 weights (per output channel) run in bf16 and claimed as bf16 that are
caught, at k = 16. Then the same with scales from transformers' own bf16 runs (600 committed
sub-layer traces, `keygen --bound-trace`, twice each map's largest ratio: the fitted tail
refuses these runs, whose query-projection ratios have a tail heavier than exponential), which
also calibrate the nonlinear parts' tolerances per layer and part (twice the largest deviation),
so those sessions run with no hand-set tolerance at all.

    python tests/engines/bf16_freivalds_study.py [--sessions N]

Needs torch, transformers and the `veritrace` wheel (scripts/build-python.sh).
"""
import argparse
import os, json, tempfile

import torch
import transformers

import veritrace

ap = argparse.ArgumentParser()
ap.add_argument("--sessions", type=int, default=20)
args = ap.parse_args()
transformers.utils.logging.set_verbosity_error()
with tempfile.TemporaryDirectory() as tmp:
    torch.manual_seed(7)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        max_position_embeddings=128)
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            (p.normal_(0.0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2))
    ckpt = os.path.join(tmp, "llama"); model.save_pretrained(ckpt)
    secret = os.path.join(tmp, "secret"); open(secret, "wb").write(bytes(range(32, 64)))
    key = os.path.join(tmp, "k"); bounds = os.path.join(tmp, "b.json")
    print(veritrace.run("keygen", "--model", ckpt, "--secret-file", secret, "--out", key,
        "--calibrate-bound", "600", "--calibration-tokens", "14", "--calibration-setup",
        "bf16/attn=eager/kernels=invariant", "--bound-file", bounds, "--bound-method",
        "exponential-tail", "--bound-holdout", "100")[-400:])
    polf = os.path.join(tmp, "pol.json")
    json.dump({"threshold": {"metric": "rel_l2", "thresholds": {"default": 0.05, "overrides": {}}}}, open(polf, "w"))
    def sessions(m, name, n, bounds=bounds, tol=0.02):
        rej = 0; reasons = []
        for i in range(n):
            ids = [(3 + 37 * i * j + 11 * j) % 256 for j in range(9)]
            states, output, subs = veritrace.capture(m, ids, max_new_tokens=5, sublayers=True)
            trace = os.path.join(tmp, f"{name}{i}.safetensors")
            veritrace.save_trace([s.to(torch.bfloat16) for s in states], trace, ids + output, sublayers=subs)
            run = os.path.join(tmp, f"{name}{i}")
            veritrace.commit(trace, model=ckpt, prompt=ids, output_tokens=output, chunk=4, out=run,
                             trace_level="sublayer", setup="bf16/attn=eager/kernels=invariant")
            op = veritrace.open_cells(os.path.join(run, "trace.safetensors"), out=os.path.join(tmp, f"o{name}{i}"), samples=16)
            v = veritrace.verify(os.path.join(run, "commitment.json"), op, model=ckpt, samples=16,
                                 tolerance=polf, key=key, layer_check="freivalds", sublayer_tolerance=tol,
                                 freivalds_bounds=bounds)
            if not v.accepted:
                rej += 1; reasons.append(str(v.reason)[:160])
        return rej, reasons[:2]
    print("scales from veritrace's runs: honest bf16", sessions(model.to(torch.bfloat16), "h", args.sessions))
    m = type(model).from_pretrained(ckpt).float().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2 and "layers" in name:
                s = p.abs().amax(dim=1, keepdim=True) / 127.0
                p.copy_(torch.round(p / s) * s)
    print("scales from veritrace's runs: int8 in bf16", sessions(m.to(torch.bfloat16), "c", args.sessions))
    # scales from transformers' own bf16 runs (fresh prompts, none of the sessions' above)
    honest = model.to(torch.bfloat16)
    traces = []
    for i in range(600):
        ids = [(5 + 29 * i * j + 7 * j + i) % 256 for j in range(9)]
        states, output, subs = veritrace.capture(honest, ids, max_new_tokens=5, sublayers=True)
        t = os.path.join(tmp, f"cal{i}.safetensors")
        veritrace.save_trace([x.to(torch.bfloat16) for x in states], t, ids + output, sublayers=subs)
        run = os.path.join(tmp, f"cal{i}")
        veritrace.commit(t, model=ckpt, prompt=ids, output_tokens=output, chunk=4, out=run,
                         trace_level="sublayer", setup="bf16/attn=eager/kernels=invariant")
        os.unlink(t)
        traces += ["--bound-trace", os.path.join(run, "trace.safetensors")]
    own = os.path.join(tmp, "own.json")
    print(veritrace.run("keygen", "--model", ckpt, "--secret-file", secret, "--out",
        os.path.join(tmp, "k2"), "--calibrate-bound", "600", "--calibration-setup",
        "bf16/attn=eager/kernels=invariant", "--bound-file", own, *traces)[-400:])
    # the file also holds nonlinear tolerances calibrated on the same 600 runs (twice each
    # layer's and part's largest deviation), which replace the hand-set 2e-2: the sessions
    # below pass sublayer_tolerance=0, so only the calibrated tolerances can accept them
    tol = json.load(open(own))["nonlinear"]
    print("nonlinear tolerances from transformers' runs (normed, attn, mlp_in, act per layer):",
          [[float(f"{x:.3g}") for x in row] for row in tol])
    print("scales and tolerances from transformers' runs: honest bf16",
          sessions(honest, "hx", args.sessions, own, 0.0))
    print("scales and tolerances from transformers' runs: int8 in bf16",
          sessions(m, "cx", args.sessions, own, 0.0))
    m4 = type(model).from_pretrained(ckpt).float().eval()
    with torch.no_grad():
        for name, p in m4.named_parameters():
            if p.dim() == 2 and "layers" in name:
                g = p.reshape(p.shape[0], -1, 32)
                s = g.abs().amax(dim=2, keepdim=True) / 7.0
                p.copy_((torch.round(g / s).clamp(-8, 7) * s).reshape(p.shape))
    print("scales and tolerances from transformers' runs: int4 (groups of 32) in bf16",
          sessions(m4.to(torch.bfloat16), "c4", args.sessions, own, 0.0))
