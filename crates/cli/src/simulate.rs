//! `veritrace simulate [SCENARIO]`: runs a scenario's adversarial provers end to end against the
//! real verifier and prints a table per adversary (detection with a 95% Wilson interval, the
//! hypergeometric prediction, bad cells, compute saving, verifier cost, bytes opened, security
//! bits against grinding). Without a scenario it runs the embedded default
//! (`simulations/default.toml`: the built-in tiny decoder, every adversary kind).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use veritrace_model::files::OutputDir;
use veritrace_sim::{report, EngineMode, Scenario, SimReport, Simulation};

/// Extra help of `veritrace simulate`.
pub const AFTER_HELP: &str = "\
Outputs with --out DIR: report.md, report.json, report.csv, and policy.json (the calibrated
tolerance, in the format of `veritrace calibrate`, for `verify --tolerance`; not in exact mode),
each written to a temporary file and renamed, so an interrupted run leaves earlier results
intact. Results are deterministic for a
scenario and seed, whatever the thread count (RAYON_NUM_THREADS).

Exit status: 0 on success, 2 when the scenario or a model is refused, 1 otherwise.";

/// Arguments of `veritrace simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Scenario file (TOML; see simulations/*.toml). Default: the embedded default scenario.
    pub scenario: Option<PathBuf>,
    /// Override the scenario's trials per adversary.
    #[arg(long)]
    pub trials: Option<u64>,
    /// Override the scenario's seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the scenario's prompt pool (`prompts.count`): the independent prover runs per
    /// adversary that trials draw from, hence the sample size of every rate's bounds.
    #[arg(long)]
    pub prompts: Option<u32>,
    /// Give the honest and other-hardware adversaries N independent prover runs each and 5N
    /// trials (at least the scenario's), so that their false-positive bounds rest on N runs
    /// (0 of 2,995 puts the one-sided 95% upper bound under 1e-3).
    #[arg(long, value_name = "N")]
    pub honest_runs: Option<u32>,
    /// Print the report as JSON instead of markdown.
    #[arg(long)]
    pub json: bool,
    /// Write report.md, report.json and report.csv into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar and no timing line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Fast mode: trials sampled from per-cell outcomes measured end to end; grinding from each
    /// prover run's exact per-trial law, late commitment from one end-to-end trial per run
    /// (weight-perturbation trials still run end to end).
    #[arg(long)]
    pub fast: bool,
    /// Device the provers run on, overriding the scenario's `prover_device`: `cpu`, or
    /// `cuda`/`cuda:N` (a build with `--features cuda`). With the verifier on the CPU a GPU
    /// prover is honest other hardware, and the tolerance is calibrated on the GPU-vs-CPU
    /// noise floor.
    #[arg(long, value_name = "cpu|cuda[:N]")]
    pub device: Option<veritrace_model::Device>,
    /// Device the verifier recomputes cells on, overriding the scenario's `verifier_device`
    /// (default `cpu`, the reference arithmetic).
    #[arg(long, value_name = "cpu|cuda[:N]")]
    pub verifier_device: Option<veritrace_model::Device>,
}

/// The scenario the arguments select, with overrides applied and validated.
pub fn scenario_from_args(args: &SimulateArgs) -> anyhow::Result<Scenario> {
    let mut s = match &args.scenario {
        Some(path) => Scenario::read(path)?,
        None => Scenario::default_scenario(),
    };
    if let Some(t) = args.trials {
        s.trials = t;
    }
    if let Some(seed) = args.seed {
        s.seed = seed;
    }
    if let Some(p) = args.prompts {
        s.prompts.count = p;
    }
    if let Some(n) = args.honest_runs {
        let trials = s.trials.max(5 * u64::from(n));
        for a in &mut s.adversaries {
            if matches!(
                a.adversary.kind(),
                veritrace_sim::AdversaryKind::Honest | veritrace_sim::AdversaryKind::OtherHardware
            ) {
                a.prompts = Some(n);
                a.trials = Some(trials);
            }
        }
    }
    if let Some(d) = args.device {
        s.prover_device = d;
    }
    if let Some(d) = args.verifier_device {
        s.verifier_device = d;
    }
    s.validate()?;
    Ok(s)
}

/// The files `simulate --out DIR` writes: a later run into the same directory replaces exactly
/// these (as one set), and refuses a directory that holds anything else.
pub fn report_file(name: &str) -> bool {
    matches!(
        name,
        "report.md" | "report.json" | "report.csv" | "policy.json"
    )
}

/// Writes `report.md`, `report.json` and `report.csv` into `dir`, and the calibrated tolerance
/// as `policy.json` (the format of `veritrace calibrate`) when there is one, as one set
/// ([`veritrace_model::files::OutputDir`]): the set appears whole, replacing a previous run's,
/// or not at all, and concurrent runs into one directory leave one run's complete set.
pub fn write_outputs(
    dir: &Path,
    r: &SimReport,
    policy: Option<&veritrace_protocol::calibration::CalibratedPolicy>,
) -> anyhow::Result<()> {
    let set = OutputDir::stage(dir, &report_file)?;
    set.write("report.md", report::markdown(r).as_bytes())?;
    let mut json = serde_json::to_string_pretty(r)?;
    json.push('\n');
    set.write("report.json", json.as_bytes())?;
    set.write("report.csv", report::csv(r).as_bytes())?;
    if let Some(policy) = policy {
        let mut json = serde_json::to_string_pretty(policy)?;
        json.push('\n');
        set.write("policy.json", json.as_bytes())?;
    }
    set.commit(&report_file)?;
    Ok(())
}

/// Runs `veritrace simulate`, writing the report (markdown, or JSON with `--json`) to `out`.
///
/// # Errors
/// A refused scenario or model ([`veritrace_sim::SimError`] other than an engine failure) makes
/// the binary exit 2; anything else exits 1.
pub fn run(args: &SimulateArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let scenario = scenario_from_args(args)?;
    let total: u64 = scenario
        .adversaries
        .iter()
        .map(|a| scenario.trials_of(a))
        .sum();
    let show = !args.quiet && std::io::stderr().is_terminal();
    let bar = if show {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} simulate [{bar:40}] {pos}/{len} trials ({eta})")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let sim = Simulation::new(scenario)?;
    let engine = if args.fast {
        EngineMode::Fast
    } else {
        EngineMode::EndToEnd
    };
    let report = sim.run_with(engine, &|| bar.inc(1));
    bar.finish_and_clear();
    let report = report?;
    let secs = start.elapsed().as_secs_f64();
    if !args.quiet {
        let _ = writeln!(
            std::io::stderr(),
            "{total} trials in {secs:.1} s ({:.0} trials/s, calibration included)",
            total as f64 / secs.max(1e-9)
        );
    }
    if let Some(dir) = &args.out {
        write_outputs(dir, &report, sim.policy_file().as_ref())?;
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string(&report)?)?;
    } else {
        write!(out, "{}", report::markdown(&report))?;
    }
    out.flush()?;
    Ok(())
}
