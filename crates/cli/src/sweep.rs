//! `veritrace sweep` and `veritrace merge`: parameter sweeps over a scenario, split into shards
//! for batch-scheduler array jobs, and the merge of the shards' outputs into the full result.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget};
use veritrace_model::files;
use veritrace_sim::sweep::{self, Grid, Shard, SweepResult};
use veritrace_sim::{EngineMode, Scenario, SimError};

/// Extra help of `veritrace sweep`.
pub const AFTER_HELP: &str = "\
Axes: k (cells challenged per round), chunk (token rows per cell), fraction (cheat fraction of
partial, equivocation and grinding adversaries), tolerance (target false-positive rate). The grid
is their cartesian product, the last --grid varying fastest. --shard i/n runs the points p with
p mod n = i; `veritrace merge` of all n outputs equals one unsharded run (e.g. a Slurm array
`--array=0-15` running `veritrace sweep S --grid ... --shard $SLURM_ARRAY_TASK_ID/16 --out
part-$SLURM_ARRAY_TASK_ID.json`, or a Kubernetes Indexed Job using $JOB_COMPLETION_INDEX).

Exit status: 0 on success, 2 when the scenario, grid or shard is refused, 1 otherwise.";

/// Arguments of `veritrace sweep`.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Scenario file (TOML). Default: the embedded default scenario.
    pub scenario: Option<PathBuf>,
    /// An axis and its values, `axis=v1,v2,...` (axes: k, chunk, fraction, tolerance).
    #[arg(long = "grid", required = true)]
    pub grid: Vec<String>,
    /// Run only shard `i` of `n` (`i/n`).
    #[arg(long)]
    pub shard: Option<String>,
    /// Fast mode (trials sampled from per-cell outcomes measured end to end).
    #[arg(long)]
    pub fast: bool,
    /// Override the scenario's trials per adversary and point.
    #[arg(long)]
    pub trials: Option<u64>,
    /// Write the JSON result here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the CSV table here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Device the provers run on, overriding the scenario's `prover_device` (`cpu`,
    /// `cuda`/`cuda:N` with `--features cuda`).
    #[arg(long, value_name = "cpu|cuda[:N]")]
    pub device: Option<veritrace_model::Device>,
    /// Device the verifier recomputes on, overriding the scenario's `verifier_device`.
    #[arg(long, value_name = "cpu|cuda[:N]")]
    pub verifier_device: Option<veritrace_model::Device>,
}

/// Arguments of `veritrace merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Shard outputs of `veritrace sweep` (JSON).
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    /// Write the merged JSON here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the CSV table here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

fn emit(
    result: &SweepResult,
    out_path: &Option<PathBuf>,
    csv_path: &Option<PathBuf>,
    inputs: &[&Path],
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for p in out_path.iter().chain(csv_path) {
        files::refuse_same_file(p, inputs)?;
    }
    if let (Some(a), Some(b)) = (out_path, csv_path) {
        files::refuse_same_file(a, &[b])?;
    }
    let mut json = serde_json::to_string_pretty(result)?;
    json.push('\n');
    // Each file atomically (a unique temporary file, synced, renamed): an interrupted run
    // leaves the previous file whole. The CSV, when asked for, is written first, so a JSON
    // result on disk always has its table beside it.
    if let Some(p) = csv_path {
        files::write_atomic(p, sweep::csv(result).as_bytes())?;
    }
    match out_path {
        Some(p) => files::write_atomic(p, json.as_bytes())?,
        None => out.write_all(json.as_bytes())?,
    }
    out.flush()?;
    Ok(())
}

/// Runs `veritrace sweep`.
///
/// # Errors
/// A refused scenario, grid or shard exits 2; anything else 1.
pub fn run(args: &SweepArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut scenario = match &args.scenario {
        Some(path) => Scenario::read(path)?,
        None => Scenario::default_scenario(),
    };
    if let Some(d) = args.device {
        scenario.prover_device = d;
    }
    if let Some(d) = args.verifier_device {
        scenario.verifier_device = d;
    }
    if let Some(t) = args.trials {
        scenario.trials = t;
    }
    scenario.validate()?;
    let grid = Grid::parse(&args.grid)?;
    let shard = match &args.shard {
        Some(s) => Shard::parse(s)?,
        None => Shard::ALL,
    };
    let engine = if args.fast {
        EngineMode::Fast
    } else {
        EngineMode::EndToEnd
    };
    let bar = if !args.quiet && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    let result = sweep::run(&scenario, &grid, engine, shard, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let inputs: Vec<&Path> = args.scenario.iter().map(PathBuf::as_path).collect();
    emit(&result?, &args.out, &args.csv, &inputs, out)
}

/// Runs `veritrace merge`.
///
/// # Errors
/// Unreadable or malformed parts, or parts that do not make one whole sweep, exit 2.
pub fn merge(args: &MergeArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut parts = Vec::with_capacity(args.parts.len());
    for p in &args.parts {
        let text = files::read_text(p, "a sweep output").map_err(|e| SimError::Io {
            path: p.display().to_string(),
            reason: e.to_string(),
        })?;
        let part: SweepResult = serde_json::from_str(&text)
            .map_err(|e| SimError::Scenario(format!("{}: not a sweep output: {e}", p.display())))?;
        parts.push(part);
    }
    let inputs: Vec<&Path> = args.parts.iter().map(PathBuf::as_path).collect();
    emit(&sweep::merge(parts)?, &args.out, &args.csv, &inputs, out)
}
