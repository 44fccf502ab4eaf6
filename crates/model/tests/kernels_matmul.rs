//! `kernels/matmul.cu` on the CPU through the host shim (`tests/host/matmul_driver.cpp`),
//! against reference implementations written here with the kernels' rounding rules, all bitwise
//! (every dot product is accumulated in f32 from 0 in index order, as the references do):
//!
//! * split-K (`vt_matmul_splitk_partial`, `vt_splitk_reduce`), S = 1, 2, 3 with K = 71 (not
//!   divisible by 2 or 3) and K = 4 with S = 3 (slices of 2: only two non-empty), M = 37 and
//!   N = 40 (partial tiles in both directions): every partial sum and `y = round(p_0 + p_1 + ...)`;
//! * dequantize-and-multiply (`vt_matmul_dequant`): int8 per channel, int8 per tensor (expanded
//!   to per channel), int4 with groups of 32 and a short last group (K = 71: 32 + 32 + 7, an odd
//!   K so the last byte of a packed row holds one value), nearest and MSE-clipped rounding, with
//!   weights from `veritrace_model::quant::quantize`: `y = round(x · round(dequantize())ᵀ)`;
//!
//! in f32, bf16 and f16.

mod host;

use host::{round_p, values, BF16, F16, F32};

use std::path::Path;

use veritrace_model::quant::{quantize, Quantized};
use veritrace_model::{Quant, QuantScheme, Rounding};

/// Σ_{k in range} x[m, k] w[n, k], in f32 from 0 in index order.
fn dot(x: &[f32], w: &[f32], k: usize, m: usize, n: usize, range: std::ops::Range<usize>) -> f32 {
    let mut acc = 0f32;
    for c in range {
        acc += x[m * k + c] * w[n * k + c];
    }
    acc
}

fn assert_bitwise(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits(),
            "{what}: element {i}: kernel {a:e} reference {b:e}"
        );
    }
}

/// Runs split-K: returns (partial [S, M, N], y [M, N]).
fn run_splitk(
    exe: &Path,
    x: &[f32],
    w: &[f32],
    (m, n, k, s): (usize, usize, usize, usize),
    precision: i32,
) -> (Vec<f32>, Vec<f32>) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = dir.path();
    std::fs::write(d.join("params.txt"), format!("{m} {n} {k} {s} {precision}")).unwrap();
    host::write_f32(&d.join("x.bin"), x);
    host::write_f32(&d.join("w.bin"), w);
    host::run(exe, &[Path::new("splitk"), d]);
    (
        host::read_f32(&d.join("partial.bin")),
        host::read_f32(&d.join("y.bin")),
    )
}

#[test]
fn split_k_partials_and_reduction_are_bitwise_the_reference() {
    let Some((_dir, exe)) = host::build("matmul_driver.cpp") else {
        return;
    };
    for precision in [F32, BF16, F16] {
        for (m, n, k, s) in [
            (37, 40, 71, 1),
            (37, 40, 71, 2),
            (37, 40, 71, 3),
            (5, 17, 4, 3),
        ] {
            let x = values(m * k, 1, 2.0, precision);
            let w = values(n * k, 2, 0.5, precision);
            let (partial, y) = run_splitk(&exe, &x, &w, (m, n, k, s), precision);
            let part = k.div_ceil(s);
            let slices: Vec<_> = (0..k).step_by(part).map(|b| b..(b + part).min(k)).collect();
            assert!(slices.len() <= s);
            let mut want_y = vec![0f32; m * n];
            for r in 0..m {
                for c in 0..n {
                    let parts: Vec<f32> = slices
                        .iter()
                        .map(|sl| dot(&x, &w, k, r, c, sl.clone()))
                        .collect();
                    for (i, &p) in parts.iter().enumerate() {
                        let got = partial[(i * m + r) * n + c];
                        assert_eq!(
                            got.to_bits(),
                            p.to_bits(),
                            "partial {i} at ({r}, {c}), K={k} S={s}: kernel {got:e} reference {p:e}"
                        );
                    }
                    let mut acc = parts[0];
                    for &p in &parts[1..] {
                        acc += p;
                    }
                    want_y[r * n + c] = round_p(acc, precision);
                }
            }
            assert_bitwise(&format!("y, K={k} S={s} p={precision}"), &y, &want_y);
        }
    }
}

/// The kernel's codes and scales for a quantized matrix: int8 as bytes [N, K]; int4 packed two
/// per byte [N, ceil(K/2)], low nibble the even column; a per-tensor scale expanded per row.
fn kernel_layout(q: &Quantized) -> (Vec<u8>, Vec<f32>, usize, i32) {
    let (n, k) = (q.rows, q.cols);
    match q.scheme {
        QuantScheme::Int4Group { .. } => {
            let row_bytes = k.div_ceil(2);
            let mut codes = vec![0u8; n * row_bytes];
            for r in 0..n {
                for c in 0..k {
                    let nib = (q.values[r * k + c] as u8) & 0x0f;
                    codes[r * row_bytes + c / 2] |= if c % 2 == 0 { nib } else { nib << 4 };
                }
            }
            (codes, q.scales.clone(), q.group_cols, 4)
        }
        QuantScheme::Int8Tensor => {
            let codes = q.values.iter().map(|&v| v as u8).collect();
            (codes, vec![q.scales[0]; n], k, 8)
        }
        QuantScheme::Int8Channel => {
            let codes = q.values.iter().map(|&v| v as u8).collect();
            (codes, q.scales.clone(), q.group_cols, 8)
        }
    }
}

fn run_dequant(exe: &Path, x: &[f32], q: &Quantized, m: usize, precision: i32) -> Vec<f32> {
    let (codes, scales, group_cols, bits) = kernel_layout(q);
    let dir = tempfile::tempdir().expect("temporary directory");
    let d = dir.path();
    std::fs::write(
        d.join("params.txt"),
        format!("{m} {} {} {group_cols} {bits} {precision}", q.rows, q.cols),
    )
    .unwrap();
    host::write_f32(&d.join("x.bin"), x);
    std::fs::write(d.join("codes.bin"), codes).unwrap();
    host::write_f32(&d.join("scales.bin"), &scales);
    host::run(exe, &[Path::new("dequant"), d]);
    host::read_f32(&d.join("y.bin"))
}

#[test]
fn dequantized_products_are_bitwise_quant_rs_weights_times_x() {
    let Some((_dir, exe)) = host::build("matmul_driver.cpp") else {
        return;
    };
    let (m, n, k) = (37, 40, 71);
    let w = values(n * k, 7, 0.3, F32);
    for precision in [F32, BF16, F16] {
        let x = values(m * k, 8, 2.0, precision);
        for scheme in [
            QuantScheme::Int8Channel,
            QuantScheme::Int8Tensor,
            QuantScheme::Int4Group { group: 32 },
        ] {
            for rounding in [Rounding::Nearest, Rounding::Mse] {
                let q = quantize(&w, n, k, Quant { scheme, rounding }).expect("quantize");
                if let QuantScheme::Int4Group { .. } = scheme {
                    assert_eq!(q.scales.len(), n * 3, "groups 32 + 32 + 7");
                }
                // The weights the CPU computes with: quant.rs's f32 dequantization, cast to the
                // precision.
                let wh: Vec<f32> = q
                    .dequantize()
                    .iter()
                    .map(|&v| round_p(v, precision))
                    .collect();
                let want: Vec<f32> = (0..m * n)
                    .map(|i| round_p(dot(&x, &wh, k, i / n, i % n, 0..k), precision))
                    .collect();
                let got = run_dequant(&exe, &x, &q, m, precision);
                assert_bitwise(
                    &format!("{scheme:?} {rounding:?} p={precision}"),
                    &got,
                    &want,
                );
            }
        }
    }
}
