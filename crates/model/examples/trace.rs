//! Runs a preset decoder greedily and writes its trace with the statement as safetensors.
//!
//! `cargo run -p veritrace-model --example trace -- [tiny|small] OUT.safetensors [CHUNK]`

use veritrace_commit::{commit_trace, HasherId};
use veritrace_model::{write_trace, LlamaModel, Setup};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("tiny", String::as_str);
    let out = args.get(1).map_or("trace.safetensors", String::as_str);
    let chunk: u32 = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let model = LlamaModel::preset(preset)?;
    let prompt: Vec<u32> = (0..24u32).map(|i| (7 + 37 * i) % 512).collect();
    let (statement, trace) =
        model.prove_run(&Setup::F32_EAGER, &prompt, 8, chunk, HasherId::Blake3)?;
    write_trace(std::path::Path::new(out), &trace, Some(&statement))?;
    let layers = trace.layer_bytes();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let root = commit_trace(statement.hasher, &statement.geometry, &refs)?.root();
    println!(
        "model {} ({preset}), setup {}, {} layers x {} tokens x {} wide, output {:?} -> {out}\nroot (blake3, chunk {chunk}): {root}",
        statement.model_digest,
        Setup::F32_EAGER,
        trace.layers.len(),
        trace.tokens,
        trace.hidden,
        statement.output_tokens
    );
    Ok(())
}
