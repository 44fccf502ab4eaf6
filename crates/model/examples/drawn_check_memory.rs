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

use veritrace_model::freivalds::{VerifierKey, VerifierSecret};
use veritrace_model::sublayer::KeyedVerifier;
use veritrace_model::{LlamaModel, Setup};
use veritrace_protocol::Message;

mod common;

use common::arg;

#[path = "common/counting.rs"]
mod counting;
#[path = "common/drawn.rs"]
mod drawn;

use counting::Counting;

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
    let engine = KeyedVerifier::exact(&model, &key);
    let chunk = 16u32;
    for n in lengths {
        let prompt: Vec<u32> = (0..n as u32)
            .map(|i| (7 + 37 * i * i + 11 * i) % 2048)
            .collect();
        let (_, prover, commitment) = drawn::by_head(&model, &Setup::F32_EAGER, &prompt, chunk)?;
        let last = (n as u32).div_ceil(chunk) - 1;
        let (whole, drawn) = drawn::challenges(4, last, heads, chunks);
        let mut row = Vec::new();
        for (name, ch) in [("whole", &whole), ("drawn", &drawn)] {
            let opening = prover.open_drawn(0, &ch.cells, ch.attention.as_ref(), 0)?;
            let bytes = opening.to_bytes().len();
            let what = format!("{name} opening at {n} tokens");
            let (seconds, peak) = drawn::measured_check(&commitment, ch, &opening, &engine, &what)?;
            row.push(format!(
                "\"{name}\": {{\"opening_bytes\": {bytes}, \"check_peak_heap_bytes\": {peak}, \
                 \"check_ms\": {:.2}}}",
                seconds * 1e3
            ));
        }
        println!("{{\"tokens\": {n}, {}}}", row.join(", "));
    }
    Ok(())
}
