//! The sampling vectors of `specs/vectors/protocol.json` (also pinned by the workspace's
//! `tests/protocol_vectors.rs` and the Python reference), checked from this crate alone: the
//! exact cost-weighted sampler and the stratified sampler that skips empty layers draw exactly
//! the cells the specification's direct algorithms drew, and the closed-form weights are the
//! listed ones.

use serde_json::Value;
use veritrace_protocol::sampling::{cost_weight, sample_cells};
use veritrace_protocol::{Commitment, Message, SamplingStrategy};

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../specs/vectors/protocol.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors")).expect("JSON")
}

fn strategy(name: &str) -> SamplingStrategy {
    match name {
        "uniform" => SamplingStrategy::Uniform,
        "stratified" => SamplingStrategy::Stratified,
        "cost-weighted" => SamplingStrategy::CostWeighted,
        other => panic!("unknown strategy {other}"),
    }
}

fn seed(hex: &Value) -> [u8; 32] {
    hex::decode(hex.as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn sampled_cells_match_the_vectors() {
    let v = vectors();
    let commitments: Vec<(String, Commitment)> = v["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let c = Commitment::from_json(x["commitment_json"].as_str().unwrap()).unwrap();
            (x["name"].as_str().unwrap().to_string(), c)
        })
        .collect();
    let find = |name: &str| &commitments.iter().find(|(n, _)| n == name).unwrap().1;
    let mut checked = 0;
    for list in ["sampling", "challenges"] {
        for x in v[list].as_array().unwrap() {
            let c = find(x["statement"].as_str().unwrap());
            let cells = sample_cells(
                &c.statement,
                x["samples"].as_u64().unwrap() as u32,
                strategy(x["strategy"].as_str().unwrap()),
                seed(&x["seed_hex"]),
            )
            .unwrap();
            let indices: Vec<u64> = cells
                .iter()
                .map(|&cell| c.statement.geometry.cell_index(cell).unwrap())
                .collect();
            let want: Vec<u64> = x["indices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap())
                .collect();
            assert_eq!(indices, want, "{list}: {x}");
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
    for x in v["statements"].as_array().unwrap() {
        let c = find(x["name"].as_str().unwrap());
        let g = &c.statement.geometry;
        for (i, w) in x["cost_weights"].as_array().unwrap().iter().enumerate() {
            let got = cost_weight(&c.statement, g.cell_at(i as u64).unwrap()).unwrap();
            assert_eq!(got, u128::from(w.as_u64().unwrap()));
        }
    }
}
