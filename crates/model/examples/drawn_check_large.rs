//! One challenged cell at large shapes, measured end to end rather than projected: a seeded
//! decoder with Llama-3-70B's layer shapes by default (d 8192, 64 query heads of 128, 8
//! key-value heads, MLP 28672; `--layers` of them, a small vocabulary), `--tokens` of context
//! committed by head (specs/protocol.md §4.4), and the last 16-row cell of layer 1 challenged
//! whole and drawn (`--heads` query heads, `--chunks` earlier chunks). Each opening is checked by
//! `check_opening_drawn` with Freivalds (leaf hashing, batch proofs, the keyed check), the
//! fastest of `--rounds`, on one thread; the recompute verifier's time for the same cell
//! (`--recompute-rounds`, 0 to skip) gives the ratio. A counting allocator records each
//! check's peak heap above what was live before it. Prints JSON lines.
//!
//! ```text
//! cargo run --release -p veritrace-model --example drawn_check_large -- \
//!     [--tokens 2048] [--layers 1] [--heads 1] [--chunks 1] [--rounds 5] [--recompute-rounds 1]
//! ```
//!
//! `--openings drawn` (or `whole`) checks only that one; `--setup` is the prover's (and the
//! check's) numeric setup, `f32/attn=eager` by default (a bf16 or f16 setup commits its
//! sub-layer values in 16 bits). Each check is timed twice: under glibc's allocator as a
//! process starts with it (`"malloc":"default"`), then with freed memory kept
//! (`"no-trim"`, where the allocator is glibc's).
//!
//! At the defaults it needs about 12 GB of memory and a few minutes, most of it the prover's
//! forward over 2048 tokens. `--hidden`, `--query-heads`, `--kv-heads`, `--mlp` set other shapes.

use std::time::Instant;

use veritrace_model::freivalds::{VerifierKey, VerifierSecret};
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_model::{LlamaModel, ModelConfig, Setup};
use veritrace_protocol::Message;

mod common;
#[path = "common/counting.rs"]
mod counting;
#[path = "common/drawn.rs"]
mod drawn;

use common::arg;
use counting::Counting;

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let num = |name: &str, default: &str| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(arg(&args, name, default).parse()?)
    };
    let n = num("--tokens", "2048")?;
    let rounds = num("--rounds", "5")?.max(1);
    let recompute_rounds = num("--recompute-rounds", "1")?;
    let heads = u32::try_from(num("--heads", "1")?)?;
    let chunks = u32::try_from(num("--chunks", "1")?)?;
    let setup: Setup = arg(&args, "--setup", "f32/attn=eager").parse()?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()?;
    let config = ModelConfig {
        vocab_size: 256,
        hidden_size: num("--hidden", "8192")?,
        num_layers: num("--layers", "1")?,
        num_heads: num("--query-heads", "64")?,
        num_kv_heads: num("--kv-heads", "8")?,
        intermediate_size: num("--mlp", "28672")?,
        rope_theta: 500_000.0,
        ..ModelConfig::small()
    };
    let t = Instant::now();
    let model = LlamaModel::new(config.clone())?;
    // the key for the claimed setup: its weights as the setup prepares them (bf16, quantized)
    let key = VerifierKey::build(&VerifierSecret::from_bytes([0x42; 32]), &model, 1)?
        .for_setup(&model, &setup)?;
    let build_s = t.elapsed().as_secs_f64();
    let chunk = 16u32;
    let prompt: Vec<u32> = (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % 256)
        .collect();
    let t = Instant::now();
    let (trace, prover, commitment) = drawn::by_head(&model, &setup, &prompt, chunk)?;
    let prove_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"setup\":\"{setup}\",\"shapes\":{{\"hidden\":{},\"heads\":{},\"kv_heads\":{},\"mlp\":{},\
         \"layers\":{}}},\"tokens\":{n},\"model_and_key_s\":{build_s:.1},\"prove_and_commit_s\":{prove_s:.1}}}",
        config.hidden_size,
        config.num_heads,
        config.num_kv_heads,
        config.intermediate_size,
        config.num_layers
    );
    let engine = KeyedVerifier::exact(&model, &key);
    let last = (n as u32).div_ceil(chunk) - 1;
    let rows = n - last as usize * chunk as usize;
    let (whole, drawn) = drawn::challenges(1, last, heads, chunks);
    let mut drawn_ms = f64::NAN;
    let which = arg(&args, "--openings", "drawn,whole");
    // glibc's allocator first as a plain process has it, then (where it is glibc) with freed
    // memory kept rather than returned to the system: a check allocates and frees megabytes,
    // and whether the heap is trimmed between checks (page faults and zeroing on the next)
    // depends on glibc's dynamic thresholds, that is on the sizes of earlier allocations
    for malloc in ["default", "no-trim"] {
        if malloc == "no-trim" && !keep_freed_memory() {
            break;
        }
        for (name, ch) in [("drawn", &drawn), ("whole", &whole)] {
            if !which.split(',').any(|w| w == name) {
                continue;
            }
            let opening = prover.open_drawn(0, &ch.cells, ch.attention.as_ref(), 0)?;
            let bytes = opening.to_bytes().len();
            let (mut best, mut peak) = (f64::INFINITY, 0usize);
            for _ in 0..rounds {
                let (seconds, p) = drawn::measured_check(&commitment, ch, &opening, &engine, name)?;
                best = best.min(seconds);
                peak = peak.max(p);
            }
            let ms = best * 1e3;
            if name == "drawn" && malloc == "default" {
                drawn_ms = ms;
            }
            println!(
                "{{\"opening\":\"{name}\",\"malloc\":\"{malloc}\",\"cell_rows\":{rows},\
                 \"opening_bytes\":{bytes},\"check_ms\":{ms:.2},\"ms_per_token_layer\":{:.4},\
                 \"check_peak_heap_bytes\":{peak}}}",
                ms / rows as f64
            );
            drop(opening);
        }
    }
    if recompute_rounds > 0 {
        let d = config.hidden_size;
        let h_in = &trace.layers[0][..n * d];
        let mut best = f64::INFINITY;
        for _ in 0..recompute_rounds {
            let start = Instant::now();
            std::hint::black_box(model.recompute_cell(
                &setup,
                chunk as usize,
                1,
                last as usize,
                veritrace_model::CellInputs::Hidden(h_in),
            )?);
            best = best.min(start.elapsed().as_secs_f64());
        }
        println!(
            "{{\"recompute_cell_ms\":{:.1},\"ms_per_token_layer\":{:.3},\
             \"drawn_check_speedup\":{:.1}}}",
            best * 1e3,
            best * 1e3 / rows as f64,
            best * 1e3 / drawn_ms
        );
    }
    Ok(())
}

/// Tells glibc's allocator to keep freed heap memory (no trimming); false where the allocator
/// is not glibc's.
fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; no memory is touched
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
