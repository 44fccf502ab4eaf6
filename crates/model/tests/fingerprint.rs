//! The fingerprint study on the tiny decoder: the structure of the report, the classes of clear
//! cases (a re-run is invariant; int4 and a skipped layer stand out of the honest noise; an
//! honest variant sits near the floor), JSON round trip, the setups-file parser and the default
//! setups file in `simulations/setups/`.

use veritrace_model::fingerprint::{
    format_setups, parse_setups, SetupKind, Snr, DEFAULT_THRESHOLD,
};
use veritrace_model::{
    run_study, Class, Engine, FingerprintError, LlamaModel, Setup, StudyPlan, StudyReport,
};

fn setup(s: &str) -> Setup {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn tiny() -> LlamaModel {
    LlamaModel::preset("tiny").unwrap()
}

const SETUPS: [&str; 7] = [
    "f32/attn=eager",
    "f32/attn=eager/splitk=2",
    "f32/attn=eager/splitk=4",
    "f32/attn=eager/order=decode",
    "f32/attn=tiled:16",
    "f32/attn=eager/quant=int4-g32",
    "f32/attn=eager/skip=2",
];

fn plan() -> StudyPlan {
    StudyPlan {
        reference: Setup::F32_EAGER,
        setups: SETUPS.iter().map(|s| setup(s)).collect(),
        prompts: 2,
        tokens: 32,
        inputs: Vec::new(),
        chunk: 16,
        threshold: DEFAULT_THRESHOLD,
    }
}

fn study() -> StudyReport {
    let model = tiny();
    let mut calls = Vec::new();
    let report = run_study(&model, &plan(), |done, total| calls.push((done, total))).unwrap();
    let total = 2 * (SETUPS.len() + 1);
    assert_eq!(calls, (1..=total).map(|d| (d, total)).collect::<Vec<_>>());
    report
}

#[test]
fn study_structure_and_clear_classes() {
    let r = study();
    let layers = 5; // tiny: 4 layers + embeddings
    assert_eq!(r.num_layers, 4);
    assert_eq!(r.noise_floor.len(), layers);
    assert_eq!(r.results.len(), SETUPS.len());
    let n = SETUPS.len() + 1;
    assert_eq!(r.pairs.len(), n * (n - 1) / 2);
    assert!(r.pairs.iter().all(|p| p.layers.len() == layers));
    assert!(r.results.iter().all(|x| x.snr.len() == layers));
    // Honest variants: splitk=2, splitk=4, order=decode.
    assert_eq!(r.honest, vec![1, 2, 3]);
    // Embeddings are exact copies under every f32 setup: zero floor at h0, nonzero above.
    assert_eq!(r.noise_floor[0], 0.0);
    assert!(r.noise_floor[1..].iter().all(|&f| f > 0.0 && f < 1e-4));

    let get = |s: &str| r.result(&setup(s)).unwrap();
    let rerun = get("f32/attn=eager");
    assert_eq!(rerun.kind, SetupKind::Rerun);
    assert_eq!(rerun.class, Class::Invariant);
    assert_eq!(rerun.first_differing_layer, None);
    assert_eq!(rerun.max_snr, Snr(0.0));
    assert_eq!(rerun.max_snr_layer, None);

    for s in ["f32/attn=eager/splitk=2", "f32/attn=eager/splitk=4"] {
        let h = get(s);
        assert_eq!(h.kind, SetupKind::ReductionOrder);
        assert_ne!(h.class, Class::Invariant, "{s}");
        assert_eq!(h.first_differing_layer, Some(1), "{s}");
        // Divided by the other honest variants' floor: of order 1, not a signal.
        assert!(
            h.max_snr.0 > 0.05 && h.max_snr.0 < DEFAULT_THRESHOLD,
            "{s}: {:?}",
            h.max_snr
        );
    }

    for s in ["f32/attn=eager/quant=int4-g32", "f32/attn=eager/skip=2"] {
        let c = get(s);
        assert_eq!(c.class, Class::CrossHardware, "{s}");
        assert!(
            c.max_snr.0 > 10.0 * DEFAULT_THRESHOLD,
            "{s}: {:?}",
            c.max_snr
        );
        assert!(c.last_rel_l2 > 1e-3, "{s}");
    }
    assert_eq!(
        get("f32/attn=eager/quant=int4-g32").kind,
        SetupKind::Algorithm
    );
    let skip = get("f32/attn=eager/skip=2");
    assert_eq!(skip.kind, SetupKind::Structural);
    // Layer 1 is computed as in the reference; the skipped layer 2 is the first to differ.
    assert_eq!(skip.first_differing_layer, Some(2));
    assert_eq!(skip.snr[1], Snr(0.0));

    // Their fingerprints are unique within the study; an honest variant's is not.
    for s in ["f32/attn=eager/quant=int4-g32", "f32/attn=eager/skip=2"] {
        let nb = get(s).nearest.unwrap();
        assert!(
            !nb.identical && nb.max_snr.0 >= DEFAULT_THRESHOLD,
            "{s}: {nb:?}"
        );
    }
    let nb = get("f32/attn=eager/splitk=2").nearest.unwrap();
    assert!(nb.max_snr.0 < DEFAULT_THRESHOLD, "{nb:?}");
    assert!(r
        .results
        .iter()
        .all(|x| x.nearest.is_some_and(|nb| nb.setup != x.setup)));

    // Every class agrees with its numbers.
    for x in &r.results {
        let expected = match (x.first_differing_layer, x.max_snr.0 >= DEFAULT_THRESHOLD) {
            (None, _) => Class::Invariant,
            (Some(_), true) => Class::CrossHardware,
            (Some(_), false) => Class::IdenticalHardware,
        };
        assert_eq!(x.class, expected, "{}", x.setup);
    }
    // Pair statistics are symmetric in lookup and bitwise-equal pairs have zero distance.
    let p = r.pair(1, 0).unwrap();
    assert_eq!((p.first, p.second), (0, 1));
    assert!(p
        .layers
        .iter()
        .all(|l| l.differing_prompts == 0 && l.rel_l2_max == 0.0));

    let md = r.to_markdown();
    for s in SETUPS {
        assert!(md.contains(&format!("| `{s}` |")), "{s} missing from\n{md}");
    }
    assert!(md.contains("cross-hardware") && md.contains("invariant"));
}

#[test]
fn report_json_round_trips() {
    let r = study();
    let json = serde_json::to_string(&r).unwrap();
    let back: StudyReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.plan, r.plan);
    assert_eq!(back.honest, r.honest);
    assert_eq!(back.to_markdown(), r.to_markdown());
    for (a, b) in back.results.iter().zip(&r.results) {
        assert_eq!((a.setup, a.kind, a.class), (b.setup, b.kind, b.class));
        assert_eq!(a.first_differing_layer, b.first_differing_layer);
        for (x, y) in a.snr.iter().zip(&b.snr) {
            assert!(
                x.0 == y.0 || (x.0 - y.0).abs() <= 1e-12 * y.0.abs(),
                "{x:?} {y:?}"
            );
        }
    }
    assert_eq!(back.pairs.len(), r.pairs.len());
    // The setup strings appear in canonical form.
    assert!(json.contains("\"f32/attn=eager/quant=int4-g32\""));
}

#[test]
fn a_plan_without_honest_variants_is_refused() {
    let mut p = plan();
    p.setups = vec![setup("f32/attn=eager"), setup("bf16/attn=eager")];
    let e = run_study(&tiny(), &p, |_, _| {}).unwrap_err();
    assert!(
        matches!(&e, FingerprintError::NoHonestVariant { reference } if reference == "f32/attn=eager"),
        "{e}"
    );
    for bad in [
        StudyPlan {
            prompts: 0,
            ..plan()
        },
        StudyPlan {
            tokens: 0,
            ..plan()
        },
        StudyPlan { chunk: 0, ..plan() },
        // explicit prompts: their number and longest length must be the plan's
        StudyPlan {
            inputs: vec![vec![1, 2, 3], vec![4; 31]],
            ..plan()
        },
        StudyPlan {
            inputs: vec![vec![1; 32], Vec::new()],
            ..plan()
        },
        StudyPlan {
            threshold: f64::NAN,
            ..plan()
        },
        StudyPlan {
            setups: vec![],
            ..plan()
        },
    ] {
        assert!(matches!(
            run_study(&tiny(), &bad, |_, _| {}),
            Err(FingerprintError::InvalidPlan(_))
        ));
    }
    // A setup the model cannot run (layer 9 of 4) is the engine's typed error.
    let mut p = plan();
    p.setups.push(setup("f32/attn=eager/skip=9"));
    assert!(matches!(
        run_study(&tiny(), &p, |_, _| {}),
        Err(FingerprintError::Model(_))
    ));
}

#[test]
fn setups_file_parser() {
    let text = "# reference first\n\nf32/attn=eager\n  f32/attn=eager/splitk=2  # honest\n#\nbf16/attn=eager\n";
    let (reference, setups) = parse_setups(text).unwrap();
    assert_eq!(reference, Setup::F32_EAGER);
    assert_eq!(
        setups,
        vec![setup("f32/attn=eager/splitk=2"), setup("bf16/attn=eager")]
    );
    let written = format_setups("a comment\n\nmore", &reference, &setups);
    assert!(written.starts_with("# a comment\n#\n# more\n"));
    assert_eq!(parse_setups(&written).unwrap(), (reference, setups));

    for (text, line) in [
        ("f32/attn=eager\nf32/attn=flash\n", 2),
        ("# c\n\nf32/attn=eager/splitk=1\n", 3),
        ("f32/attn=eager\n\n\n\nF32/attn=eager # upper case\n", 5),
        ("f32/attn=eager\nf32/attn=eager/skip=0\n", 2),
    ] {
        match parse_setups(text) {
            Err(FingerprintError::SetupLine { line: l, reason }) => {
                assert_eq!(l, line, "{text:?}: {reason}");
                let msg = FingerprintError::SetupLine { line: l, reason }.to_string();
                assert!(msg.contains(&format!("line {line}")), "{msg}");
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
    for empty in ["", "\n\n", "# only a comment\n"] {
        assert!(matches!(
            parse_setups(empty),
            Err(FingerprintError::NoSetups)
        ));
    }
}

#[test]
fn default_plan_and_the_shipped_setups_file() {
    let model = tiny();
    let plan = StudyPlan::default_for(&model);
    plan.validate().unwrap();
    assert_eq!(plan.reference, Setup::F32_EAGER);
    // Re-run, 5 honest, 6 precision/attention, 8 quantizations, skip and reuse.
    assert_eq!(plan.setups.len(), 22);
    assert_eq!(plan.honest_variants().len(), 5);
    let count = |k: SetupKind| {
        plan.setups
            .iter()
            .filter(|s| SetupKind::of(s, &plan.reference) == k)
            .count()
    };
    assert_eq!(count(SetupKind::Rerun), 1);
    assert_eq!(count(SetupKind::ReductionOrder), 5);
    assert_eq!(count(SetupKind::Algorithm), 14);
    assert_eq!(count(SetupKind::Structural), 2);
    assert!(plan.setups.contains(&setup("f32/attn=window:16")));
    assert!(plan.setups.contains(&setup("f32/attn=eager/skip=2")));
    assert!(plan.setups.contains(&setup("f32/attn=eager/reuse=3")));
    // Every default setup runs on the tiny model.
    for s in &plan.setups {
        model.trace(s, &model.prompt(0, 20), 16).unwrap();
    }
    // simulations/setups/default.txt is this plan for the tiny model.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../simulations/setups/default.txt"
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert_eq!(
        parse_setups(&text).unwrap(),
        (plan.reference, plan.setups.clone())
    );
}

#[test]
fn a_lone_noisy_honest_variant_is_judged_against_its_own_floor() {
    // batch=2 is bitwise equal to the reference here, so it holds no noise: order=decode is the
    // only noise source and cannot stand out of the other variants' zero floor.
    let p = StudyPlan {
        setups: vec![
            setup("f32/attn=eager/batch=2"),
            setup("f32/attn=eager/order=decode"),
        ],
        prompts: 1,
        ..plan()
    };
    let r = run_study(&tiny(), &p, |_, _| {}).unwrap();
    assert_eq!(r.results[0].class, Class::Invariant);
    let decode = &r.results[1];
    assert_eq!(decode.class, Class::IdenticalHardware);
    assert!(
        decode.max_snr.0 > 0.0 && decode.max_snr.0 <= 1.0,
        "{:?}",
        decode.max_snr
    );
}
