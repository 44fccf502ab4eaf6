//! `veritrace sweep` with shards and `veritrace merge`: the merged shards equal the full run
//! byte for byte; refused grids, shards and merges exit 2.

mod common;

use common::veritrace;

const SCENARIO: &str = r#"
name = "cli-sweep"
model = "tiny"
seed = 3
trials = 500
reference = "f32/attn=eager"
[prompts]
count = 1
tokens = 8
output = 2
[protocol]
chunk = 4
samples = 1
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
fraction = 0.2
"#;

#[test]
fn shards_merge_to_the_full_run_and_refusals_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s.toml");
    std::fs::write(&s, SCENARIO).unwrap();
    let s = s.to_str().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    let base = [
        "sweep",
        s,
        "--fast",
        "--quiet",
        "--grid",
        "k=1,2",
        "--grid",
        "fraction=0.1,0.4",
    ];
    let full = veritrace(&[&base[..], &["--out", &p("full.json")]].concat());
    assert_eq!(full.code, 0, "{}", full.stderr);
    assert!(full.stdout.is_empty(), "the JSON went to --out");
    for i in 0..2 {
        let shard = format!("{i}/2");
        let o = veritrace(
            &[
                &base[..],
                &["--shard", &shard, "--out", &p(&format!("part{i}.json"))],
            ]
            .concat(),
        );
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let m = veritrace(&[
        "merge",
        &p("part1.json"),
        &p("part0.json"),
        "--out",
        &p("merged.json"),
        "--csv",
        &p("merged.csv"),
    ]);
    assert_eq!(m.code, 0, "{}", m.stderr);
    assert_eq!(
        std::fs::read_to_string(p("merged.json")).unwrap(),
        std::fs::read_to_string(p("full.json")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(p("merged.csv"))
            .unwrap()
            .lines()
            .count(),
        5
    );

    let o = veritrace(&["merge", &p("part0.json")]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("missing"), "{}", o.stderr);
    let o = veritrace(&["merge", s]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    for bad in [
        &["sweep", s, "--quiet", "--grid", "speed=1"][..],
        &["sweep", s, "--quiet", "--grid", "k=1", "--shard", "3/2"],
        &["sweep", s, "--quiet", "--grid", "k=0"],
    ] {
        let o = veritrace(bad);
        assert_eq!(o.code, 2, "{bad:?}: {}", o.stderr);
    }
}
