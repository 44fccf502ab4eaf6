//! Fuzz target `scenario`: the scenario parser and its validation ([`Scenario::from_toml`],
//! [`Scenario::validate`]) on arbitrary bytes and on mutations of every scenario shipped in
//! `simulations/`. Nothing may panic, and parsing must allocate within a small multiple of its
//! input. (Validation refuses the sizes a run could not finish: a test per bound lives in
//! `tests/bounds.rs`.)
//!
//! Run by `cargo test` for `VERITRACE_FUZZ_SECONDS` seconds (default 5) with bolero's random
//! engine; `cargo bolero test scenario -p veritrace-sim` runs it under a coverage-guided fuzzer
//! where one is installed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use veritrace_sim::Scenario;

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

fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

fn fuzz_time() -> Duration {
    let secs = std::env::var("VERITRACE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(5);
    Duration::from_secs(secs)
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort();
    assert!(out.len() >= 3, "the shipped scenarios are the seeds");
    out
}

fn mutate(seed: &[u8], data: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for op in data.chunks_exact(4) {
        if b.is_empty() {
            break;
        }
        let at = usize::from(u16::from_le_bytes([op[0], op[1]])) % b.len();
        match op[2] % 4 {
            // A digit made larger: numbers grow towards the bounds and past them.
            0 => b.insert(at, b'0' + op[3] % 10),
            1 => b[at] = op[3],
            2 => b.truncate(at),
            _ => b
                .splice(at..at, b"99999999999".iter().copied())
                .for_each(drop),
        }
    }
    b
}

fn check(bytes: &[u8]) {
    let (_, peak) = peak_of(|| {
        let Ok(text) = std::str::from_utf8(bytes) else {
            return;
        };
        if let Ok(s) = Scenario::from_toml(text) {
            let _ = s.validate();
        }
    });
    assert!(
        peak <= 64 * bytes.len() + (1 << 20),
        "{peak} bytes allocated to parse a {}-byte scenario",
        bytes.len()
    );
}

#[test]
fn scenario() {
    let seeds = seeds();
    bolero::check!()
        .with_test_time(fuzz_time())
        .for_each(|data: &[u8]| {
            check(data);
            let pick = usize::from(data.first().copied().unwrap_or(0)) % seeds.len();
            check(&mutate(&seeds[pick], data));
        });
}
