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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use veritrace_protocol::calibration::CalibratedPolicy;
use veritrace_protocol::tolerance::TolerancePolicy;
use veritrace_protocol::{Challenge, Commitment, Message, Opening, Statement, Verdict};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout is passed through unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated (above what was live before) while `f` runs. The two targets run in
/// one test function each; the test binary runs them one after the other
/// (`fuzz_lock`), so the counters see one target at a time.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn fuzz_lock() -> std::sync::MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn fuzz_time() -> Duration {
    let secs = std::env::var("VERITRACE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

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
    let _guard = fuzz_lock();
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
    let _guard = fuzz_lock();
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
