//! The heap a keyed verifier uses to check one challenged cell of a by-head statement
//! (specs/protocol.md §4.4, specs/freivalds.md §7.1), against the context's length: the
//! `small` decoder committed by head at each `--tokens` length, the last 16-row cell of layer 4
//! challenged whole and drawn (`--heads` query heads, `--chunks` earlier chunks), each opening
//! checked by `check_opening_drawn` with Freivalds. A counting allocator records the peak of
//! live heap bytes during the check above what was live before it (the opening, the statement
//! and the model are already in memory and not counted). Prints one JSON line per length.
//!
//! ```text
//! cargo run --release -p veritrace-model --example drawn_check_memory -- \
//!     [--tokens 256,1024,2048] [--heads 1] [--chunks 1]
//! ```

use std::time::Instant;

use veritrace_commit::{CellId, Digest, HasherId};
use veritrace_model::freivalds::{AttentionSampling, VerifierKey, VerifierSecret};
use veritrace_model::sublayer::{prover_parts, KeyedVerifier};
use veritrace_model::{LlamaModel, Setup};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{
    check_opening_drawn, AttentionDraw, Challenge, LayerCheck, Message, Prover, VerifierLimits,
};

mod common;

use common::arg;

#[path = "common/counting.rs"]
mod counting;

use counting::{peak_of, Counting};

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let lengths: Vec<usize> = arg(&args, "--tokens", "256,1024,2048")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let heads: u32 = arg(&args, "--heads", "1").parse()?;
    let chunks: u32 = arg(&args, "--chunks", "1").parse()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()?;
    let model = LlamaModel::preset("small")?;
    let key = VerifierKey::build(&VerifierSecret::from_bytes([0x42; 32]), &model, 1)?;
    let engine = KeyedVerifier {
        model: &model,
        key: &key,
        tolerance: 0.0,
        bound_scale: 1.0,
        map_bounds: None,
        sampling: AttentionSampling::FULL,
    };
    let limits = VerifierLimits::default();
    let chunk = 16u32;
    for n in lengths {
        let prompt: Vec<u32> = (0..n as u32)
            .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
            .collect();
        let (mut statement, trace, sub) =
            model.prove_run_sublayers(&Setup::F32_EAGER, &prompt, 0, chunk, HasherId::Blake3)?;
        statement.trace_level = model.sublayer_layout().by_head_level()?;
        let (context, cell) = sub.bytes();
        let parts = prover_parts(&statement, context, cell)?;
        let mut prover =
            Prover::new(statement.clone(), trace.layer_bytes())?.with_sublayer_parts(parts)?;
        let commitment = prover.commit()?;
        let last = (n as u32).div_ceil(chunk) - 1;
        let whole = Challenge {
            round: 0,
            cells: vec![CellId {
                layer: 4,
                chunk: last,
            }],
            attention: None,
        };
        let drawn = Challenge {
            attention: Some(AttentionDraw {
                heads,
                chunks,
                seed: Digest([7; 32]),
            }),
            ..whole.clone()
        };
        let mut row = Vec::new();
        for (name, ch) in [("whole", &whole), ("drawn", &drawn)] {
            let opening = prover.open_drawn(0, &ch.cells, ch.attention.as_ref(), 0)?;
            let bytes = opening.to_bytes().len();
            let start = Instant::now();
            let (verdict, peak) = peak_of(|| {
                check_opening_drawn(
                    &commitment,
                    ch,
                    &opening,
                    &TolerancePolicy::Exact,
                    LayerCheck::Freivalds,
                    &engine,
                    &limits,
                )
            });
            let ms = start.elapsed().as_secs_f64() * 1e3;
            if let Err(reason) = verdict {
                return Err(format!("{name} opening at {n} tokens rejected: {reason:?}").into());
            }
            row.push(format!(
                "\"{name}\": {{\"opening_bytes\": {bytes}, \"check_peak_heap_bytes\": {peak}, \
                 \"check_ms\": {ms:.2}}}"
            ));
        }
        println!("{{\"tokens\": {n}, {}}}", row.join(", "));
    }
    Ok(())
}
