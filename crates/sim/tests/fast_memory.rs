//! Fast mode aggregates as it goes: the peak memory a simulation allocates while its trials
//! run does not grow with the number of trials (10^4 against 10^6 fast trials of one
//! scenario), measured by a counting global allocator.

use veritrace_sim::{EngineMode, Scenario, Simulation};

#[path = "../../../tests/common/counting_alloc.rs"]
mod counting_alloc;

fn scenario(trials: u64) -> Scenario {
    Scenario::from_toml(&format!(
        r#"
name = "fast-memory"
model = "tiny"
seed = 3
trials = {trials}
reference = "f32/attn=eager"
[prompts]
count = 2
tokens = 12
output = 4
[protocol]
chunk = 4
samples = 3
mode = "interactive"
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
margin = 2.0
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 80
holdout_prompts = 10
[[adversary]]
kind = "honest"
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.2
[[adversary]]
kind = "equivocation"
fraction = 0.1
"#
    ))
    .unwrap()
}

/// Bytes allocated at the peak of the fast run of `trials` trials, above what was live when it
/// started (the model and the calibration), and the report's trial count and detections.
fn peak_of_run(trials: u64) -> (usize, Vec<(u64, u64)>) {
    let _one = counting_alloc::measuring();
    let sim = Simulation::new(scenario(trials)).unwrap();
    let (report, peak) = counting_alloc::peak_of(|| sim.run_with(EngineMode::Fast, &|| {}));
    let report = report.unwrap();
    let counts = report
        .adversaries
        .iter()
        .map(|a| (a.trials, a.detected))
        .collect();
    (peak, counts)
}

#[test]
fn peak_allocation_does_not_grow_with_fast_trials() {
    let (small, small_counts) = peak_of_run(10_000);
    let (large, large_counts) = peak_of_run(1_000_000);
    assert!(small_counts.iter().all(|&(t, _)| t == 10_000));
    assert!(large_counts.iter().all(|&(t, _)| t == 1_000_000));
    assert!(large_counts[1].1 > 0, "{large_counts:?}");
    eprintln!("peak allocation during the run: 10^4 trials {small} B, 10^6 trials {large} B");
    // One record per trial would be tens of megabytes at 10^6 trials; what remains may differ
    // by the scheduling of the parallel blocks (a few per-worker tallies and stacks).
    assert!(
        large <= small + 256 * 1024,
        "peak grew from {small} B (10^4 trials) to {large} B (10^6 trials)"
    );
}
