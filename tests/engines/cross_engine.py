#!/usr/bin/env python3
"""Cross-engine study (issue 14): Hugging Face transformers as the prover, veritrace as the
verifier, through the `veritrace` wheel.

For small random-initialized Llama and Qwen2 checkpoints saved by transformers and the real
all-MiniLM-L6-v2 (when installed):

1. noise: per-layer relative L2 between transformers' hidden states (f32, eager attention, CPU)
   and veritrace's own trace of the same tokens;
2. calibration: `veritrace calibrate --trace` on honest transformers runs (fresh prompts,
   committed with `veritrace.commit`), fitted exponential tail, for a session false-positive
   target at k = 8;
3. held-out honest sessions: fresh prompts never used in calibration, each committed, opened at
   k = 8 (non-interactive) and verified under the calibrated policy; false rejections counted
   with a one-sided 95% Clopper-Pearson upper bound;
4. SDPA: the same honest model under PyTorch's scaled-dot-product attention instead of eager,
   verified under the eager-calibrated policy; reported as measured (not checked);
5. cheats (every model): bf16, int8 dynamic quantization (torch.ao quantize_dynamic on every
   Linear), a skipped layer (its output replaced by its input) and a checkpoint with one
   perturbed layer: detection over sessions at k = 8 against the hypergeometric prediction
   1 - C(N - B, k) / C(N, k), with B each trace's bad cells (every cell checked alone with a
   one-cell interactive challenge under the same policy), summed over the very sessions run.

With `--dtype bf16` the honest provers run transformers in bfloat16 (the checkpoint's weights
rounded to bf16, eager attention) and commit bf16 traces claiming veritrace's
`bf16/attn=eager/kernels=invariant` setup, which the verifier recomputes (every operation in
f32, each stored value rounded once to bf16: not transformers' rounding points, so the
tolerance is calibrated on this cross-engine bf16 noise). The noise line also reports
candle's `bf16/attn=eager` against the same traces. The cheats are then int8 weights (each
Linear weight rounded to int8 per output channel, run in bf16), f16 in place of bf16, the
skipped layer and the perturbed layer, all run in bf16 (f16: in f16).

    python tests/engines/cross_engine.py OUT_DIR [--cal N] [--held N] [--cheat N]
        [--models llama,qwen2,minilm] [--dtype f32|bf16] [--check]

Writes OUT_DIR/{report.md,report.json} and the policies. Needs torch, transformers and the
`veritrace` wheel (scripts/build-python.sh installs it into target/engines).
"""

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

import torch
import transformers
from safetensors.torch import load_file

import veritrace

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
K = 8
TOKENS = 24
# the engine claim of every honest trace (bound in its statement, recorded in the policy)
ENGINE = f"transformers {transformers.__version__}, torch {torch.__version__}, cpu, eager"
NEW = 8
# the claimed setup and the transformers dtype (--dtype bf16 sets both)
SETUP = "f32/attn=eager"
DTYPE = torch.float32


def clopper_pearson_upper(x, n, conf=0.95):
    """One-sided upper bound on a binomial rate (bisection on the binomial CDF)."""
    if n == 0:
        return 1.0
    if x == n:
        return 1.0
    lo, hi = x / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        cdf = sum(math.comb(n, i) * mid ** i * (1 - mid) ** (n - i) for i in range(x + 1))
        if cdf > 1 - conf:
            lo = mid
        else:
            hi = mid
    return hi


def binomial_tail_above(x, n, p):
    """P(Bin(n, p) >= x): how surprising x rejections in n sessions are at rate p."""
    return 1.0 - sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(x))


def wilson(x, n, z=1.96):
    if n == 0:
        return (0.0, 1.0)
    p = x / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    # the bounds at x = 0 and x = n are exactly 0 and 1 (not their rounded values)
    return (0.0 if x == 0 else max(0.0, c - h), 1.0 if x == n else min(1.0, c + h))


def hypergeom_detect(n, b, k):
    if b <= 0:
        return 0.0
    if n - b < k:
        return 1.0
    return 1.0 - math.comb(n - b, k) / math.comb(n, k)


FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
}


def build_decoder(dir, family, seed=21):
    torch.manual_seed(seed)
    config_class, model_class = FAMILIES[family]
    config = config_class(
        vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        max_position_embeddings=256)
    config._attn_implementation = "eager"
    model = model_class(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2)
    model.save_pretrained(dir)
    return model


def prompt(rng, vocab, encoder):
    if encoder:  # [CLS] ordinary WordPieces [SEP]
        return [101] + [rng.randrange(1000, 29000) for _ in range(TOKENS - 2)] + [102]
    return [rng.randrange(vocab) for _ in range(TOKENS)]


def prove(model, ids, encoder, tmp, tag, ckpt, chunk=8, engine=ENGINE):
    """transformers' trace of ids (and greedy tokens for a decoder), committed; returns the
    run directory and the output tokens."""
    states, output = veritrace.capture(model, ids, max_new_tokens=0 if encoder else NEW)
    path = os.path.join(tmp, f"{tag}.safetensors")
    veritrace.save_trace([s.to(DTYPE) for s in states], path, ids + output)
    run = os.path.join(tmp, f"{tag}-run")
    veritrace.commit(path, model=ckpt, prompt=ids, output_tokens=output, chunk=chunk, out=run,
                     engine=engine, setup=SETUP)
    os.unlink(path)
    return run, output, states


def session(run, ckpt, policy, tmp, tag):
    opened = veritrace.open_cells(os.path.join(run, "trace.safetensors"),
                                  out=os.path.join(tmp, f"{tag}-opened"), samples=K)
    return veritrace.verify(os.path.join(run, "commitment.json"), opened, model=ckpt,
                            samples=K, tolerance=policy)


def bad_cells(run, ckpt, policy, tmp, tag):
    """Cells that fail when challenged alone (one-cell interactive challenges)."""
    with open(os.path.join(run, "commitment.json")) as f:
        g = json.load(f)["statement"]["geometry"]
    chunks = -(-g["tokens"] // g["chunk"])
    bad, total = 0, 0
    for layer in range(g["layers"]):
        for chunk in range(chunks):
            ch = os.path.join(tmp, f"{tag}-ch.json")
            with open(ch, "w") as f:
                json.dump({"round": 0, "cells": [{"layer": layer, "chunk": chunk}]}, f)
            op = veritrace.answer(os.path.join(run, "trace.safetensors"), challenge=ch,
                                  out=os.path.join(tmp, f"{tag}-op.vtpm"))
            v = veritrace.verify(os.path.join(run, "commitment.json"), [op], challenges=[ch],
                                 model=ckpt, tolerance=policy)
            bad += 0 if v.accepted else 1
            total += 1
    return bad, total


def noise(model, ckpt, ids, encoder, tmp, setup=None):
    """Per-layer relative L2 between transformers and veritrace prove on the same tokens (under
    `setup`, default the claimed one)."""
    states, output = veritrace.capture(model, ids, max_new_tokens=0 if encoder else NEW)
    run = os.path.join(tmp, "noise-run")
    # the same tokens: transformers' prompt and generated tokens, run as one prompt (under bf16
    # the two engines' greedy choices can part at a near tie)
    args = ["prove", "--model", ckpt, "--prompt", ",".join(map(str, ids + output)), "--chunk",
            "8", "--setup", setup or SETUP, "--out", run, "--output", "0"]
    veritrace.run(*args)
    ours = load_file(os.path.join(run, "trace.safetensors"))
    out = []
    for l, s in enumerate(states):
        a, b = ours[f"h.{l}"].double(), s.double()
        out.append(((a - b).norm() / b.norm()).item())
    return out


def study(name, model, ckpt, encoder, args, out_dir):
    rng = random.Random(7)
    vocab = model.config.vocab_size
    report = {"model": name, "k": K, "tokens": TOKENS, "generated": 0 if encoder else NEW}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        report["setup"] = SETUP
        noise_ids = prompt(rng, vocab, encoder)
        report["noise_rel_l2_per_layer"] = noise(model, ckpt, noise_ids, encoder, tmp)
        if DTYPE == torch.bfloat16:
            # candle's bf16 kernels round after each elementary operation, as torch does
            report["noise_candle_bf16"] = noise(model, ckpt, noise_ids, encoder, tmp,
                                                "bf16/attn=eager")
        # calibration runs
        traces = []
        for i in range(args.cal):
            run, _, _ = prove(model, prompt(rng, vocab, encoder), encoder, tmp, f"cal{i}", ckpt)
            traces.append(os.path.join(run, "trace.safetensors"))
        policy = os.path.join(out_dir, f"policy-{name}.json")
        cal = ["calibrate", "--model", ckpt, "--setup", SETUP, "--samples", str(K),
               "--target-fpr", str(args.target), "--method", "exponential-tail", "--chunk", "8",
               "--out", policy, "--quiet"]
        for t in traces:
            cal += ["--trace", t]
        report["calibration_report"] = veritrace.run(*cal)
        report["calibration_runs"] = args.cal
        with open(policy) as f:
            calibrated = json.load(f)
        report["thresholds"] = calibrated["policy"]["thresholds"]
        report["calibrated_across"] = calibrated["calibration"]["variations"]
        # held-out honest sessions
        rejected, reasons = 0, []
        for i in range(args.held):
            run, _, _ = prove(model, prompt(rng, vocab, encoder), encoder, tmp, f"held{i}", ckpt)
            v = session(run, ckpt, policy, tmp, f"held{i}")
            if not v.accepted:
                rejected += 1
                reasons.append(v.reason)
        report["held_out"] = {"sessions": args.held, "rejected": rejected,
                              "upper95": clopper_pearson_upper(rejected, args.held),
                              "reasons": reasons[:5]}
        # the same honest model under PyTorch's SDPA attention instead of eager (another
        # reduction order, not another algorithm in exact arithmetic): reported as measured
        sdpa = type(model).from_pretrained(ckpt, attn_implementation="sdpa").to(DTYPE).eval()
        sdpa_rejected, sdpa_reasons = 0, []
        for i in range(args.sdpa):
            run, _, _ = prove(sdpa, prompt(rng, vocab, encoder), encoder, tmp, f"sdpa{i}", ckpt,
                              engine=ENGINE.replace("eager", "sdpa"))
            v = session(run, ckpt, policy, tmp, f"sdpa{i}")
            if not v.accepted:
                sdpa_rejected += 1
                sdpa_reasons.append(v.reason)
        report["sdpa"] = {"sessions": args.sdpa, "rejected": sdpa_rejected,
                          "wilson95": wilson(sdpa_rejected, args.sdpa),
                          "reasons": sdpa_reasons[:5]}
        # a policy calibrated across both attention implementations: half of the eager runs
        # above and as many fresh SDPA runs; then fresh eager and SDPA sessions under it
        if args.sdpa:
            mixed_traces = traces[: args.cal // 2]
            for i in range(args.cal - len(mixed_traces)):
                run, _, _ = prove(sdpa, prompt(rng, vocab, encoder), encoder, tmp, f"mcal{i}",
                                  ckpt, engine=ENGINE.replace("eager", "sdpa"))
                mixed_traces.append(os.path.join(run, "trace.safetensors"))
            mixed = os.path.join(out_dir, f"policy-{name}-eager-and-sdpa.json")
            cal = ["calibrate", "--model", ckpt, "--setup", SETUP, "--samples", str(K),
                   "--target-fpr", str(args.target), "--method", "exponential-tail", "--chunk",
                   "8", "--out", mixed, "--quiet"]
            for t in mixed_traces:
                cal += ["--trace", t]
            veritrace.run(*cal)
            with open(mixed) as f:
                m = json.load(f)
            rows = {}
            for label, attn, n in (("eager", model, args.sdpa), ("sdpa", sdpa, args.sdpa)):
                rej = 0
                for i in range(n):
                    run, _, _ = prove(attn, prompt(rng, vocab, encoder), encoder, tmp,
                                      f"m{label}{i}", ckpt,
                                      engine=ENGINE.replace("eager", label))
                    rej += 0 if session(run, ckpt, mixed, tmp, f"m{label}{i}").accepted else 1
                rows[label] = {"sessions": n, "rejected": rej, "wilson95": wilson(rej, n)}
            report["eager_and_sdpa"] = {
                "calibration_runs": len(mixed_traces),
                "calibrated_across": m["calibration"]["variations"],
                "thresholds": m["policy"]["thresholds"],
                "held_out": rows,
            }
        # cheats
        cheats = {}
        if True:
            def bf16(m):
                return m.to(torch.bfloat16)

            def int8(m):
                return torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear},
                                                              dtype=torch.qint8)

            # a decoder layer returns its hidden state, a BERT layer a tuple led by it
            def layers(m):
                return m.encoder.layer if encoder else m.model.layers

            def skip(m):
                def keep_input(mod, inp, out):
                    return (inp[0],) + tuple(out[1:]) if isinstance(out, tuple) else inp[0]
                layers(m)[1].register_forward_hook(keep_input)
                return m

            def perturb(m):
                with torch.no_grad():
                    w = (m.encoder.layer[2].output.dense.weight if encoder
                         else m.model.layers[2].mlp.down_proj.weight)
                    g = torch.Generator().manual_seed(3)
                    w.add_(torch.randn(w.shape, generator=g) * 0.01 * w.abs().mean())
                return m

            def fresh():
                if encoder:
                    m = type(model).from_pretrained(ckpt, attn_implementation="eager")
                else:
                    m = type(model).from_pretrained(ckpt)
                return m.float().eval()

            def int8_weights(m):
                # symmetric int8 per output channel, round to nearest, then run in the dtype
                with torch.no_grad():
                    for mod in m.modules():
                        if isinstance(mod, torch.nn.Linear):
                            w = mod.weight
                            s = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
                            w.copy_(torch.round(w / s).clamp(-127, 127) * s)
                return m

            def f16(m):
                return m.to(torch.float16)

            if DTYPE == torch.bfloat16:
                # everything runs in bf16 but the f16 cheat
                in_dtype = [("int8-weights", int8_weights), ("skipped-layer-2", skip),
                            ("perturbed-layer-3-mlp", perturb)]
                plan = [(n, lambda m, f=f: f(m).to(torch.bfloat16)) for n, f in in_dtype]
                plan.insert(1, ("f16", f16))
            else:
                plan = [("bf16", bf16), ("int8-dynamic", int8), ("skipped-layer-2", skip),
                        ("perturbed-layer-3-mlp", perturb)]
            for cname, make in plan:
                cheat = make(fresh())
                detected, preds = 0, []
                for i in range(args.cheat):
                    ids = prompt(rng, vocab, encoder)
                    states, output = veritrace.capture(cheat, ids,
                                                       max_new_tokens=0 if encoder else NEW)
                    path = os.path.join(tmp, f"{cname}{i}.safetensors")
                    veritrace.save_trace([s.to(DTYPE) for s in states], path, ids + output)
                    run = os.path.join(tmp, f"{cname}{i}-run")
                    veritrace.commit(path, model=ckpt, prompt=ids, output_tokens=output,
                                     chunk=8, out=run, setup=SETUP)
                    v = session(run, ckpt, policy, tmp, f"{cname}{i}")
                    detected += 0 if v.accepted else 1
                    if args.bad_cells is None or i < args.bad_cells:
                        b, n = bad_cells(run, ckpt, policy, tmp, f"{cname}{i}")
                        preds.append(hypergeom_detect(n, b, K))
                pred = sum(preds) / len(preds) if preds else None
                # sessions are independent with detection probabilities p_i: the count has mean
                # sum p_i and variance sum p_i (1 - p_i) (over the sessions predicted)
                sd = math.sqrt(sum(q * (1 - q) for q in preds))
                cheats[cname] = {"sessions": args.cheat, "detected": detected,
                                 "rate": detected / args.cheat,
                                 "wilson95": wilson(detected, args.cheat),
                                 "predicted": pred, "predicted_from": len(preds),
                                 "expected_detections": sum(preds), "sd": sd}
        report["cheats"] = cheats
    report["seconds"] = round(time.time() - t0, 1)
    return report


def markdown(reports):
    lines = ["# Cross-engine: transformers provers, veritrace verifier", ""]
    for r in reports:
        lines += [f"## {r['model']}", "",
                  f"k = {r['k']}, {r['tokens']}-token prompts, {r['generated']} generated tokens; "
                  f"{r['seconds']} s.", "",
                  f"Noise (relative L2 per layer, transformers "
                  f"{'bf16' if r.get('setup', 'f32').startswith('bf16') else 'f32'} eager vs "
                  f"veritrace `{r.get('setup', 'f32/attn=eager')}`): " +
                  ", ".join(f"h.{l} {v:.2e}" for l, v in
                            enumerate(r["noise_rel_l2_per_layer"])), ""]
        if "noise_candle_bf16" in r:
            lines += ["The same trace against veritrace `bf16/attn=eager` (candle's kernels, which "
                      "round after each elementary operation): " +
                      ", ".join(f"h.{l} {v:.2e}" for l, v in
                                enumerate(r["noise_candle_bf16"])), ""]
        lines += [f"Calibration: {r['calibration_runs']} honest transformers runs, "
                  f"thresholds {json.dumps(r['thresholds'])}.", ""]
        h = r["held_out"]
        lines += [f"Held-out honest sessions: {h['rejected']} of {h['sessions']} rejected "
                  f"(one-sided 95% upper bound {h['upper95']:.3%}).", ""]
        sd = r.get("sdpa")
        if sd and sd["sessions"]:
            lo, hi = sd["wilson95"]
            lines += [f"The same model with SDPA attention (calibrated on eager): "
                      f"{sd['rejected']} of {sd['sessions']} sessions rejected "
                      f"(Wilson 95% {lo:.3f}–{hi:.3f}).", ""]
        mx = r.get("eager_and_sdpa")
        if mx:
            rows = ", ".join(f"{k} {v['rejected']} of {v['sessions']} rejected"
                             for k, v in mx["held_out"].items())
            lines += [f"Calibrated across eager and SDPA ({mx['calibration_runs']} runs): "
                      f"fresh sessions {rows}.", ""]
        if r["cheats"]:
            lines += ["| cheat | detected | rate (Wilson 95%) | predicted (hypergeometric) |",
                      "|---|---:|---|---:|"]
            for c, v in r["cheats"].items():
                lo, hi = v["wilson95"]
                p = "–" if v["predicted"] is None else \
                    (f"{v['predicted']:.3f}: {v['expected_detections']:.1f} ± {v['sd']:.1f} "
                     f"detections (from {v['predicted_from']} traces)")
                lines.append(f"| {c} | {v['detected']} / {v['sessions']} | {v['rate']:.3f} "
                             f"({lo:.3f}–{hi:.3f}) | {p} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cal", type=int, default=640)
    ap.add_argument("--held", type=int, default=200)
    ap.add_argument("--cheat", type=int, default=100)
    ap.add_argument("--bad-cells", type=int, default=None,
                    help="cheat traces whose bad cells are counted (default: every one)")
    ap.add_argument("--sdpa", type=int, default=100,
                    help="honest sessions of the same model under SDPA attention")
    ap.add_argument("--target", type=float, default=0.01)
    ap.add_argument("--minilm", default=os.environ.get("VERITRACE_MINILM") or os.path.join(
        os.path.dirname(__file__), "..", "..", "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--models", default="llama,minilm",
                    help="comma-separated: llama, qwen2, minilm")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="the provers' dtype (bf16: claims bf16/attn=eager/kernels=invariant)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless no held-out honest session is rejected (bf16: unless "
                         "the held-out rejections are consistent with the calibrated target, "
                         "P(Bin(n, target) >= rejected) >= 0.05) and every cheat's detections "
                         "lie within 3 standard deviations (plus one session) of the "
                         "hypergeometric prediction for the same sessions")
    args = ap.parse_args()
    global SETUP, DTYPE
    if args.dtype == "bf16":
        SETUP, DTYPE = "bf16/attn=eager/kernels=invariant", torch.bfloat16
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    models = args.models.split(",")
    reports = []
    for family in [m for m in models if m in FAMILIES]:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, family)
            model = build_decoder(ckpt, family).to(DTYPE)
            reports.append(study(f"{family}-3x128", model, ckpt, False, args, args.out))
            print(markdown(reports[-1:]), flush=True)
    if "minilm" not in models:
        pass
    elif not os.path.isfile(os.path.join(args.minilm, "model.safetensors")):
        print(f"skip MiniLM: not installed at {args.minilm} (scripts/install-minilm.sh)")
    else:
        model = transformers.BertModel.from_pretrained(args.minilm, attn_implementation="eager")
        model = model.to(DTYPE).eval()
        reports.append(study("all-MiniLM-L6-v2", model, args.minilm, True, args, args.out))
        print(markdown(reports[-1:]), flush=True)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(reports, f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown(reports))
    if args.check:
        problems = []
        for r in reports:
            if not all(v["variation"].endswith(" on " + ENGINE) for v in r["calibrated_across"]):
                problems.append(f"{r['model']}: the policy does not record the engine: "
                                f"{r['calibrated_across']}")
            h = r["held_out"]
            if DTYPE == torch.bfloat16:
                # bf16 cross-engine noise is what the thresholds are calibrated on: a rejection
                # now and then is the calibrated rate at work; fail when the count contradicts
                # the claimed target at 95%
                if binomial_tail_above(h["rejected"], h["sessions"], args.target) < 0.05:
                    problems.append(f"{r['model']}: {h['rejected']} of {h['sessions']} honest "
                                    f"sessions rejected, more than a rate of {args.target} "
                                    f"explains: {h['reasons']}")
            elif h["rejected"]:
                problems.append(f"{r['model']}: {h['rejected']} honest sessions "
                                f"rejected: {h['reasons']}")
            for c, v in r["cheats"].items():
                if v["predicted_from"] != v["sessions"]:
                    continue
                # the observed count within 3 standard deviations (and one session) of the
                # prediction for the very sessions observed
                if abs(v["detected"] - v["expected_detections"]) > 3 * v["sd"] + 1:
                    problems.append(f"{r['model']} {c}: {v['detected']} detections, "
                                    f"{v['expected_detections']:.1f} +- {v['sd']:.1f} predicted")
        for p in problems:
            print("FAIL " + p)
        print(f"cross_engine: {len(problems)} failed")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
