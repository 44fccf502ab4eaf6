#!/usr/bin/env python3
"""veritrace against Hugging Face transformers itself (issue 13, item 7).

Builds small random-initialized checkpoints with transformers' own `save_pretrained` (f32
safetensors), runs `veritrace prove` on each, and compares veritrace's trace and greedy tokens
with transformers' own forward and `generate` (eager attention, CPU, float32):

* Llama with `rope_parameters` theta 500000 (transformers 5's spelling), Llama-3 rope scaling,
  tied embeddings, and a plain Llama: per-layer relative L2 <= 1e-5 against transformers'
  hidden states (h.L compared with the input of the final norm, captured by a hook: transformers'
  last `output_hidden_states` entry is after it), and 16 greedy tokens equal;
* the engine-independent digest: `veritrace digest DIR` equals specs/reference/model_digest_ref.py;
* the installed all-MiniLM-L6-v2 (real weights, `VERITRACE_MINILM` or models/): its trace equals
  transformers' BertModel hidden states (relative L2 <= 1e-5 per layer);
* Qwen2 (query/key/value biases) and Mistral with a sliding window of 8, shorter than the
  21-token prompt, as the Llama cases;
* for every decoder, 12 cells opened non-interactively and verified exactly by `veritrace verify`
  against the checkpoint;
* `veritrace import --from transformers` of transformers' own `output_hidden_states` (the
  post-norm last entry refused, the hooked pre-norm input accepted; safetensors and torch.save),
  then `commit --model` and `verify`;
* transformers as the prover: its own hidden states committed with `veritrace commit --model`
  and 12 cells verified under a relative-L2 policy of 1e-5 (accepted), and the same model run in
  bf16 (rejected), for every decoder and MiniLM;
* text input (`prove --text`, `--chat`) through a byte-level BPE tokenizer saved by transformers
  with a chat template: the tokens equal `tokenizer(text)` and `apply_chat_template`, the greedy
  tokens equal `generate`, the tokenizer digest equals the files' (specs/protocol.md 3.4), and
  `verify` accepts the run and rejects a statement with another text;
* refused configurations (Qwen2 with its sliding window on, a yarn rope, an unknown config
  field): `veritrace digest` and `veritrace prove` exit 2 naming the field.

    python tests/engines/transformers_checkpoints.py PATH/TO/veritrace

Needs torch, transformers, safetensors and blake3 (scripts/install-engines.sh). Exits 0 when
every check passes, 1 on a failure, 2 when it cannot run. Prints one line per check.
"""

import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:  # pragma: no cover - depends on the environment
    print(f"transformers_checkpoints: {e}; run scripts/install-engines.sh", file=sys.stderr)
    sys.exit(2)

transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.path.join(HERE, "..", "..", "specs", "reference", "model_digest_ref.py")
BASE = dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
            max_position_embeddings=256)
PROMPT = [(i * 37 + 11) % 512 for i in range(21)]
NEW_TOKENS = 16
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def build(dir, config_class, model_class, seed, **kw):
    torch.manual_seed(seed)
    config = config_class(**{**BASE, **kw})
    config._attn_implementation = "eager"
    model = model_class(config).to(torch.float32).eval()
    # Larger weights than the init's 0.02 spread, so rounding differences would show.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
            else:
                p.uniform_(0.8, 1.2)
    model.save_pretrained(dir, safe_serialization=True)
    return model


def veritrace(binary, *args):
    return subprocess.run([binary, *args], capture_output=True, text=True)


def transformers_trace(model, tokens):
    """Hidden states h.0 .. h.L of one forward over `tokens`, h.L before the final norm."""
    captured = {}
    hook = model.model.norm.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("pre_norm", inp[0].detach()))
    with torch.no_grad():
        out = model(torch.tensor([tokens]), output_hidden_states=True)
    hook.remove()
    states = [h[0] for h in out.hidden_states[:-1]] + [captured["pre_norm"][0]]
    return states


def compare_llama(binary, name, model, dir, tmp):
    run = os.path.join(tmp, name + "-run")
    r = veritrace(binary, "prove", "--model", dir, "--prompt", ",".join(map(str, PROMPT)),
                  "--output", str(NEW_TOKENS), "--chunk", "8", "--out", run)
    if r.returncode != 0:
        check(False, f"{name}: veritrace prove exited {r.returncode}: {r.stderr.strip()}")
        return
    with open(os.path.join(run, "commitment.json")) as f:
        statement = json.load(f)["statement"]
    ours_tokens = statement["output_tokens"]
    with torch.no_grad():
        gen = model.generate(torch.tensor([PROMPT]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             min_new_tokens=NEW_TOKENS, eos_token_id=None, pad_token_id=0)
    theirs_tokens = gen[0, len(PROMPT):].tolist()
    check(ours_tokens == theirs_tokens,
          f"{name}: 16 greedy tokens equal ({ours_tokens[:6]}... vs {theirs_tokens[:6]}...)")
    trace = load_file(os.path.join(run, "trace.safetensors"))
    theirs = transformers_trace(model, PROMPT + ours_tokens)
    layers = len(theirs)
    check(len([k for k in trace if k.startswith("h.")]) == layers,
          f"{name}: {layers} hidden states")
    worst = 0.0
    for l in range(layers):
        a, b = trace[f"h.{l}"].double(), theirs[l].double()
        rel = ((a - b).norm() / b.norm()).item()
        worst = max(worst, rel)
    check(worst <= 1e-5, f"{name}: per-layer relative L2 vs transformers <= 1e-5 (worst {worst:.2e})")
    d = veritrace(binary, "digest", dir)
    ref = subprocess.run([sys.executable, REF, dir], capture_output=True, text=True)
    check(d.returncode == 0 and ref.returncode == 0 and d.stdout[:64] == ref.stdout[:64],
          f"{name}: digest {d.stdout[:16]} equals the reference's {ref.stdout[:16]}")
    # transformers as the prover: its own trace committed and verified; in bf16, rejected
    external(binary, name, dir, PROMPT, ours_tokens, theirs, tmp, accept=True)
    import_transformers(binary, name, model, dir, tmp, PROMPT, ours_tokens)
    bf16 = transformers_trace(model.to(torch.bfloat16), PROMPT + ours_tokens)
    model.to(torch.float32)
    external(binary, name + " in bf16 (a cheaper setup)", dir, PROMPT, ours_tokens, bf16, tmp,
             accept=False)
    # The protocol over this checkpoint: 12 cells opened and verified bit for bit.
    opened = os.path.join(tmp, name + "-opening")
    o = veritrace(binary, "open", os.path.join(run, "trace.safetensors"), "--non-interactive",
                  "--samples", "12", "--out", opened)
    v = veritrace(binary, "verify", "--commitment", os.path.join(run, "commitment.json"),
                  "--opening", os.path.join(opened, "opening-0.vtpm"), "--non-interactive",
                  "--samples", "12", "--model", dir)
    check(o.returncode == 0 and v.returncode == 0,
          f"{name}: 12 opened cells verify exactly (open exit {o.returncode}, verify exit "
          f"{v.returncode}: {(o.stderr + v.stdout + v.stderr).strip()[:160]})")
    return d.stdout[:64]


POLICY = {"threshold": {"metric": "rel_l2", "thresholds": {"default": 1e-5, "overrides": {}}}}


def external(binary, name, dir, prompt, output, states, tmp, accept):
    """An external prover: transformers' own hidden states (float32, h.L before the final
    norm), committed with `veritrace commit --model` and verified on 12 opened cells under a
    relative-L2 policy of 1e-5 per cell: accepted when `accept`, else rejected."""
    from safetensors.torch import save_file
    path = os.path.join(tmp, name + "-external.safetensors")
    save_file({f"h.{l}": s.float().contiguous() for l, s in enumerate(states)}, path)
    run = os.path.join(tmp, name + "-external-run")
    c = veritrace(binary, "commit", path, "--model", dir, "--prompt", ",".join(map(str, prompt)),
                  "--output-tokens", ",".join(map(str, output)), "--chunk", "8", "--out", run)
    if c.returncode != 0:
        check(False, f"{name}: veritrace commit --model exited {c.returncode}: {c.stderr}")
        return
    policy = os.path.join(tmp, "policy-1e-5.json")
    with open(policy, "w") as f:
        json.dump(POLICY, f)
    opened = os.path.join(tmp, name + "-external-opening")
    o = veritrace(binary, "open", os.path.join(run, "trace.safetensors"), "--non-interactive",
                  "--samples", "12", "--out", opened)
    v = veritrace(binary, "verify", "--commitment", os.path.join(run, "commitment.json"),
                  "--opening", os.path.join(opened, "opening-0.vtpm"), "--non-interactive",
                  "--samples", "12", "--model", dir, "--tolerance", policy)
    want = 0 if accept else 1
    check(o.returncode == 0 and v.returncode == want,
          f"{name}: transformers trace committed with `commit --model`, 12 cells "
          f"{'accepted' if accept else 'rejected'} under rel_l2 1e-5 (verify exit "
          f"{v.returncode}: {(v.stdout + v.stderr).strip()[:140]})")


def import_transformers(binary, name, model, dir, tmp, prompt, output):
    """transformers' own output_hidden_states through `veritrace import --from transformers`:
    the post-norm last entry is refused, the pre-norm input (a forward hook on model.model.norm)
    is accepted, as safetensors and as a torch.save dict; then commit --model (which checks
    the carried token ids) and verify under the 1e-5 policy."""
    from safetensors.torch import save_file
    tokens = prompt + output
    captured = {}
    hook = model.model.norm.register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("pre_norm", inp[0].detach()))
    with torch.no_grad():
        out = model(torch.tensor([tokens]), output_hidden_states=True)
    hook.remove()
    hs = {f"hidden_states.{i}": h.contiguous() for i, h in enumerate(out.hidden_states)}
    hs["input_ids"] = torch.tensor([tokens])
    post = os.path.join(tmp, name + "-hs-post.safetensors")
    save_file(hs, post)
    r = veritrace(binary, "import", "--from", "transformers", post, "--model", dir, "--out",
                  os.path.join(tmp, name + "-imported-post.safetensors"))
    check(r.returncode == 2 and "final norm" in r.stderr,
          f"{name}: import refuses transformers' post-norm last entry (exit {r.returncode})")
    hs["pre_norm"] = captured["pre_norm"].contiguous()
    for kind in ("safetensors", "pt"):
        # torch.save names the archive's folder after the file; candle's zip reader refuses
        # some such names (e.g. "llama-theta-500000-hs"), so the file has a plain name here
        os.makedirs(os.path.join(tmp, name + "-hs"), exist_ok=True)
        src = os.path.join(tmp, name + "-hs", f"hidden_states.{kind}")
        if kind == "pt":
            torch.save(hs, src)
        else:
            save_file(hs, src)
        trace = os.path.join(tmp, f"{name}-imported-{kind}.safetensors")
        r = veritrace(binary, "import", "--from", "transformers", src, "--model", dir, "--out",
                      trace)
        if r.returncode != 0:
            check(False, f"{name}: import of {kind} exited {r.returncode}: {r.stderr.strip()}")
            continue
        run = os.path.join(tmp, f"{name}-imported-{kind}-run")
        c = veritrace(binary, "commit", trace, "--model", dir, "--prompt",
                      ",".join(map(str, prompt)), "--output-tokens", ",".join(map(str, output)),
                      "--chunk", "8", "--out", run)
        opened = run + "-opening"
        o = veritrace(binary, "open", os.path.join(run, "trace.safetensors"),
                      "--non-interactive", "--samples", "12", "--out", opened)
        policy = os.path.join(tmp, "policy-1e-5.json")
        with open(policy, "w") as f:
            json.dump(POLICY, f)
        v = veritrace(binary, "verify", "--commitment", os.path.join(run, "commitment.json"),
                      "--opening", os.path.join(opened, "opening-0.vtpm"), "--non-interactive",
                      "--samples", "12", "--model", dir, "--tolerance", policy)
        check(c.returncode == 0 and o.returncode == 0 and v.returncode == 0,
              f"{name}: output_hidden_states ({kind}) imported, committed and 12 cells accepted "
              f"(commit {c.returncode}, verify {v.returncode}: "
              f"{(c.stderr + v.stdout + v.stderr).strip()[:120]})")


def compare_bert(binary, dir, tmp):
    """The installed MiniLM (real weights): veritrace's trace equals transformers' BertModel
    hidden states (an encoder has no final norm: every entry is compared)."""
    prompt = [101] + [(i * 131 + 7) % 30000 + 1000 for i in range(30)] + [102]
    run = os.path.join(tmp, "minilm-run")
    r = veritrace(binary, "prove", "--model", dir, "--prompt", ",".join(map(str, prompt)),
                  "--chunk", "8", "--out", run)
    if r.returncode != 0:
        check(False, f"minilm: veritrace prove exited {r.returncode}: {r.stderr.strip()}")
        return
    model = transformers.BertModel.from_pretrained(dir, attn_implementation="eager")
    model = model.to(torch.float32).eval()
    with torch.no_grad():
        out = model(torch.tensor([prompt]), output_hidden_states=True)
    trace = load_file(os.path.join(run, "trace.safetensors"))
    states = [h[0] for h in out.hidden_states]
    check(len([k for k in trace if k.startswith("h.")]) == len(states),
          f"minilm: {len(states)} hidden states")
    worst = max(((trace[f"h.{l}"].double() - s.double()).norm() / s.double().norm()).item()
                for l, s in enumerate(states))
    check(worst <= 1e-5,
          f"minilm (real weights): per-layer relative L2 vs transformers <= 1e-5 (worst {worst:.2e})")
    d = veritrace(binary, "digest", dir)
    ref = subprocess.run([sys.executable, REF, dir], capture_output=True, text=True)
    check(d.returncode == 0 and d.stdout[:64] == ref.stdout[:64],
          f"minilm: digest {d.stdout[:16]} equals the reference's {ref.stdout[:16]}")
    external(binary, "minilm", dir, prompt, [], states, tmp, accept=True)


CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n"
                 "{{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def tokenizer_digest(dir, chat):
    """specs/protocol.md section 3.4, from the files alone."""
    import blake3
    with open(os.path.join(dir, "tokenizer.json"), "rb") as f:
        j = f.read()
    c = b""
    if chat:
        path = os.path.join(dir, "chat_template.jinja")
        if os.path.exists(path):
            with open(path, "rb") as f:
                c = f.read()
        else:
            with open(os.path.join(dir, "tokenizer_config.json")) as f:
                c = json.load(f)["chat_template"].encode()
    return blake3.blake3(b"veritrace/tokenizer/v1" + len(j).to_bytes(8, "little") + j
                         + len(c).to_bytes(8, "little") + c).hexdigest()


def compare_text(binary, tmp):
    """Text input through a byte-level BPE tokenizer trained and saved by transformers' own
    classes, with a chat template: veritrace's tokens equal transformers' tokenizer(text) and
    apply_chat_template, its greedy tokens equal generate on them, the statement's tokenizer
    digest equals the files' (spec section 3.4), and a verifier accepts the run and rejects
    another text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    dir = os.path.join(tmp, "llama-text")
    model = build(dir, transformers.LlamaConfig, transformers.LlamaForCausalLM, seed=11)
    corpus = ["A verifier samples cells of the trace and recomputes them.",
              "The prover commits to Merkle roots of its activations.",
              "Honest noise is small; a change of algorithm is not."] * 20
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tk.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dir)
    text = "The verifier recomputes cells it did not run: déjà vu."
    for chat in (False, True):
        name = "text" + (" with the chat template" if chat else "")
        if chat:
            ids = fast.apply_chat_template([{"role": "user", "content": text}],
                                           add_generation_prompt=True, tokenize=True)
            theirs = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        else:
            theirs = fast(text)["input_ids"]
        run = os.path.join(tmp, "text-run-" + str(chat))
        args = ["prove", "--model", dir, "--text", text, "--output", str(NEW_TOKENS),
                "--chunk", "8", "--out", run] + (["--chat"] if chat else [])
        r = veritrace(binary, *args)
        if r.returncode != 0:
            check(False, f"{name}: veritrace prove --text exited {r.returncode}: {r.stderr}")
            continue
        with open(os.path.join(run, "commitment.json")) as f:
            commitment = json.load(f)
        st = commitment["statement"]
        check(st["input_tokens"] == theirs,
              f"{name}: {len(theirs)} tokens equal transformers' ({st['input_tokens'][:8]}...)")
        check(st["input_text"]["tokenizer"] == tokenizer_digest(dir, chat)
              and st["input_text"]["text"] == text and st["input_text"]["chat"] == chat,
              f"{name}: the statement binds the text and the files' tokenizer digest")
        with torch.no_grad():
            # an explicit mask: with pad_token_id 0, generate would mask the <s> (id 0) out
            gen = model.generate(torch.tensor([theirs]), max_new_tokens=NEW_TOKENS,
                                 attention_mask=torch.ones(1, len(theirs), dtype=torch.long),
                                 do_sample=False, min_new_tokens=NEW_TOKENS, eos_token_id=None,
                                 pad_token_id=0)
        check(st["output_tokens"] == gen[0, len(theirs):].tolist(),
              f"{name}: 16 greedy tokens equal transformers' generate")
        opened = os.path.join(tmp, "text-opening-" + str(chat))
        o = veritrace(binary, "open", os.path.join(run, "trace.safetensors"),
                      "--non-interactive", "--samples", "6", "--out", opened)
        v = veritrace(binary, "verify", "--commitment", os.path.join(run, "commitment.json"),
                      "--opening", os.path.join(opened, "opening-0.vtpm"), "--non-interactive",
                      "--samples", "6", "--model", dir)
        st["input_text"]["text"] = text + " Or not."
        forged = os.path.join(tmp, f"forged-{chat}.json")
        with open(forged, "w") as f:
            json.dump(commitment, f)
        w = veritrace(binary, "verify", "--commitment", forged, "--opening",
                      os.path.join(opened, "opening-0.vtpm"), "--non-interactive",
                      "--samples", "6", "--model", dir)
        check(o.returncode == 0 and v.returncode == 0 and w.returncode == 1
              and "tokenization" in w.stdout + w.stderr,
              f"{name}: verify accepts the run (exit {v.returncode}) and rejects another text "
              f"(exit {w.returncode}: {(w.stdout + w.stderr).strip()[:120]})")


def refused(binary, name, dir, needle):
    for args in (["digest", dir], ["prove", "--model", dir, "--prompt", "1,2,3", "--out",
                                    os.path.join(dir, "run")]):
        r = veritrace(binary, *args)
        check(r.returncode == 2 and needle in r.stderr,
              f"{name}: `veritrace {args[0]}` refused with exit 2 naming {needle!r} "
              f"(exit {r.returncode}: {r.stderr.strip()[:160]})")


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary = sys.argv[1]
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    L = transformers.LlamaConfig, transformers.LlamaForCausalLM
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        digests = {}
        cases = [
            ("llama", dict()),
            ("llama-theta-500000", dict(rope_parameters={"rope_type": "default",
                                                         "rope_theta": 500000.0})),
            ("llama3-rope-scaling", dict(rope_parameters={
                "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16})),
            ("llama-tied", dict(tie_word_embeddings=True)),
        ]
        for name, kw in cases:
            dir = os.path.join(tmp, name)
            model = build(dir, *L, seed=len(digests) + 1, **kw)
            with open(os.path.join(dir, "config.json")) as f:
                print(f"     {name}: config rope {json.load(f).get('rope_parameters')}")
            digests[name] = compare_llama(binary, name, model, dir, tmp)
        # The same weights with another theta are another model.
        same = os.path.join(tmp, "theta-swap")
        build(same, *L, seed=2)
        d1 = veritrace(binary, "digest", same).stdout[:64]
        check(d1 != digests["llama-theta-500000"],
              "the same weights with theta 10000 and 500000 have different digests")

        q = os.path.join(tmp, "qwen2")
        model = build(q, transformers.Qwen2Config, transformers.Qwen2ForCausalLM, seed=7)
        compare_llama(binary, "qwen2 (q/k/v biases)", model, q, tmp)
        qs = os.path.join(tmp, "qwen2-sliding")
        build(qs, transformers.Qwen2Config, transformers.Qwen2ForCausalLM, seed=7,
              use_sliding_window=True, sliding_window=8, max_window_layers=1)
        refused(binary, "qwen2 with sliding window", qs, "sliding")
        m = os.path.join(tmp, "mistral")
        model = build(m, transformers.MistralConfig, transformers.MistralForCausalLM, seed=8,
                      sliding_window=8)
        compare_llama(binary, "mistral (sliding window 8 < 21-token prompt)", model, m, tmp)
        y = os.path.join(tmp, "yarn")
        build(y, *L, seed=9, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0,
                                               "factor": 4.0,
                                               "original_max_position_embeddings": 64})
        refused(binary, "yarn rope", y, "yarn")
        u = os.path.join(tmp, "unknown-field")
        build(u, *L, seed=10)
        with open(os.path.join(u, "config.json")) as f:
            c = json.load(f)
        c["partial_rotary_factor"] = 0.5
        with open(os.path.join(u, "config.json"), "w") as f:
            json.dump(c, f)
        refused(binary, "unknown field", u, "partial_rotary_factor")

        compare_text(binary, tmp)

        minilm = os.environ.get("VERITRACE_MINILM") or os.path.join(
            HERE, "..", "..", "models", "all-MiniLM-L6-v2")
        if os.path.isfile(os.path.join(minilm, "model.safetensors")):
            compare_bert(binary, minilm, tmp)
        else:
            print(f"skip MiniLM: not installed at {minilm} (scripts/install-minilm.sh)")
    print(f"transformers_checkpoints: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
