//! `kernels/attention.cu` on the CPU through the host shim (`tests/host/attn_driver.cpp`),
//! against reference implementations written here with the kernels' rounding rules and
//! accumulation orders:
//!
//! * eager (`vt_attn_scores`, `vt_attn_softmax`, `vt_attn_pv`): scores, probabilities and output
//!   bitwise equal to the reference (same f32 operations in the same order; `expf` is the
//!   host's in both);
//! * top-k (`vt_attn_topk` between scores and softmax), k = 1, 4, 16, 40: scores, probabilities
//!   and output bitwise equal to the CPU's selection rule ([`veritrace_model::topk_mask`]), and
//!   the selection alone on crafted rows (ties, both zeros, -inf, +inf, NaN, subnormals);
//! * tiled (`vt_attn_tiled`), key blocks B = 1, 3, 16, 64: bitwise equal to the reference online
//!   softmax;
//! * tiled with one block (B >= keys) against eager: within f32 rounding under f32 (2e-6
//!   absolute for outputs of magnitude <= 1; 2.4e-7 is seen), within 2^-7 (two bf16 steps at
//!   [0.5, 1); one step is seen) under bf16, where the tiled path rounds the unnormalized block
//!   product to bf16 and eager the probabilities;
//!
//! over causal masks, windows, a padding key mask, grouped KV (4 query heads over 2 KV heads),
//! an odd token count (37), queries at an offset (decode: 5 queries at positions 32..37 over 37
//! keys) and head dimensions 32 and 64, in f32, bf16 and f16.

mod host;

use host::{round_p, values, BF16, F16, F32};

use std::path::Path;

const NO_WINDOW: i32 = i32::MAX;
/// Threads per row of the softmax kernel (`VT_ROW_THREADS`).
const ROW_THREADS: usize = veritrace_model::kernels::ROW_THREADS as usize;

#[derive(Clone, Debug)]
struct Case {
    tq: usize,
    tk: usize,
    q0: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    causal: bool,
    window: i32,
    /// Additive key mask (0 or -inf), one entry per key.
    mask: Option<Vec<f32>>,
    precision: i32,
}

struct Inputs {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl Case {
    fn scale(&self) -> f32 {
        (1.0 / (self.hd as f64).sqrt()) as f32
    }

    fn inputs(&self, seed: u64) -> Inputs {
        let p = self.precision;
        Inputs {
            q: values(self.tq * self.nh * self.hd, seed, 2.0, p),
            k: values(self.tk * self.nkv * self.hd, seed + 1, 2.0, p),
            v: values(self.tk * self.nkv * self.hd, seed + 2, 1.0, p),
        }
    }

    fn visible(&self, i: usize, j: usize) -> bool {
        let p = self.q0 + i;
        if self.causal && j > p {
            return false;
        }
        (p.abs_diff(j) as u64) < self.window as u64
    }

    fn q_row<'a>(&self, x: &'a Inputs, i: usize, h: usize) -> &'a [f32] {
        let at = (i * self.nh + h) * self.hd;
        &x.q[at..at + self.hd]
    }

    fn kv_at(&self, j: usize, h: usize) -> usize {
        let kvh = h / (self.nh / self.nkv);
        (j * self.nkv + kvh) * self.hd
    }

    /// The masked, scaled score of query i, head h, key j.
    fn score(&self, x: &Inputs, h: usize, i: usize, j: usize) -> f32 {
        if !self.visible(i, j) {
            return f32::NEG_INFINITY;
        }
        let k = &x.k[self.kv_at(j, h)..self.kv_at(j, h) + self.hd];
        let mut dot = 0f32;
        for (a, b) in self.q_row(x, i, h).iter().zip(k) {
            dot += a * b;
        }
        let s = round_p(dot, self.precision) * self.scale();
        match &self.mask {
            Some(m) => s + m[j],
            None => s,
        }
    }
}

/// Eager reference: (scores [nh, tq, tk], probs [nh, tq, tk], out [tq, nh·hd]). With
/// `topk`, the scores after the CPU's top-k selection ([`veritrace_model::topk_mask`]).
fn eager_reference(c: &Case, x: &Inputs, topk: Option<usize>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (tq, tk, nh, hd, p) = (c.tq, c.tk, c.nh, c.hd, c.precision);
    let mut scores = vec![0f32; nh * tq * tk];
    for h in 0..nh {
        for i in 0..tq {
            for j in 0..tk {
                scores[(h * tq + i) * tk + j] = c.score(x, h, i, j);
            }
        }
    }
    if let Some(keep) = topk {
        veritrace_model::topk_mask(&mut scores, tk, keep);
    }
    let mut probs = scores.clone();
    for row in probs.chunks_mut(tk) {
        let m = row
            .iter()
            .fold(f32::NEG_INFINITY, |m, &s| if s > m { s } else { m });
        if m == f32::NEG_INFINITY {
            row.fill(0.0);
            continue;
        }
        for s in row.iter_mut() {
            *s = (*s - m).exp();
        }
        // The kernel's order: thread t sums t, t + 128, ... from 0, then the 128 partial sums
        // are added in thread order.
        let mut parts = [0f32; ROW_THREADS];
        for (t, part) in parts.iter_mut().enumerate() {
            for &e in row.iter().skip(t).step_by(ROW_THREADS) {
                *part += e;
            }
        }
        let mut sum = parts[0];
        for &part in &parts[1..] {
            sum += part;
        }
        for e in row.iter_mut() {
            *e = round_p(*e / sum, p);
        }
    }
    let mut out = vec![0f32; tq * nh * hd];
    for i in 0..tq {
        for h in 0..nh {
            for d in 0..hd {
                let mut acc = 0f32;
                for j in 0..tk {
                    acc += probs[(h * tq + i) * tk + j] * x.v[c.kv_at(j, h) + d];
                }
                out[(i * nh + h) * hd + d] = round_p(acc, p);
            }
        }
    }
    (scores, probs, out)
}

/// Tiled reference: the online softmax over key blocks of `block` keys from key 0, a block
/// hidden from the query skipped, the block product with v rounded to the precision.
fn tiled_reference(c: &Case, x: &Inputs, block: usize) -> Vec<f32> {
    let (tq, tk, nh, hd, p) = (c.tq, c.tk, c.nh, c.hd, c.precision);
    let mut out = vec![0f32; tq * nh * hd];
    for i in 0..tq {
        for h in 0..nh {
            let mut state: Option<(f32, f32, Vec<f32>)> = None; // (m, sum, o)
            let mut k0 = 0;
            while k0 < tk {
                let len = block.min(tk - k0);
                let s: Vec<f32> = (k0..k0 + len).map(|j| c.score(x, h, i, j)).collect();
                let bmax = s
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
                if bmax == f32::NEG_INFINITY {
                    k0 += len;
                    continue;
                }
                let m_new = match &state {
                    Some((m, _, _)) if *m >= bmax => *m,
                    _ => bmax,
                };
                let pj: Vec<f32> = s.iter().map(|&v| (v - m_new).exp()).collect();
                let mut psum = 0f32;
                for &e in &pj {
                    psum += e;
                }
                let mut pv = vec![0f32; hd];
                for (r, &e) in pj.iter().enumerate() {
                    let pr = round_p(e, p);
                    let vr = &x.v[c.kv_at(k0 + r, h)..c.kv_at(k0 + r, h) + hd];
                    for (a, &b) in pv.iter_mut().zip(vr) {
                        *a += pr * b;
                    }
                }
                state = Some(match state {
                    None => (m_new, psum, pv.iter().map(|&a| round_p(a, p)).collect()),
                    Some((m, sum, o)) => {
                        let corr = (m - m_new).exp();
                        let o = o
                            .iter()
                            .zip(&pv)
                            .map(|(&o, &a)| o * corr + round_p(a, p))
                            .collect();
                        (m_new, sum * corr + psum, o)
                    }
                });
                k0 += len;
            }
            let row = &mut out[(i * nh + h) * hd..(i * nh + h + 1) * hd];
            if let Some((_, sum, o)) = state {
                for (r, &a) in row.iter_mut().zip(&o) {
                    *r = round_p(a / sum, p);
                }
            }
        }
    }
    out
}

struct Run {
    scores: Vec<f32>,
    probs: Vec<f32>,
    out: Vec<f32>,
}

/// Runs the driver in `mode` ("eager" or "tiled") on a case.
fn run_kernel(exe: &Path, mode: &str, c: &Case, x: &Inputs, block: usize) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = dir.path();
    let params = format!(
        "{} {} {} {} {} {} {} {} {} {} {} {}",
        c.tq,
        c.tk,
        c.q0,
        c.nh,
        c.nkv,
        c.hd,
        c.causal as i32,
        c.window,
        block,
        c.precision,
        c.scale().to_bits(),
        c.mask.is_some() as i32
    );
    std::fs::write(d.join("params.txt"), params).expect("write params");
    host::write_f32(&d.join("q.bin"), &x.q);
    host::write_f32(&d.join("k.bin"), &x.k);
    host::write_f32(&d.join("v.bin"), &x.v);
    if let Some(m) = &c.mask {
        host::write_f32(&d.join("mask.bin"), m);
    }
    host::run(exe, &[Path::new(mode), d]);
    let eager = mode == "eager" || mode == "topk";
    Run {
        scores: if eager {
            host::read_f32(&d.join("scores.bin"))
        } else {
            Vec::new()
        },
        probs: if eager {
            host::read_f32(&d.join("probs.bin"))
        } else {
            Vec::new()
        },
        out: host::read_f32(&d.join("out.bin")),
    }
}

fn assert_bitwise(what: &str, c: &Case, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length, {c:?}");
    for (n, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {n}: kernel {a:e} reference {b:e} (case {c:?})"
        );
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

/// The cases: causal with grouped KV and an odd token count, a window, a padding key mask
/// (bidirectional, the BERT encoder's), decode queries at an offset; hd 32 and 64.
fn cases(precision: i32) -> Vec<Case> {
    let padding: Vec<f32> = (0..37)
        .map(|j| if j >= 30 { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    let left_padding: Vec<f32> = (0..37)
        .map(|j| if j < 20 { f32::NEG_INFINITY } else { 0.0 })
        .collect();
    let base = Case {
        tq: 37,
        tk: 37,
        q0: 0,
        nh: 4,
        nkv: 2,
        hd: 32,
        causal: true,
        window: NO_WINDOW,
        mask: None,
        precision,
    };
    vec![
        base.clone(),
        Case {
            hd: 64,
            nh: 2,
            nkv: 2,
            window: 8,
            ..base.clone()
        },
        Case {
            causal: false,
            mask: Some(padding),
            ..base.clone()
        },
        Case {
            causal: false,
            nh: 2,
            nkv: 1,
            hd: 64,
            mask: Some(left_padding),
            window: 12,
            ..base.clone()
        },
        Case {
            tq: 5,
            q0: 32,
            ..base
        },
    ]
}

#[test]
fn eager_attention_is_bitwise_the_reference() {
    let Some((_dir, exe)) = host::build("attn_driver.cpp") else {
        return;
    };
    for precision in [F32, BF16, F16] {
        for (n, c) in cases(precision).iter().enumerate() {
            let x = c.inputs(10 + n as u64);
            let got = run_kernel(&exe, "eager", c, &x, 0);
            let (scores, probs, out) = eager_reference(c, &x, None);
            assert_bitwise("scores", c, &got.scores, &scores);
            assert_bitwise("probs", c, &got.probs, &probs);
            assert_bitwise("out", c, &got.out, &out);
            assert!(out.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn topk_attention_is_bitwise_the_cpu_selection() {
    let Some((_dir, exe)) = host::build("attn_driver.cpp") else {
        return;
    };
    // f32: 1 and 4 mask most keys, 16 some, 40 none (more than the 37 keys); bf16 (many tied
    // scores on its coarser grid): 4.
    for (precision, keeps) in [(F32, &[1usize, 4, 16, 40][..]), (BF16, &[4][..])] {
        for (n, c) in cases(precision).iter().enumerate() {
            let x = c.inputs(60 + n as u64);
            for &keep in keeps {
                let got = run_kernel(&exe, "topk", c, &x, keep);
                let (scores, probs, out) = eager_reference(c, &x, Some(keep));
                assert_bitwise(&format!("top-{keep} scores"), c, &got.scores, &scores);
                assert_bitwise(&format!("top-{keep} probs"), c, &got.probs, &probs);
                assert_bitwise(&format!("top-{keep} out"), c, &got.out, &out);
            }
            // The selection is not a no-op: with keep = 4 some visible key is masked.
            let (masked, _, _) = eager_reference(c, &x, Some(4));
            let (plain, _, _) = eager_reference(c, &x, None);
            assert!(masked.iter().zip(&plain).any(|(a, b)| a != b), "{c:?}");
        }
    }
}

/// Rows built to stress the selection: ties with the threshold, both zeros, hidden keys
/// (-inf), +inf and NaN (not finite, so never counted), rows with fewer finite scores than
/// `keep`, and lengths around the kernel's 128 threads.
fn crafted_rows(n: usize, rows: usize, seed: u64) -> Vec<f32> {
    let palette = [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        0.5,
        f32::NEG_INFINITY,
        f32::INFINITY,
        f32::NAN,
        1.0e-40, // subnormal
        -3.25,
        f32::MAX,
        -f32::MAX,
    ];
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(7);
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..rows * n)
        .map(|at| {
            let r = next();
            match at / n % 4 {
                // mostly hidden keys
                0 if r % 5 != 0 => f32::NEG_INFINITY,
                // few distinct values: many ties
                1 => palette[(r % 4) as usize],
                // the whole palette
                2 => palette[(r % palette.len() as u64) as usize],
                // distinct values
                _ => ((r >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0,
            }
        })
        .collect()
}

#[test]
fn topk_selection_matches_the_cpu_rule_on_crafted_rows() {
    let Some((_dir, exe)) = host::build("attn_driver.cpp") else {
        return;
    };
    for (n, rows) in [(1usize, 4usize), (5, 8), (128, 8), (129, 8), (300, 8)] {
        for keep in [1usize, 2, 3, 7, 64, 200] {
            let scores = crafted_rows(n, rows, (n * 1000 + keep) as u64);
            let dir = tempfile::tempdir().expect("temporary directory");
            let d = dir.path();
            std::fs::write(d.join("select.txt"), format!("{rows} {n} {keep}")).expect("write");
            host::write_f32(&d.join("scores.bin"), &scores);
            host::run(&exe, &[Path::new("select"), d]);
            let got = host::read_f32(&d.join("selected.bin"));
            let mut want = scores.clone();
            veritrace_model::topk_mask(&mut want, n, keep);
            assert_eq!(got.len(), want.len());
            for (at, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    a.to_bits() == b.to_bits(),
                    "n={n} keep={keep} element {at}: kernel {a:e} cpu {b:e} (input {:e})",
                    scores[at]
                );
            }
        }
    }
}

#[test]
fn tiled_attention_is_bitwise_the_online_softmax_reference() {
    let Some((_dir, exe)) = host::build("attn_driver.cpp") else {
        return;
    };
    for precision in [F32, BF16] {
        for (n, c) in cases(precision).iter().enumerate() {
            let x = c.inputs(20 + n as u64);
            for block in [1, 3, 16, 64] {
                let got = run_kernel(&exe, "tiled", c, &x, block);
                let want = tiled_reference(c, &x, block);
                assert_bitwise(&format!("tiled B={block}"), c, &got.out, &want);
            }
        }
    }
    // 70 rows (five row blocks of 16, whose key ranges start and end at different blocks under a
    // window) and key blocks larger than a shared-memory sub-tile (32 keys).
    let base = Case {
        tq: 70,
        tk: 70,
        q0: 0,
        nh: 2,
        nkv: 1,
        hd: 32,
        causal: true,
        window: NO_WINDOW,
        mask: None,
        precision: BF16,
    };
    let long = [
        base.clone(),
        Case {
            window: 10,
            ..base.clone()
        },
        Case {
            causal: false,
            window: 5,
            ..base
        },
    ];
    for (n, c) in long.iter().enumerate() {
        let x = c.inputs(30 + n as u64);
        for block in [1, 16, 65, 128] {
            let got = run_kernel(&exe, "tiled", c, &x, block);
            let want = tiled_reference(c, &x, block);
            assert_bitwise(&format!("tiled B={block}"), c, &got.out, &want);
        }
    }
}

#[test]
fn tiled_attention_with_one_block_agrees_with_eager() {
    let Some((_dir, exe)) = host::build("attn_driver.cpp") else {
        return;
    };
    for (precision, tol) in [(F32, 2e-6f32), (BF16, 1.0 / 128.0)] {
        for (n, c) in cases(precision).iter().enumerate() {
            let x = c.inputs(40 + n as u64);
            let tiled = run_kernel(&exe, "tiled", c, &x, 64).out;
            let eager = eager_reference(c, &x, None).2;
            let diff = max_abs_diff(&tiled, &eager);
            assert!(
                diff <= tol,
                "tiled B=64 vs eager: max |diff| {diff:e} > {tol:e} ({c:?})"
            );
        }
    }
}

#[test]
fn an_invalid_key_block_gives_nan_not_garbage() {
    let Some((_dir, exe)) = host::build("attn_driver.cpp") else {
        return;
    };
    let c = Case {
        tq: 3,
        tk: 3,
        q0: 0,
        nh: 1,
        nkv: 1,
        hd: 32,
        causal: true,
        window: NO_WINDOW,
        mask: None,
        precision: F32,
    };
    let x = c.inputs(50);
    for block in [0, 129] {
        let out = run_kernel(&exe, "tiled", &c, &x, block).out;
        assert!(out.iter().all(|v| v.is_nan()), "B={block}");
    }
}
