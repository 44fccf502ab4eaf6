#!/usr/bin/env python3
"""Tests of the `veritrace` wheel, run in the venv it was installed into:

    python crates/python/tests/test_veritrace.py

Without torch (a fresh venv with the wheel's own dependencies): a trace written with numpy is
committed, opened and verified, the interactive protocol runs, refused inputs raise
VeritraceError with exit code 2, a rejected opening gives a Verdict. With torch and
transformers installed (and `VERITRACE_REQUIRE_TORCH=1` to make their absence a failure): a
small Llama checkpoint saved by transformers is captured with `veritrace.capture` (the hooked
pre-norm last layer), committed and accepted under a relative-L2 policy, and its bf16 run is
rejected. Prints one line per test; exits 1 on a failure.
"""

import json
import os
import sys
import tempfile
import traceback

import numpy as np

import veritrace

POLICY = {"threshold": {"metric": "rel_l2", "thresholds": {"default": 1e-5, "overrides": {}}}}
failures = []


def test(fn):
    try:
        fn()
        print(f"ok   {fn.__name__}")
    except Exception:  # noqa: BLE001 - a test runner reports every failure
        failures.append(fn.__name__)
        print(f"FAIL {fn.__name__}\n{traceback.format_exc()}")
    return fn


def tiny_trace(tmp):
    """veritrace's own tiny-decoder run, rewritten by numpy without its statement: an
    "external" trace, with the tokens it came from."""
    run = os.path.join(tmp, "prove")
    veritrace.run("prove", "--model", "tiny", "--prompt", "5,9,2,7,11", "--output", "3",
                  "--chunk", "4", "--out", run)
    from safetensors.numpy import load_file
    arrays = load_file(os.path.join(run, "trace.safetensors"))
    with open(os.path.join(run, "commitment.json")) as f:
        st = json.load(f)["statement"]
    states = [arrays[f"h.{l}"] for l in range(len([k for k in arrays if k.startswith("h.")]))]
    path = os.path.join(tmp, "external.safetensors")
    veritrace.save_trace(states, path, st["input_tokens"] + st["output_tokens"])
    return path, st["input_tokens"], st["output_tokens"]


@test
def digest_is_the_engine_independent_one():
    d = veritrace.digest("tiny")
    assert d == "ad06166cfcf8885c9f17ac2cbe1583c95f5ac57ded9525c8737c0cf638b1e81d", d
    assert veritrace.version()


@test
def an_external_trace_is_committed_opened_and_verified():
    with tempfile.TemporaryDirectory() as tmp:
        path, prompt, output = tiny_trace(tmp)
        run = os.path.join(tmp, "run")
        c = veritrace.commit(path, model="tiny", prompt=prompt, output_tokens=output, chunk=4,
                             out=run)
        assert c["statement"]["model_digest"] == veritrace.digest("tiny")
        openings = veritrace.open_cells(os.path.join(run, "trace.safetensors"),
                                        out=os.path.join(tmp, "opened"), samples=6, rounds=2)
        v = veritrace.verify(os.path.join(run, "commitment.json"), openings, model="tiny",
                             samples=6)
        assert v.accepted, v
        v = veritrace.verify(os.path.join(run, "commitment.json"), openings, model="tiny",
                             samples=6, tolerance=POLICY)
        assert v.accepted, v
        # another model's verifier rejects, with the reason
        v = veritrace.verify(os.path.join(run, "commitment.json"), openings, model="small",
                             samples=6)
        assert not v.accepted and "recompute-failed" in v.reason, v


@test
def the_interactive_protocol_runs():
    with tempfile.TemporaryDirectory() as tmp:
        path, prompt, output = tiny_trace(tmp)
        run = os.path.join(tmp, "run")
        veritrace.commit(path, model="tiny", prompt=prompt, output_tokens=output, chunk=4,
                         out=run)
        ch = os.path.join(tmp, "challenge.json")
        c = veritrace.challenge(os.path.join(run, "commitment.json"), samples=4, out=ch)
        assert len(c["cells"]) == 4
        o = veritrace.answer(os.path.join(run, "trace.safetensors"), challenge=ch,
                             out=os.path.join(tmp, "opening.vtpm"))
        v = veritrace.verify(os.path.join(run, "commitment.json"), [o], challenges=[ch],
                             model="tiny")
        assert v.accepted, v


@test
def a_sublayer_commitment_is_checked_by_freivalds():
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        veritrace.run("prove", "--model", "tiny", "--prompt", "5,9,2,7,11,4,4", "--output", "3",
                      "--chunk", "4", "--trace-level", "sublayer", "--out", run)
        secret = os.path.join(tmp, "secret")
        with open(secret, "wb") as f:
            f.write(bytes(range(32)))
        key = os.path.join(tmp, "tiny.key")
        veritrace.run("keygen", "--model", "tiny", "--secret-file", secret, "--out", key)
        ch = os.path.join(tmp, "challenge.json")
        veritrace.challenge(os.path.join(run, "commitment.json"), samples=4, out=ch)
        o = veritrace.answer(os.path.join(run, "trace.safetensors"), challenge=ch,
                             out=os.path.join(tmp, "opening.vtpm"))
        for check in ("freivalds", "both"):
            v = veritrace.verify(os.path.join(run, "commitment.json"), [o], challenges=[ch],
                                 model="tiny", layer_check=check, key=key)
            assert v.accepted, v
        # the sampled attention check: one head and one earlier row per cell
        v = veritrace.verify(os.path.join(run, "commitment.json"), [o], challenges=[ch],
                             model="tiny", layer_check="freivalds", key=key,
                             attention_heads=1, context_rows=1)
        assert v.accepted, v
        try:
            veritrace.verify(os.path.join(run, "commitment.json"), [o], challenges=[ch],
                             model="tiny", layer_check="freivalds", key=key, attention_heads=0)
        except veritrace.VeritraceError as e:
            assert e.code == 2, e
        else:
            raise AssertionError("a check of no attention head was accepted")
        try:
            veritrace.verify(os.path.join(run, "commitment.json"), [o], challenges=[ch],
                             model="tiny", layer_check="freivalds")
        except veritrace.VeritraceError as e:
            assert e.code == 2, e
        else:
            raise AssertionError("a Freivalds check without a key was accepted")


@test
def a_by_head_commitment_opens_only_the_drawn_heads():
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        veritrace.run("prove", "--model", "tiny", "--prompt", "5,9,2,7,11,4,4,8,1,3", "--output",
                      "6", "--chunk", "4", "--trace-level", "sublayer-by-head", "--out", run)
        secret = os.path.join(tmp, "secret")
        with open(secret, "wb") as f:
            f.write(bytes(range(32)))
        key = os.path.join(tmp, "tiny.key")
        veritrace.run("keygen", "--model", "tiny", "--secret-file", secret, "--out", key)
        commitment = os.path.join(run, "commitment.json")
        trace = os.path.join(run, "trace.safetensors")
        # interactive: the draw travels in the challenge
        ch = os.path.join(tmp, "challenge.json")
        c = veritrace.challenge(commitment, samples=4, out=ch, attention_heads=1, context_chunks=1)
        assert c["attention"]["heads"] == 1 and c["attention"]["chunks"] == 1, c
        o = veritrace.answer(trace, challenge=ch, out=os.path.join(tmp, "opening.vtpm"))
        v = veritrace.verify(commitment, [o], challenges=[ch], model="tiny",
                             layer_check="freivalds", key=key)
        assert v.accepted, v
        try:
            veritrace.verify(commitment, [o], challenges=[ch], model="tiny")
        except veritrace.VeritraceError as e:
            assert e.code == 2 and "cannot be recomputed" in str(e), e
        else:
            raise AssertionError("a drawn opening was recomputed")
        # non-interactive: the draw comes from the transcript; the verifier states the sample
        openings = veritrace.open_cells(trace, out=os.path.join(tmp, "ni"), samples=4, rounds=2,
                                        attention_heads=2, context_chunks=1)
        v = veritrace.verify(commitment, openings, model="tiny", samples=4,
                             layer_check="freivalds", key=key, attention_heads=2,
                             context_chunks=1)
        assert v.accepted, v
        v = veritrace.verify(commitment, openings, model="tiny", samples=4,
                             layer_check="freivalds", key=key, attention_heads=1,
                             context_chunks=1)
        assert not v.accepted, v


@test
def refused_input_raises_with_exit_code_2():
    with tempfile.TemporaryDirectory() as tmp:
        path, prompt, output = tiny_trace(tmp)
        for kwargs in (dict(model="small", prompt=prompt, output_tokens=output),
                       dict(model="tiny", prompt=prompt[:-1], output_tokens=output),
                       dict(model="tiny", text="no tokenizer here")):
            try:
                veritrace.commit(path, out=os.path.join(tmp, "x"), **kwargs)
            except veritrace.VeritraceError as e:
                assert e.code == 2, e
            else:
                raise AssertionError(f"accepted {kwargs}")
        assert not os.path.exists(os.path.join(tmp, "x", "commitment.json"))
        try:
            veritrace.run("no-such-verb")
        except veritrace.VeritraceError as e:
            assert e.code == 2
        else:
            raise AssertionError("an unknown verb ran")


def torch_available():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        return True
    except ImportError:
        if os.environ.get("VERITRACE_REQUIRE_TORCH") == "1":
            raise
        print("skip capture tests: torch and transformers are not installed here")
        return False


TORCH = torch_available()

if TORCH:
    @test
    def a_transformers_prover_is_captured_committed_and_verified():
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(5)
            config = transformers.LlamaConfig(
                vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                max_position_embeddings=128)
            config._attn_implementation = "eager"
            model = transformers.LlamaForCausalLM(config).float().eval()
            with torch.no_grad():
                for p in model.parameters():
                    (p.normal_(0.0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2))
            ckpt = os.path.join(tmp, "llama")
            model.save_pretrained(ckpt)
            ids = [3, 17, 99, 4, 250, 31, 8]
            states, output = veritrace.capture(model, ids, max_new_tokens=5)
            assert len(states) == 3 and len(output) == 5
            trace = os.path.join(tmp, "hidden.safetensors")
            veritrace.save_trace(states, trace, ids + output)
            c = veritrace.commit(trace, model=ckpt, prompt=ids, output_tokens=output, out=os.path.join(tmp, "run"))
            assert c["statement"]["output_tokens"] == output
            openings = veritrace.open_cells(os.path.join(tmp, "run", "trace.safetensors"),
                                            out=os.path.join(tmp, "opened"), samples=8)
            v = veritrace.verify(os.path.join(tmp, "run", "commitment.json"), openings,
                                 model=ckpt, samples=8, tolerance=POLICY)
            assert v.accepted, v
            # the same model in bf16: a cheaper setup, rejected
            states16, _ = veritrace.capture(model.to(torch.bfloat16), ids + output)
            trace16 = os.path.join(tmp, "hidden16.safetensors")
            veritrace.save_trace(states16, trace16, ids + output)
            veritrace.commit(trace16, model=ckpt, prompt=ids, output_tokens=output,
                             out=os.path.join(tmp, "run16"))
            openings = veritrace.open_cells(os.path.join(tmp, "run16", "trace.safetensors"),
                                            out=os.path.join(tmp, "opened16"), samples=8)
            v = veritrace.verify(os.path.join(tmp, "run16", "commitment.json"), openings,
                                 model=ckpt, samples=8, tolerance=POLICY)
            assert not v.accepted and "tolerance" in v.reason, v

if TORCH:
    def small_llama_with_key(tmp):
        """A 2-layer, 64-wide transformers Llama saved in `tmp` (f32, eager attention, seeded
        weights), a verifier secret and its key: `(model, checkpoint, secret, key)`."""
        import torch
        import transformers
        torch.manual_seed(7)
        config = transformers.LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            max_position_embeddings=128)
        config._attn_implementation = "eager"
        model = transformers.LlamaForCausalLM(config).float().eval()
        with torch.no_grad():
            for p in model.parameters():
                (p.normal_(0.0, 0.08) if p.dim() == 2 else p.uniform_(0.8, 1.2))
        ckpt = os.path.join(tmp, "llama")
        model.save_pretrained(ckpt)
        secret = os.path.join(tmp, "secret")
        with open(secret, "wb") as f:
            f.write(bytes(range(32, 64)))
        key = os.path.join(tmp, "llama.key")
        veritrace.run("keygen", "--model", ckpt, "--secret-file", secret, "--out", key)
        return model, ckpt, secret, key

    def int4_weights(model, ckpt):
        """The checkpoint reloaded in f32 with every layer matrix quantized to int4 in groups of
        32 (symmetric, round to nearest) and dequantized: a cheaper prover's weights."""
        import torch
        m = type(model).from_pretrained(ckpt).float().eval()
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() == 2 and "layers" in name:
                    g = p.reshape(p.shape[0], -1, 32)
                    scale = g.abs().amax(dim=2, keepdim=True) / 7.0
                    p.copy_((torch.round(g / scale).clamp(-8, 7) * scale).reshape(p.shape))
        return m

    @test
    def a_transformers_prover_is_checked_by_drawn_openings():
        """transformers' values at the by-head level: challenges draw one head and one earlier
        chunk per cell, the openings hold only those, and the Freivalds check of them accepts
        the honest prover and rejects an int4 one claimed as f32."""
        import transformers
        transformers.utils.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            model, ckpt, _, key = small_llama_with_key(tmp)
            ids = [3, 17, 99, 4, 250, 31, 8, 12, 40, 7, 66, 5]

            def session(m, name):
                states, output, subs = veritrace.capture(m, ids, max_new_tokens=4,
                                                         sublayers=True)
                trace = os.path.join(tmp, f"{name}.safetensors")
                veritrace.save_trace(states, trace, ids + output, sublayers=subs)
                run = os.path.join(tmp, name)
                c = veritrace.commit(trace, model=ckpt, prompt=ids, output_tokens=output,
                                     chunk=4, out=run, trace_level="sublayer-by-head")
                assert c["sublayer_roots"]["kv"], c
                ch = os.path.join(tmp, f"{name}-challenge.json")
                veritrace.challenge(os.path.join(run, "commitment.json"), samples=8, out=ch,
                                    attention_heads=1, context_chunks=1)
                o = veritrace.answer(os.path.join(run, "trace.safetensors"), challenge=ch,
                                     out=os.path.join(tmp, f"{name}-opening.vtpm"))
                return veritrace.verify(os.path.join(run, "commitment.json"), [o],
                                        challenges=[ch], model=ckpt, tolerance=POLICY, key=key,
                                        layer_check="freivalds", sublayer_tolerance=1e-6)

            v = session(model, "f32")
            assert v.accepted, v
            v = session(int4_weights(model, ckpt), "int4")
            assert not v.accepted and "algebraic-check" in v.reason, v

    @test
    def a_transformers_prover_commits_sub_layer_values_checked_by_freivalds():
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            model, ckpt, secret, key = small_llama_with_key(tmp)
            ids = [3, 17, 99, 4, 250, 31, 8, 12, 40]

            def session(m, name):
                states, output, subs = veritrace.capture(m, ids, max_new_tokens=5,
                                                         sublayers=True)
                assert len(subs) == 2 and subs[0]["down"].shape == (14, 64), subs[0]["down"].shape
                trace = os.path.join(tmp, f"{name}.safetensors")
                veritrace.save_trace(states, trace, ids + output, sublayers=subs)
                run = os.path.join(tmp, name)
                c = veritrace.commit(trace, model=ckpt, prompt=ids, output_tokens=output,
                                     chunk=4, out=run, trace_level="sublayer")
                assert "sublayer_roots" in c and c["sublayer_roots"], c
                openings = veritrace.open_cells(os.path.join(run, "trace.safetensors"),
                                                out=os.path.join(tmp, f"opened-{name}"),
                                                samples=12)
                return lambda **kw: veritrace.verify(
                    os.path.join(run, "commitment.json"), openings, model=ckpt, samples=12,
                    tolerance=POLICY, key=key, **kw)

            verify = session(model, "f32")
            # transformers' own values: every linear map passes Freivalds within its rounding
            # bound; the nonlinear parts (its RMSNorm, RoPE and softmax) agree with veritrace's to
            # rounding, so they need a tolerance, and a bitwise check refuses them
            v = verify(layer_check="freivalds", sublayer_tolerance=1e-6)
            assert v.accepted, v
            v = verify(layer_check="both", sublayer_tolerance=1e-6)
            assert v.accepted, v
            # transformers' own arithmetic sits far inside the rigorous bound: a bound scaled
            # down 100x still passes it
            v = verify(layer_check="freivalds", sublayer_tolerance=1e-6,
                       freivalds_bound_scale=0.01)
            assert v.accepted, v
            v = verify(layer_check="freivalds", sublayer_tolerance=0.0)
            assert not v.accepted and "algebraic-check" in v.reason, v
            print(f"     transformers vs veritrace, bitwise: {v.reason['algebraic-check']['detail']}")
            # the same model with int8-quantized weights, claimed as f32: the linear checks fail
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if p.dim() == 2 and "layers" in name:
                        scale = p.abs().amax(dim=1, keepdim=True) / 127.0
                        p.copy_(torch.round(p / scale) * scale)
            verify = session(model, "int8")
            v = verify(layer_check="freivalds", sublayer_tolerance=1e-6)
            assert not v.accepted and "algebraic-check" in v.reason, v
            # per-map calibrated scales (keygen --bound-file) reject it too; a bound file of
            # another key's model is refused
            bounds = os.path.join(tmp, "bounds.json")
            veritrace.run("keygen", "--model", ckpt, "--secret-file", secret, "--out",
                          os.path.join(tmp, "k2"), "--calibrate-bound", "6",
                          "--calibration-tokens", "12", "--bound-file", bounds)
            v = verify(layer_check="freivalds", sublayer_tolerance=1e-6, freivalds_bounds=bounds)
            assert not v.accepted and "algebraic-check" in v.reason, v
            tiny_bounds = os.path.join(tmp, "tiny-bounds.json")
            veritrace.run("keygen", "--model", "tiny", "--secret-file", secret, "--out",
                          os.path.join(tmp, "k3"), "--calibrate-bound", "4",
                          "--calibration-tokens", "12", "--bound-file", tiny_bounds)
            try:
                verify(layer_check="freivalds", freivalds_bounds=tiny_bounds)
                raise AssertionError("a bound file of another model was accepted")
            except veritrace.VeritraceError as e:
                assert e.code == 2, e

    @test
    def a_bf16_transformers_prover_is_checked_by_freivalds_with_a_bf16_key():
        import json
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            model, ckpt, secret, key = small_llama_with_key(tmp)
            ids = [3, 17, 99, 4, 250, 31, 8, 12, 40]
            policy = os.path.join(tmp, "policy.json")
            with open(policy, "w") as f:
                json.dump({"threshold": {"metric": "rel_l2",
                                         "thresholds": {"default": 0.05, "overrides": {}}}}, f)

            def session(m, name):
                states, output, subs = veritrace.capture(m, ids, max_new_tokens=5,
                                                         sublayers=True)
                trace = os.path.join(tmp, f"{name}.safetensors")
                veritrace.save_trace([s.to(torch.bfloat16) for s in states], trace, ids + output,
                                     sublayers=subs)
                run = os.path.join(tmp, name)
                veritrace.commit(trace, model=ckpt, prompt=ids, output_tokens=output, chunk=4,
                                 out=run, trace_level="sublayer",
                                 setup="bf16/attn=eager/kernels=invariant")
                openings = veritrace.open_cells(os.path.join(run, "trace.safetensors"),
                                                out=os.path.join(tmp, f"opened-{name}"),
                                                samples=12)
                return lambda **kw: veritrace.verify(
                    os.path.join(run, "commitment.json"), openings, model=ckpt, samples=12,
                    tolerance=policy, key=key, layer_check="freivalds", **kw)

            # transformers in bf16: verify derives the key of the bf16 weights; every linear
            # map passes; its nonlinear parts (other rounding points) differ from veritrace's
            # bf16 kernels by a few 1e-3, inside a 2e-2 tolerance and not bitwise
            verify = session(model.to(torch.bfloat16), "bf16")
            # its sub-layer values are committed as bf16, each exact (specs/protocol.md 3.5)
            with open(os.path.join(tmp, "bf16", "commitment.json")) as f:
                level = json.load(f)["statement"]["trace_level"]["sub-layer"]
            assert level["dtype"] == "bf16", level
            v = verify(sublayer_tolerance=0.02)
            assert v.accepted, v
            v = verify(sublayer_tolerance=0.0)
            assert not v.accepted and "algebraic-check" in v.reason, v
            # int4 (group 32) weights run in bf16, claimed as bf16: the linear checks fail
            m = int4_weights(model, ckpt)
            verify = session(m.to(torch.bfloat16), "int4")
            v = verify(sublayer_tolerance=0.02)
            assert not v.accepted and "algebraic-check" in v.reason, v
            assert "Freivalds" in v.reason["algebraic-check"]["detail"], v

    @test
    def nonlinear_tolerances_are_calibrated_on_transformers_bf16_runs():
        import json
        import torch
        import transformers
        transformers.utils.logging.set_verbosity_error()
        with tempfile.TemporaryDirectory() as tmp:
            model, ckpt, secret, key = small_llama_with_key(tmp)
            honest = model.to(torch.bfloat16)
            setup = "bf16/attn=eager/kernels=invariant"

            def committed(m, ids, name):
                states, output, subs = veritrace.capture(m, ids, max_new_tokens=5,
                                                         sublayers=True)
                trace = os.path.join(tmp, f"{name}.safetensors")
                veritrace.save_trace([s.to(torch.bfloat16) for s in states], trace, ids + output,
                                     sublayers=subs)
                run = os.path.join(tmp, name)
                veritrace.commit(trace, model=ckpt, prompt=ids, output_tokens=output, chunk=4,
                                 out=run, trace_level="sublayer", setup=setup)
                return run

            # 24 honest transformers bf16 runs calibrate the scales and the nonlinear tolerances
            traces = []
            for i in range(24):
                ids = [(5 + 29 * i * j + 7 * j + i) % 256 for j in range(9)]
                traces += ["--bound-trace",
                           os.path.join(committed(honest, ids, f"cal{i}"), "trace.safetensors")]
            bounds = os.path.join(tmp, "bounds.json")
            out = veritrace.keygen(ckpt, out=os.path.join(tmp, "k2"), secret_file=secret,
                                   bound_traces=traces[1::2], bound_file=bounds,
                                   calibration_setup=setup)
            assert "nonlinear tolerances" in out, out
            # a claimed false-alarm rate needs more runs than 24: refused, with the count
            try:
                veritrace.keygen(ckpt, out=os.path.join(tmp, "k3"), secret_file=secret,
                                 bound_traces=traces[1::2], bound_file=bounds,
                                 bound_method="order-statistic", target_fpr=0.01,
                                 calibration_setup=setup)
            except veritrace.VeritraceError as e:
                assert e.code == 2 and "honest runs are needed" in str(e), e
            else:
                raise AssertionError("24 runs certified a 1% rate over 22 checks")
            tol = json.load(open(bounds))["nonlinear"]
            assert len(tol) == 2 and all(len(r) == 4 for r in tol), tol
            # transformers' attention rounds differently from veritrace's bf16 kernels
            assert max(max(r) for r in tol) > 0.0, tol
            policy = os.path.join(tmp, "policy.json")
            with open(policy, "w") as f:
                json.dump({"threshold": {"metric": "rel_l2",
                                         "thresholds": {"default": 0.05, "overrides": {}}}}, f)

            def verify(run, **kw):
                openings = veritrace.open_cells(os.path.join(run, "trace.safetensors"),
                                                out=run + "-opened", samples=12)
                return veritrace.verify(os.path.join(run, "commitment.json"), openings,
                                        model=ckpt, samples=12, tolerance=policy, key=key,
                                        layer_check="freivalds", sublayer_tolerance=0.0, **kw)

            # a held-out honest session passes with the file's tolerances alone (the
            # verifier's own tolerance is 0: bitwise), and fails without the file
            run = committed(honest, [3, 17, 99, 4, 250, 31, 8, 12, 40], "held")
            v = verify(run, freivalds_bounds=bounds)
            assert v.accepted, v
            v = verify(run)
            assert not v.accepted and "algebraic-check" in v.reason, v
            # int4 (group 32) weights in bf16, claimed as bf16: rejected under the file
            m = int4_weights(model, ckpt)
            run = committed(m.to(torch.bfloat16), [3, 17, 99, 4, 250, 31, 8, 12, 40], "int4")
            v = verify(run, freivalds_bounds=bounds)
            assert not v.accepted and "algebraic-check" in v.reason, v


print(f"test_veritrace: {len(failures)} failed")
sys.exit(1 if failures else 0)
