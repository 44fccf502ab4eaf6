//! kernels/norm.cu run on the CPU through the host shim, against Rust references with the same
//! rounding rules: bitwise where the operations are the same IEEE operations in the same order,
//! within a few ulps where the kernel reduces in its own (fixed) order.

mod host;

use std::path::Path;

use half::{bf16, f16};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

struct Driver {
    _dir: tempfile::TempDir,
    exe: std::path::PathBuf,
}

fn driver() -> Option<Driver> {
    host::build("norm_driver.cpp").map(|(dir, exe)| Driver { _dir: dir, exe })
}

fn round(x: f32, p: i32) -> f32 {
    match p {
        1 => bf16::from_f32(x).to_f32(),
        2 => f16::from_f32(x).to_f32(),
        _ => x,
    }
}

fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale)
        .collect()
}

/// Runs `kernel` with inputs x, a, b and returns its output.
#[allow(clippy::too_many_arguments)]
fn run(
    d: &Driver,
    kernel: &str,
    x: &[f32],
    a: &[f32],
    b: &[f32],
    rows: usize,
    n: usize,
    p: i32,
    eps: f32,
) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    host::write_f32(&dir.path().join("x"), x);
    host::write_f32(&dir.path().join("a"), a);
    host::write_f32(&dir.path().join("b"), b);
    let out = dir.path().join("out");
    let args = [
        kernel.to_string(),
        dir.path().display().to_string(),
        out.display().to_string(),
        rows.to_string(),
        n.to_string(),
        p.to_string(),
        format!("{eps:e}"),
    ];
    let args: Vec<&Path> = args.iter().map(Path::new).collect();
    host::run(&d.exe, &args);
    host::read_f32(&out)
}

fn same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: element {i}: kernel {g:e} ({:#x}) vs reference {w:e} ({:#x})",
            g.to_bits(),
            w.to_bits()
        );
    }
}

/// `|got − want| ≤ rel·max(|want|, 10⁻³)`: relative, with an absolute floor for values near
/// zero (where f32 cancellation, as in `1 + erf(x)` for x ≪ 0, leaves absolute error only).
fn close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs().max(1e-3);
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: kernel {g:e} vs reference {w:e}"
        );
    }
}

#[test]
fn rounding_to_bf16_and_f16_matches_the_half_crate_bit_for_bit() {
    let Some(d) = driver() else { return };
    let mut x = values(4000, 1, 70000.0);
    x.extend(values(2000, 2, 1e-4));
    x.extend(values(2000, 3, 1e-7));
    x.extend([
        0.0,
        -0.0,
        1.0,
        65504.0,
        65519.0,
        65520.0,
        -65520.0,
        1e9,
        5.960_464_5e-8,
        2.980_232_2e-8,
        2.980_233e-8,
        1e-9,
        6.103_515_6e-5,
        6.1e-5,
        3.4e38,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        1.000_976_6,
        1.003_906_3,
        0.333_333_34,
    ]);
    // Ties of both grids: values exactly halfway between neighbours.
    for i in 0..200u32 {
        x.push(f32::from_bits(0x3f80_0000 + (i << 13) + 0x1000)); // f16 ties near 1
        x.push(f32::from_bits(0x4000_0000 + (i << 16) + 0x8000)); // bf16 ties near 2
    }
    for p in [1, 2] {
        let got = run(&d, "round", &x, &[], &[], 1, x.len(), p, 0.0);
        let want: Vec<f32> = x.iter().map(|&v| round(v, p)).collect();
        same_bits(&got, &want, &format!("round precision {p}"));
    }
    let got = run(&d, "round", &x, &[], &[], 1, x.len(), 0, 0.0);
    same_bits(&got, &x, "round f32 is the identity");
}

#[test]
fn rms_norm_and_layer_norm_match_an_f64_reference() {
    let Some(d) = driver() else { return };
    for (rows, n) in [(3usize, 128usize), (5, 100), (2, 384), (1, 7)] {
        let x = values(rows * n, 10 + n as u64, 3.0);
        let g = values(n, 20, 1.0)
            .iter()
            .map(|v| 1.0 + 0.1 * v)
            .collect::<Vec<_>>();
        let b = values(n, 30, 0.2);
        for p in [0, 1] {
            let x: Vec<f32> = x.iter().map(|&v| round(v, p)).collect();
            let eps = 1e-5f32;
            let got = run(&d, "rms_norm", &x, &g, &[], rows, n, p, eps);
            let mut want = Vec::new();
            for r in x.chunks(n) {
                let ms = r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / n as f64;
                let inv = 1.0 / (ms + f64::from(eps)).sqrt();
                want.extend(
                    r.iter()
                        .zip(&g)
                        .map(|(&v, &gi)| round((f64::from(v) * inv * f64::from(gi)) as f32, p)),
                );
            }
            // f32: a few ulps of reduction-order difference; bf16: at most one bf16 step.
            close(&got, &want, if p == 0 { 1e-5 } else { 8e-3 }, "rms_norm");
            let got = run(&d, "layer_norm", &x, &g, &b, rows, n, p, 1e-12);
            let mut want = Vec::new();
            for r in x.chunks(n) {
                let mu = r.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
                let var = r.iter().map(|&v| (f64::from(v) - mu).powi(2)).sum::<f64>() / n as f64;
                let sd = (var + 1e-12).sqrt();
                want.extend(r.iter().zip(g.iter().zip(&b)).map(|(&v, (&gi, &bi))| {
                    round(
                        ((f64::from(v) - mu) / sd * f64::from(gi) + f64::from(bi)) as f32,
                        p,
                    )
                }));
            }
            close(&got, &want, if p == 0 { 2e-5 } else { 8e-3 }, "layer_norm");
        }
    }
}

#[test]
fn a_row_kernel_is_a_function_of_its_row_alone() {
    let Some(d) = driver() else { return };
    let n = 200;
    let x = values(4 * n, 40, 2.0);
    let g = vec![1.0f32; n];
    let all = run(&d, "rms_norm", &x, &g, &[], 4, n, 0, 1e-6);
    let third = run(&d, "rms_norm", &x[2 * n..3 * n], &g, &[], 1, n, 0, 1e-6);
    same_bits(&all[2 * n..3 * n], &third, "row 2 alone");
}

#[test]
fn elementwise_kernels_round_each_operation_as_the_cpu_decoder() {
    let Some(d) = driver() else { return };
    let n = 1000;
    for p in [0, 1, 2] {
        let x: Vec<f32> = values(n, 50, 4.0).iter().map(|&v| round(v, p)).collect();
        let a: Vec<f32> = values(n, 51, 4.0).iter().map(|&v| round(v, p)).collect();

        let got = run(&d, "add", &x, &a, &[], 1, n, p, 0.0);
        let want: Vec<f32> = x.iter().zip(&a).map(|(&u, &v)| round(u + v, p)).collect();
        same_bits(&got, &want, "add");

        let got = run(&d, "reuse", &x, &a, &[], 1, n, p, 0.0);
        let want: Vec<f32> = x
            .iter()
            .zip(&a)
            .map(|(&u, &v)| round(u + round(u - v, p), p))
            .collect();
        same_bits(&got, &want, "reuse");

        let (rows, cols) = (10, 100);
        let got = run(&d, "add_bias", &x, &a[..cols], &[], rows, cols, p, 0.0);
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &u)| round(u + a[i % cols], p))
            .collect();
        same_bits(&got, &want, "add_bias");

        let got = run(&d, "silu_mul", &x, &a, &[], 1, n, p, 0.0);
        let want: Vec<f32> = x
            .iter()
            .zip(&a)
            .map(|(&g, &u)| round(round(g / (1.0 + (-g).exp()), p) * u, p))
            .collect();
        close(&got, &want, if p == 0 { 1e-6 } else { 8e-3 }, "silu_mul");

        let got = run(&d, "gelu", &x, &[], &[], 1, n, p, 0.0);
        let want: Vec<f32> = x
            .iter()
            .map(|&v| {
                let e = erf(f64::from(v) / std::f64::consts::SQRT_2);
                round((0.5 * f64::from(v) * (1.0 + e)) as f32, p)
            })
            .collect();
        // 1 + erf(x/√2) cancels for x ≪ 0: erff's ~1e-7 absolute error is all that is left.
        close(&got, &want, if p == 0 { 1e-4 } else { 8e-3 }, "gelu");
    }
}

#[test]
fn rope_rotates_each_half_pair_like_the_cpu_decoder() {
    let Some(d) = driver() else { return };
    let (tokens, heads, hd) = (9usize, 3usize, 16usize);
    let half = hd / 2;
    for p in [0, 1] {
        let x: Vec<f32> = values(tokens * heads * hd, 60, 2.0)
            .iter()
            .map(|&v| round(v, p))
            .collect();
        let mut c = Vec::new();
        let mut s = Vec::new();
        for pos in 0..tokens {
            for i in 0..half {
                let a = pos as f64 * 10000f64.powf(-((2 * i) as f64) / hd as f64);
                c.push(round(a.cos() as f32, p));
                s.push(round(a.sin() as f32, p));
            }
        }
        let got = run(&d, "rope", &x, &c, &s, tokens, heads * hd, p, hd as f32);
        let mut want = x.clone();
        for t in 0..tokens {
            for h in 0..heads {
                let base = (t * heads + h) * hd;
                for i in 0..half {
                    let (lo, hi) = (x[base + i], x[base + i + half]);
                    let (cc, ss) = (c[t * half + i], s[t * half + i]);
                    want[base + i] = round(round(lo * cc, p) + round(-hi * ss, p), p);
                    want[base + i + half] = round(round(hi * cc, p) + round(lo * ss, p), p);
                }
            }
        }
        same_bits(&got, &want, "rope");
    }
}

/// erf in f64 (Abramowitz–Stegun 7.1.26 is too coarse; this is the series / continued fraction
/// pair, accurate to ~1e-15).
fn erf(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series.
        let mut term = ax;
        let mut sum = ax;
        let x2 = ax * ax;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), erf = 1 - erfc.
        let mut f = ax;
        let mut c = ax;
        let mut d = 0.0;
        for n in 1..300 {
            let an = n as f64 / 2.0;
            d = ax + an * d;
            d = 1.0 / d;
            c = ax + an / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
    };
    if x < 0.0 {
        -r
    } else {
        r
    }
}
