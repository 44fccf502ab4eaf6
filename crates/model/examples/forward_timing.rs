//! Wall time of the decoder's forward and of greedy generation on a preset, as one JSON line per
//! measurement: what `benches/torch_cpu.py` runs beside PyTorch in the same run (issue 17).
//!
//! ```text
//! cargo run --release -p veritrace-model --example forward_timing -- \
//!     [--preset small] [--tokens 128,512] [--setups f32/attn=eager,f32/attn=eager/kernels=invariant]
//!     [--threads 1] [--repeats 5] [--generate 128:64] [--bert DIR]
//! ```
//!
//! Each figure is the fastest of `--repeats` runs after a second of warm-up and two runs (on a shared machine the
//! fastest run is the one least disturbed), on a rayon pool of
//! `--threads` threads (candle's own element-wise pool follows `RAYON_NUM_THREADS`, which the
//! script sets to the same number). `--generate P:G` also times generating `G` tokens after a
//! `P`-token prompt and one forward over `P + G` tokens, per setup. `--bert DIR` times the BERT
//! encoder in `DIR` (e.g. `models/all-MiniLM-L6-v2`) instead of the decoder preset: its trace,
//! which keeps every layer's rows (a few hundred KB at 128 tokens), under each setup.

use std::time::Instant;

use veritrace_model::{BertModel, LlamaModel, Setup};

mod common;

use common::arg;

fn fastest(v: Vec<f64>) -> f64 {
    v.into_iter().fold(f64::INFINITY, f64::min)
}

fn time(repeats: usize, mut f: impl FnMut()) -> f64 {
    f();
    f();
    fastest(
        (0..repeats)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = arg(&args, "--preset", "small");
    let threads: usize = arg(&args, "--threads", "1").parse().expect("--threads");
    let repeats: usize = arg(&args, "--repeats", "5").parse().expect("--repeats");
    let sizes: Vec<usize> = arg(&args, "--tokens", "128,512")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("--tokens"))
        .collect();
    let setups: Vec<Setup> = arg(
        &args,
        "--setups",
        "f32/attn=eager,f32/attn=eager/kernels=invariant",
    )
    .split(',')
    .map(|s| s.parse().expect("--setups"))
    .collect();
    let generate = arg(&args, "--generate", "");
    let bert = arg(&args, "--bert", "");
    let run = Run {
        setups: &setups,
        sizes: &sizes,
        threads,
        repeats,
    };
    if !bert.is_empty() {
        let model =
            BertModel::load(std::path::Path::new(&bert)).expect("--bert: a BERT checkpoint");
        let vocab = model.config().vocab_size as u32;
        pool(threads).install(|| {
            run.forwards(&bert, vocab, |setup, t| {
                model.trace(setup, t, 16).expect("trace");
            })
        });
        return;
    }
    let model = LlamaModel::preset(&preset).expect("preset");
    let vocab = model.config().vocab_size as u32;
    pool(threads).install(|| {
        run.forwards(&preset, vocab, |setup, t| {
            model.forward(setup, t, 16).expect("forward");
        });
        let Some((p, g)) = generate.split_once(':') else {
            return;
        };
        let (p, g): (usize, usize) = (p.parse().expect("P"), g.parse().expect("G"));
        let prompt = tokens(p, vocab);
        for setup in &setups {
            let s = time(repeats, || {
                model.generate(setup, &prompt, g, 16).expect("generate");
            });
            println!(
                "{{\"engine\":\"veritrace\",\"preset\":\"{preset}\",\"setup\":\"{setup}\",\
                 \"what\":\"generate\",\"prompt\":{p},\"generated\":{g},\"threads\":{threads},\
                 \"seconds\":{s}}}"
            );
        }
    });
}

/// `n` tokens below `vocab`, the same sequence `benches/torch_cpu.py` feeds PyTorch.
fn tokens(n: usize, vocab: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (7 + 37 * i * i + 11 * i) % vocab)
        .collect()
}

/// What is timed: the setups, the sequence lengths, the threads and the repeats.
struct Run<'a> {
    setups: &'a [Setup],
    sizes: &'a [usize],
    threads: usize,
    repeats: usize,
}

impl Run<'_> {
    /// After a second of warm-up on every setup, times `forward(setup, tokens)` at each size
    /// under each setup and prints one JSON line per measurement, naming the model `label`.
    fn forwards(&self, label: &str, vocab: u32, forward: impl Fn(&Setup, &[u32])) {
        warm_up(|| {
            for setup in self.setups {
                forward(setup, &tokens(128, vocab));
            }
        });
        for setup in self.setups {
            for &n in self.sizes {
                let t = tokens(n, vocab);
                let s = time(self.repeats, || forward(setup, &t));
                println!(
                    "{{\"engine\":\"veritrace\",\"preset\":\"{label}\",\"setup\":\"{setup}\",\
                     \"what\":\"forward\",\"tokens\":{n},\"threads\":{},\"seconds\":{s}}}",
                    self.threads
                );
            }
        }
    }
}

/// A rayon pool of `threads` threads.
fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
}

/// Runs `f` for a second: the process's first second runs slower (the allocator settling its
/// thresholds, page faults, clocks), so every setup is warmed up before anything is timed.
fn warm_up(mut f: impl FnMut()) {
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() < 1.0 {
        f();
    }
}
