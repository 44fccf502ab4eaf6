//! What the drawn-opening examples share (not an example itself; included with `#[path]`
//! beside `counting.rs`): a run committed by head, the whole and drawn challenges of one cell,
//! and one check of an opening, timed and with its peak heap.

use std::error::Error;
use std::time::Instant;

use veritrace_commit::{CellId, Digest, HasherId};
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_model::{LlamaModel, Setup, Trace};
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{
    check_opening_drawn, AttentionDraw, Challenge, Commitment, LayerCheck, Opening, Prover,
    VerifierLimits,
};

/// A committed run: its trace, its prover and the commitment.
pub type Committed = (Trace, Prover<Vec<u8>>, Commitment);

/// `model`'s run of `prompt` under `setup` (no generated tokens, cells of `chunk` rows) committed
/// by head (specs/protocol.md §3.5).
pub fn by_head(
    model: &LlamaModel,
    setup: &Setup,
    prompt: &[u32],
    chunk: u32,
) -> Result<Committed, Box<dyn Error>> {
    let (mut statement, trace, sub) =
        model.prove_run_sublayers(setup, prompt, 0, chunk, HasherId::Blake3)?;
    // by head, the sub-layer values in the setup's type
    statement.trace_level = model
        .sublayer_layout()
        .by_head_level()?
        .with_dtype(setup.precision.dtype());
    let parts = sub.parts(&statement)?;
    drop(sub);
    let mut prover = Prover::new(statement, trace.layer_bytes())?.with_sublayer_parts(parts)?;
    let commitment = prover.commit()?;
    Ok((trace, prover, commitment))
}

/// The challenge of cell `(layer, chunk)` opened whole, and the same drawing `heads` query
/// heads and `chunks` earlier chunks (a fixed seed).
pub fn challenges(layer: u32, chunk: u32, heads: u32, chunks: u32) -> (Challenge, Challenge) {
    let whole = Challenge {
        round: 0,
        cells: vec![CellId { layer, chunk }],
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
    (whole, drawn)
}

/// One check of `opening` for `challenge` by `engine` with Freivalds (`check_opening_drawn`):
/// its seconds and the peak of live heap bytes above those live before it; a rejection is an
/// error naming `what`.
pub fn measured_check(
    commitment: &Commitment,
    challenge: &Challenge,
    opening: &Opening,
    engine: &KeyedVerifier<'_>,
    what: &str,
) -> Result<(f64, usize), Box<dyn Error>> {
    let start = Instant::now();
    let (verdict, peak) = crate::counting::peak_of(|| {
        check_opening_drawn(
            commitment,
            challenge,
            opening,
            &TolerancePolicy::Exact,
            LayerCheck::Freivalds,
            engine,
            &VerifierLimits::default(),
        )
    });
    let seconds = start.elapsed().as_secs_f64();
    verdict.map_err(|reason| format!("{what} rejected: {reason:?}"))?;
    Ok((seconds, peak))
}
