//! Every count and size field of a scenario has a documented upper bound, refused at
//! validation with a typed error naming the field, the value and the limit; the shipped
//! scenarios stay within them.

use veritrace_sim::scenario::{
    MAX_ADVERSARIES, MAX_BUDGET_BITS, MAX_CHUNK, MAX_DIRECTIONS, MAX_END_TO_END_TRIALS,
    MAX_HONEST_RUNS, MAX_HONEST_SETUPS, MAX_MODEL_BYTES, MAX_NAME_BYTES, MAX_OUTPUT_TOKENS,
    MAX_POW_BITS, MAX_PROMPTS, MAX_PROMPT_TOKENS, MAX_ROUNDS, MAX_SAMPLES, MAX_SCENARIO_BYTES,
    MAX_TRIALS,
};
use veritrace_sim::{EngineMode, Scenario, SimError, Simulation};

fn base(trials: u64, extra: &str, adversaries: &str) -> String {
    format!(
        r#"
name = "bounds"
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
rounds = 1
pow_bits = 0
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
margin = 2.0
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 80
holdout_prompts = 10
{extra}
{adversaries}
"#
    )
}

const HONEST: &str = "[[adversary]]\nkind = \"honest\"\n";

/// `from` replaced by `to` in the base scenario is refused, the message naming `field`,
/// `value` and `limit`.
fn refused(from: &str, to: &str, field: &str, value: &str, limit: u64) {
    let text = base(10, "", HONEST);
    assert!(text.contains(from), "{from}");
    let text = text.replacen(from, to, 1);
    refused_text(&text, field, value, limit);
}

fn refused_text(text: &str, field: &str, value: &str, limit: u64) {
    let e = Scenario::from_toml(text).unwrap_err();
    assert!(matches!(e, SimError::Scenario(_)), "{e}");
    assert!(e.is_input());
    let m = e.to_string();
    assert!(m.contains(field), "{m} should name {field}");
    assert!(m.contains(value), "{m} should name {value}");
    assert!(
        m.contains(&format!("limit {limit}")),
        "{m} should name {limit}"
    );
}

#[test]
fn the_base_and_the_limits_themselves_are_accepted() {
    Scenario::from_toml(&base(10, "", HONEST)).unwrap();
    let at_limits = base(MAX_TRIALS, "", HONEST)
        .replacen("count = 2", &format!("count = {MAX_PROMPTS}"), 1)
        .replacen("tokens = 12", &format!("tokens = {MAX_PROMPT_TOKENS}"), 1)
        .replacen("output = 4", &format!("output = {MAX_OUTPUT_TOKENS}"), 1)
        .replacen("chunk = 4", &format!("chunk = {MAX_CHUNK}"), 1)
        .replacen("samples = 3", &format!("samples = {MAX_SAMPLES}"), 1)
        .replacen("rounds = 1", &format!("rounds = {MAX_ROUNDS}"), 1)
        .replacen("pow_bits = 0", &format!("pow_bits = {MAX_POW_BITS}"), 1)
        .replacen(
            "calibration_prompts = 80",
            &format!("calibration_prompts = {MAX_HONEST_RUNS}"),
            1,
        )
        .replacen(
            "holdout_prompts = 10",
            &format!("holdout_prompts = {MAX_HONEST_RUNS}"),
            1,
        );
    Scenario::from_toml(&at_limits).unwrap();
}

#[test]
fn trials_are_bounded() {
    refused(
        "trials = 10",
        &format!("trials = {}", MAX_TRIALS + 1),
        "trials",
        &(MAX_TRIALS + 1).to_string(),
        MAX_TRIALS,
    );
    let text = base(10, "", &format!("{HONEST}trials = {}\n", MAX_TRIALS + 1));
    refused_text(&text, "trials", &(MAX_TRIALS + 1).to_string(), MAX_TRIALS);
}

#[test]
fn prompt_counts_and_lengths_are_bounded() {
    let p = MAX_PROMPTS + 1;
    refused(
        "count = 2",
        &format!("count = {p}"),
        "prompts.count",
        &p.to_string(),
        MAX_PROMPTS.into(),
    );
    let text = base(10, "", &format!("{HONEST}prompts = {p}\n"));
    refused_text(&text, "prompts", &p.to_string(), MAX_PROMPTS.into());
    let t = MAX_PROMPT_TOKENS + 1;
    refused(
        "tokens = 12",
        &format!("tokens = {t}"),
        "prompts.tokens",
        &t.to_string(),
        MAX_PROMPT_TOKENS.into(),
    );
    let o = MAX_OUTPUT_TOKENS + 1;
    refused(
        "output = 4",
        &format!("output = {o}"),
        "prompts.output",
        &o.to_string(),
        MAX_OUTPUT_TOKENS.into(),
    );
}

#[test]
fn protocol_parameters_are_bounded() {
    let c = MAX_CHUNK + 1;
    refused(
        "chunk = 4",
        &format!("chunk = {c}"),
        "protocol.chunk",
        &c.to_string(),
        MAX_CHUNK.into(),
    );
    refused(
        "samples = 3",
        "samples = 4294967295",
        "protocol.samples",
        "4294967295",
        MAX_SAMPLES.into(),
    );
    let r = MAX_ROUNDS + 1;
    refused(
        "rounds = 1",
        &format!("rounds = {r}"),
        "protocol.rounds",
        &r.to_string(),
        MAX_ROUNDS.into(),
    );
    let b = MAX_POW_BITS + 1;
    refused(
        "pow_bits = 0",
        &format!("pow_bits = {b}"),
        "protocol.pow_bits",
        &b.to_string(),
        MAX_POW_BITS.into(),
    );
}

#[test]
fn calibration_and_holdout_runs_are_bounded() {
    refused(
        "calibration_prompts = 80",
        "calibration_prompts = 4294967295",
        "tolerance.calibration_prompts",
        "4294967295",
        MAX_HONEST_RUNS.into(),
    );
    refused(
        "holdout_prompts = 10",
        "holdout_prompts = 4294967295",
        "tolerance.holdout_prompts",
        "4294967295",
        MAX_HONEST_RUNS.into(),
    );
}

#[test]
fn honest_setups_are_bounded() {
    let many = vec!["\"f32/attn=eager/splitk=2\""; MAX_HONEST_SETUPS + 1].join(", ");
    refused(
        r#"honest = ["f32/attn=eager/splitk=2"]"#,
        &format!("honest = [{many}]"),
        "tolerance.honest",
        &(MAX_HONEST_SETUPS + 1).to_string(),
        MAX_HONEST_SETUPS as u64,
    );
}

#[test]
fn adversary_count_is_bounded() {
    let n = 10_000;
    let text = base(10, "", &HONEST.repeat(n));
    refused_text(&text, "adversaries", &n.to_string(), MAX_ADVERSARIES as u64);
    Scenario::from_toml(&base(10, "", &HONEST.repeat(MAX_ADVERSARIES))).unwrap();
}

#[test]
fn names_and_model_are_bounded() {
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    refused(
        "name = \"bounds\"",
        &format!("name = \"{long}\""),
        "name bytes",
        &(MAX_NAME_BYTES + 1).to_string(),
        MAX_NAME_BYTES as u64,
    );
    let text = base(10, "", &format!("{HONEST}name = \"{long}\"\n"));
    refused_text(
        &text,
        "adversary name bytes",
        &(MAX_NAME_BYTES + 1).to_string(),
        MAX_NAME_BYTES as u64,
    );
    let model = "m".repeat(MAX_MODEL_BYTES + 1);
    refused(
        "model = \"tiny\"",
        &format!("model = \"{model}\""),
        "model bytes",
        &(MAX_MODEL_BYTES + 1).to_string(),
        MAX_MODEL_BYTES as u64,
    );
}

#[test]
fn adversary_parameters_are_bounded() {
    let g = |bits: &str| {
        format!(
            "[[adversary]]\nkind = \"grinding\"\nsetup = \"f32/attn=eager/quant=int4-g32\"\n\
             fraction = 0.1\n{bits}\n"
        )
    };
    let b = MAX_BUDGET_BITS + 1;
    refused_text(
        &base(10, "", &g(&format!("budget_bits = {b}"))),
        "budget_bits",
        &b.to_string(),
        MAX_BUDGET_BITS.into(),
    );
    let p = MAX_POW_BITS + 1;
    refused_text(
        &base(10, "", &g(&format!("budget_bits = 4\npow_bits = {p}"))),
        "pow_bits",
        &p.to_string(),
        MAX_POW_BITS.into(),
    );
    let d = MAX_DIRECTIONS + 1;
    refused_text(
        &base(
            10,
            "",
            &format!("[[adversary]]\nkind = \"corridor\"\ndirections = {d}\n"),
        ),
        "directions",
        &d.to_string(),
        MAX_DIRECTIONS.into(),
    );
}

#[test]
fn scenario_text_and_files_are_bounded() {
    let mut text = base(10, "", HONEST);
    text.push_str(&format!("# {}\n", " ".repeat(MAX_SCENARIO_BYTES)));
    let e = Scenario::from_toml(&text).unwrap_err();
    assert!(matches!(e, SimError::Scenario(_)), "{e}");
    assert!(
        e.to_string().contains(&MAX_SCENARIO_BYTES.to_string()),
        "{e}"
    );
    // A device is never read (it would never end).
    let e = Scenario::read(std::path::Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(e, SimError::Io { .. }), "{e}");
    assert!(e.is_input());
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A file over the limit is refused before it is read.
    let dir = std::env::temp_dir().join(format!("veritrace-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.toml");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_SCENARIO_BYTES as u64 + 1).unwrap();
    let e = Scenario::read(&path).unwrap_err();
    assert!(matches!(e, SimError::Io { .. }), "{e}");
    assert!(e.to_string().contains("more than"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn end_to_end_trials_are_bounded_when_the_simulation_runs() {
    let n = MAX_END_TO_END_TRIALS + 1;
    let s = Scenario::from_toml(&base(n, "", HONEST)).unwrap();
    let sim = Simulation::new(s).unwrap();
    let e = sim.run_with(EngineMode::EndToEnd, &|| {}).unwrap_err();
    assert!(matches!(e, SimError::Scenario(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.contains(&n.to_string()) && m.contains(&MAX_END_TO_END_TRIALS.to_string()),
        "{m}"
    );
}

#[test]
fn cells_per_trace_and_honest_cells_are_bounded_once_the_model_is_known() {
    use veritrace_sim::scenario::{MAX_CELLS_PER_TRACE, MAX_HONEST_CELLS};
    // 9 layers x 131,072 one-row chunks: every field within its limit, the product not.
    let text = base(10, "", HONEST)
        .replacen("model = \"tiny\"", "model = \"small\"", 1)
        .replacen("tokens = 12", &format!("tokens = {MAX_PROMPT_TOKENS}"), 1)
        .replacen("output = 4", &format!("output = {MAX_OUTPUT_TOKENS}"), 1)
        .replacen("chunk = 4", "chunk = 1", 1);
    let e = Simulation::new(Scenario::from_toml(&text).unwrap())
        .err()
        .expect("refused");
    assert!(matches!(e, SimError::Scenario(_)), "{e}");
    let m = e.to_string();
    assert!(m.contains("cells per trace = 1179648"), "{m}");
    assert!(m.contains(&format!("limit {MAX_CELLS_PER_TRACE}")), "{m}");
    // 2·10^6 honest runs of 20 cells each.
    let text = base(10, "", HONEST)
        .replacen(
            "calibration_prompts = 80",
            &format!("calibration_prompts = {MAX_HONEST_RUNS}"),
            1,
        )
        .replacen(
            "holdout_prompts = 10",
            &format!("holdout_prompts = {MAX_HONEST_RUNS}"),
            1,
        );
    let e = Simulation::new(Scenario::from_toml(&text).unwrap())
        .err()
        .expect("refused");
    assert!(matches!(e, SimError::Scenario(_)), "{e}");
    let m = e.to_string();
    assert!(m.contains("honest cells = 40000000"), "{m}");
    assert!(m.contains(&format!("limit {MAX_HONEST_CELLS}")), "{m}");
}
