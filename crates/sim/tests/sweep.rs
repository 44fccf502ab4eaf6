//! Sweeps: grid parsing, shards that merge into exactly the full run, and refused merges.

use veritrace_sim::sweep::{self, Grid, Shard};
use veritrace_sim::{EngineMode, Scenario, SimError};

fn scenario() -> Scenario {
    Scenario::from_toml(
        r#"
name = "sweep-test"
model = "tiny"
seed = 5
trials = 2000
reference = "f32/attn=eager"
[prompts]
count = 1
tokens = 12
output = 4
[protocol]
chunk = 4
samples = 2
mode = "interactive"
[tolerance]
metric = "rel_l2"
target_fpr = 0.3
honest = ["f32/attn=eager/splitk=2"]
calibration_prompts = 80
holdout_prompts = 10
[[adversary]]
kind = "partial"
setup = "f32/attn=eager/quant=int4-g32"
fraction = 0.1
"#,
    )
    .unwrap()
}

fn grid(specs: &[&str]) -> Result<Grid, SimError> {
    Grid::parse(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
}

#[test]
fn grids_parse_and_enumerate_with_the_last_axis_fastest() {
    let g = grid(&["k=1,2", "fraction=0.1,0.2,0.3"]).unwrap();
    assert_eq!(g.points(), 6);
    let p = g.point(4);
    assert_eq!(p[&sweep::Axis::K], 2.0);
    assert_eq!(p[&sweep::Axis::Fraction], 0.2);
    for bad in [
        &["k"][..],
        &["k="],
        &["k=1,x"],
        &["k=1", "k=2"],
        &["speed=1"],
        &["k=nan"],
        &[],
    ] {
        assert!(grid(bad).is_err(), "{bad:?}");
    }
    // A value the scenario refuses is refused when the point is applied.
    let g = grid(&["k=0"]).unwrap();
    assert!(sweep::apply(&scenario(), &g.point(0)).is_err());
    assert!(sweep::apply(&scenario(), &grid(&["chunk=2.5"]).unwrap().point(0)).is_err());
    for bad in ["", "1", "2/2", "a/b", "0/0", "1/-1"] {
        assert!(Shard::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Shard::parse("1/3").unwrap(), Shard { index: 1, count: 3 });
}

#[test]
fn shards_merge_into_the_full_run() {
    let s = scenario();
    let g = grid(&["k=1,3", "fraction=0.1,0.3"]).unwrap();
    let full = sweep::run(&s, &g, EngineMode::Fast, Shard::ALL, &|_, _| {}).unwrap();
    assert_eq!(full.points.len(), 4);
    // More challenged cells and more cheating are caught more often.
    let d = |i: usize| full.points[i].report.adversaries[0].detection;
    assert!(
        d(0) < d(2) && d(1) < d(3) && d(0) < d(1),
        "{:?}",
        (d(0), d(1), d(2), d(3))
    );
    let parts: Vec<_> = (0..3)
        .map(|i| {
            sweep::run(
                &s,
                &g,
                EngineMode::Fast,
                Shard { index: i, count: 3 },
                &|_, _| {},
            )
            .unwrap()
        })
        .collect();
    assert_eq!(sweep::merge(parts.clone()).unwrap(), full);
    // Missing, duplicated and foreign parts are refused.
    assert!(sweep::merge(parts[..2].to_vec()).is_err());
    let mut dup = parts.clone();
    dup.push(parts[0].clone());
    assert!(sweep::merge(dup).is_err());
    let mut foreign = parts.clone();
    foreign[1].scenario.seed += 1;
    assert!(sweep::merge(foreign).is_err());
    assert!(sweep::merge(Vec::new()).is_err());
    assert!(sweep::csv(&full).lines().count() == 5);
}
