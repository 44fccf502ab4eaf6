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
    python tests/engines/bf16_freivalds_study.py --certify TAU [--holdout H] [--sessions N]

`--certify TAU` instead calibrates the scales and nonlinear tolerances with the distribution-free
order statistic at a session false-alarm rate TAU (confidence 0.95, any number of cells): it
commits as many fresh transformers bf16 runs as the calibration needs (asked of `keygen`), plus
H held-out runs it tests the file on, then counts honest sessions rejected and int8 / int4
sessions caught.

Needs torch, transformers and the `veritrace` wheel (scripts/build-python.sh).
"""
import argparse
import os, json, random, tempfile

import torch
import transformers

import veritrace

ap = argparse.ArgumentParser()
ap.add_argument("--sessions", type=int, default=20)
ap.add_argument("--certify", type=float, default=None)
ap.add_argument("--holdout", type=int, default=1000)
args = ap.parse_args()
transformers.utils.logging.set_verbosity_error()
SETUP = "bf16/attn=eager/kernels=invariant"


def committed(m, ids, tmp, name):
    """`m`'s bf16 run over `ids` (5 generated tokens) committed at the sub-layer level claiming
    SETUP; returns its trace file."""
    states, output, subs = veritrace.capture(m, ids, max_new_tokens=5, sublayers=True)
    t = os.path.join(tmp, f"{name}.safetensors")
    veritrace.save_trace([x.to(torch.bfloat16) for x in states], t, ids + output, sublayers=subs)
    run = os.path.join(tmp, name)
    veritrace.commit(t, model=ckpt_of[0], prompt=ids, output_tokens=output, chunk=4, out=run,
                     trace_level="sublayer", setup=SETUP)
    os.unlink(t)
    return os.path.join(run, "trace.safetensors")


ckpt_of = [None]


def prompt_of(kind, i):
    """Prompt `i` of a kind ("calibration" or "session"): 9 tokens drawn from a generator seeded
    by the kind and `i`, so that runs are distinct (a closed form such as `(a + b·i·j) mod 256`
    repeats every 256 prompts: 600 or 13,388 runs would be 256 distinct ones) and calibration
    prompts are not session prompts."""
    rng = random.Random(f"{kind}-{i}")
    return [rng.randrange(256) for _ in range(9)]


def quantized(model, ckpt, bits):
    """The checkpoint with every layer matrix quantized (int8 per output channel, or int4 in
    groups of 32) and dequantized, in bf16."""
    m = type(model).from_pretrained(ckpt).float().eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2 and "layers" in name:
                if bits == 8:
                    s = p.abs().amax(dim=1, keepdim=True) / 127.0
                    p.copy_(torch.round(p / s) * s)
                else:
                    g = p.reshape(p.shape[0], -1, 32)
                    s = g.abs().amax(dim=2, keepdim=True) / 7.0
                    p.copy_((torch.round(g / s).clamp(-8, 7) * s).reshape(p.shape))
    return m.to(torch.bfloat16)


def certify(model, ckpt, secret, key, tmp):
    """The order-statistic calibration at --certify TAU (see the module docs)."""
    honest = model.to(torch.bfloat16)
    prompt = lambda i: prompt_of("calibration", i)
    bounds = os.path.join(tmp, "certified.json")

    def keygen(files, runs, holdout):
        argv = ["keygen", "--model", ckpt, "--secret-file", secret, "--out",
                os.path.join(tmp, "k-cert"), "--calibrate-bound", str(runs),
                "--calibration-setup", SETUP, "--bound-file", bounds, "--bound-method",
                "order-statistic", "--bound-target-fpr", repr(args.certify),
                "--bound-holdout", str(holdout)]
        for f in files:
            argv += ["--bound-trace", f]
        return veritrace.run(*argv)

    files = [committed(honest, prompt(i), tmp, f"cal{i}") for i in range(4)]
    try:
        keygen(files, 4, 0)
        raise SystemExit("four runs were enough: nothing to certify")
    except veritrace.VeritraceError as e:
        needed = int(str(e).split(" honest runs are needed")[0].split()[-1])
    print(f"the order statistic at tau = {args.certify} needs {needed} runs (22 checks: 14 maps, "
          f"8 nonlinear parts)", flush=True)
    files += [committed(honest, prompt(i), tmp, f"cal{i}")
              for i in range(4, needed + args.holdout)]
    print(keygen(files, needed, args.holdout)[-900:], flush=True)
    tol = json.load(open(bounds))["nonlinear"]
    print("certified nonlinear tolerances:", [[float(f"{x:.3g}") for x in r] for r in tol])
    polf = os.path.join(tmp, "pol-cert.json")
    json.dump({"threshold": {"metric": "rel_l2", "thresholds": {"default": 0.05, "overrides": {}}}},
              open(polf, "w"))

    def sessions(m, name):
        rejected = 0
        for i in range(args.sessions):
            ids = prompt_of("session", i)
            run = os.path.dirname(committed(m, ids, tmp, f"{name}{i}"))
            op = veritrace.open_cells(os.path.join(run, "trace.safetensors"),
                                      out=os.path.join(tmp, f"o{name}{i}"), samples=16)
            v = veritrace.verify(os.path.join(run, "commitment.json"), op, model=ckpt,
                                 samples=16, tolerance=polf, key=os.path.join(tmp, "k-cert"),
                                 layer_check="freivalds", sublayer_tolerance=0.0,
                                 freivalds_bounds=bounds)
            rejected += not v.accepted
        return f"{rejected} of {args.sessions}"
    print("certified: honest bf16 sessions rejected", sessions(honest, "ch"))
    print("certified: int8 in bf16 caught", sessions(quantized(model, ckpt, 8), "c8"))
    print("certified: int4 in bf16 caught", sessions(quantized(model, ckpt, 4), "c4"))


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
    ckpt = os.path.join(tmp, "llama"); model.save_pretrained(ckpt); ckpt_of[0] = ckpt
    secret = os.path.join(tmp, "secret"); open(secret, "wb").write(bytes(range(32, 64)))
    key = os.path.join(tmp, "k"); bounds = os.path.join(tmp, "b.json")
    if args.certify is not None:
        certify(model, ckpt, secret, key, tmp)
        raise SystemExit(0)
    print(veritrace.run("keygen", "--model", ckpt, "--secret-file", secret, "--out", key,
        "--calibrate-bound", "600", "--calibration-tokens", "14", "--calibration-setup",
        "bf16/attn=eager/kernels=invariant", "--bound-file", bounds, "--bound-method",
        "exponential-tail", "--bound-holdout", "100")[-400:])
    polf = os.path.join(tmp, "pol.json")
    json.dump({"threshold": {"metric": "rel_l2", "thresholds": {"default": 0.05, "overrides": {}}}}, open(polf, "w"))
    def sessions(m, name, n, bounds=bounds, tol=0.02):
        rej = 0; reasons = []
        for i in range(n):
            ids = prompt_of("session", i)
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
        ids = prompt_of("calibration", i)
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
    # the fitted tail on the same runs (it refuses where a tail is heavier than exponential)
    try:
        print(veritrace.run("keygen", "--model", ckpt, "--secret-file", secret, "--out",
            os.path.join(tmp, "k3"), "--calibrate-bound", "600", "--calibration-setup",
            "bf16/attn=eager/kernels=invariant", "--bound-file", os.path.join(tmp, "tail.json"),
            "--bound-method", "exponential-tail", *traces)[-500:])
    except veritrace.VeritraceError as e:
        print("the fitted tail on transformers' 600 runs:", str(e)[-400:])
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
          sessions(m4.to(torch.bfloat16), "q4x", args.sessions, own, 0.0))
