//! One challenged cell of `small` recomputed against checked from its sub-layer values
//! (issue 16), timed interleaved: each round runs both once, and each figure is the fastest of
//! `--rounds` rounds (on a shared machine the fastest run is the one least disturbed, and
//! interleaving gives both the same disturbances). The cell is the bench's: layer 4, the last
//! 16-row chunk of `--tokens` tokens (default 128), on one rayon thread. Prints one JSON line.
//!
//! ```text
//! cargo run --release -p veritrace-model --example cell_check_timing -- \
//!     [--setup f32/attn=eager/kernels=invariant] [--tokens 128] [--rounds 200] [--profile check]
//! ```
//!
//! `--profile check` (or `recompute`) runs only that side, `--rounds` times, for `perf record`.
//!
//! The criterion figures are `cargo bench -p veritrace-model --bench freivalds --
//! freivalds_small_cell`; this is the quick side-by-side ratio.

use std::time::Instant;

use veritrace_model::freivalds::{check_cell, CellClaim, VerifierKey, VerifierSecret};
use veritrace_model::sublayer::SubLayerLayout;
use veritrace_model::{CellInputs, LlamaModel, Setup, SubLayers};

mod common;

use common::arg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let setup: Setup = arg(&args, "--setup", "f32/attn=eager/kernels=invariant").parse()?;
    let n: usize = arg(&args, "--tokens", "128").parse()?;
    let rounds: usize = arg(&args, "--rounds", "200").parse()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()?;
    let model = LlamaModel::preset("small")?;
    let d = model.config().hidden_size;
    let key = VerifierKey::build(&VerifierSecret::from_bytes([0x42; 32]), &model, 1)?;
    let (tile, layer) = (16usize, 4usize);
    let chunk = (n - 1) / tile;
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
        .collect();
    let (trace, sub) = model.trace_sublayers(&setup, &tokens, tile)?;
    let (lo, e) = (chunk * tile, n);
    let h_in = trace.layers[layer - 1][..e * d].to_vec();
    let claim = SubLayerLayout::of(model.config()).rows(&sub[layer - 1], 0..e, lo..e)?;
    let h_out = trace.layers[layer][lo * d..e * d].to_vec();
    let context = SubLayers {
        normed: claim.normed.clone(),
        k: claim.k.clone(),
        v: claim.v.clone(),
        ..SubLayers::default()
    };
    let c = CellClaim {
        h_in: &h_in,
        h_out: &h_out,
        context: &context,
        cell: &claim,
    };
    let check = || check_cell(&key, &model, &setup, tile, layer, chunk, &c, 0.0);
    let recompute = || model.recompute_cell(&setup, tile, layer, chunk, CellInputs::Hidden(&h_in));
    if !check()?.passed || recompute()? != h_out {
        return Err("the honest cell does not pass".into());
    }
    match arg(&args, "--profile", "").as_str() {
        "" => {}
        "check" => {
            for _ in 0..rounds {
                std::hint::black_box(check()?);
            }
            return Ok(());
        }
        "recompute" => {
            for _ in 0..rounds {
                std::hint::black_box(recompute()?);
            }
            return Ok(());
        }
        other => return Err(format!("--profile {other}: check or recompute").into()),
    }
    let (mut best_r, mut best_c) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(recompute()?);
        best_r = best_r.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(check()?);
        best_c = best_c.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{{\"setup\":\"{setup}\",\"tokens\":{n},\"rounds\":{rounds},\"recompute_us\":{:.1},\
         \"check_us\":{:.1},\"ratio\":{:.2}}}",
        best_r * 1e6,
        best_c * 1e6,
        best_r / best_c
    );
    Ok(())
}
