//! Tokenizes a sentence, runs all-MiniLM-L6-v2 over it with trace capture, and writes the trace
//! with its statement as safetensors (the file `veritrace commit` reads).
//!
//! `cargo run --release -p veritrace-model --example minilm_trace -- "SENTENCE" [OUT.safetensors] [CHUNK]`
//!
//! Needs the model: `bash scripts/install-minilm.sh` (or `VERITRACE_MINILM=DIR`).

use std::path::Path;

use veritrace_commit::{commit_trace, HasherId};
use veritrace_model::{minilm_dir, write_trace, BertModel, BertTokenizer, Setup};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sentence = args.first().map_or(
        "Did this provider really run all-MiniLM-L6-v2?",
        String::as_str,
    );
    let out = args
        .get(1)
        .map_or("minilm-trace.safetensors", String::as_str);
    let chunk: u32 = args.get(2).map_or(Ok(8), |s| s.parse())?;
    let Some(dir) = minilm_dir() else {
        return Err(
            "all-MiniLM-L6-v2 is not installed: run scripts/install-minilm.sh \
                    or set VERITRACE_MINILM"
                .into(),
        );
    };
    let model = BertModel::load(&dir)?;
    let tokenizer = BertTokenizer::from_file(
        &dir.join("tokenizer.json"),
        model.config().max_position_embeddings,
    )?;
    let encoded = tokenizer.encode(sentence)?;
    let (statement, trace) =
        model.prove_encode(&Setup::F32_EAGER, &encoded.ids, chunk, HasherId::Blake3)?;
    write_trace(Path::new(out), &trace, Some(&statement))?;
    let layers = trace.layer_bytes();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let root = commit_trace(statement.hasher, &statement.geometry, &refs)?.root();
    println!(
        "model {} (all-MiniLM-L6-v2 from {}), setup {}\ntokens {:?}\n{} layers x {} tokens x {} wide -> {out}\nroot (blake3, chunk {chunk}): {root}",
        statement.model_digest,
        dir.display(),
        Setup::F32_EAGER,
        encoded.ids,
        trace.layers.len(),
        trace.tokens,
        trace.hidden,
    );
    Ok(())
}
