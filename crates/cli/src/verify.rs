//! `veritrace verify`: the verifier's decision over files. Checks each opening against the
//! commitment with the verification algorithm of `specs/protocol.md`
//! ([`veritrace_protocol::check_opening`]: exact opened cells, lengths, batch Merkle proof,
//! finite values, recompute under the claimed setup, tolerance, output tokens), for the
//! challenges the verifier issued (interactive) or derives from the transcript
//! (non-interactive, with the proof of work). Exit 0 accept, 1 reject (with the reason), 2 when
//! a file or argument is refused.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use thiserror::Error;
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_protocol::calibration::CalibratedPolicy;
use veritrace_protocol::soundness::MAX_ROUNDS;
use veritrace_protocol::stream::OpeningReader;
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{
    verify_recorded_streams, verify_recorded_with_limits, Challenge, ChallengeParams, Commitment,
    LayerCheck, Message, Mode, Opening, Recompute, RejectReason, SamplingStrategy, Statement,
    Verdict, VerifierConfig, VerifierLimits,
};

use crate::engine::load_model;
use crate::prove::{parse_strategy, read_message_limited, VerbInputError};

/// A rejection: the verdict was computed and is "reject" (exit 1).
#[derive(Debug, Error)]
#[error("reject: {0}")]
pub struct Rejected(pub RejectReason);

/// Arguments of `veritrace verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The prover's commitment (JSON).
    #[arg(long)]
    pub commitment: PathBuf,
    /// Openings, one per round, in round order. A binary opening is checked as it is read
    /// (each cell when it arrives; only the cells later checks need are kept); `-` reads one
    /// from standard input (e.g. `veritrace open ... --out - | veritrace verify ... --opening
    /// -`). A JSON opening is decoded whole.
    #[arg(long = "opening", required = true)]
    pub openings: Vec<PathBuf>,
    /// Interactive: the challenges issued, one per opening, in the same order.
    #[arg(long = "challenge")]
    pub challenges: Vec<PathBuf>,
    /// Non-interactive: derive the challenges from the transcript.
    #[arg(long)]
    pub non_interactive: bool,
    /// Non-interactive: cells per round.
    #[arg(long)]
    pub samples: Option<u32>,
    /// Non-interactive: sampling strategy.
    #[arg(long, default_value = "uniform")]
    pub strategy: String,
    /// Non-interactive: proof-of-work bits required.
    #[arg(long, default_value_t = 0)]
    pub pow_bits: u8,
    /// The verifier's model: a decoder (a preset tiny or small, or a Llama-style checkpoint
    /// directory) or an encoder (minilm, or a BERT checkpoint directory).
    #[arg(long, default_value = "tiny")]
    pub model: String,
    /// Tolerance: `exact` (bitwise), a calibrated policy file (written by `veritrace
    /// calibrate` or `simulate --out`, schema in `veritrace calibrate --help`), or a JSON
    /// tolerance policy (`{"threshold": {"metric": "rel_l2", "thresholds": {"default": T,
    /// "overrides": {"L": T_L}}}}`).
    #[arg(long, default_value = "exact")]
    pub tolerance: String,
    /// Print the verdict as JSON.
    #[arg(long)]
    pub json: bool,
    /// The verifier's limits on what a prover may claim and send
    /// ([`veritrace_protocol::VerifierLimits`], `specs/protocol.md` §11.3): a JSON object with
    /// any of `max_layers` (default 4096), `max_tokens` (2^20), `max_cells` (2^32),
    /// `max_samples` (2^20), `max_opening_cells` (2^24), `max_opening_bytes` (4 GiB) and
    /// `max_message_bytes` (8 GiB), inline or as a file. A commitment over a limit is rejected
    /// before anything proportional to its claim is done.
    #[arg(long, value_name = "JSON|FILE")]
    pub limits: Option<String>,
    /// How challenged cells of layers >= 1 are checked (specs/protocol.md §11.4): `recompute`
    /// (recompute from the opened rows of the layer below), `freivalds` (check the opened
    /// sub-layer values with Freivalds against --key and recompute only the nonlinear parts;
    /// the commitment must be at `prove --trace-level sublayer`) or `both`.
    #[arg(long, default_value = "recompute", value_parser = ["recompute", "freivalds", "both"])]
    pub layer_check: String,
    /// The verifier's secret key (`veritrace keygen`) for --layer-check freivalds or both; it
    /// must be the key of --model.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// With --layer-check freivalds or both: relative L-infinity tolerance of the nonlinear
    /// parts recomputed from the opened sub-layer values (attention, norms, activation); 0
    /// demands bitwise agreement, right for a prover on this engine.
    #[arg(long, default_value_t = 0.0)]
    pub sublayer_tolerance: f64,
    /// With --layer-check freivalds or both: the Freivalds bound as a multiple of the rigorous
    /// rounding bound, in (0, 1] (1, the default, is the rigorous bound; `veritrace keygen
    /// --calibrate-bound N` measures a calibrated one on N honest runs).
    #[arg(long, default_value_t = 1.0)]
    pub freivalds_bound_scale: f64,
    /// With --layer-check freivalds or both: per-map calibrated bound scales (the JSON file
    /// `veritrace keygen --calibrate-bound N --bound-file F` writes, for the key's model),
    /// instead of one --freivalds-bound-scale. A file calibrated on trace files (`keygen
    /// --bound-trace`) also holds per-layer, per-part tolerances of the nonlinear parts, which
    /// then replace --sublayer-tolerance.
    #[arg(long, conflicts_with = "freivalds_bound_scale")]
    pub freivalds_bounds: Option<PathBuf>,
    /// With --layer-check freivalds or both: check the attention of only N query heads per
    /// challenged cell, drawn per cell from the key's secret and the statement (the sampled
    /// attention check, specs/freivalds.md §7; default: every head). A prover whose attention
    /// is wrong in b of H heads escapes one cell with probability C(H-b, N)/C(H, N). For a
    /// statement committed by head (`--trace-level sublayer-by-head`), non-interactive: the
    /// attention draw of every challenge, with --context-chunks (as `open --attention-heads`;
    /// interactive sessions take the draw from the recorded challenges).
    #[arg(long, value_name = "N")]
    pub attention_heads: Option<u32>,
    /// With --layer-check freivalds or both: check the provenance (attention norm, key and
    /// value projections) of only N rows before each challenged cell, drawn per cell as
    /// --attention-heads (default: every row; the cell's own rows are always checked).
    #[arg(long, value_name = "N", conflicts_with = "context_chunks")]
    pub context_rows: Option<u32>,
    /// Non-interactive, for a statement committed by head, with --attention-heads: earlier
    /// context chunks per cell in each challenge's attention draw (default 1).
    #[arg(long, value_name = "M", requires = "attention_heads")]
    pub context_chunks: Option<u32>,
}

/// The per-map bound scales of `--freivalds-bounds` (at most 16 MiB of JSON); the caller
/// checks them against the key of the statement's weights.
fn read_bounds(path: &Path) -> Result<veritrace_model::freivalds::MapBounds, VerbInputError> {
    let refused = |reason: String| VerbInputError::Message {
        path: path.display().to_string(),
        what: "bound file",
        reason,
    };
    let bytes =
        veritrace_model::files::read_limited(path, 16 << 20, "a bound file", "").map_err(|e| {
            VerbInputError::File {
                path: path.display().to_string(),
                reason: e.reason(),
            }
        })?;
    serde_json::from_slice(&bytes).map_err(|e| refused(e.to_string()))
}

/// The limits `--limits` gives (inline JSON, or a file of it), or the defaults.
///
/// # Errors
/// A file that cannot be read or JSON that is not a limits object (unknown fields included).
pub fn parse_limits(spec: Option<&str>) -> Result<VerifierLimits, VerbInputError> {
    let Some(spec) = spec else {
        return Ok(VerifierLimits::DEFAULT);
    };
    let text = if spec.trim_start().starts_with('{') {
        spec.to_string()
    } else {
        veritrace_model::files::read_text(std::path::Path::new(spec), "verifier limits").map_err(
            |e| VerbInputError::File {
                path: spec.to_string(),
                reason: e.to_string(),
            },
        )?
    };
    serde_json::from_str(&text).map_err(|e| VerbInputError::Message {
        path: spec.to_string(),
        what: "verifier limits",
        reason: e.to_string(),
    })
}

/// The verifier's policy from `--tolerance`: `exact`, a calibrated policy file (`veritrace
/// calibrate` or `simulate --out`; it must cover exactly the commitment's `layers`), or a bare
/// tolerance policy (JSON of [`TolerancePolicy`]).
fn tolerance(spec: &str, layers: u32) -> Result<TolerancePolicy, VerbInputError> {
    if spec == "exact" {
        return Ok(TolerancePolicy::Exact);
    }
    let text = veritrace_model::files::read_text(std::path::Path::new(spec), "a tolerance policy")
        .map_err(|e| VerbInputError::File {
            path: spec.to_string(),
            reason: e.reason(),
        })?;
    let refused = |what: &'static str, reason: String| VerbInputError::Message {
        path: spec.to_string(),
        what,
        reason,
    };
    // Errors name the field they are about (`policy.thresholds.overrides.2: ...`).
    fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| match e.path().to_string() {
            p if p == "." => e.inner().to_string(),
            p => format!("{p}: {}", e.inner()),
        })
    }
    let value: serde_json::Value = parse(&text).map_err(|e| refused("tolerance policy", e))?;
    if value.get("format").is_some() {
        let file: CalibratedPolicy = parse(&text).map_err(|e| refused("calibrated policy", e))?;
        let policy = file
            .tolerance()
            .map_err(|e| refused("calibrated policy", e.to_string()))?;
        if file.calibration.layers != u64::from(layers) {
            return Err(refused(
                "calibrated policy",
                format!(
                    "calibration.layers: the policy covers {} layers, the commitment has {layers}",
                    file.calibration.layers
                ),
            ));
        }
        return Ok(policy);
    }
    let policy: TolerancePolicy = parse(&text).map_err(|e| refused("tolerance policy", e))?;
    policy
        .validate()
        .map_err(|e| refused("tolerance policy", e.to_string()))?;
    Ok(policy)
}

/// Runs `veritrace verify`; prints the verdict. The decision is the protocol crate's
/// ([`verify_recorded_with_limits`]: the verifier's state machine replayed over the recorded
/// messages, with its round rules, proof of work and limits); this verb only reads the files.
///
/// # Errors
/// [`Rejected`] (exit 1) when the verdict is reject; refused files or arguments exit 2.
pub fn run(args: &VerifyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let limits = parse_limits(args.limits.as_deref())?;
    let commitment: Commitment = read_message_limited(&args.commitment, limits.max_message_bytes)?;
    commitment.validate()?;
    // A claim over the limits is rejected before the model, the policy or any opening is read.
    if let Err(e) = limits.check_statement(&commitment.statement) {
        return decide(
            Verdict::Reject(RejectReason::GeometryMismatch {
                detail: e.to_string(),
            }),
            args.json,
            out,
        );
    }
    let method: LayerCheck = args.layer_check.parse()?;
    if method.checks_sublayers() != args.key.is_some() {
        return Err(VerbInputError::Argument(format!(
            "--layer-check {} {}",
            method.name(),
            if args.key.is_some() {
                "reads no key: --key is for --layer-check freivalds or both"
            } else {
                "needs the verifier's key (--key FILE, from `veritrace keygen`)"
            }
        ))
        .into());
    }
    if !(args.freivalds_bound_scale.is_finite()
        && args.freivalds_bound_scale > 0.0
        && args.freivalds_bound_scale <= 1.0)
    {
        return Err(VerbInputError::Argument(format!(
            "--freivalds-bound-scale {} must be in (0, 1]",
            args.freivalds_bound_scale
        ))
        .into());
    }
    // at the by-head level the heads are drawn in the challenges (public, opened); otherwise
    // from the key's secret (the whole context opened)
    let by_head = commitment.statement.trace_level.heads().is_some();
    let drawn = if by_head && args.non_interactive {
        crate::prove::attention_sample(args.attention_heads, args.context_chunks)?
    } else {
        None
    };
    if by_head && args.context_rows.is_some() {
        return Err(VerbInputError::Argument(
            "--context-rows samples rows of a whole opening; a statement committed by head \
             draws context chunks in its challenges (--context-chunks)"
                .into(),
        )
        .into());
    }
    if !by_head && args.context_chunks.is_some() {
        return Err(VerbInputError::Argument(
            "--context-chunks draws chunks in the challenges of a statement committed by head \
             (--trace-level sublayer-by-head); this one is not"
                .into(),
        )
        .into());
    }
    if by_head && !args.non_interactive && args.attention_heads.is_some() {
        return Err(VerbInputError::Argument(
            "--attention-heads: an interactive session's attention draws are in its recorded \
             challenges (`challenge --attention-heads`)"
                .into(),
        )
        .into());
    }
    let sampling = veritrace_model::freivalds::AttentionSampling {
        heads: if by_head { None } else { args.attention_heads },
        context_rows: args.context_rows,
    };
    if !sampling.is_full() && !matches!(args.layer_check.as_str(), "freivalds" | "both") {
        return Err(VerbInputError::Argument(
            "--attention-heads and --context-rows sample the Freivalds check's attention: they \
             need --layer-check freivalds or both"
                .into(),
        )
        .into());
    }
    sampling
        .validate()
        .map_err(|e| VerbInputError::Argument(format!("--attention-heads: {e}")))?;
    if !(args.sublayer_tolerance.is_finite() && args.sublayer_tolerance >= 0.0) {
        return Err(VerbInputError::Argument(format!(
            "--sublayer-tolerance {} must be finite and >= 0",
            args.sublayer_tolerance
        ))
        .into());
    }
    let keyed = match &args.key {
        Some(path) => {
            let bytes = veritrace_model::files::read_limited(
                path,
                veritrace_model::freivalds::MAX_KEY_BYTES,
                "a verifier key",
                "",
            )
            .map_err(|e| VerbInputError::File {
                path: path.display().to_string(),
                reason: e.reason(),
            })?;
            let key = veritrace_model::freivalds::VerifierKey::from_bytes(&bytes).map_err(|e| {
                VerbInputError::Message {
                    path: path.display().to_string(),
                    what: "verifier key",
                    reason: e.to_string(),
                }
            })?;
            let decoder = crate::keygen::load_decoder(&args.model)?;
            // read now (a bad file is refused before any opening is read), checked against the
            // key of the statement's weights below
            let bounds = args
                .freivalds_bounds
                .as_deref()
                .map(|p| read_bounds(p).map(|b| (p, b)))
                .transpose()?;
            if key.model_digest() != decoder.digest() {
                return Err(VerbInputError::Argument(format!(
                    "--key {} is a key of model {}, and --model {:?} is {}",
                    path.display(),
                    key.model_digest(),
                    args.model,
                    decoder.digest()
                ))
                .into());
            }
            Some((decoder, key, bounds))
        }
        None if args.freivalds_bounds.is_some() => {
            return Err(VerbInputError::Argument(
                "--freivalds-bounds is for --layer-check freivalds or both, with --key".into(),
            )
            .into())
        }
        None => None,
    };
    let policy = tolerance(&args.tolerance, commitment.statement.geometry.layers)?;
    if args.openings.iter().filter(|p| is_stdin(p)).count() > 1 {
        return Err(VerbInputError::Argument(
            "at most one --opening may be - (standard input)".into(),
        )
        .into());
    }
    let openings = args
        .openings
        .iter()
        .map(|p| read_opening(p, limits.max_message_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let rounds = u32::try_from(openings.len())
        .ok()
        .filter(|&r| r <= MAX_ROUNDS)
        .ok_or_else(|| {
            VerbInputError::Argument(format!("at most {MAX_ROUNDS} openings (rounds)"))
        })?;
    let (mode, params, challenges) = if args.non_interactive {
        if !args.challenges.is_empty() {
            return Err(VerbInputError::Argument(
                "--non-interactive derives the challenges; do not give --challenge".into(),
            )
            .into());
        }
        let params = ChallengeParams {
            samples: args.samples.ok_or_else(|| {
                VerbInputError::Argument("--non-interactive needs --samples".into())
            })?,
            strategy: parse_strategy(&args.strategy)?,
            pow_bits: args.pow_bits,
            attention: drawn,
        };
        params.validate()?;
        (Mode::NonInteractive, params, None)
    } else {
        if args.challenges.len() != openings.len() {
            return Err(VerbInputError::Argument(format!(
                "{} openings but {} challenges: give one --challenge per --opening",
                openings.len(),
                args.challenges.len()
            ))
            .into());
        }
        let challenges = args
            .challenges
            .iter()
            .map(|p| read_message_limited::<Challenge>(p, limits.max_message_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        // The recorded challenges carry the cells and draws; the sampling parameters are not
        // used, the attention sample is the record's (each challenge's is checked against it)
        let params = ChallengeParams {
            samples: 1,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: challenges.first().and_then(|c| c.attention).map(|a| {
                veritrace_protocol::AttentionSample {
                    heads: a.heads,
                    chunks: a.chunks,
                }
            }),
        };
        (Mode::Interactive, params, Some(challenges))
    };
    let config = VerifierConfig {
        method,
        mode,
        params,
        rounds,
        tolerance: policy,
    };
    let session = Session {
        commitment: &commitment,
        config: &config,
        limits: &limits,
        challenges: challenges.as_deref(),
    };
    // the keyed engine holds the decoder itself; otherwise the model's own engine
    let verdict = match &keyed {
        Some((decoder, key, bounds)) => {
            // the key of the statement's own weights (bf16, f16, quantized): derived from the
            // checkpoint's key (the same secret vectors); an unparsable setup is refused by
            // the engine itself
            let key = match veritrace_model::Setup::from_bytes(&commitment.statement.setup) {
                Ok(setup) => key.for_setup(decoder, &setup).map_err(|e| {
                    VerbInputError::Argument(format!(
                        "--key: no key of the statement's setup {setup}: {e}"
                    ))
                })?,
                Err(_) => key.clone(),
            };
            if let Some((path, b)) = bounds {
                b.validate(&key).map_err(|e| VerbInputError::Message {
                    path: path.display().to_string(),
                    what: "bound file",
                    reason: e.to_string(),
                })?;
            }
            let bounds = bounds.as_ref().map(|(_, b)| b);
            keep_freed_heap();
            let engine = KeyedVerifier {
                model: decoder,
                key: &key,
                tolerance: args.sublayer_tolerance,
                bound_scale: args.freivalds_bound_scale,
                map_bounds: bounds,
                sampling,
            };
            session.verify(openings, &engine)?
        }
        None => session.verify(openings, &*load_model(&args.model)?)?,
    };
    decide(verdict, args.json, out)
}

/// Keeps glibc's allocator from returning freed heap memory to the system during the keyed
/// checks. Each cell's check allocates and frees megabytes (its decoded values, gathered
/// context and recomputed parts); whether glibc trims the heap top after one depends on its
/// dynamic thresholds, that is on earlier allocation sizes, and when it does the next cell
/// page-faults and zeroes all of it again: at Llama-3-70B layer shapes in bf16 that doubled a
/// drawn cell's check (`drawn_check_large`, BENCHMARKS.md). The peak is unchanged: what is
/// kept is what the checks already used. Elsewhere (not glibc) nothing is set.
fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets an allocator parameter; no memory is touched
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// An opening as `verify` reads it.
enum OpeningInput {
    /// A binary envelope, read as a stream while it is checked.
    Stream(OpeningReader<Box<dyn Read>>),
    /// A JSON opening, decoded whole.
    Decoded(Opening),
}

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// Opens `path` (`-`: standard input) once and reads what a binary opening holds before its
/// cells, or decodes a JSON opening (the same limit and checks as [`read_message_limited`]).
fn read_opening(path: &Path, limit: u64) -> Result<OpeningInput, VerbInputError> {
    let name = path.display().to_string();
    let refused = |reason: String| VerbInputError::Message {
        path: name.clone(),
        what: Opening::NAME,
        reason,
    };
    let mut reader: Box<dyn BufRead> = if is_stdin(path) {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let (file, _) = veritrace_model::files::open_limited(
            path,
            limit,
            "a protocol message",
            "raise max_message_bytes (verify --limits) or VERITRACE_MAX_MESSAGE_BYTES",
        )
        .map_err(|e| VerbInputError::File {
            path: name.clone(),
            reason: match e {
                veritrace_model::files::FileError::NotAFile { .. } => {
                    format!("{} (`--opening -` reads standard input)", e.reason())
                }
                e => e.reason(),
            },
        })?;
        Box::new(BufReader::new(file))
    };
    let first = reader
        .fill_buf()
        .map_err(|e| refused(format!("reading failed: {e}")))?
        .first()
        .copied();
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if first == veritrace_protocol::encoding::MESSAGE_MAGIC.first().copied() {
        let reader: Box<dyn Read> = Box::new(reader);
        return OpeningReader::named(reader, limit, Some(name.clone()))
            .map(OpeningInput::Stream)
            .map_err(|e| refused(e.to_string()));
    }
    // JSON, from the reader already open (a file's size was checked when it was opened)
    let mut text = Vec::new();
    reader
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut text)
        .map_err(|e| refused(format!("reading failed: {e}")))?;
    if text.len() > limit {
        return Err(refused(format!("more than the limit of {limit} bytes")));
    }
    let text = std::str::from_utf8(&text).map_err(|e| refused(format!("not UTF-8 JSON: {e}")))?;
    Opening::from_json(text)
        .map(OpeningInput::Decoded)
        .map_err(|e| refused(e.to_string()))
}

/// What a recorded session is checked against.
struct Session<'a> {
    commitment: &'a Commitment,
    config: &'a VerifierConfig,
    limits: &'a VerifierLimits,
    challenges: Option<&'a [Challenge]>,
}

impl Session<'_> {
    /// The verdict: binary openings checked as they are read, unless a JSON opening is among
    /// them (then all are decoded).
    fn verify<R: Recompute + ?Sized>(
        &self,
        openings: Vec<OpeningInput>,
        engine: &R,
    ) -> anyhow::Result<Verdict> {
        let expected: Option<&Statement> = None;
        if openings
            .iter()
            .all(|o| matches!(o, OpeningInput::Stream(_)))
        {
            let streams = openings
                .into_iter()
                .filter_map(|o| match o {
                    OpeningInput::Stream(s) => Some(s),
                    OpeningInput::Decoded(_) => None,
                })
                .collect();
            return Ok(verify_recorded_streams(
                self.commitment,
                self.config,
                self.limits,
                self.challenges,
                streams,
                engine,
                expected,
            )?);
        }
        let decoded = openings
            .into_iter()
            .map(|o| match o {
                OpeningInput::Stream(s) => s.into_opening(),
                OpeningInput::Decoded(o) => Ok(o),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(verify_recorded_with_limits(
            self.commitment,
            self.config,
            self.limits,
            self.challenges,
            &decoded,
            engine,
            expected,
        )?)
    }
}

fn decide(v: Verdict, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", v.to_json())?;
    } else {
        match &v {
            Verdict::Accept => writeln!(out, "accept")?,
            Verdict::Reject(r) => writeln!(out, "reject ({}): {r}", r.name())?,
        }
    }
    out.flush()?;
    match v {
        Verdict::Accept => Ok(()),
        Verdict::Reject(r) => Err(Rejected(r).into()),
    }
}
