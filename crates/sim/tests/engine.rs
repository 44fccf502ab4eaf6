//! The end-to-end engine on small scenarios: honest provers pass, clear cheats are caught as
//! often as the hypergeometric law predicts where per-cell power is ~1, results do not depend
//! on the thread count, the late commitment is refused by the API, and bad scenarios get typed
//! errors.

use veritrace_sim::{AdversaryKind, EngineMode, Scenario, SimError, Simulation};

fn scenario(trials: u64, adversaries: &str) -> Scenario {
    Scenario::from_toml(&format!(
        r#"
name = "test"
model = "tiny"
seed = 7
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
{adversaries}
"#
    ))
    .unwrap()
}

#[test]
fn honest_passes_and_cheats_match_the_hypergeometric_prediction() {
    let s = scenario(
        300,
        r#"
[[adversary]]
kind = "honest"
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.2
[[adversary]]
kind = "setup"
setup = "f32/attn=eager/skip=2"
"#,
    );
    let sim = Simulation::new(s).unwrap();
    let r = sim.run(&|| {}).unwrap();
    let honest = &r.adversaries[0];
    assert_eq!(honest.detected, 0, "{honest:?}");
    assert_eq!(honest.bad_cells, 0.0);
    for a in &r.adversaries[1..] {
        let p = a.predicted.unwrap();
        assert!(a.bad_cells > 0.0, "{a:?}");
        // Per-cell power is 1 by construction (bad cells are those the check rejects), so the
        // prediction must fall in the interval (up to its 95% coverage; seeds are fixed).
        assert!(
            a.wilson95.0 <= p && p <= a.wilson95.1,
            "{}: predicted {p} outside {:?}",
            a.label,
            a.wilson95
        );
        assert!(a.saving > 0.0, "{}", a.label);
        assert!(a.verifier_cost > 0.0 && a.verifier_cost < 1.0);
        assert!(a.bytes_opened > 0.0);
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let s = scenario(
        40,
        r#"
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.3
[[adversary]]
kind = "equivocation"
fraction = 0.2
"#,
    );
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| Simulation::new(s.clone()).unwrap().run(&|| {}).unwrap())
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn late_commitment_is_refused_and_grinding_beats_no_pow() {
    let s = scenario(
        30,
        r#"
[[adversary]]
kind = "late-commitment"
[[adversary]]
kind = "grinding"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.1
budget_bits = 8
pow_bits = 0
[[adversary]]
kind = "grinding"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.1
budget_bits = 8
pow_bits = 10
"#,
    );
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    let late = &r.adversaries[0];
    assert_eq!(late.kind, AdversaryKind::LateCommitment);
    assert_eq!(late.detected, late.trials);
    assert!(late.note.as_deref().unwrap().contains("refused"));
    let grind = &r.adversaries[1];
    // With 2^8 evaluations (128 re-randomized roots) against a 10% cheat and k = 3
    // (P(miss) ≈ 0.7), a missing challenge is easy to find; without grinding the same cheat is
    // caught ~30% of the time.
    assert!(grind.detection < 0.1, "{grind:?}");
    assert!(grind.security_bits.unwrap() < 1.0);
    // A budget below one expected proof of work (2^8 evaluations, 2^10 per valid nonce) rarely
    // completes an attempt; detection follows the grinding law in both cases.
    let starved = &r.adversaries[2];
    assert!(starved.detection > 0.5, "{starved:?}");
    for g in [grind, starved] {
        let p = g.predicted.unwrap();
        assert!(
            g.wilson95.0 <= p && p <= g.wilson95.1,
            "{}: predicted {p} outside {:?}",
            g.label,
            g.wilson95
        );
    }
    assert!(starved.security_bits.unwrap() > grind.security_bits.unwrap());
}

#[test]
fn grinding_law_limits() {
    use veritrace_sim::adversary::grinding_detection;
    // One attempt exactly (2 evaluations, no proof of work): caught with the per-attempt h.
    assert!((grinding_detection(0.3, 1, 0) - 0.3).abs() < 1e-12);
    // 2^10 evaluations, no proof of work: 512 attempts.
    assert!((grinding_detection(0.9, 10, 0) - 0.9f64.powi(512)).abs() < 1e-12);
    // A budget far below one proof of work: almost never completes an attempt.
    assert!(grinding_detection(0.1, 4, 20) > 0.999);
    // More proof of work, same budget: detection grows.
    assert!(grinding_detection(0.5, 12, 8) > grinding_detection(0.5, 12, 4));
}

#[test]
fn too_few_calibration_runs_say_how_many_are_needed() {
    // k = 3, L = 5: alpha = 0.3 / 3 = 0.1 at per-layer confidence 0.99: 44 runs.
    let mut s = scenario(10, "[[adversary]]\nkind = \"honest\"\n");
    s.tolerance.calibration_prompts = 43;
    match Simulation::new(s.clone()) {
        Err(SimError::Scenario(m)) => {
            assert!(
                m.contains("calibration_prompts = 43: 44 independent honest runs"),
                "{m}"
            )
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("43 runs accepted"),
    }
    s.tolerance.calibration_prompts = 44;
    let sim = Simulation::new(s).unwrap();
    let policy = sim.policy_file().expect("a calibrated policy");
    policy.validate().unwrap();
    assert_eq!(policy.calibration.runs, 44);
    assert!(policy
        .policy
        .thresholds
        .overrides
        .values()
        .all(|&t| t > 0.0));
}

#[test]
fn bad_scenarios_get_typed_errors() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../simulations/default.toml"
    ))
    .unwrap();
    assert!(Scenario::from_toml(&base).is_ok());
    for (from, to) in [
        ("trials = 200", "trials = 0"),
        ("count = 4", "count = 0"),
        ("samples = 4", "samples = 0"),
        ("target_fpr = 0.001", "target_fpr = 1.5"),
        ("target_fpr = 0.001", "target_fpr = 0.001\nconfidence = 1.0"),
        (
            "calibration_prompts = 1000",
            "calibration_prompts = 1000001",
        ),
        ("method = \"exponential-tail\"", "method = \"largest\""),
        ("margin = 2.0", "margin = 0.5"),
        (
            r#"honest = ["f32/attn=eager/splitk=2", "f32/attn=eager/splitk=16", "f32/attn=eager/order=decode"]"#,
            r#"honest = ["bf16/attn=eager"]"#,
        ),
        ("kind = \"honest\"", "kind = \"sorcerer\""),
        (
            "kind = \"equivocation\"\nfraction = 0.1",
            "kind = \"equivocation\"\nfraction = 1.5",
        ),
        (
            "setup = \"f32/attn=eager/splitk=4\"",
            "setup = \"f32/attn=tiled:8\"",
        ),
        (
            "reference = \"f32/attn=eager\"",
            "reference = \"f32/attn=magic\"",
        ),
        ("seed = 1", "seed = 1\nunknown = 3"),
        // Non-interactive trials on 4 prompts would repeat 4 challenges.
        ("mode = \"interactive\"", "mode = \"non-interactive\""),
    ] {
        assert!(base.contains(from), "{from}");
        let text = base.replacen(from, to, 1);
        assert!(
            matches!(Scenario::from_toml(&text), Err(SimError::Scenario(_))),
            "{to}"
        );
    }
}

#[test]
fn fast_mode_agrees_with_end_to_end_within_their_intervals() {
    let s = scenario(
        400,
        r#"
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.15
[[adversary]]
kind = "equivocation"
fraction = 0.1
[[adversary]]
kind = "honest"
"#,
    );
    let sim = Simulation::new(s).unwrap();
    let e2e = sim.run(&|| {}).unwrap();
    let fast = sim.run_with(EngineMode::Fast, &|| {}).unwrap();
    assert_eq!(fast.engine, EngineMode::Fast);
    for (a, b) in e2e.adversaries.iter().zip(&fast.adversaries) {
        let overlap = a.wilson95.0 <= b.wilson95.1 && b.wilson95.0 <= a.wilson95.1;
        assert!(
            overlap,
            "{}: end to end {:?} vs fast {:?}",
            a.label, a.wilson95, b.wilson95
        );
    }
    assert_eq!(fast.adversaries[2].detected, 0);
}

/// Grinding and late commitment in fast mode (drawn from each run's exact per-trial law, and
/// from one end-to-end trial per run) agree with their end-to-end trials.
#[test]
fn fast_mode_covers_grinding_and_late_commitment() {
    let s = scenario(
        300,
        r#"
[[adversary]]
kind = "grinding"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.1
budget_bits = 6
pow_bits = 0
[[adversary]]
kind = "grinding"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.1
budget_bits = 6
pow_bits = 4
[[adversary]]
kind = "late-commitment"
"#,
    );
    let sim = Simulation::new(s).unwrap();
    let e2e = sim.run(&|| {}).unwrap();
    let fast = sim.run_with(EngineMode::Fast, &|| {}).unwrap();
    for (a, b) in e2e.adversaries.iter().zip(&fast.adversaries) {
        assert_eq!(a.trials, b.trials);
        let overlap = a.wilson95.0 <= b.wilson95.1 && b.wilson95.0 <= a.wilson95.1;
        assert!(
            overlap,
            "{}: end to end {} {:?} vs fast {} {:?}",
            a.label, a.detection, a.wilson95, b.detection, b.wilson95
        );
    }
    // not a trivial case: grinding without proof of work escapes some of the time
    assert!(
        e2e.adversaries[0].detection < 1.0,
        "{:?}",
        e2e.adversaries[0]
    );
    assert_eq!(fast.adversaries[2].detected, fast.adversaries[2].trials);
    assert_eq!(fast.adversaries[2].verifier_cost, 0.0);
}

/// The corridor prover: every session accepts (no cell is over its threshold), while larger
/// threshold scales let it flip the first token on more prompts, and the honest
/// false-positive rate falls as the scale grows.
#[test]
fn corridor_provers_pass_every_session_and_trade_flips_against_false_positives() {
    let mut s = scenario(
        40,
        r#"
[[adversary]]
kind = "corridor"
directions = 2
"#,
    );
    s.reference = "bf16/attn=eager".parse().unwrap();
    s.tolerance.honest = vec!["bf16/attn=eager/splitk=2".parse().unwrap()];
    s.prompts.count = 4;
    s.tolerance.holdout_prompts = 40;
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    let a = &r.adversaries[0];
    assert_eq!(a.kind, AdversaryKind::Corridor);
    assert_eq!(a.detected, 0, "{a:?}");
    assert_eq!(a.bad_cells, 0.0);
    let c = a.corridor.as_ref().expect("corridor result");
    assert_eq!(c.prompts, 4);
    let last = c.scales.len() - 1;
    let one = c.scales.iter().position(|&x| x == 1.0).unwrap();
    assert!(c.flips_all_layers[last] >= c.flips_all_layers[one], "{c:?}");
    assert!(c.flips_all_layers[last] > 0, "{c:?}");
    assert!(c.honest_over[last] <= c.honest_over[0], "{c:?}");
    assert!(c.committed_flips <= c.prompts);
    // A budget outside (0, 1] is refused.
    let mut e = scenario(1, "[[adversary]]\nkind = \"honest\"\n");
    e.adversaries = vec![serde_json::from_str(r#"{"kind": "corridor", "budget": 1.5}"#).unwrap()];
    assert!(matches!(e.validate(), Err(SimError::Scenario(m)) if m.contains("budget")));
}
