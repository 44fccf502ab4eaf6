"""veritrace from Python: commit to the hidden states of an inference, answer a challenge with
an opening, verify an opening, calibrate a tolerance, all through the same Rust crates as the
`veritrace` command line (each function runs one verb in-process), plus `capture`, which hooks a
transformers model to record its hidden states the way veritrace defines them (h.0 the
embeddings, h.l the residual stream after layer l, and for a decoder h.L the input of the final
norm, not transformers' post-norm last `output_hidden_states` entry).

A prover and a verifier in a few lines::

    import torch, transformers, veritrace
    model = transformers.AutoModelForCausalLM.from_pretrained(DIR, torch_dtype=torch.float32)
    ids = [1, 306, 4658, 278]
    states, output = veritrace.capture(model, ids, max_new_tokens=8)
    veritrace.save_trace(states, "hidden.safetensors", ids + output)
    commitment = veritrace.commit("hidden.safetensors", model=DIR, prompt=ids,
                                  output_tokens=output, out="run")
    openings = veritrace.open_cells("run/trace.safetensors", out="opened", samples=12)
    verdict = veritrace.verify("run/commitment.json", openings, model=DIR, samples=12,
                               tolerance={"threshold": {"metric": "rel_l2",
                                          "thresholds": {"default": 1e-5, "overrides": {}}}})
    assert verdict.accepted, verdict.reason

Every function raises `VeritraceError` (with the command line's exit code: 2 for refused input,
1 for other failures) when the verb fails; `verify` returns a `Verdict` instead of raising when
the opening is rejected.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from . import _veritrace

__all__ = [
    "VeritraceError",
    "Verdict",
    "run",
    "digest",
    "commit",
    "import_hidden_states",
    "challenge",
    "open_cells",
    "answer",
    "verify",
    "calibrate",
    "capture",
    "save_trace",
    "version",
]

PathLike = Union[str, "os.PathLike[str]"]


class VeritraceError(Exception):
    """A verb failed: `code` is the command line's exit code (2: the input was refused)."""

    def __init__(self, code: int, message: str, args: Sequence[str]):
        super().__init__(f"veritrace {' '.join(args[:1])}: {message} (exit {code})")
        self.code = code
        self.message = message
        self.command = list(args)


@dataclass
class Verdict:
    """The verifier's decision: `accepted`, else the `reason` (a RejectReason, as JSON)."""

    accepted: bool
    reason: Optional[Dict[str, Any]]
    raw: Dict[str, Any]


def version() -> str:
    """The version of the crates the native module was built from."""
    return _veritrace.version()


def run(*args: Any) -> str:
    """Runs one `veritrace` command line (the arguments after the program name) in-process and
    returns its standard output; raises VeritraceError when it fails."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in args]
    code, out, err = _veritrace.run(argv)
    if code != 0:
        raise VeritraceError(code, err.strip(), argv)
    return out


def _ids(tokens: Iterable[int]) -> str:
    return ",".join(str(int(t)) for t in tokens)


def digest(model: PathLike) -> str:
    """The engine-independent model digest of a preset or checkpoint directory
    (specs/model-digest.md): the value a statement's model_digest holds."""
    return run("digest", model).split()[0]


def commit(
    trace: PathLike,
    *,
    model: PathLike,
    out: PathLike,
    prompt: Optional[Sequence[int]] = None,
    text: Optional[str] = None,
    chat: bool = False,
    output_tokens: Sequence[int] = (),
    setup: str = "f32/attn=eager",
    chunk: int = 8,
    hasher: str = "blake3",
    engine: Optional[str] = None,
    trace_level: str = "hidden",
) -> Dict[str, Any]:
    """Commits an external prover's trace (a safetensors file of h.0 .. h.L) under its
    statement: checks it against `model`, writes `out/trace.safetensors` and
    `out/commitment.json`, and returns the commitment (statement and root) as a dict. Give the
    input as `prompt` token ids or as `text` (tokenized with the checkpoint's tokenizer);
    `engine` names the engine the trace came from (bound in the statement; `calibrate` records
    the engines of the traces it calibrates from). `trace_level="sublayer"` also commits the
    trace's sub-layer values (written by `save_trace(..., sublayers=...)`), so that a verifier
    can check its cells with `verify(..., layer_check="freivalds", key=...)`;
    `trace_level="sublayer-by-head"` commits the same values with each key-value head's keys
    and values in leaves of their own, so that a challenge can draw heads and context chunks
    and the opening holds only those (`challenge(..., attention_heads=...)`, specs/protocol.md
    section 4.4)."""
    argv: List[str] = ["commit", os.fspath(trace), "--model", os.fspath(model), "--out",
                       os.fspath(out), "--setup", setup, "--chunk", str(chunk),
                       "--hasher", hasher, "--trace-level", trace_level]
    if prompt is not None:
        argv += ["--prompt", _ids(prompt)]
    if text is not None:
        argv += ["--text", text] + (["--chat"] if chat else [])
    if len(output_tokens):
        argv += ["--output-tokens", _ids(output_tokens)]
    if engine is not None:
        argv += ["--engine", engine]
    run(*argv)
    with open(os.path.join(os.fspath(out), "commitment.json")) as f:
        return json.load(f)


def import_hidden_states(
    file: PathLike,
    *,
    source: str,
    model: PathLike,
    out: PathLike,
    layers: Optional[Sequence[int]] = None,
) -> str:
    """Turns hidden states saved by `source` ("transformers" or "vllm") into a trace file at
    `out` (see `veritrace import --help`); returns the importer's summary line."""
    argv = ["import", "--from", source, os.fspath(file), "--model", os.fspath(model), "--out",
            os.fspath(out)]
    if layers is not None:
        argv += ["--layers", _ids(layers)]
    return run(*argv).strip()


def _draw(attention_heads: Optional[int], context_chunks: Optional[int]) -> List[str]:
    argv: List[str] = []
    if attention_heads is not None:
        argv += ["--attention-heads", str(int(attention_heads))]
    if context_chunks is not None:
        argv += ["--context-chunks", str(int(context_chunks))]
    return argv


def challenge(commitment: PathLike, *, samples: int, out: PathLike,
              strategy: str = "uniform", round: int = 0,
              attention_heads: Optional[int] = None,
              context_chunks: Optional[int] = None) -> Dict[str, Any]:
    """The verifier's interactive challenge of `samples` cells (fresh operating-system
    randomness), written to `out` and returned. For a commitment at
    `trace_level="sublayer-by-head"`, `attention_heads` (and `context_chunks`, default 1) add an
    attention draw: per challenged cell that many query heads and earlier context chunks,
    drawn from a fresh seed sent with the challenge; the opening then holds only those, and
    `verify(..., layer_check="freivalds", key=...)` checks them."""
    run("challenge", commitment, "--samples", samples, "--strategy", strategy, "--round", round,
        "--out", out, "--format", "json", *_draw(attention_heads, context_chunks))
    with open(os.fspath(out)) as f:
        return json.load(f)


def answer(trace: PathLike, *, challenge: PathLike, out: PathLike) -> str:
    """The prover's opening of an interactive challenge, written to `out`; returns its path."""
    run("open", trace, "--challenge", challenge, "--out", out)
    return os.fspath(out)


def open_cells(trace: PathLike, *, out: PathLike, samples: int, strategy: str = "uniform",
               pow_bits: int = 0, rounds: int = 1, attention_heads: Optional[int] = None,
               context_chunks: Optional[int] = None) -> List[str]:
    """The prover's non-interactive openings (challenges derived from the transcript), written
    to `out/opening-<r>.vtpm` in the binary envelope (`veritrace.verify` reads it); returns
    their paths in round order. `attention_heads` and `context_chunks` draw heads and context
    chunks per cell from the transcript (a `trace_level="sublayer-by-head"` commitment; the
    verifier passes the same values)."""
    run("open", trace, "--non-interactive", "--samples", samples, "--strategy", strategy,
        "--pow-bits", pow_bits, "--rounds", rounds, "--out", out,
        *_draw(attention_heads, context_chunks))
    return [os.path.join(os.fspath(out), f"opening-{r}.vtpm") for r in range(rounds)]


def verify(
    commitment: PathLike,
    openings: Union[PathLike, Sequence[PathLike]],
    *,
    model: PathLike,
    samples: Optional[int] = None,
    challenges: Sequence[PathLike] = (),
    strategy: str = "uniform",
    pow_bits: int = 0,
    tolerance: Union[str, Dict[str, Any]] = "exact",
    layer_check: str = "recompute",
    key: Optional[PathLike] = None,
    sublayer_tolerance: float = 0.0,
    freivalds_bound_scale: float = 1.0,
    freivalds_bounds: Optional[PathLike] = None,
    attention_heads: Optional[int] = None,
    context_rows: Optional[int] = None,
    context_chunks: Optional[int] = None,
) -> Verdict:
    """Checks openings against a commitment by recomputing the opened cells with `model`.
    Non-interactive when `samples` is given (challenges derived from the transcript), else
    interactive with the `challenges` issued. `tolerance` is "exact", a policy file path, or a
    policy dict such as {"threshold": {"metric": "rel_l2", "thresholds": {"default": 1e-5,
    "overrides": {}}}}. `layer_check` is "recompute", "freivalds" or "both": the last two check
    a sub-layer commitment (`prove --trace-level sublayer`) with the verifier's secret `key`
    (`veritrace keygen`), recomputing only the nonlinear parts within `sublayer_tolerance`
    (specs/protocol.md section 11.4), with the Freivalds bound scaled by
    `freivalds_bound_scale` (1: the rigorous bound; `keygen --calibrate-bound N` measures a
    calibrated one), or per map by the file `freivalds_bounds` (`keygen --calibrate-bound N
    --bound-file F`). `attention_heads` and `context_rows` sample each challenged cell's
    attention check (specs/freivalds.md section 7): only that many query heads are recomputed
    and that many earlier rows' key/value provenance checked per cell, drawn from the key and
    the statement (default: all). For a `trace_level="sublayer-by-head"` commitment the draw is
    the challenges' instead: interactive, from the recorded `challenges`; non-interactive,
    `attention_heads` and `context_chunks` as given to `open_cells`. Returns the Verdict;
    raises VeritraceError for refused input."""
    if isinstance(openings, (str, os.PathLike)):
        openings = [openings]
    argv: List[str] = ["verify", "--commitment", os.fspath(commitment), "--model",
                       os.fspath(model), "--json"]
    for o in openings:
        argv += ["--opening", os.fspath(o)]
    for c in challenges:
        argv += ["--challenge", os.fspath(c)]
    if samples is not None:
        argv += ["--non-interactive", "--samples", str(samples), "--strategy", strategy,
                 "--pow-bits", str(pow_bits)]
    argv += ["--layer-check", layer_check]
    if key is not None:
        argv += ["--key", os.fspath(key), "--sublayer-tolerance", repr(float(sublayer_tolerance))]
        if freivalds_bounds is not None:
            argv += ["--freivalds-bounds", os.fspath(freivalds_bounds)]
        else:
            argv += ["--freivalds-bound-scale", repr(float(freivalds_bound_scale))]
    elif freivalds_bounds is not None:
        argv += ["--freivalds-bounds", os.fspath(freivalds_bounds)]
    if attention_heads is not None:
        argv += ["--attention-heads", str(int(attention_heads))]
    if context_rows is not None:
        argv += ["--context-rows", str(int(context_rows))]
    if context_chunks is not None:
        argv += ["--context-chunks", str(int(context_chunks))]
    policy_file = None
    try:
        if isinstance(tolerance, dict):
            fd, policy_file = tempfile.mkstemp(suffix=".json", prefix="veritrace-policy-")
            with os.fdopen(fd, "w") as f:
                json.dump(tolerance, f)
            argv += ["--tolerance", policy_file]
        else:
            argv += ["--tolerance", os.fspath(tolerance)]
        code, out, err = _veritrace.run(argv)
    finally:
        if policy_file is not None:
            os.unlink(policy_file)
    if code not in (0, 1) or not out.strip():
        raise VeritraceError(code, err.strip(), argv)
    verdict = json.loads(out)  # "accept", or {"reject": {reason: fields}}
    if verdict == "accept":
        return Verdict(True, None, {"verdict": verdict})
    if isinstance(verdict, dict) and "reject" in verdict:
        return Verdict(False, verdict["reject"], verdict)
    raise VeritraceError(code, f"unexpected verdict {out.strip()}", argv)


def keygen(
    model: PathLike,
    *,
    out: PathLike,
    secret_file: Optional[PathLike] = None,
    new_secret: Optional[PathLike] = None,
    repetitions: int = 2,
    bound_traces: Sequence[PathLike] = (),
    bound_file: Optional[PathLike] = None,
    bound_method: str = "max",
    target_fpr: float = 0.001,
    confidence: float = 0.95,
    holdout: int = 0,
    calibration_setup: Optional[str] = None,
) -> str:
    """`veritrace keygen`: the verifier's secret Freivalds key of `model` at `out`, from the
    32-byte `secret_file` (or a fresh secret written to `new_secret`; keep both private). With
    `bound_traces` (sub-layer trace files of honest runs, e.g. transformers provers committed
    with `commit(..., trace_level="sublayer")`) and `bound_file`, it also calibrates per-map
    Freivalds scales and the nonlinear parts' tolerances on them (specs/freivalds.md section
    4): `bound_method` "max" (twice each check's largest value) or "order-statistic" /
    "exponential-tail" (a claimed session false-alarm rate `target_fpr` at `confidence`,
    tested on the last `holdout` traces, which are held out). `calibration_setup` is the setup
    the runs claim (default f32 eager). Pass the file to `verify(freivalds_bounds=...)`.
    Returns keygen's report; raises VeritraceError (code 2) for refused input, e.g. too few
    traces for the target (the message says how many are needed)."""
    argv: List[str] = ["keygen", "--model", os.fspath(model), "--out", os.fspath(out),
                       "--repetitions", str(int(repetitions))]
    if secret_file is not None:
        argv += ["--secret-file", os.fspath(secret_file)]
    if new_secret is not None:
        argv += ["--new-secret", os.fspath(new_secret)]
    traces = [os.fspath(t) for t in bound_traces]
    if traces:
        if bound_file is None:
            raise ValueError("bound_traces calibrate a bound file: give bound_file")
        runs = len(traces) - int(holdout)
        argv += ["--calibrate-bound", str(runs), "--bound-holdout", str(int(holdout))]
        for t in traces:
            argv += ["--bound-trace", t]
    if bound_file is not None:
        if not traces:
            raise ValueError("bound_file is calibrated on bound_traces: give them")
        argv += ["--bound-file", os.fspath(bound_file), "--bound-method", bound_method,
                 "--bound-target-fpr", repr(float(target_fpr)),
                 "--bound-confidence", repr(float(confidence))]
    if calibration_setup is not None:
        argv += ["--calibration-setup", calibration_setup]
    return run(*argv)


def calibrate(*args: Any) -> str:
    """`veritrace calibrate` with the given command-line arguments (see its --help): thresholds
    from independent honest runs or honest trace files; returns its report."""
    return run("calibrate", *args)


# The sub-layer values of one decoder layer, in the order of the committed rows
# (specs/protocol.md section 3.5): the context row, then the cell row.
SUBLAYER_CONTEXT = ("normed", "k", "v")
SUBLAYER_CELL = ("q", "attn", "o", "mlp_in", "gate", "up", "act", "down")


def _sublayer_hooks(model: Any, into: List[Dict[str, Any]]):
    """Forward hooks on every decoder layer of a Llama-style transformers model that record the
    inputs and outputs of its linear maps into `into[l - 1]` (one dict per layer)."""
    layers = model.model.layers
    hooks = []
    for i, layer in enumerate(layers):
        into.append({})
        rec = into[i]

        def out_of(name, rec=rec):
            return lambda mod, inp, out: rec.__setitem__(name, out[0].detach())

        def in_of(name, rec=rec):
            return lambda mod, inp, out: rec.__setitem__(name, inp[0][0].detach())

        attn, mlp = layer.self_attn, layer.mlp
        hooks += [
            layer.input_layernorm.register_forward_hook(out_of("normed")),
            attn.q_proj.register_forward_hook(out_of("q")),
            attn.k_proj.register_forward_hook(out_of("k")),
            attn.v_proj.register_forward_hook(out_of("v")),
            attn.o_proj.register_forward_hook(in_of("attn")),
            attn.o_proj.register_forward_hook(out_of("o")),
            layer.post_attention_layernorm.register_forward_hook(out_of("mlp_in")),
            mlp.gate_proj.register_forward_hook(out_of("gate")),
            mlp.up_proj.register_forward_hook(out_of("up")),
            mlp.down_proj.register_forward_hook(in_of("act")),
            mlp.down_proj.register_forward_hook(out_of("down")),
        ]
    return hooks


def capture(model: Any, input_ids: Sequence[int], max_new_tokens: int = 0,
            sublayers: bool = False):
    """Runs a transformers model (LlamaForCausalLM-style decoders, BertModel encoders) on
    `input_ids` and returns `(states, output)`: `states` the hidden states h.0 .. h.L of one
    forward pass over the prompt and the greedily generated tokens (`output`, empty when
    `max_new_tokens` is 0), as veritrace defines them: for a decoder h.L is the input of the
    final norm (captured with a forward hook), not transformers' post-norm last entry.

    With `sublayers=True` (Llama-style decoders) it returns `(states, output, subs)`: `subs[l - 1]`
    holds layer l's sub-layer values of that forward pass, as the model computed them (forward
    hooks on its modules: the attention norm's output, the q, k, v projections, the attention
    output and o projection, the MLP norm's output, gate, up, the activation product and down),
    each [tokens, width]; `save_trace(..., sublayers=subs)` writes them for
    `commit(..., trace_level="sublayer")`."""
    import torch

    ids = [int(t) for t in input_ids]
    output: List[int] = []
    if max_new_tokens > 0:
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                 min_new_tokens=max_new_tokens, do_sample=False,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 eos_token_id=None, pad_token_id=0)
        output = gen[0, len(ids):].tolist()
    tokens = ids + output
    captured: Dict[str, Any] = {}
    norm = getattr(getattr(model, "model", None), "norm", None)
    hooks = []
    if norm is not None:
        hooks.append(norm.register_forward_hook(
            lambda mod, inp, out: captured.__setitem__("pre_norm", inp[0].detach())))
    subs: List[Dict[str, Any]] = []
    if sublayers:
        if norm is None or not hasattr(model.model, "layers"):
            raise ValueError("sub-layer values are captured from Llama-style decoders only")
        hooks += _sublayer_hooks(model, subs)
    try:
        with torch.no_grad():
            out = model(torch.tensor([tokens]), output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    states = [h[0].detach() for h in out.hidden_states]
    if "pre_norm" in captured:
        states[-1] = captured["pre_norm"][0]
    if sublayers:
        return states, output, subs
    return states, output


def save_trace(states: Sequence[Any], path: PathLike, token_ids: Optional[Sequence[int]] = None,
               sublayers: Optional[Sequence[Dict[str, Any]]] = None):
    """Writes hidden states (torch tensors or numpy arrays of [tokens, hidden]) as a trace file
    (h.0 .. h.L, in their own dtype; float32 for numpy) that `commit` reads; `token_ids`, when
    given, travel as `token_ids` and `commit` checks them against the statement. `sublayers`
    (from `capture(..., sublayers=True)`, torch tensors) adds each layer's sub-layer rows as
    float32 `context.<l>` (normed | k | v) and `cell.<l>` (q | attn | o | mlp_in | gate | up |
    act | down), the layout `commit(..., trace_level="sublayer")` commits (in the claimed
    setup's type: a bf16 model's values as bf16, each exact)."""
    try:
        import torch
        from safetensors.torch import save_file

        # clone: hidden states may share storage (a layer that returns its input), which
        # safetensors refuses
        tensors = {f"h.{l}": (s if isinstance(s, torch.Tensor) else torch.as_tensor(s))
                   .detach().contiguous().clone() for l, s in enumerate(states)}
        if token_ids is not None:
            tensors["token_ids"] = torch.tensor([int(t) for t in token_ids], dtype=torch.int64)
        for l, rec in enumerate(sublayers or (), start=1):
            missing = [n for n in SUBLAYER_CONTEXT + SUBLAYER_CELL if n not in rec]
            if missing:
                raise ValueError(f"layer {l}: sub-layer values {missing} were not captured")
            for name, parts in (("context", SUBLAYER_CONTEXT), ("cell", SUBLAYER_CELL)):
                tensors[f"{name}.{l}"] = torch.cat(
                    [rec[n].detach().to(torch.float32) for n in parts], dim=-1).contiguous()
        save_file(tensors, os.fspath(path))
    except ImportError:
        import numpy as np
        from safetensors.numpy import save_file

        if sublayers:
            raise ValueError("sub-layer values come from capture(), which needs torch")

        arrays = {f"h.{l}": np.ascontiguousarray(np.asarray(s, dtype=np.float32))
                  for l, s in enumerate(states)}
        if token_ids is not None:
            arrays["token_ids"] = np.asarray([int(t) for t in token_ids], dtype=np.int64)
        save_file(arrays, os.fspath(path))
