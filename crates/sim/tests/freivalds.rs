//! The simulator with the layer check `freivalds` (issue 16): every prover commits its
//! sub-layer values and the verifier checks challenged cells with its secret key. Honest and
//! reduction-order ("other hardware") provers pass; setup swaps are caught by the algebraic
//! check; the detections are at least those of recompute on the same scenario; the verifier's
//! cost column follows the Freivalds FLOP model; an encoder is a scenario error.

use veritrace_sim::{Scenario, Simulation};

fn scenario(layer_check: &str, adversaries: &str) -> Scenario {
    Scenario::from_toml(&scenario_text(layer_check, adversaries)).unwrap()
}

fn scenario_text(layer_check: &str, adversaries: &str) -> String {
    format!(
        r#"
name = "test"
model = "tiny"
seed = 11
trials = 60
reference = "f32/attn=eager"
[prompts]
count = 2
tokens = 12
output = 4
[protocol]
chunk = 4
samples = 3
mode = "interactive"
{layer_check}
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
margin = 2.0
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 80
holdout_prompts = 10
{adversaries}
"#
    )
}

const ADVERSARIES: &str = r#"
[[adversary]]
kind = "honest"
[[adversary]]
kind = "other-hardware"
setup = "f32/attn=eager/splitk=4"
[[adversary]]
kind = "setup"
setup = "f32/attn=eager/quant=int8-channel"
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.2
[[adversary]]
kind = "model-swap"
"#;

#[test]
fn freivalds_detects_at_least_what_recompute_detects() {
    let by = |check: &str| {
        Simulation::new(scenario(check, ADVERSARIES))
            .unwrap()
            .run(&|| {})
            .unwrap()
    };
    let recompute = by("");
    let freivalds = by("layer_check = \"freivalds\"");
    assert!(veritrace_sim::report::markdown(&freivalds).contains("Layer check: freivalds"));
    for (r, f) in recompute.adversaries.iter().zip(&freivalds.adversaries) {
        assert_eq!(r.label, f.label);
        if r.label.starts_with("honest") || r.label.starts_with("other-hardware") {
            assert_eq!(f.detected, 0, "{}: {f:?}", f.label);
            assert_eq!(f.bad_cells, 0.0, "{}", f.label);
        } else {
            assert!(
                f.bad_cells >= r.bad_cells,
                "{}: {} < {}",
                f.label,
                f.bad_cells,
                r.bad_cells
            );
            assert!(f.detected > 0, "{}", f.label);
        }
        // the Freivalds check reads more bytes and costs less than recompute
        assert!(f.bytes_opened > r.bytes_opened, "{}", f.label);
        assert!(
            f.verifier_cost < r.verifier_cost,
            "{}: {} vs {}",
            f.label,
            f.verifier_cost,
            r.verifier_cost
        );
    }
    let int8 = &freivalds.adversaries[2];
    assert!(
        int8.reasons.keys().any(|k| k == "AlgebraicCheck"),
        "{:?}",
        int8.reasons
    );
}

#[test]
fn layer_check_settings_are_validated() {
    let bad = |extra: &str| {
        Scenario::from_toml(&format!(
            r#"
name = "test"
model = "tiny"
seed = 1
trials = 1
reference = "f32/attn=eager"
[prompts]
count = 1
tokens = 4
output = 1
[protocol]
chunk = 4
samples = 1
mode = "interactive"
layer_check = "freivalds"
{extra}
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 10
holdout_prompts = 10
[[adversary]]
kind = "honest"
"#
        ))
    };
    assert!(bad("freivalds_repetitions = 0").is_err());
    assert!(bad("freivalds_repetitions = 65").is_err());
    assert!(bad("sublayer_tolerance = -1.0").is_err());
    assert!(bad("layer_check_typo = 1").is_err());
    assert!(bad("sublayer_tolerance = 1e-6").is_ok());
    assert!(bad("freivalds_bounds = \"calibrated\"").is_ok());
    assert!(bad("freivalds_bounds = \"sideways\"").is_err());
    // a scale per map and one for all at once is ambiguous
    assert!(bad("freivalds_bounds = \"calibrated\"\nfreivalds_bound_scale = 0.5").is_err());
    // per-map scales need the Freivalds check
    assert!(Scenario::from_toml(&scenario_text(
        "freivalds_bounds = \"calibrated\"",
        ADVERSARIES
    ))
    .is_err());
}

/// A scenario whose per-map calibration needs few runs: a session false-alarm target of 0.9
/// at confidence 0.5 with one cell per session needs 30 runs by the order statistic.
fn per_map_scenario(calibration_prompts: u32, adversaries: &str) -> Scenario {
    let text = scenario_text(
        "layer_check = \"freivalds\"\nfreivalds_repetitions = 1\nfreivalds_bounds = \"calibrated\"",
        adversaries,
    )
    .replace("target_fpr = 0.3", "target_fpr = 0.9\nconfidence = 0.5")
    .replace("samples = 3", "samples = 1")
    .replace(
        "calibration_prompts = 80\nholdout_prompts = 10",
        &format!("calibration_prompts = {calibration_prompts}\nholdout_prompts = 40"),
    );
    Scenario::from_toml(&text).unwrap()
}

#[test]
fn per_map_bounds_are_calibrated_on_honest_runs_and_applied() {
    let perturbed = r#"
[[adversary]]
kind = "honest"
[[adversary]]
kind = "other-hardware"
setup = "f32/attn=eager/splitk=4"
[[adversary]]
kind = "weight-perturbation"
layer = 2
matrix = "down"
quant = "int8-channel"
factor = 0.01
"#;
    let r = Simulation::new(per_map_scenario(60, perturbed))
        .unwrap()
        .run(&|| {})
        .unwrap();
    let f = r
        .freivalds_bounds
        .as_ref()
        .expect("per-map scales reported");
    assert_eq!(f.bounds.scales.len(), 4);
    assert_eq!(f.calibration.layers, 28);
    assert_eq!(f.calibration.runs, 60);
    assert!(f.calibration.runs_needed <= 60);
    let c = f.bounds.calibration.as_ref().unwrap();
    assert_eq!((c.method.as_str(), c.holdout_runs), ("order-statistic", 40));
    // every scale far below the rigorous bound, and above the map's own held-out noise
    // (else held-out runs would exceed)
    for (s, w) in f.bounds.scales.iter().zip(&f.holdout_worst) {
        for (&s, &w) in s.iter().zip(w) {
            assert!(s > 0.0 && s < 0.05, "{s}");
            assert!(w > 0.0, "an honest map with no rounding at all");
        }
    }
    let h = f.holdout.as_ref().unwrap();
    assert_eq!(h.samples, 40);
    let md = veritrace_sim::report::markdown(&r);
    assert!(
        md.contains("Freivalds bounds: one scale per linear map (28 maps)"),
        "{md}"
    );
    assert_eq!(r.adversaries[0].detected, 0, "an honest prover rejected");
    assert_eq!(
        r.adversaries[1].detected, 0,
        "a reduction-order prover rejected"
    );
    // 1% of the int8 error of one matrix: invisible to the rigorous bound, caught under the
    // map's calibrated scale, at the rate the per-map scale predicts
    let w = &r.adversaries[2];
    let p = w.predicted.unwrap();
    assert!(p > 0.05, "{p}");
    assert!(w.detected > 0);
    assert!(
        w.run_bounds.0 <= p + 1e-9 && p <= w.run_bounds.1 + 1e-9,
        "{p} {w:?}"
    );
    let rigorous = Simulation::new(scenario(
        "layer_check = \"freivalds\"\nfreivalds_repetitions = 1",
        &perturbed[perturbed.find("[[adversary]]\nkind = \"weight").unwrap()..],
    ))
    .unwrap()
    .run(&|| {})
    .unwrap();
    assert!(rigorous.adversaries[0].predicted.unwrap() < 1e-6);
    assert_eq!(rigorous.adversaries[0].detected, 0);
    // too few runs for the target: refused before any trial, with the count needed
    let err = Simulation::new(per_map_scenario(20, perturbed))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("freivalds_bounds") && err.contains("needed"),
        "{err}"
    );
}

#[test]
fn weight_perturbation_follows_the_stated_probability() {
    let s = scenario(
        "layer_check = \"freivalds\"\nfreivalds_repetitions = 1",
        r#"
[[adversary]]
kind = "weight-perturbation"
layer = 2
matrix = "down"
quant = "int8-channel"
factor = 1.0
[[adversary]]
kind = "weight-perturbation"
layer = 2
matrix = "down"
quant = "int8-channel"
factor = 0.001
[[adversary]]
kind = "weight-perturbation"
layer = 1
matrix = "v"
quant = "int4-g32"
factor = 1.0
"#,
    );
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    for a in &r.adversaries {
        let p = a.predicted.expect("a prediction with the freivalds check");
        assert!((0.0..=1.0).contains(&p), "{}: {p}", a.label);
        // the measured rate lies within its bounds over runs around the stated probability
        assert!(
            a.run_bounds.0 <= p + 1e-9 && p <= a.run_bounds.1 + 1e-9,
            "{}: predicted {p} outside {:?}",
            a.label,
            a.run_bounds
        );
    }
    assert!(r.adversaries[0].detected > 0);
    assert!(r.adversaries[0].reasons.contains_key("AlgebraicCheck"));
    assert_eq!(
        r.adversaries[1].detected, 0,
        "0.1% of the int8 error is below the bound"
    );
    assert!(r.adversaries[1].predicted.unwrap() < 1e-6);
    assert!(r.adversaries[2].detected > 0);
    // recompute sees the full int8 error too, with the hypergeometric prediction
    let s = scenario(
        "",
        r#"
[[adversary]]
kind = "weight-perturbation"
layer = 2
matrix = "down"
quant = "int8-channel"
factor = 1.0
"#,
    );
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    assert!(r.adversaries[0].predicted.is_some());
    // bad parameters are scenario errors
    for bad in [
        "layer = 9\nmatrix = \"down\"\nquant = \"int8-channel\"\nfactor = 1.0",
        "layer = 0\nmatrix = \"down\"\nquant = \"int8-channel\"\nfactor = 1.0",
        "layer = 1\nmatrix = \"lm-head\"\nquant = \"int8-channel\"\nfactor = 1.0",
        "layer = 1\nmatrix = \"down\"\nquant = \"int9\"\nfactor = 1.0",
        "layer = 1\nmatrix = \"down\"\nquant = \"int8-channel\"\nfactor = 0.0",
        "layer = 1\nmatrix = \"sideways\"\nquant = \"int8-channel\"\nfactor = 1.0",
    ] {
        let text = format!("[[adversary]]\nkind = \"weight-perturbation\"\n{bad}\n");
        let s = Scenario::from_toml(&scenario_text("", &text));
        let failed = match s {
            Err(_) => true,
            Ok(s) => Simulation::new(s).is_err(),
        };
        assert!(failed, "{bad}");
    }
}

/// A bf16 reference on the invariant kernels with the Freivalds check: the verifier's key is
/// derived for the bf16 weights, honest provers pass and an int4 prover is caught.
#[test]
fn a_bf16_reference_is_checked_with_the_key_of_its_weights() {
    let text = r#"
name = "bf16-freivalds"
model = "tiny"
seed = 5
trials = 30
reference = "bf16/attn=eager/kernels=invariant"
[prompts]
count = 2
tokens = 12
output = 4
[protocol]
chunk = 4
samples = 3
mode = "interactive"
layer_check = "freivalds"
freivalds_repetitions = 1
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
exact = true
honest = ["bf16/attn=eager/kernels=invariant"]
calibration_prompts = 1
holdout_prompts = 4
[[adversary]]
kind = "honest"
[[adversary]]
kind = "setup"
setup = "bf16/attn=eager/quant=int4-g32/kernels=invariant"
"#;
    let r = Simulation::new(Scenario::from_toml(text).unwrap())
        .unwrap()
        .run(&|| {})
        .unwrap();
    assert_eq!(r.adversaries[0].detected, 0, "{:?}", r.adversaries[0]);
    assert!(r.adversaries[1].detected > 0, "{:?}", r.adversaries[1]);
    assert!(
        r.adversaries[1].reasons.contains_key("AlgebraicCheck"),
        "{:?}",
        r.adversaries[1].reasons
    );
}

/// The sampled attention check in the simulator (specs/freivalds.md §7): a prover whose
/// attention output is one ulp off in one of tiny's 4 heads, nothing else, has every cell of
/// layers >= 1 bad under the full check, and under one sampled head per cell only the cells whose
/// draw (from the scenario's key and the statement) is that head; honest and reduction-order
/// provers pass either way; the sampled check's cost column is below the full check's; and the
/// sampling settings are validated.
#[test]
fn the_sampled_attention_check_catches_a_head_cheat_where_it_draws_the_head() {
    let adversaries = r#"
[[adversary]]
kind = "honest"
[[adversary]]
kind = "other-hardware"
setup = "f32/attn=eager/splitk=4"
[[adversary]]
kind = "head-cheat"
heads = 1
"#;
    let by = |check: &str| {
        Simulation::new(scenario(check, adversaries))
            .unwrap()
            .run(&|| {})
            .unwrap()
    };
    let full = by("layer_check = \"freivalds\"");
    let sampled = by("layer_check = \"freivalds\"\nattention_heads = 1\ncontext_rows = 2");
    assert!(veritrace_sim::report::markdown(&sampled).contains("sampled attention check"));
    // 12 + 4 tokens in cells of 4: 4 cells in each of tiny's 4 layers >= 1
    let layer_cells = 16.0;
    for (f, s) in full.adversaries.iter().zip(&sampled.adversaries) {
        if f.label.starts_with("head-cheat") {
            assert_eq!(f.bad_cells, layer_cells, "{f:?}");
            assert!(f.detected == f.trials, "{f:?}");
            // about a quarter of them, as drawn for the scenario's key: some, not all
            assert!(
                s.bad_cells > 0.0 && s.bad_cells < layer_cells,
                "{}",
                s.bad_cells
            );
            assert!(s.detected < f.detected, "{s:?}");
        } else {
            assert_eq!((f.detected, s.detected), (0, 0), "{}", f.label);
        }
        assert!(s.verifier_cost < f.verifier_cost, "{}", s.label);
    }
    // sampling needs the Freivalds check, and at least one head
    let bad = |check: &str| {
        Scenario::from_toml(&scenario_text(check, adversaries))
            .and_then(|s| Simulation::new(s).map(|_| ()))
            .is_err()
    };
    assert!(bad("attention_heads = 1"));
    assert!(bad("layer_check = \"freivalds\"\nattention_heads = 0"));
    assert!(!bad("layer_check = \"freivalds\"\ncontext_rows = 0"));
    // a head cheat on a model without that many heads is refused
    assert!(bad(
        "layer_check = \"freivalds\"\n[[adversary]]\nkind = \"head-cheat\"\nheads = 9"
    ));
}

/// Drawn openings in the simulator (specs/protocol.md §4.4): provers commit by head, every
/// challenge carries an attention draw of 1 of tiny's 4 query heads and 1 earlier context chunk
/// per challenged cell (its seed from the trial's randomness), the provers open only that and
/// the verifier checks exactly that. Honest and reduction-order provers are never rejected; a
/// prover whose attention output is one ulp off in one head has every cell of layers >= 1 bad,
/// each challenged one caught when its draw picks that head (1/4), so a session of `k` cells is
/// caught with `1 − E[(3/4)^J]`, `J` the bad cells among them (hypergeometric): measured within
/// five standard deviations of that, and predicted as that. Fast mode draws each trial from its
/// run's exact law and agrees with the end-to-end rates within five standard deviations; an
/// equivocator's trials run end to end there (its opened cells depend on the draw), with the
/// same outcomes.
#[test]
fn drawn_openings_catch_a_head_cheat_at_the_stated_rate() {
    let adversaries = r#"
[[adversary]]
kind = "honest"
[[adversary]]
kind = "other-hardware"
setup = "f32/attn=eager/splitk=4"
[[adversary]]
kind = "head-cheat"
heads = 1
[[adversary]]
kind = "weight-perturbation"
layer = 1
matrix = "v"
quant = "int4-g32"
factor = 1.0
trials = 40
[[adversary]]
kind = "equivocation"
fraction = 0.2
trials = 40
"#;
    let text = scenario_text(
        "layer_check = \"freivalds\"\nattention_heads = 1\ncontext_chunks = 1",
        adversaries,
    )
    .replace("trials = 60", "trials = 1000");
    let sim = Simulation::new(Scenario::from_toml(&text).unwrap()).unwrap();
    let r = sim.run(&|| {}).unwrap();
    let md = veritrace_sim::report::markdown(&r);
    assert!(md.contains("drawn openings"), "{md}");
    // 12 + 4 tokens in cells of 4: 20 cells, 16 of them in tiny's 4 layers >= 1; k = 3
    let (cells, bad, k) = (20u64, 16u64, 3u64);
    let choose =
        |n: u64, r: u64| -> f64 { (0..r).map(|i| (n - i) as f64 / (i + 1) as f64).product() };
    let miss: f64 = (0..=k)
        .map(|j| {
            choose(bad, j) * choose(cells - bad, k - j) / choose(cells, k) * 0.75f64.powi(j as i32)
        })
        .sum();
    let stated = 1.0 - miss;
    for a in &r.adversaries {
        assert!(a.bytes_opened > 0.0, "{}", a.label);
        if a.label.starts_with("equivocation") {
            assert_eq!(a.trials, 40);
            assert!(a.detected > 0, "{a:?}");
            continue;
        }
        if a.label.starts_with("weight-perturbation") {
            // the value projection is checked at the drawn chunks' rows only: the prediction
            // weighs that in, and the measured rate lies within its bounds over runs
            assert_eq!(a.trials, 40);
            let p = a.predicted.expect("a prediction under drawn openings");
            assert!(
                a.run_bounds.0 <= p + 1e-9 && p <= a.run_bounds.1 + 1e-9,
                "{}: predicted {p} outside {:?}",
                a.label,
                a.run_bounds
            );
            continue;
        }
        assert_eq!(a.trials, 1000, "{}", a.label);
        if a.label.starts_with("head-cheat") {
            assert_eq!(a.bad_cells, bad as f64, "{a:?}");
            let p = a.predicted.expect("a prediction under drawn openings");
            assert!((p - stated).abs() < 1e-9, "predicted {p}, stated {stated}");
            let n = a.trials as f64;
            let sd = (n * stated * (1.0 - stated)).sqrt();
            assert!(
                (a.detected as f64 - n * stated).abs() < 5.0 * sd,
                "detected {} of {}, stated {stated}",
                a.detected,
                a.trials
            );
            assert!(a.detected < a.trials, "some sessions escape: {a:?}");
            assert!(
                a.reasons.keys().all(|k| k == "AlgebraicCheck"),
                "{:?}",
                a.reasons
            );
        } else {
            assert_eq!((a.detected, a.bad_cells), (0, 0.0), "{a:?}");
            assert_eq!(a.predicted, Some(0.0), "{}", a.label);
        }
    }
    // fast mode: each trial from its run's exact law, agreeing with the end-to-end rates
    let f = sim
        .run_with(veritrace_sim::EngineMode::Fast, &|| {})
        .unwrap();
    for (e, q) in r.adversaries.iter().zip(&f.adversaries) {
        assert_eq!((e.trials, &e.label), (q.trials, &q.label));
        if e.label.starts_with("equivocation") || e.label.starts_with("weight-perturbation") {
            // run end to end in fast mode too, from the same streams
            assert_eq!(e.detected, q.detected, "{}", e.label);
            continue;
        }
        let n = e.trials as f64;
        let (pe, pf) = (e.detected as f64 / n, q.detected as f64 / n);
        let p = (pe + pf) / 2.0;
        let sd = (2.0 * p * (1.0 - p) / n).sqrt();
        assert!(
            (pe - pf).abs() <= 5.0 * sd + 1e-12,
            "{}: end to end {pe}, fast {pf}",
            e.label
        );
        if e.label.starts_with("head-cheat") {
            assert!(0 < q.detected && q.detected < q.trials, "{q:?}");
        }
    }
}

/// `context_chunks` draws openings: it needs `attention_heads` and the layer check `freivalds`
/// (a drawn opening cannot be recomputed, so not `both` either), and excludes `context_rows`
/// (the key's sample of whole openings); each refusal is a scenario error naming the fields.
#[test]
fn drawn_opening_settings_are_validated() {
    let err = |check: &str| -> String {
        match Scenario::from_toml(&scenario_text(check, ADVERSARIES)) {
            Err(veritrace_sim::SimError::Scenario(m)) => m,
            other => panic!("{check}: {other:?}"),
        }
    };
    let m = err(
        "layer_check = \"freivalds\"\nattention_heads = 1\ncontext_chunks = 1\ncontext_rows = 4",
    );
    assert!(
        m.contains("context_chunks") && m.contains("context_rows"),
        "{m}"
    );
    let m = err("layer_check = \"freivalds\"\ncontext_chunks = 1");
    assert!(
        m.contains("context_chunks") && m.contains("attention_heads"),
        "{m}"
    );
    for check in ["layer_check = \"both\"", "layer_check = \"recompute\"", ""] {
        let m = err(&format!("{check}\nattention_heads = 1\ncontext_chunks = 1"));
        assert!(
            m.contains("context_chunks") && m.contains("layer_check = \"freivalds\""),
            "{check}: {m}"
        );
    }
    let m = err("layer_check = \"freivalds\"\nattention_heads = 0\ncontext_chunks = 1");
    assert!(m.contains("attention_heads"), "{m}");
    // accepted: with and without earlier chunks, one head or every one
    for ok in [
        "layer_check = \"freivalds\"\nattention_heads = 1\ncontext_chunks = 0",
        "layer_check = \"freivalds\"\nattention_heads = 4\ncontext_chunks = 9",
    ] {
        let s = Scenario::from_toml(&scenario_text(ok, ADVERSARIES)).unwrap();
        assert!(s.protocol.attention_sample().is_some());
        // the key samples nothing: the draw is public
        assert!(s.protocol.attention_sampling().is_full());
    }
    // without context_chunks nothing changes: whole openings, the key's own sample
    let s = Scenario::from_toml(&scenario_text(
        "layer_check = \"freivalds\"\nattention_heads = 1\ncontext_rows = 2",
        ADVERSARIES,
    ))
    .unwrap();
    assert_eq!(s.protocol.attention_sample(), None);
    assert_eq!(s.protocol.attention_sampling().heads, Some(1));
}
