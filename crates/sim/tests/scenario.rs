//! Adversaries as data: every kind parses from its flat `[[adversary]]` table, a key its kind
//! does not take is refused by name, every shipped scenario parses, every kind survives a
//! TOML → scenario → JSON → scenario round trip, labels are as reports print them, and reports
//! written when adversaries listed every parameter (null where unused) still load.

use std::collections::BTreeMap;

use veritrace_sim::sweep::{self, Axis};
use veritrace_sim::{
    Adversary, AdversaryKind, Equivocation, Grinding, Partial, Scenario, SimError, SimReport,
};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn scenario(adversaries: &str) -> Result<Scenario, SimError> {
    Scenario::from_toml(&format!(
        r#"
name = "test"
model = "tiny"
seed = 7
trials = 10
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
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 80
holdout_prompts = 10
{adversaries}
"#
    ))
}

/// One adversary of every kind, with and without optional keys.
const EVERY_KIND: &str = r#"
[[adversary]]
kind = "honest"
[[adversary]]
kind = "other-hardware"
setup = "f32/attn=eager/splitk=4"
[[adversary]]
kind = "setup"
setup = "f32/attn=eager/quant=int4-g32"
name = "int4 everywhere"
[[adversary]]
kind = "model-swap"
[[adversary]]
name = "a tenth"
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.1
[[adversary]]
kind = "equivocation"
fraction = 0.25
[[adversary]]
kind = "late-commitment"
[[adversary]]
kind = "grinding"
setup = "f32/attn=eager/quant=int8-channel"
fraction = 0.1
budget_bits = 10
pow_bits = 8
[[adversary]]
kind = "grinding"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.2
budget_bits = 4
"#;

#[test]
fn every_kind_parses_with_its_own_parameters_and_labels_as_before() {
    let s = scenario(EVERY_KIND).unwrap();
    let kinds: Vec<AdversaryKind> = s.adversaries.iter().map(|a| a.adversary.kind()).collect();
    assert_eq!(
        kinds,
        [
            AdversaryKind::Honest,
            AdversaryKind::OtherHardware,
            AdversaryKind::Setup,
            AdversaryKind::ModelSwap,
            AdversaryKind::Partial,
            AdversaryKind::Equivocation,
            AdversaryKind::LateCommitment,
            AdversaryKind::Grinding,
            AdversaryKind::Grinding
        ]
    );
    let labels: Vec<String> = s.adversaries.iter().map(|a| a.label()).collect();
    assert_eq!(
        labels,
        [
            "honest",
            "other-hardware f32/attn=eager/splitk=4",
            "int4 everywhere",
            "model-swap",
            "a tenth",
            "equivocation f=0.25",
            "late-commitment",
            "grinding f32/attn=eager/quant=int8-channel f=0.1 2^10 pow=8",
            "grinding f32/attn=eager/quant=int4-g32 f=0.2 2^4",
        ]
    );
    let setups: Vec<Option<String>> = s
        .adversaries
        .iter()
        .map(|a| a.adversary.setup().map(|s| s.to_string()))
        .collect();
    assert_eq!(
        setups.iter().filter(|s| s.is_some()).count(),
        5,
        "other-hardware, setup, partial and the two grinders take a setup: {setups:?}"
    );
    assert_eq!(setups[0], None);
    assert_eq!(setups[1].as_deref(), Some("f32/attn=eager/splitk=4"));
    // The default label of a named adversary is still its kind and parameters.
    assert_eq!(
        s.adversaries[4].adversary.label(),
        "partial f32/attn=eager/quant=int4-g32 f=0.1"
    );
    assert_eq!(
        s.adversaries[7].adversary,
        Adversary::Grinding(Grinding {
            setup: "f32/attn=eager/quant=int8-channel".parse().unwrap(),
            fraction: 0.1,
            budget_bits: 10,
            pow_bits: Some(8),
        })
    );
    assert_eq!(
        s.adversaries[8].adversary,
        Adversary::Grinding(Grinding {
            setup: "f32/attn=eager/quant=int4-g32".parse().unwrap(),
            fraction: 0.2,
            budget_bits: 4,
            pow_bits: None,
        })
    );
}

#[test]
fn a_key_the_kind_does_not_take_is_refused_by_name() {
    for (table, key) in [
        (
            "kind = \"setup\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0.1",
            "fraction",
        ),
        (
            "kind = \"partial\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0.1\n\
             budget_bits = 4",
            "budget_bits",
        ),
        (
            "kind = \"partial\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0.1\n\
             pow_bits = 4",
            "pow_bits",
        ),
        ("kind = \"honest\"\nsetup = \"f32/attn=eager\"", "setup"),
        ("kind = \"model-swap\"\nfraction = 0.5", "fraction"),
        ("kind = \"late-commitment\"\ncolour = \"red\"", "colour"),
        (
            "kind = \"equivocation\"\nfraction = 0.1\nfractoin = 0.2",
            "fractoin",
        ),
        (
            "kind = \"other-hardware\"\nsetup = \"f32/attn=eager/splitk=4\"\nbudget_bits = 1",
            "budget_bits",
        ),
    ] {
        let e = scenario(&format!("[[adversary]]\n{table}\n")).unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, SimError::Scenario(_)), "{table}: {m}");
        assert!(
            m.contains(&format!("unknown field `{key}`")),
            "{table}: the error does not name `{key}`: {m}"
        );
    }
    // Missing parameters, a missing or unknown kind, and a badly typed name.
    for (table, needle) in [
        (
            "kind = \"partial\"\nfraction = 0.1",
            "missing field `setup`",
        ),
        (
            "kind = \"grinding\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0.1",
            "missing field `budget_bits`",
        ),
        ("kind = \"equivocation\"", "missing field `fraction`"),
        (
            "setup = \"f32/attn=eager/quant=int4-g32\"",
            "missing field `kind`",
        ),
        ("kind = \"sorcerer\"", "unknown variant `sorcerer`"),
        ("kind = \"honest\"\nname = 3", "name"),
    ] {
        let e = scenario(&format!("[[adversary]]\n{table}\n")).unwrap_err();
        assert!(e.to_string().contains(needle), "{table}: {e}");
    }
}

#[test]
fn parameters_are_still_checked_against_the_reference() {
    for (table, needle) in [
        (
            "kind = \"other-hardware\"\nsetup = \"f32/attn=tiled:8\"",
            "not a reduction-order variant",
        ),
        (
            "kind = \"setup\"\nsetup = \"f32/attn=eager/splitk=4\"",
            "only in reduction order",
        ),
        (
            "kind = \"partial\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0",
            "needs a fraction in (0, 1]",
        ),
        (
            "kind = \"equivocation\"\nfraction = 1.5",
            "needs a fraction",
        ),
        (
            "kind = \"grinding\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0.1\n\
             budget_bits = 31",
            "budget_bits = 31 exceeds the limit 30",
        ),
        (
            "kind = \"grinding\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\nfraction = 0.1\n\
             budget_bits = 8\npow_bits = 31",
            "pow_bits = 31 exceeds the limit 30",
        ),
    ] {
        let e = scenario(&format!("[[adversary]]\n{table}\n")).unwrap_err();
        assert!(matches!(e, SimError::Scenario(_)), "{table}: {e}");
        assert!(e.to_string().contains(needle), "{table}: {e}");
    }
}

#[test]
fn every_shipped_scenario_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(format!("{ROOT}/simulations")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!s.adversaries.is_empty());
            n += 1;
        }
    }
    assert!(n >= 5, "{n} scenarios");
    assert_eq!(
        Scenario::default_scenario().adversaries.len(),
        16,
        "the default scenario has every kind"
    );
}

#[test]
fn every_kind_round_trips_through_json_and_toml() {
    let s = scenario(EVERY_KIND).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("null"), "{json}");
    let back: Scenario = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    back.validate().unwrap();
    let toml_text = toml::to_string(&s).unwrap();
    assert_eq!(Scenario::from_toml(&toml_text).unwrap(), s);
    // Each adversary on its own, as JSON: `kind` and exactly its parameters.
    let adversaries = serde_json::to_value(&s).unwrap()["adversary"].clone();
    let keys: Vec<Vec<String>> = adversaries
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_object().unwrap().keys().cloned().collect())
        .collect();
    let mut expected: Vec<Vec<&str>> = vec![
        vec!["kind"],
        vec!["kind", "setup"],
        vec!["kind", "name", "setup"],
        vec!["kind"],
        vec!["fraction", "kind", "name", "setup"],
        vec!["fraction", "kind"],
        vec!["kind"],
        vec!["budget_bits", "fraction", "kind", "pow_bits", "setup"],
        vec!["budget_bits", "fraction", "kind", "setup"],
    ];
    for k in &mut expected {
        k.sort();
    }
    let mut keys = keys;
    for k in &mut keys {
        k.sort();
    }
    assert_eq!(keys, expected);
}

#[test]
fn adversaries_with_null_parameters_still_load() {
    // Reports written before adversaries were tagged data listed every parameter, null where
    // unused.
    let text = r#"[
        {"kind": "honest", "name": null, "setup": null, "fraction": null,
         "budget_bits": null, "pow_bits": null},
        {"kind": "grinding", "name": null, "setup": "f32/attn=eager/quant=int4-g32",
         "fraction": 0.1, "budget_bits": 10, "pow_bits": null}
    ]"#;
    let specs: Vec<veritrace_sim::AdversarySpec> = serde_json::from_str(text).unwrap();
    assert_eq!(specs[0].label(), "honest");
    assert_eq!(
        specs[1].label(),
        "grinding f32/attn=eager/quant=int4-g32 f=0.1 2^10"
    );
}

#[test]
fn shipped_reports_load() {
    for name in [
        "default",
        "grinding",
        "reference-table",
        "reference-table-exact",
        "corridor",
        "freivalds-drawn",
    ] {
        let path = format!("{ROOT}/simulations/results/{name}/report.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let r: SimReport = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.scenario.adversaries.len(), r.adversaries.len());
        for (spec, result) in r.scenario.adversaries.iter().zip(&r.adversaries) {
            assert_eq!(spec.label(), result.label, "{path}");
            assert_eq!(spec.adversary.kind(), result.kind, "{path}");
        }
    }
}

#[test]
fn a_fraction_sweep_sets_the_kinds_that_take_one() {
    let s = scenario(EVERY_KIND).unwrap();
    let p = sweep::apply(&s, &BTreeMap::from([(Axis::Fraction, 0.5)])).unwrap();
    for (before, after) in s.adversaries.iter().zip(&p.adversaries) {
        match before.adversary.fraction() {
            Some(_) => assert_eq!(after.adversary.fraction(), Some(0.5)),
            None => assert_eq!(after, before),
        }
    }
    assert_eq!(
        p.adversaries[5].adversary,
        Adversary::Equivocation(Equivocation { fraction: 0.5 })
    );
    let mut a = Adversary::Partial(Partial {
        setup: "f32/attn=eager/quant=int4-g32".parse().unwrap(),
        fraction: 0.1,
    });
    assert!(a.set_fraction(0.3));
    assert_eq!(a.fraction(), Some(0.3));
    let mut h = s.adversaries[0].adversary.clone();
    assert!(!h.set_fraction(0.3));
    assert_eq!(h, s.adversaries[0].adversary);
}

/// `tolerance.method` picks the calibration method; the default is the order statistic and an
/// unknown method is refused by name.
#[test]
fn the_calibration_method_is_a_scenario_key() {
    use veritrace_protocol::calibration::CalibrationMethod;
    let s = scenario("[[adversary]]\nkind = \"honest\"").unwrap();
    assert_eq!(s.tolerance.method, CalibrationMethod::OrderStatistic);
    let toml = |method: &str| {
        Scenario::from_toml(&format!(
            "name = \"t\"\nmodel = \"tiny\"\nseed = 1\ntrials = 1\nreference = \"f32/attn=eager\"\n\
             [prompts]\ncount = 1\ntokens = 4\noutput = 0\n[protocol]\nchunk = 4\nsamples = 2\n\
             mode = \"interactive\"\n[tolerance]\nmetric = \"rel_l2\"\ntarget_fpr = 0.01\n\
             method = \"{method}\"\nhonest = [\"f32/attn=eager/splitk=2\"]\n\
             calibration_prompts = 600\nholdout_prompts = 1\n[[adversary]]\nkind = \"honest\"\n"
        ))
    };
    assert_eq!(
        toml("exponential-tail").unwrap().tolerance.method,
        CalibrationMethod::ExponentialTail
    );
    let e = toml("largest").unwrap_err().to_string();
    assert!(
        e.contains("largest") && e.contains("exponential-tail"),
        "{e}"
    );
}
