//! `veritrace keygen`: a Freivalds verifier key ([`veritrace_model::freivalds`],
//! `specs/freivalds.md`) for a Llama-style decoder, from a 32-byte verifier secret read from a
//! file (`--secret-file`) or drawn from the operating system's randomness and written to a new
//! file (`--new-secret`, mode 0600, never replacing one). Prints the key's size and the time
//! it took to build.
//!
//! The key holds the secret vectors `r`: like the secret, it must stay with the verifier (it is
//! written with mode 0600).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use thiserror::Error;
use veritrace_model::files;
use veritrace_model::freivalds::{VerifierKey, VerifierSecret, MAX_REPETITIONS, SECRET_LEN};
use veritrace_model::{LlamaModel, MINILM, PRESETS};
use veritrace_sim::map_calibration::{calibrate_map_bounds, MapCalibrationConfig, MapRun};

/// Most calibration (and held-out) runs `keygen --calibrate-bound` makes itself.
pub const MAX_CALIBRATION_RUNS: u32 = 100_000;

/// Most calibration (and held-out) runs from `--bound-trace` files: the files are the caller's,
/// read one at a time, so the cost follows what is given.
pub const MAX_TRACE_CALIBRATION_RUNS: u32 = 1_000_000;

/// Arguments of `veritrace keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// The decoder: a preset (tiny, small) or a Llama-style checkpoint directory.
    #[arg(long)]
    pub model: String,
    /// A regular file holding exactly 32 secret bytes.
    #[arg(
        long,
        required_unless_present = "new_secret",
        conflicts_with = "new_secret"
    )]
    pub secret_file: Option<PathBuf>,
    /// Draw a new secret from the operating system's randomness and write it to this file
    /// (which must not exist).
    #[arg(long)]
    pub new_secret: Option<PathBuf>,
    /// Independent random vectors per weight matrix (1 to 64): the key's size grows in
    /// proportion, and a check's false-accept probability is raised to this power.
    #[arg(long, default_value_t = 2)]
    pub repetitions: u32,
    /// Where to write the key (atomically; never the secret's file).
    #[arg(long)]
    pub out: PathBuf,
    /// Also measure a calibrated Freivalds bound on this many independent honest runs (fresh
    /// seeded prompts of --calibration-tokens tokens, the reference f32 eager setup and its
    /// reduction-order variants split-K 2 and 16, batch 4 and decode order in rotation): prints
    /// the largest ratio |v.x - r.y| / B over every linear map, row and run, and twice it as a
    /// bound scale for `verify --freivalds-bound-scale` (a further honest run exchangeable with
    /// them exceeds the largest ratio with probability at most 1 / (N + 1)).
    #[arg(long, value_name = "N")]
    pub calibrate_bound: Option<u32>,
    /// Token rows of each calibration run.
    #[arg(long, default_value_t = 32)]
    pub calibration_tokens: usize,
    /// With --calibrate-bound: also write per-map bound scales to this JSON file (each linear
    /// map of each layer gets twice its own largest honest ratio, capped at 1), for `verify
    /// --freivalds-bounds`; a further honest run exceeds some map's scale with probability at
    /// most M / (N + 1) for M maps.
    #[arg(long, requires = "calibrate_bound", value_name = "FILE")]
    pub bound_file: Option<PathBuf>,
    /// How --bound-file's scales are set: `max` (twice each map's largest ratio over the N
    /// runs), or through the tolerance calibration with maps in the place of layers:
    /// `order-statistic` (distribution-free) or `exponential-tail` (a fitted tail, fewer
    /// runs, its tail assumption checked per map): each scale then bounds a quantile of the
    /// map's honest ratio so that a session checking any number of cells is falsely rejected
    /// with probability at most --bound-target-fpr, at --bound-confidence.
    #[arg(long, requires = "bound_file", default_value = "max", value_parser = ["max", "order-statistic", "exponential-tail"])]
    pub bound_method: String,
    /// With a calibrated --bound-method: the session false-alarm rate of the Freivalds checks.
    #[arg(long, default_value_t = 0.001)]
    pub bound_target_fpr: f64,
    /// With a calibrated --bound-method: the joint confidence of the per-map bounds.
    #[arg(long, default_value_t = 0.95)]
    pub bound_confidence: f64,
    /// With a calibrated --bound-method: this many further honest runs (later prompts, the
    /// same variations), held out to test the scales.
    #[arg(long, default_value_t = 0, value_name = "H")]
    pub bound_holdout: u32,
    /// With --calibrate-bound: the setup the honest runs claim (with its reduction-order
    /// variants split-K 2 and 16, batch 4 and decode order where the setup allows them). A
    /// bf16, f16 or quantized setup calibrates a key of those weights (the key file itself
    /// stays the checkpoint's; `verify` derives the same key from it).
    #[arg(long, default_value = "f32/attn=eager")]
    pub calibration_setup: veritrace_model::Setup,
    /// With --calibrate-bound N: take the honest runs from these sub-layer trace files instead
    /// of generating them (repeatable; e.g. another engine's runs committed with `commit
    /// --trace-level sublayer`): the first N calibrate, the next --bound-holdout are held out.
    /// Each statement's setup must have --calibration-setup's weights. The runs' nonlinear
    /// parts are checked too (every cell, as the verifier recomputes them), and --bound-file
    /// then also holds per-layer, per-part tolerances of them, calibrated with the scales
    /// under the same method and claim: for another engine's runs, whose nonlinear arithmetic
    /// differs from this one's, in place of a hand-set --sublayer-tolerance.
    #[arg(long = "bound-trace", value_name = "FILE")]
    pub bound_traces: Vec<PathBuf>,
}

/// Input `veritrace keygen` refuses (exit 2).
#[derive(Debug, Error)]
pub enum KeygenInputError {
    /// The secret file does not hold exactly 32 bytes.
    #[error("{path}: a verifier secret is exactly {SECRET_LEN} bytes, this file has {got}")]
    SecretSize {
        /// The file.
        path: String,
        /// Its size.
        got: usize,
    },
    /// The model is not a Llama-style decoder.
    #[error(
        "model {0:?}: verifier keys cover Llama-style decoders (tiny, small, or a Llama-style \
         checkpoint directory)"
    )]
    NotADecoder(String),
    /// Repetitions outside 1..=64.
    #[error("--repetitions {0} must be between 1 and {MAX_REPETITIONS}")]
    Repetitions(u32),
    /// Calibration arguments out of range.
    #[error(
        "--calibrate-bound N needs N in 1..=100000 (1..=1000000 with --bound-trace files), \
         --calibration-tokens in 1..=4096, --bound-holdout in 0..=100000 (1000000 with \
         --bound-trace), --bound-target-fpr and --bound-confidence in (0, 1)"
    )]
    Calibration,
    /// A `--bound-trace` file that cannot serve as an honest run of the calibration.
    #[error("--bound-trace {path}: {reason}")]
    BoundTrace {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A calibration setup the model cannot run or key.
    #[error("--calibration-setup {0}")]
    CalibrationSetup(String),
    /// Too few runs for the calibrated per-map scales' target.
    #[error(
        "--bound-method {method}: {needed} honest runs are needed for per-map scales over \
         {maps} checks (maps, and nonlinear parts with --bound-trace) at a session false-alarm \
         rate of {target} (confidence {confidence}); --calibrate-bound is {have}"
    )]
    BoundRuns {
        /// The method.
        method: String,
        /// Runs needed.
        needed: u64,
        /// Runs given.
        have: u32,
        /// Checks calibrated (7 maps per layer, and 4 nonlinear parts with trace files).
        maps: usize,
        /// The target rate.
        target: f64,
        /// The confidence.
        confidence: f64,
    },
}

/// Loads a Llama-style decoder (a preset or a checkpoint directory); anything else is
/// [`KeygenInputError::NotADecoder`] (exit 2).
pub(crate) fn load_decoder(spec: &str) -> anyhow::Result<LlamaModel> {
    if PRESETS.contains(&spec) {
        return Ok(LlamaModel::preset(spec)?);
    }
    let dir = Path::new(spec);
    if spec == MINILM || !dir.join("config.json").is_file() {
        return Err(KeygenInputError::NotADecoder(spec.to_string()).into());
    }
    Ok(LlamaModel::load(dir)?)
}

/// The per-map calibration `--bound-method` asks for (`None` for `max`): any session size
/// (`α = τ / M`), the tolerance calibration's margin of 1 (the bound is already an upper
/// confidence bound).
fn map_calibration_config(args: &KeygenArgs) -> anyhow::Result<Option<MapCalibrationConfig>> {
    if args.bound_method == "max" {
        return Ok(None);
    }
    Ok(Some(MapCalibrationConfig {
        target_session_fpr: args.bound_target_fpr,
        confidence: args.bound_confidence,
        margin: 1.0,
        method: args.bound_method.parse()?,
        // any number of checked cells: the union bound saturates at the M maps
        samples: u32::MAX,
        rounds: 1,
    }))
}

/// One honest run from a sub-layer trace file: its statement's setup must have `key`'s
/// weights; each layer's worst ratio per map ([`veritrace_model::freivalds::layer_map_ratios`]).
fn trace_run(
    path: &Path,
    model: &LlamaModel,
    key: &veritrace_model::freivalds::VerifierKey,
) -> anyhow::Result<MapRun> {
    let refuse = |reason: String| KeygenInputError::BoundTrace {
        path: path.display().to_string(),
        reason,
    };
    let (trace, statement) = veritrace_model::read_trace(path)?;
    let statement = statement.ok_or_else(|| refuse("the trace file holds no statement".into()))?;
    if statement.model_digest != model.digest() {
        return Err(refuse("a trace of another model".into()).into());
    }
    let setup = veritrace_model::Setup::from_bytes(&statement.setup)
        .map_err(|e| refuse(format!("its setup: {e}")))?;
    key.check_setup(&setup).map_err(|e| refuse(e.to_string()))?;
    let (context, cell) = veritrace_model::sublayer::read_sublayers(path, &statement)?
        .ok_or_else(|| refuse("the statement commits no sub-layer values".into()))?;
    let layout = model.sublayer_layout();
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let n = statement.geometry.tokens as usize;
    let sub = context
        .iter()
        .zip(&cell)
        .map(|(c, x)| -> anyhow::Result<veritrace_model::SubLayers> {
            let ctx = layout.unpack_context(&floats(c))?;
            Ok(veritrace_model::SubLayers {
                normed: ctx.normed,
                k: ctx.k,
                v: ctx.v,
                ..layout.unpack_cell(&floats(x))?
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ratios = sub
        .iter()
        .enumerate()
        .map(|(i, s)| veritrace_model::freivalds::layer_map_ratios(key, model, i + 1, s, n))
        .collect::<Result<Vec<_>, _>>()?;
    // the run's nonlinear parts as the verifier recomputes them (another engine's differ from
    // this one's): the evidence for the file's nonlinear tolerances
    let nonlinear = veritrace_model::freivalds::run_nonlinear_deviations(
        key,
        model,
        &setup,
        statement.geometry.chunk as usize,
        &trace.layers,
        &sub,
    )
    .map_err(|e| refuse(format!("its nonlinear parts: {e}")))?;
    let variation = match &statement.engine {
        Some(engine) => format!("{setup} on {engine}"),
        None => setup.to_string(),
    };
    Ok(MapRun {
        variation,
        ratios,
        nonlinear: Some(nonlinear),
    })
}

/// The bound file's nonlinear tolerances, where it has them (runs from trace files).
fn nonlinear_line(
    out: &mut dyn Write,
    bounds: &veritrace_model::freivalds::MapBounds,
) -> anyhow::Result<()> {
    if let Some(t) = &bounds.nonlinear {
        let (lo, hi) = t
            .iter()
            .flatten()
            .fold((f64::INFINITY, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        writeln!(
            out,
            "nonlinear tolerances: {lo:.3e} to {hi:.3e} (relative L-inf per layer and part, \
             calibrated with the scales on the trace files' runs; verify --freivalds-bounds \
             applies them in place of --sublayer-tolerance)"
        )?;
    }
    Ok(())
}

/// Writes a new secret file with mode 0600, refusing to replace an existing file.
fn write_secret(path: &Path, secret: &[u8]) -> anyhow::Result<()> {
    let failed = |source| files::FileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // tempfile creates its files with mode 0600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".veritrace-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(failed)?;
    tmp.write_all(secret).map_err(failed)?;
    tmp.as_file().sync_all().map_err(failed)?;
    match tmp.persist_noclobber(path) {
        Ok(_) => Ok(()),
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(files::FileError::Occupied {
                path: path.to_path_buf(),
                entries: "a file (--new-secret never replaces one)".into(),
            }
            .into())
        }
        Err(e) => Err(failed(e.error).into()),
    }
}

/// Builds the key and writes it to `--out`; prints the key's size and build time.
///
/// # Errors
/// Exit 2 for a model that is not a Llama-style decoder (or fails to load), a secret file
/// that is not a regular file of 32 bytes, an existing `--new-secret` file, `--out` naming the
/// secret, repetitions outside 1..=64; exit 1 when the key cannot be written.
pub fn run(args: &KeygenArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if !(1..=MAX_REPETITIONS).contains(&args.repetitions) {
        return Err(KeygenInputError::Repetitions(args.repetitions).into());
    }
    if let Some(runs) = args.calibrate_bound {
        let unit = |x: f64| x > 0.0 && x < 1.0;
        // runs this process makes itself are capped for time; trace files are the caller's, and
        // their cost follows the files given (the order statistic at a session rate of 1e-3
        // needs 133,907 runs for a decoder's 22 checks)
        let cap = if args.bound_traces.is_empty() {
            MAX_CALIBRATION_RUNS
        } else {
            MAX_TRACE_CALIBRATION_RUNS
        };
        if runs == 0
            || runs > cap
            || args.bound_holdout > cap
            || !(1..=4096).contains(&args.calibration_tokens)
            || !unit(args.bound_target_fpr)
            || !unit(args.bound_confidence)
        {
            return Err(KeygenInputError::Calibration.into());
        }
    }
    let secret_path = match (&args.secret_file, &args.new_secret) {
        (Some(p), None) | (None, Some(p)) => p,
        _ => {
            return Err(anyhow::anyhow!(
                "give exactly one of --secret-file and --new-secret"
            ))
        }
    };
    files::refuse_same_file(&args.out, &[secret_path])?;
    if let Some(bound_file) = &args.bound_file {
        files::refuse_same_file(bound_file, &[secret_path, &args.out])?;
    }
    let model = load_decoder(&args.model)?;
    let map_config = map_calibration_config(args)?;
    if let (Some(c), Some(runs)) = (&map_config, args.calibrate_bound) {
        // refused before any run
        // trace files also calibrate the 4 nonlinear parts of each layer
        let layers = model.config().num_layers;
        let traced = !args.bound_traces.is_empty();
        let needed = if traced {
            c.runs_needed_with_nonlinear(layers)
        } else {
            c.runs_needed(layers)
        };
        if u64::from(runs) < needed {
            return Err(KeygenInputError::BoundRuns {
                method: args.bound_method.clone(),
                needed,
                have: runs,
                maps: if traced { 11 } else { 7 } * layers,
                target: c.target_session_fpr,
                confidence: c.confidence,
            }
            .into());
        }
    }
    let secret = match &args.secret_file {
        Some(path) => {
            let bytes = files::read_limited(path, SECRET_LEN as u64, "a verifier secret", "")
                .map_err(|e| match e {
                    files::FileError::TooLarge { size, .. } => {
                        anyhow::Error::from(KeygenInputError::SecretSize {
                            path: path.display().to_string(),
                            got: usize::try_from(size).unwrap_or(usize::MAX),
                        })
                    }
                    other => other.into(),
                })?;
            let array: [u8; SECRET_LEN] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeygenInputError::SecretSize {
                        path: path.display().to_string(),
                        got: bytes.len(),
                    })?;
            VerifierSecret::from_bytes(array)
        }
        None => {
            use rand_core::RngCore;
            let mut bytes = [0u8; SECRET_LEN];
            rand_core::OsRng.fill_bytes(&mut bytes);
            write_secret(secret_path, &bytes)?;
            VerifierSecret::from_bytes(bytes)
        }
    };
    let start = Instant::now();
    let key = VerifierKey::build(&secret, &model, args.repetitions)?;
    let built = start.elapsed().as_secs_f64();
    let bytes = key.to_bytes();
    // The key holds the secret vectors: private from the moment it exists.
    files::write_atomic_private(&args.out, &bytes)?;
    writeln!(out, "key: {}", args.out.display())?;
    writeln!(out, "model: {} ({})", args.model, key.model_digest())?;
    writeln!(
        out,
        "secret commitment: {}",
        hex::encode(key.secret_commitment())
    )?;
    writeln!(out, "repetitions: {}", key.repetitions())?;
    writeln!(
        out,
        "key size: {} bytes ({:.2} MiB)",
        bytes.len(),
        bytes.len() as f64 / f64::from(1u32 << 20)
    )?;
    writeln!(out, "build time: {built:.3} s")?;
    if let Some(runs) = args.calibrate_bound {
        // the claimed setup and those of its reduction-order variants the model accepts
        let base = args.calibration_setup;
        let variants = [
            (1, 1, false),
            (2, 1, false),
            (16, 1, false),
            (1, 4, false),
            (1, 1, true),
        ];
        let setups: Vec<veritrace_model::Setup> = variants
            .iter()
            .map(|&(split_k, batch, decode)| veritrace_model::Setup {
                split_k,
                batch,
                order: if decode {
                    veritrace_model::Order::Decode
                } else {
                    base.order
                },
                ..base
            })
            .filter(|s| s.validate().is_ok())
            .fold(Vec::new(), |mut all, s| {
                if !all.contains(&s) {
                    all.push(s);
                }
                all
            });
        // the key of the weights the setup computes with (bf16, f16, quantized)
        let key = key
            .for_setup(&model, &base)
            .map_err(|e| KeygenInputError::CalibrationSetup(format!("{base}: {e}")))?;
        let start = Instant::now();
        let needed = u64::from(runs) + u64::from(args.bound_holdout);
        if !args.bound_traces.is_empty() && (args.bound_traces.len() as u64) < needed {
            return Err(KeygenInputError::CalibrationSetup(format!(
                "{base}: {} --bound-trace files for {runs} calibration and {} held-out runs",
                args.bound_traces.len(),
                args.bound_holdout
            ))
            .into());
        }
        let run = |i: u32| -> anyhow::Result<MapRun> {
            if let Some(path) = args.bound_traces.get(i as usize) {
                return trace_run(path, &model, &key);
            }
            let setup = &setups[i as usize % setups.len()];
            let tokens =
                veritrace_model::Engine::prompt(&model, u64::from(i), args.calibration_tokens);
            Ok(MapRun {
                nonlinear: None,
                variation: setup.to_string(),
                ratios: veritrace_model::freivalds::honest_map_ratios(
                    &key, &model, setup, &tokens, 8,
                )?,
            })
        };
        let map_runs = (0..runs).map(run).collect::<anyhow::Result<Vec<_>>>()?;
        let per_run: Vec<Vec<[f64; 7]>> = map_runs.iter().map(|r| r.ratios.clone()).collect();
        let worst = per_run
            .iter()
            .flatten()
            .flatten()
            .fold(0f64, |m, &r| m.max(r));
        writeln!(
            out,
            "honest worst ratio |v.x - r.y| / B over {runs} runs: {worst:.3e} ({:.1} s)",
            start.elapsed().as_secs_f64()
        )?;
        writeln!(
            out,
            "calibrated bound scale (twice it): {:.3e} (verify --freivalds-bound-scale; a further \
             honest run exceeds the largest ratio with probability <= 1/{})",
            (2.0 * worst).min(1.0),
            u64::from(runs) + 1
        )?;
        if let (Some(path), Some(config)) = (&args.bound_file, &map_config) {
            let held = (runs..runs.saturating_add(args.bound_holdout))
                .map(run)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let r =
                calibrate_map_bounds(key.model_digest(), &key.weights(), &map_runs, &held, config)?;
            let json = serde_json::to_string_pretty(&r.bounds)? + "\n";
            files::write_atomic(path, json.as_bytes())?;
            nonlinear_line(out, &r.bounds)?;
            let (lo, hi) = r.scale_range();
            writeln!(
                out,
                "per-map bound scales: {} ({lo:.3e} to {hi:.3e}; {} over {} maps, {} from the \
                 fitted tail; verify --freivalds-bounds)",
                path.display(),
                args.bound_method,
                r.calibration.layers,
                r.tail_maps()
            )?;
            writeln!(
                out,
                "claimed: with confidence >= {}, a session checking any number of cells falsely \
                 rejects an honest run of these variations with this key in at most {} of \
                 sessions",
                config.confidence, config.target_session_fpr
            )?;
            match &r.holdout {
                None => writeln!(out, "held out: none (--bound-holdout H tests the scales)")?,
                Some(h) => writeln!(
                    out,
                    "held out: {} runs, {} with a map over its scale: session rate <= {:.3e} \
                     (one-sided {}% Clopper-Pearson)",
                    h.samples,
                    h.exceedances,
                    h.upper,
                    100.0 * h.confidence
                )?,
            }
        } else if let Some(path) = &args.bound_file {
            let mut bounds = veritrace_model::freivalds::MapBounds::calibrate(
                key.model_digest(),
                &per_run,
                2.0,
            )?;
            bounds.weights = key.weights();
            let nonlinear: Option<Vec<Vec<[f64; 4]>>> =
                map_runs.iter().map(|r| r.nonlinear.clone()).collect();
            if let Some(runs) = nonlinear {
                bounds.set_nonlinear(&runs, 2.0)?;
            }
            let json = serde_json::to_string_pretty(&bounds)? + "\n";
            files::write_atomic(path, json.as_bytes())?;
            nonlinear_line(out, &bounds)?;
            let all = bounds.scales.iter().flatten();
            let (lo, hi) = all.fold((f64::INFINITY, 0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            writeln!(
                out,
                "per-map bound scales: {} ({lo:.3e} to {hi:.3e}; verify --freivalds-bounds; a \
                 further honest run exceeds some map's scale or part's tolerance with probability <= {:.3})",
                path.display(),
                bounds.exceed_bound()
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
