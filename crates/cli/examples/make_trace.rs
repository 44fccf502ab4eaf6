//! Writes a small deterministic synthetic activation trace, for trying `veritrace commit`.
//!
//! ```text
//! cargo run -q -p veritrace-cli --example make_trace -- target/demo-trace.safetensors
//! cargo run -q -p veritrace-cli -- commit target/demo-trace.safetensors
//! ```
//!
//! The trace has 5 hidden states `h.0` … `h.4`, each `[64 tokens, 128 hidden]` f32. Element
//! `(l, t, d)` is drawn from a xorshift64 generator seeded with `0x5EED_0000 + l` and advanced
//! row-major over `(t, d)`: each step is `x ^= x << 13; x ^= x >> 7; x ^= x << 17`, and the value
//! is `(x >> 40) / 2^24 * 2 - 1`, uniform in [-1, 1) and exactly representable in f32. The same
//! path therefore always gets the same bytes, and so the same root.

use std::error::Error;
use std::path::PathBuf;

use safetensors::tensor::{Dtype, TensorView};

const LAYERS: usize = 5;
const TOKENS: usize = 64;
const HIDDEN: usize = 128;

/// The f32 elements of layer `layer`, little-endian, row-major.
fn layer_bytes(layer: usize) -> Vec<u8> {
    let mut x: u64 = 0x5EED_0000 + layer as u64;
    let mut bytes = Vec::with_capacity(TOKENS * HIDDEN * 4);
    for _ in 0..TOKENS * HIDDEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let value = (x >> 40) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

fn main() -> Result<(), Box<dyn Error>> {
    let path = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "target/demo-trace.safetensors".into()),
    );
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let layers: Vec<Vec<u8>> = (0..LAYERS).map(layer_bytes).collect();
    let mut tensors = Vec::with_capacity(LAYERS);
    for (l, bytes) in layers.iter().enumerate() {
        tensors.push((
            format!("h.{l}"),
            TensorView::new(Dtype::F32, vec![TOKENS, HIDDEN], bytes)?,
        ));
    }
    safetensors::serialize_to_file(tensors, None, &path)?;
    println!(
        "wrote {} ({LAYERS} layers h.0..h.{} of {TOKENS} tokens x {HIDDEN} hidden, f32)",
        path.display(),
        LAYERS - 1
    );
    Ok(())
}
