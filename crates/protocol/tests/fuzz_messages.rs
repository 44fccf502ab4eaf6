//! Fuzz targets `messages` and `policy`: every decoder a verifier runs on what a prover (or a
//! policy file) hands it — the binary envelope and the JSON form of the statement, commitment,
//! challenge, opening and verdict, and the tolerance and calibrated-policy files with their
//! validation — on arbitrary bytes and on mutations of the specification's own vectors
//! (`specs/vectors/protocol.json`) and of the default simulation's calibrated policy. Nothing
//! may panic, and a call's peak allocation must stay within a small multiple of its input.
//!
//! Run by `cargo test` for `VERITRACE_FUZZ_SECONDS` seconds each (default 5) with bolero's
//! random engine; `cargo bolero test messages -p veritrace-protocol` runs them under a
//! coverage-guided fuzzer where one is installed.

use veritrace_protocol::calibration::CalibratedPolicy;
use veritrace_protocol::encoding::MAX_MESSAGE_BYTES;
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{Challenge, Commitment, Message, Opening, Statement, Verdict};

#[path = "../../../tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{fuzz_time, peak_of};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Binary and JSON forms of every message in the specification's vectors.
fn message_seeds() -> (Vec<Vec<u8>>, Vec<String>) {
    let text = std::fs::read_to_string(root().join("specs/vectors/protocol.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut binary = Vec::new();
    let mut json = Vec::new();
    let mut take = |section: &str, hex_key: &str, json_key: &str| {
        for case in v[section].as_array().into_iter().flatten() {
            if let Some(h) = case[hex_key].as_str() {
                binary.push(hex::decode(h).unwrap());
            }
            match &case[json_key] {
                serde_json::Value::String(s) => json.push(s.clone()),
                serde_json::Value::Null => {}
                other => json.push(other.to_string()),
            }
        }
    };
    take("statements", "statement_binary_hex", "statement_json");
    take("statements", "commitment_binary_hex", "commitment_json");
    take("challenges", "challenge_binary_hex", "challenge_json");
    take("opening", "opening_binary_hex", "opening_json");
    take("opening", "challenge_binary_hex", "challenge_json");
    take("verdicts", "binary_hex", "json");
    assert!(binary.len() >= 5 && json.len() >= 5, "vectors found");
    (binary, json)
}

/// Decodes `bytes` as every message kind, binary and (if UTF-8) JSON, validating what decodes.
fn decode_all(bytes: &[u8]) {
    fn one<M: Message>(bytes: &[u8]) {
        if let Ok(m) = M::from_bytes(bytes) {
            let _ = m.validate();
            // What decodes re-encodes to the same bytes (one valid encoding).
            assert_eq!(m.to_bytes(), bytes, "{} re-encodes differently", M::NAME);
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Ok(m) = M::from_json(text) {
                let _ = m.validate();
            }
        }
    }
    one::<Statement>(bytes);
    one::<Commitment>(bytes);
    one::<Challenge>(bytes);
    one::<Opening>(bytes);
    one::<Verdict>(bytes);
    // the streaming reader accepts exactly what the decoder accepts, as the same opening
    let streamed = veritrace_protocol::stream::OpeningReader::new(bytes, MAX_MESSAGE_BYTES)
        .and_then(|r| r.into_opening());
    assert_eq!(streamed.ok(), Opening::from_bytes(bytes).ok());
}

fn budget(len: usize) -> usize {
    32 * len + (2 << 20)
}

fn mutate(seed: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    if b.is_empty() {
        return data.to_vec();
    }
    for op in data.chunks_exact(4) {
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % b.len();
        match op[2] % 4 {
            0 => b[at] ^= op[3] | 1,
            1 => b[at] = op[3],
            2 => b.truncate(at),
            _ => {
                // A length-like field set huge: four 0xff bytes.
                let end = (at + 4).min(b.len());
                b[at..end].fill(0xff);
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

#[test]
fn messages() {
    let _guard = counting_alloc::measuring();
    let (binary, json) = message_seeds();
    bolero::check!()
        .with_test_time(fuzz_time())
        .for_each(|data: &[u8]| {
            let pick = usize::from(data.first().copied().unwrap_or(0));
            let inputs = [
                data.to_vec(),
                mutate(&binary[pick % binary.len()], data),
                mutate(json[pick % json.len()].as_bytes(), data),
            ];
            for input in inputs {
                let (_, peak) = peak_of(|| decode_all(&input));
                assert!(
                    peak <= budget(input.len()),
                    "{peak} bytes allocated to decode {} bytes",
                    input.len()
                );
            }
        });
}

#[test]
fn policy() {
    let _guard = counting_alloc::measuring();
    let seed = std::fs::read(root().join("simulations/results/default/policy.json")).unwrap();
    let tolerance = serde_json::to_vec(
        &serde_json::from_slice::<CalibratedPolicy>(&seed)
            .unwrap()
            .tolerance()
            .unwrap(),
    )
    .unwrap();
    bolero::check!()
        .with_test_time(fuzz_time())
        .for_each(|data: &[u8]| {
            let inputs = [data.to_vec(), mutate(&seed, data), mutate(&tolerance, data)];
            for input in inputs {
                let (_, peak) = peak_of(|| {
                    let Ok(text) = std::str::from_utf8(&input) else {
                        return;
                    };
                    if let Ok(p) = serde_json::from_str::<CalibratedPolicy>(text) {
                        if p.validate().is_ok() {
                            let _ = p.tolerance();
                        }
                    }
                    if let Ok(t) = serde_json::from_str::<TolerancePolicy>(text) {
                        let _ = t.validate();
                    }
                });
                assert!(
                    peak <= budget(input.len()),
                    "{peak} bytes allocated to parse a {}-byte policy",
                    input.len()
                );
            }
        });
}
