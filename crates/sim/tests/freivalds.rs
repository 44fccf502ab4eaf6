//! The simulator with the layer check `freivalds` (issue 16): every prover commits its
//! sub-layer values and the verifier checks challenged cells with its secret key. Honest and
//! reduction-order ("other hardware") provers pass; setup swaps are caught by the algebraic
//! check; the detections are at least those of recompute on the same scenario; the verifier's
//! cost column follows the Freivalds FLOP model; an encoder is a scenario error.

use veritrace_sim::{Scenario, Simulation};

fn scenario(layer_check: &str, adversaries: &str) -> Scenario {
    Scenario::from_toml(&format!(
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
    ))
    .unwrap()
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
}
