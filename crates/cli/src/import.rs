//! `veritrace import`: hidden states as another engine saved them, turned into a trace file
//! (`h.0 … h.L`, F32 `[tokens, hidden]`) that `veritrace commit --model` commits.
//!
//! **transformers** (`--from transformers`): the `output_hidden_states` of one sequence, saved
//! as safetensors or as a PyTorch `torch.save` dictionary of tensors, under the names
//! `hidden_states.{i}` (or `hidden_states_{i}`, `h.{i}`, `{i}`), or as one stacked tensor
//! `hidden_states` of shape `[L + 1, (1,) tokens, hidden]`; a leading batch dimension of 1 is
//! dropped. For a decoder transformers' last entry is taken *after* the final norm, while
//! veritrace's `h.L` is its input: the importer uses the tensor `pre_norm` (the input of
//! `model.model.norm`, captured with a forward hook) in its place, and refuses a last entry that
//! is the output of the final RMSNorm (every row, divided by the norm's gain, has unit RMS)
//! with a message saying how to capture the right one. Token ids saved as `input_ids` or
//! `token_ids` travel in the trace file as `token_ids`, and `commit --model` checks them against
//! the statement's tokens.
//!
//! **vLLM** (`--from vllm --layers 0,1,…,L`): the per-request file of its `extract_hidden_states`
//! speculative method with the hidden-states KV connector (`ExampleHiddenStatesConnector`,
//! vllm/distributed/kv_transfer/kv_connector/v1/example_hidden_states_connector.py, read at
//! commit 015a95c8bdd8f038e629e03d0dde955f7cec036b): `save_file({"hidden_states": …,
//! "token_ids": …})`, `hidden_states` `[tokens, layers, hidden]` in the model's dtype (older
//! versions stacked `[layers, tokens, hidden]`), `token_ids` int64 (the prompt, or with
//! `include_output_tokens` the prompt and every generated token but the last), optionally
//! zstd-compressed as `.safetensors.zst` (the online connector). Layer id 0 is the embeddings
//! and id k the residual stream after layer k; id `num_hidden_layers` is before the final norm,
//! as veritrace's `h.L`. The file does not record the ids, so `--layers` gives them; a file
//! without every id 0..=L is refused with the missing ones.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::engine::load_model;
use crate::prove::VerbInputError;

/// Largest input file read (64 GiB): a bound on what a hostile file can make the importer map.
const MAX_INPUT_BYTES: u64 = 64 << 30;

/// Which engine wrote the hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// Hugging Face transformers: `output_hidden_states` (safetensors or a `torch.save` dict).
    Transformers,
    /// vLLM's `extract_hidden_states` speculative method with the hidden-states KV connector:
    /// one safetensors file per request (`.safetensors`, or zstd-compressed `.safetensors.zst`)
    /// holding `hidden_states` `[tokens, layers, hidden]` (older connectors: `[layers,
    /// tokens, hidden]`) and `token_ids` `[tokens]`; the layer ids are not in the file and are
    /// given with `--layers` (the connector's `eagle_aux_hidden_state_layer_ids`).
    Vllm,
}

/// Largest decompressed size of a `.zst` input (16 GiB).
const MAX_DECOMPRESSED_BYTES: u64 = 16 << 30;

/// Arguments of `veritrace import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The engine that wrote the file.
    #[arg(long = "from", value_enum)]
    pub from: Source,
    /// The hidden-states file (`.safetensors`, or `.pt`/`.pth` for a `torch.save` dictionary).
    pub file: PathBuf,
    /// The model the hidden states belong to (its layer count and width are checked; for a
    /// decoder, its final norm tells a post-norm last entry apart).
    #[arg(long)]
    pub model: String,
    /// The trace file to write (refused if it exists: nothing is overwritten).
    #[arg(long)]
    pub out: PathBuf,
    /// `--from vllm`: the layer ids of the file's hidden states, in the file's order
    /// (`eagle_aux_hidden_state_layer_ids`: 0 the embeddings, k the residual stream after layer
    /// k, `num_hidden_layers` the last layer before the final norm). Every id 0..=L is needed.
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<usize>,
}

/// Hidden states by layer index: `(tokens, hidden, row-major f32 values)`.
type Layers = BTreeMap<usize, (usize, usize, Vec<f32>)>;

/// One named tensor of the input, widened to f32.
struct Named {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn refuse(m: String) -> anyhow::Error {
    VerbInputError::Argument(m).into()
}

/// Every tensor of a safetensors file, widened to f32 (F32, F16, BF16, or integer ids).
fn read_safetensors(path: &Path) -> anyhow::Result<BTreeMap<String, Named>> {
    let zst = path.extension().is_some_and(|e| e == "zst");
    // Read, not mapped (a hidden-states file of one sequence is small next to the model): a
    // regular file only, its size checked before reading.
    let bytes =
        veritrace_model::files::read_limited(path, MAX_INPUT_BYTES, "a hidden-states file", "")
            .map_err(|e| VerbInputError::File {
                path: path.display().to_string(),
                reason: e.reason(),
            })?;
    let bytes = if zst {
        decompress(path, &bytes)?
    } else {
        bytes
    };
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| refuse(format!("{}: not a safetensors file: {e}", path.display())))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            StDtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StDtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StDtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            StDtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            StDtype::I32 => data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f32)
                .collect(),
            other => {
                return Err(refuse(format!(
                    "{}: tensor {name} has dtype {other:?} (F32, F16, BF16 or integer ids)",
                    path.display()
                )))
            }
        };
        out.insert(
            name,
            Named {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok(out)
}

/// A zstd stream, decompressed (at most [`MAX_DECOMPRESSED_BYTES`]).
fn decompress(path: &Path, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let bad = |e: String| {
        refuse(format!(
            "{}: does not decompress as zstd: {e}",
            path.display()
        ))
    };
    let mut reader = bytes;
    let decoder =
        ruzstd::decoding::StreamingDecoder::new(&mut reader).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_DECOMPRESSED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(e.to_string()))?;
    if out.len() as u64 > MAX_DECOMPRESSED_BYTES {
        return Err(refuse(format!(
            "{}: decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes",
            path.display()
        )));
    }
    Ok(out)
}

/// vLLM's file as layers by id: `hidden_states` split along its layer axis (found by matching
/// `token_ids`' length; `[tokens, layers, hidden]` when both readings fit, as the current
/// connector writes), labelled with `ids`.
fn vllm_layers(tensors: &mut BTreeMap<String, Named>, ids: &[usize]) -> anyhow::Result<Layers> {
    let hs = tensors.remove("hidden_states").ok_or_else(|| {
        refuse(
            "no hidden_states tensor (vLLM's connector writes hidden_states and token_ids)".into(),
        )
    })?;
    let n_ids = tensors
        .get("token_ids")
        .map(|t| t.values.len())
        .ok_or_else(|| {
            refuse(
                "no token_ids tensor (vLLM's connector writes hidden_states and token_ids)".into(),
            )
        })?;
    let [a, b, d] = hs.shape[..] else {
        return Err(refuse(format!(
            "hidden_states has shape {:?}, not [tokens, layers, hidden]",
            hs.shape
        )));
    };
    if ids.is_empty() {
        return Err(refuse(
            "--from vllm needs --layers: the file does not record which layers it holds (the \
             connector's eagle_aux_hidden_state_layer_ids, e.g. --layers 0,1,...,L)"
                .into(),
        ));
    }
    // with as many tokens as layers both readings fit: the current connector's order wins
    let token_major = a == n_ids && b == ids.len();
    let layer_major = !token_major && a == ids.len() && b == n_ids;
    if !token_major && !layer_major {
        return Err(refuse(format!(
            "hidden_states is [{a}, {b}, {d}]: neither [tokens, layers, hidden] nor [layers, \
             tokens, hidden] for {n_ids} token ids and {} layer ids",
            ids.len()
        )));
    }
    let mut layers = BTreeMap::new();
    for (j, &id) in ids.iter().enumerate() {
        let mut values = Vec::with_capacity(n_ids * d);
        for t in 0..n_ids {
            let row = if token_major { t * b + j } else { j * b + t };
            values.extend_from_slice(&hs.values[row * d..(row + 1) * d]);
        }
        if layers.insert(id, (n_ids, d, values)).is_some() {
            return Err(refuse(format!("layer id {id} is given twice in --layers")));
        }
    }
    Ok(layers)
}

/// Every tensor of a `torch.save` dictionary (through candle's pickle reader: no code runs),
/// widened to f32.
fn read_torch(path: &Path) -> anyhow::Result<BTreeMap<String, Named>> {
    let tensors = candle_core::pickle::read_all_with_key(path, None).map_err(|e| {
        refuse(format!(
            "{}: not a torch.save dictionary of tensors ({e}); save a dict such as \
             {{f\"hidden_states.{{i}}\": h for i, h in enumerate(out.hidden_states)}}, or \
             safetensors",
            path.display()
        ))
    })?;
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let shape = t.dims().to_vec();
        let values = t
            .to_dtype(candle_core::DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| refuse(format!("{}: tensor {name}: {e}", path.display())))?;
        out.insert(name, Named { shape, values });
    }
    Ok(out)
}

/// The layer index a tensor name gives (`hidden_states.3`, `hidden_states_3`, `h.3`, `3`).
fn layer_of(name: &str) -> Option<usize> {
    let rest = ["hidden_states.", "hidden_states_", "h."]
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 6 {
        return None;
    }
    rest.parse().ok()
}

/// `[tokens, hidden]` of a `[tokens, hidden]` or `[1, tokens, hidden]` tensor.
fn rows_cols(name: &str, shape: &[usize]) -> anyhow::Result<(usize, usize)> {
    match shape {
        [t, d] | [1, t, d] if *t > 0 && *d > 0 => Ok((*t, *d)),
        [b, _, _] => Err(refuse(format!(
            "{name} has a batch of {b} sequences; save the hidden states of one sequence"
        ))),
        other => Err(refuse(format!(
            "{name} has shape {other:?}, not [tokens, hidden] or [1, tokens, hidden]"
        ))),
    }
}

/// Whether every row of `values` (`[tokens, hidden]`), divided elementwise by `gain`, has a
/// root mean square within 1e-3 of 1: the output of an RMSNorm with that gain.
fn is_post_norm(values: &[f32], hidden: usize, gain: &[f32]) -> bool {
    if gain.len() != hidden || gain.contains(&0.0) {
        return false;
    }
    values.chunks_exact(hidden).all(|row| {
        let ms = row
            .iter()
            .zip(gain)
            .map(|(x, g)| {
                let y = f64::from(*x) / f64::from(*g);
                y * y
            })
            .sum::<f64>()
            / hidden as f64;
        (ms.sqrt() - 1.0).abs() < 1e-3
    })
}

/// Runs `veritrace import`.
///
/// # Errors
/// A file that cannot be read or parsed, missing layers, wrong shapes, non-finite values, a
/// post-norm last layer, a batch of several sequences, or an existing output: exit 2.
pub fn run(args: &ImportArgs, out: &mut impl Write) -> anyhow::Result<()> {
    if args.out.exists() {
        return Err(refuse(format!(
            "{} exists; import writes a new trace file and overwrites nothing",
            args.out.display()
        )));
    }
    let model = load_model(&args.model)?;
    let is_torch = args
        .file
        .extension()
        .is_some_and(|e| e == "pt" || e == "pth" || e == "bin");
    let mut tensors = if is_torch {
        read_torch(&args.file)?
    } else {
        read_safetensors(&args.file)?
    };
    let want = model.num_layers() + 1;
    // the layers, by index (a stacked `hidden_states` is split along its first dimension)
    let mut layers: Layers = BTreeMap::new();
    if args.from == Source::Vllm {
        layers = vllm_layers(&mut tensors, &args.layers)?;
    } else if !args.layers.is_empty() {
        return Err(refuse("--layers is for --from vllm".into()));
    }
    if let Some(stacked) = tensors.remove("hidden_states") {
        let (n, rest) = match stacked.shape.split_first() {
            Some((n, rest)) => (*n, rest.to_vec()),
            None => return Err(refuse("hidden_states is a scalar".into())),
        };
        let (t, d) = rows_cols("hidden_states[i]", &rest)?;
        for (i, chunk) in stacked.values.chunks_exact(t * d).take(n).enumerate() {
            layers.insert(i, (t, d, chunk.to_vec()));
        }
    }
    let mut pre_norm = None;
    let mut token_ids = None;
    for (name, t) in tensors {
        match name.as_str() {
            "pre_norm" => pre_norm = Some(t),
            "input_ids" | "token_ids" => token_ids = Some(t),
            _ => {
                let Some(i) = layer_of(&name) else {
                    continue;
                };
                let (rows, cols) = rows_cols(&name, &t.shape)?;
                if layers.insert(i, (rows, cols, t.values)).is_some() {
                    return Err(refuse(format!("hidden state {i} is given twice")));
                }
            }
        }
    }
    if layers.is_empty() {
        return Err(refuse(format!(
            "{}: no hidden states (tensors named hidden_states.{{i}}, h.{{i}} or {{i}}, or a \
             stacked hidden_states)",
            args.file.display()
        )));
    }
    let missing: Vec<usize> = (0..want).filter(|i| !layers.contains_key(i)).collect();
    if !missing.is_empty() {
        return Err(refuse(format!(
            "the file lacks hidden states {missing:?} of the {want} (h.0 .. h.{}) model {:?} has",
            want - 1,
            args.model
        )));
    }
    if let Some(extra) = layers.keys().find(|&&i| i >= want) {
        return Err(refuse(format!(
            "hidden state {extra} is beyond the model's {want} (h.0 .. h.{})",
            want - 1
        )));
    }
    let (tokens, hidden) = (layers[&0].0, layers[&0].1);
    if hidden != model.hidden_size() {
        return Err(refuse(format!(
            "hidden size {hidden} in the file, {} for model {:?}",
            model.hidden_size(),
            args.model
        )));
    }
    let mut out_layers: Vec<Vec<f32>> = Vec::with_capacity(want);
    for (i, (t, d, values)) in layers {
        if (t, d) != (tokens, hidden) {
            return Err(refuse(format!(
                "hidden state {i} is [{t}, {d}], hidden state 0 is [{tokens}, {hidden}]"
            )));
        }
        out_layers.push(values);
    }
    // h.L of a decoder: before the final norm
    let last = want - 1;
    let mut replaced = false;
    if let Some(gain) = model.final_norm_gain() {
        match pre_norm {
            Some(p) => {
                let (t, d) = rows_cols("pre_norm", &p.shape)?;
                if (t, d) != (tokens, hidden) {
                    return Err(refuse(format!(
                        "pre_norm is [{t}, {d}], the hidden states are [{tokens}, {hidden}]"
                    )));
                }
                out_layers[last] = p.values;
                replaced = true;
            }
            None if is_post_norm(&out_layers[last], hidden, &gain) => {
                return Err(refuse(format!(
                    "hidden state {last} is the output of the final norm (transformers' last \
                     output_hidden_states entry for a decoder); veritrace's h.{last} is its \
                     input. Capture it with a forward hook and save it as `pre_norm`: \
                     model.model.norm.register_forward_hook(lambda m, i, o: \
                     saved.__setitem__(\"pre_norm\", i[0][0]))"
                )));
            }
            None => {}
        }
    }
    for (l, values) in out_layers.iter().enumerate() {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(refuse(format!(
                "hidden state {l} holds a non-finite value at element {i}"
            )));
        }
    }
    let ids: Option<Vec<i64>> = match token_ids {
        None => None,
        Some(t) => {
            if t.values.len() != tokens {
                return Err(refuse(format!(
                    "{} token ids for {tokens} hidden-state rows",
                    t.values.len()
                )));
            }
            Some(t.values.iter().map(|v| *v as i64).collect())
        }
    };
    // write: h.0 .. h.L (F32) and token_ids (I64), atomically
    let bytes: Vec<Vec<u8>> = out_layers
        .iter()
        .map(|l| l.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let id_bytes: Option<Vec<u8>> = ids
        .as_ref()
        .map(|v| v.iter().flat_map(|x| x.to_le_bytes()).collect());
    let names: Vec<String> = (0..bytes.len()).map(|l| format!("h.{l}")).collect();
    let mut views: Vec<(&str, TensorView)> = Vec::new();
    for (name, b) in names.iter().zip(&bytes) {
        views.push((
            name,
            TensorView::new(StDtype::F32, vec![tokens, hidden], b)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
    }
    if let Some(b) = &id_bytes {
        views.push((
            "token_ids",
            TensorView::new(StDtype::I64, vec![tokens], b).map_err(|e| anyhow::anyhow!("{e}"))?,
        ));
    }
    let data = safetensors::serialize(views, None)
        .map_err(|e| anyhow::anyhow!("serializing the trace: {e}"))?;
    veritrace_model::files::write_new(&args.out, &data)?;
    writeln!(
        out,
        "trace {} ({want} hidden states x {tokens} tokens x {hidden}{}{})",
        args.out.display(),
        if replaced {
            format!(", h.{last} from pre_norm")
        } else {
            String::new()
        },
        if ids.is_some() { ", token ids" } else { "" }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        assert_eq!(layer_of("hidden_states.3"), Some(3));
        assert_eq!(layer_of("hidden_states_12"), Some(12));
        assert_eq!(layer_of("h.0"), Some(0));
        assert_eq!(layer_of("7"), Some(7));
        for bad in ["hidden_states.", "h.+1", "x", "pre_norm", "1.5", "99999999"] {
            assert_eq!(layer_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_norm_output_is_recognized() {
        let gain = [2.0f32, 0.5, 1.0, 4.0];
        let h = [3.0f32, -1.0, 0.25, 7.0, 0.1, 0.2, -0.3, 0.4];
        let normed: Vec<f32> = h
            .chunks(4)
            .flat_map(|r| {
                let rms = (r.iter().map(|x| x * x).sum::<f32>() / 4.0 + 1e-6).sqrt();
                r.iter().zip(&gain).map(move |(x, g)| x / rms * g)
            })
            .collect();
        assert!(is_post_norm(&normed, 4, &gain));
        assert!(!is_post_norm(&h, 4, &gain));
    }
}
