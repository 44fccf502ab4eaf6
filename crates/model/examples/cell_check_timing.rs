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
//! `--heads H` and/or `--context-rows S` also time the sampled attention check
//! (specs/freivalds.md §7; one fixed draw of `H` heads and `S` rows before the cell) in the
//! same rounds, and `--profile sampled` runs it alone.
//!
//! The criterion figures are `cargo bench -p veritrace-model --bench freivalds --
//! freivalds_small_cell`; this is the quick side-by-side ratio.

use std::time::Instant;

use veritrace_model::freivalds::{
    check_cell, check_cell_sampled, AttentionSampling, CellClaim, VerifierKey, VerifierSecret,
};
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
    let opt = |name: &str| -> Result<Option<u32>, std::num::ParseIntError> {
        match arg(&args, name, "").as_str() {
            "" => Ok(None),
            v => v.parse().map(Some),
        }
    };
    let sampling = AttentionSampling {
        heads: opt("--heads")?,
        context_rows: opt("--context-rows")?,
    };
    sampling.validate()?;
    let sample = sampling.draw([7; 32], model.config().num_heads, lo);
    let sampled =
        || check_cell_sampled(&key, &model, &setup, (tile, layer, chunk), &c, 0.0, &sample);
    if !check()?.passed || !sampled()?.passed || recompute()? != h_out {
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
        "sampled" => {
            for _ in 0..rounds {
                std::hint::black_box(sampled()?);
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
    let (mut best_r, mut best_c, mut best_s) = (f64::INFINITY, f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(recompute()?);
        best_r = best_r.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(check()?);
        best_c = best_c.min(t.elapsed().as_secs_f64());
        if !sampling.is_full() {
            let t = Instant::now();
            std::hint::black_box(sampled()?);
            best_s = best_s.min(t.elapsed().as_secs_f64());
        }
    }
    let sampled_part = if sampling.is_full() {
        String::new()
    } else {
        format!(
            ",\"sampling\":\"{sampling}\",\"sampled_us\":{:.1},\"sampled_ratio\":{:.2}",
            best_s * 1e6,
            best_r / best_s
        )
    };
    println!(
        "{{\"setup\":\"{setup}\",\"tokens\":{n},\"rounds\":{rounds},\"recompute_us\":{:.1},\
         \"check_us\":{:.1},\"ratio\":{:.2}{sampled_part}}}",
        best_r * 1e6,
        best_c * 1e6,
        best_r / best_c
    );
    if !sampling.is_full() {
        project(
            &model,
            (e - lo) as u64,
            n as u64,
            (best_c, best_s),
            &sampling,
        );
    }
    Ok(())
}

/// The Llama-3-70B projection of the verifier's time per challenged token-layer (16-row cells,
/// 2048 context rows, one Freivalds repetition), from the FLOP and byte models
/// ([`veritrace_model::cost`]) and rates measured in this run: the full and the sampled check's
/// FLOP rates on `small` (their measured times), this core's read bandwidth (a sum over 96 MB)
/// and BLAKE3's hashing rate (64 MB). One JSON line per sampling; a projection, not a
/// measurement. The drawn opening (specs/protocol.md §4.4) of a sampling holds its context rows
/// as whole chunks (64 rows: four chunks of 16).
fn project(
    model: &LlamaModel,
    rows: u64,
    context: u64,
    (check_s, sampled_s): (f64, f64),
    sampling: &AttentionSampling,
) {
    use veritrace_model::cost::{
        llama3_70b_shapes, sampled_verifier_cell_bytes, sampled_verifier_cell_flops,
    };
    let flops = |c: &veritrace_model::ModelConfig, r, ctx, s: &AttentionSampling| {
        sampled_verifier_cell_flops(c, r, ctx, 1, s).total()
    };
    let full = AttentionSampling::FULL;
    let rate_full = flops(model.config(), rows, context, &full) / check_s;
    let rate_sampled = flops(model.config(), rows, context, sampling) / sampled_s;
    let fastest = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    // a wrapping integer sum: vectorized, so bound by the reads, not by an add chain
    let buf: Vec<u64> = (0..12u64 << 20).collect();
    let read_gbs = (buf.len() * 8) as f64
        / fastest(&mut || {
            std::hint::black_box(buf.iter().fold(0u64, |a, &w| a.wrapping_add(w)));
        })
        / 1e9;
    let bytes: Vec<u8> = vec![0x5a; 64 << 20];
    let hash_gbs = bytes.len() as f64
        / fastest(&mut || {
            std::hint::black_box(blake3::hash(&bytes));
        })
        / 1e9;
    println!(
        "{{\"small_rates_gflops\":{{\"check\":{:.2},\"sampled\":{:.2}}},\"read_gb_s\":{read_gbs:.1},\
         \"blake3_gb_s\":{hash_gbs:.2}}}",
        rate_full / 1e9,
        rate_sampled / 1e9
    );
    let big = llama3_70b_shapes();
    let (r, c) = (16u64, 2048u64);
    let samplings = [
        full,
        *sampling,
        AttentionSampling {
            heads: Some(1),
            context_rows: Some(64),
        },
        AttentionSampling {
            heads: Some(8),
            context_rows: Some(64),
        },
    ];
    for s in samplings {
        let f = flops(&big, r, c, &s);
        let b = sampled_verifier_cell_bytes(&big, r, c, &s, 4);
        let rate = if s.is_full() { rate_full } else { rate_sampled };
        let per = |x: f64| x / r as f64 * 1e3;
        println!(
            "{{\"projection\":\"llama3-70b, 16 rows, 2048 context\",\"sampling\":\"{s}\",\
             \"flops_per_cell\":{f:.3e},\"compute_ms_per_token_layer\":{:.3},\
             \"read_mb_per_cell\":{:.1},\"read_ms_per_token_layer\":{:.3},\
             \"opened_mb_per_cell\":{:.1},\"hash_opened_ms_per_token_layer\":{:.3},\
             \"drawn_opened_mb_per_cell\":{:.1},\"hash_drawn_ms_per_token_layer\":{:.3}}}",
            per(f / rate),
            b.read / 1e6,
            per(b.read / (read_gbs * 1e9)),
            b.opened / 1e6,
            per(b.opened / (hash_gbs * 1e9)),
            b.drawn / 1e6,
            per(b.drawn / (hash_gbs * 1e9)),
        );
    }
}
