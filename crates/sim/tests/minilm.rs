//! The simulator on real weights (all-MiniLM-L6-v2, a bidirectional encoder). Skips with a
//! message when the model is not installed (`bash scripts/install-minilm.sh`; CI installs it).

use veritrace_sim::{Scenario, SimError, Simulation};

fn installed() -> bool {
    if veritrace_model::minilm_dir().is_some() {
        return true;
    }
    eprintln!("skipping: MiniLM not installed; run scripts/install-minilm.sh");
    false
}

fn scenario(trials: u64) -> Scenario {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../simulations/minilm.toml"
    ))
    .unwrap();
    let mut s = Scenario::from_toml(&text).unwrap();
    s.trials = trials;
    s.prompts.count = 2;
    s.prompts.tokens = 24;
    // alpha = 0.3 / min(4, 7), per-layer confidence 1 - 0.05/7: 64 calibration runs needed.
    s.tolerance.target_fpr = 0.3;
    s.tolerance.calibration_prompts = 70;
    s.tolerance.holdout_prompts = 10;
    s
}

#[test]
fn encoder_provers_end_to_end() {
    if !installed() {
        return;
    }
    let mut s = scenario(60);
    s.adversaries.retain(|a| {
        matches!(
            a.label().as_str(),
            "honest"
                | "setup f32/attn=eager/quant=int4-g32"
                | "partial f32/attn=eager/quant=int4-g32 f=0.1"
                | "late-commitment"
        )
    });
    assert_eq!(s.adversaries.len(), 4);
    let r = Simulation::new(s).unwrap().run(&|| {}).unwrap();
    let honest = &r.adversaries[0];
    assert_eq!(honest.detected, 0, "{honest:?}");
    let int4 = &r.adversaries[1];
    assert!(int4.detection > 0.9, "{int4:?}");
    assert!(int4.saving > 0.5);
    for a in &r.adversaries[1..3] {
        let p = a.predicted.unwrap();
        assert!(
            a.wilson95.0 <= p && p <= a.wilson95.1,
            "{}: {p} outside {:?}",
            a.label,
            a.wilson95
        );
    }
    assert_eq!(r.adversaries[3].detected, r.adversaries[3].trials);
}

#[test]
fn encoder_scenarios_refuse_generation_and_model_swap() {
    if !installed() {
        return;
    }
    let mut s = scenario(1);
    s.prompts.output = 2;
    assert!(matches!(Simulation::new(s), Err(SimError::Scenario(_))));
    let mut s = scenario(1);
    s.adversaries.push(
        Scenario::default_scenario()
            .adversaries
            .into_iter()
            .find(|a| a.label() == "model-swap")
            .unwrap(),
    );
    assert!(matches!(Simulation::new(s), Err(SimError::Scenario(_))));
}

/// `prompts.text`: the pool is the texts through MiniLM's tokenizer.json, each prover run's
/// statement binds its text, the simulated verifier checks that binding, and a text longer than
/// `prompts.tokens`, a chat template MiniLM does not have, or a count other than the number of
/// texts is refused.
#[test]
fn text_prompts_are_tokenized_bound_and_checked() {
    if !installed() {
        return;
    }
    let texts = [
        "A verifier samples cells of the trace and recomputes them.",
        "Honest noise is small; a change of algorithm is not.",
    ];
    let mut s = scenario(20);
    s.prompts.text = texts.iter().map(|t| t.to_string()).collect();
    s.adversaries.retain(|a| {
        matches!(
            a.label().as_str(),
            "honest" | "setup f32/attn=eager/quant=int4-g32"
        )
    });
    let sim = Simulation::new(s.clone()).unwrap();
    let tokenizer = sim.model().tokenizer().unwrap();
    for (i, t) in texts.iter().enumerate() {
        let want = tokenizer.encode(t, false).unwrap();
        assert_eq!(sim.prompt(i as u64), want);
        let run = sim
            .prover_run(&s.adversaries[0].adversary, 0, i as u64)
            .unwrap();
        let bound = run
            .statement
            .input_text
            .as_ref()
            .expect("the text is bound");
        assert_eq!(bound.text, *t);
        assert_eq!(run.statement.input_tokens, want);
    }
    let r = sim.run(&|| {}).unwrap();
    assert_eq!(r.adversaries[0].detected, 0, "{:?}", r.adversaries[0]);
    assert!(r.adversaries[1].detection > 0.9, "{:?}", r.adversaries[1]);

    let mut long = s.clone();
    long.prompts.tokens = 5;
    assert!(matches!(Simulation::new(long), Err(SimError::Scenario(m)) if m.contains("tokens")));
    let mut chat = s.clone();
    chat.prompts.chat = true;
    assert!(matches!(Simulation::new(chat), Err(SimError::Scenario(m)) if m.contains("chat")));
    let mut count = s;
    count.prompts.count = 3;
    assert!(matches!(Simulation::new(count), Err(SimError::Scenario(m)) if m.contains("count")));
}
