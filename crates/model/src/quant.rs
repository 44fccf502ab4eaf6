//! Weight quantization, quantize-then-dequantize (candle has no integer matmul dtype, so a
//! quantized model is run as the f32 values its integers dequantize to).
//!
//! A weight matrix `W ∈ ℝ^{out × in}` is split into *scale groups*: the whole matrix
//! ([`QuantScheme::Int8Tensor`]), each output row ([`QuantScheme::Int8Channel`]), or each run of
//! `g` consecutive inputs of a row ([`QuantScheme::Int4Group`], the last run of a row may be
//! shorter). Quantization is symmetric with zero point 0: a group with scale `s` stores
//!
//! ```text
//! q_i = clamp(round(w_i / s), q_min, q_max),    ŵ_i = q_i · s
//! ```
//!
//! with `[q_min, q_max] = [−128, 127]` for int8 and `[−8, 7]` for int4, `round` to nearest with
//! ties away from zero, and the division and product in f32. Two rounding methods at the same
//! bit width choose `s`:
//!
//! * [`Rounding::Nearest`]: `s = max_i |w_i| / Q` with `Q = 127` (int8) or `7` (int4);
//! * [`Rounding::Mse`] (clipped): `s = α · max_i |w_i| / Q` where `α` is the first of the grid
//!   `α_j = 1 − j/100, j = 0..=50` (1.00, 0.99, …, 0.50) minimizing the group's squared error
//!   `Σ_i (w_i − ŵ_i)²` (summed in f64); values beyond the clip saturate at `q_min`/`q_max`.
//!
//! A group whose weights are all zero gets `s = 0` and dequantizes to zeros.

use crate::{first_non_finite, ModelError, Quant, QuantScheme, Result, Rounding};

/// Number of clip ratios searched by [`Rounding::Mse`]: `α_j = 1 − j/100` for `j < 51`.
pub const MSE_CLIP_STEPS: usize = 51;

/// A quantized matrix: integers, one scale per group, and the group layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    /// Rows (output channels).
    pub rows: usize,
    /// Columns (inputs).
    pub cols: usize,
    /// Inputs per group within a row (`cols` for per-tensor and per-channel schemes).
    pub group_cols: usize,
    /// The integers, row-major `[rows, cols]`, in `[q_min, q_max]`.
    pub values: Vec<i8>,
    /// Scales: one for [`QuantScheme::Int8Tensor`], else one per (row, group), row-major.
    pub scales: Vec<f32>,
    /// The scheme.
    pub scheme: QuantScheme,
}

fn range(scheme: QuantScheme) -> (f32, f32, f32) {
    match scheme {
        QuantScheme::Int8Tensor | QuantScheme::Int8Channel => (-128.0, 127.0, 127.0),
        QuantScheme::Int4Group { .. } => (-8.0, 7.0, 7.0),
    }
}

fn quantize_value(w: f32, s: f32, lo: f32, hi: f32) -> i8 {
    if s == 0.0 {
        0
    } else {
        (w / s).round().clamp(lo, hi) as i8
    }
}

/// Picks the scale of one group (a list of slices: a group may span rows, for per-tensor).
fn group_scale(group: &[&[f32]], scheme: QuantScheme, rounding: Rounding) -> f32 {
    let (lo, hi, qmax) = range(scheme);
    let absmax = group
        .iter()
        .flat_map(|s| s.iter())
        .fold(0f32, |m, &w| m.max(w.abs()));
    if absmax == 0.0 {
        return 0.0;
    }
    match rounding {
        Rounding::Nearest => absmax / qmax,
        Rounding::Mse => {
            let mut best = (f64::INFINITY, absmax / qmax);
            for j in 0..MSE_CLIP_STEPS {
                let alpha = (1.0 - j as f64 / 100.0) as f32;
                let s = alpha * absmax / qmax;
                let err: f64 = group
                    .iter()
                    .flat_map(|s| s.iter())
                    .map(|&w| {
                        let d =
                            f64::from(w) - f64::from(f32::from(quantize_value(w, s, lo, hi)) * s);
                        d * d
                    })
                    .sum();
                if err < best.0 {
                    best = (err, s);
                }
            }
            best.1
        }
    }
}

/// Quantizes `w` (row-major `[rows, cols]`) under `quant`. Refuses a length that is not
/// `rows · cols`, empty shapes and non-finite weights.
pub fn quantize(w: &[f32], rows: usize, cols: usize, quant: Quant) -> Result<Quantized> {
    if rows == 0 || cols == 0 || rows.checked_mul(cols) != Some(w.len()) {
        return Err(ModelError::WrongLength {
            what: "weight matrix (elements)",
            expected: format!("{rows} x {cols} with both positive"),
            got: w.len(),
        });
    }
    if let Some(index) = first_non_finite(w) {
        return Err(ModelError::NonFinite {
            what: "weight matrix",
            index,
        });
    }
    let scheme = quant.scheme;
    let (lo, hi, _) = range(scheme);
    let group_cols = match scheme {
        QuantScheme::Int8Tensor | QuantScheme::Int8Channel => cols,
        QuantScheme::Int4Group { group } => {
            if group == 0 {
                return Err(ModelError::InvalidArgument("int4 group size 0".into()));
            }
            group.min(cols)
        }
    };
    let mut values = vec![0i8; w.len()];
    let mut scales = Vec::new();
    if scheme == QuantScheme::Int8Tensor {
        let all: Vec<&[f32]> = w.chunks(cols).collect();
        let s = group_scale(&all, scheme, quant.rounding);
        for (q, &x) in values.iter_mut().zip(w) {
            *q = quantize_value(x, s, lo, hi);
        }
        scales.push(s);
    } else {
        for (r, row) in w.chunks(cols).enumerate() {
            for (g, part) in row.chunks(group_cols).enumerate() {
                let s = group_scale(&[part], scheme, quant.rounding);
                let base = r * cols + g * group_cols;
                for (i, &x) in part.iter().enumerate() {
                    values[base + i] = quantize_value(x, s, lo, hi);
                }
                scales.push(s);
            }
        }
    }
    Ok(Quantized {
        rows,
        cols,
        group_cols,
        values,
        scales,
        scheme,
    })
}

impl Quantized {
    /// The scale that applies to element `(row, col)`.
    pub fn scale_of(&self, row: usize, col: usize) -> f32 {
        match self.scheme {
            QuantScheme::Int8Tensor => self.scales[0],
            _ => {
                let per_row = self.cols.div_ceil(self.group_cols);
                self.scales[row * per_row + col / self.group_cols]
            }
        }
    }

    /// `ŵ = q · s`, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows)
            .flat_map(|r| (0..self.cols).map(move |c| (r, c)))
            .map(|(r, c)| f32::from(self.values[r * self.cols + c]) * self.scale_of(r, c))
            .collect()
    }
}

/// Quantize-then-dequantize: the f32 weights a quantized model computes with.
pub fn quantize_dequantize(w: &[f32], rows: usize, cols: usize, quant: Quant) -> Result<Vec<f32>> {
    Ok(quantize(w, rows, cols, quant)?.dequantize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(scheme: QuantScheme, rounding: Rounding) -> Quant {
        Quant { scheme, rounding }
    }

    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        // A deterministic heavy-tailed spread (cubes of a uniform grid), like trained weights:
        // most values near zero, a few large ones, which is where clipping pays off.
        (0..rows * cols)
            .map(|i| {
                let x = ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
                8.0 * x * x * x
            })
            .collect()
    }

    #[test]
    fn known_answers_int8_tensor_nearest() {
        let w = [1.27f32, -0.635, 0.0, 0.01];
        let out = quantize(&w, 2, 2, q(QuantScheme::Int8Tensor, Rounding::Nearest)).unwrap();
        assert_eq!(out.scales, vec![1.27f32 / 127.0]);
        // 1.27/s = 127; -0.635/s = -63.5 -> -64 (ties away from zero); 0.01/s = 1.
        assert_eq!(out.values, vec![127, -64, 0, 1]);
    }

    #[test]
    fn int4_groups_have_their_own_scales_and_a_short_last_group() {
        let w = weights(3, 40);
        assert!(w.iter().any(|&x| x != 0.0));
        let out = quantize(
            &w,
            3,
            40,
            q(QuantScheme::Int4Group { group: 32 }, Rounding::Nearest),
        )
        .unwrap();
        assert_eq!(out.group_cols, 32);
        assert_eq!(out.scales.len(), 3 * 2);
        assert!(out.values.iter().all(|&v| (-8..=7).contains(&v)));
        for r in 0..3 {
            let absmax = w[r * 40 + 32..(r + 1) * 40]
                .iter()
                .fold(0f32, |m, x| m.max(x.abs()));
            assert_eq!(out.scale_of(r, 35), absmax / 7.0);
        }
    }

    #[test]
    fn dequantized_error_is_within_half_a_step_without_clipping() {
        for scheme in QuantScheme::ALL {
            let w = weights(4, 256);
            let out = quantize(&w, 4, 256, q(scheme, Rounding::Nearest)).unwrap();
            let d = out.dequantize();
            for (i, (&a, &b)) in w.iter().zip(&d).enumerate() {
                let s = out.scale_of(i / 256, i % 256);
                assert!((a - b).abs() <= s * 0.5 + 1e-6, "{scheme:?} at {i}");
            }
        }
    }

    #[test]
    fn mse_rounding_never_has_larger_error_and_differs_with_outliers() {
        for scheme in QuantScheme::ALL {
            let w = weights(4, 2048);
            let err = |r| {
                quantize_dequantize(&w, 4, 2048, q(scheme, r))
                    .unwrap()
                    .iter()
                    .zip(&w)
                    .map(|(a, b)| f64::from(a - b).powi(2))
                    .sum::<f64>()
            };
            let (near, mse) = (err(Rounding::Nearest), err(Rounding::Mse));
            assert!(mse <= near, "{scheme:?}: {mse} > {near}");
            assert!(
                mse < near,
                "{scheme:?}: the outliers should make clipping pay"
            );
        }
    }

    #[test]
    fn zero_groups_and_bad_input() {
        let out = quantize_dequantize(&[0.0; 8], 2, 4, q(QuantScheme::Int8Channel, Rounding::Mse))
            .unwrap();
        assert_eq!(out, vec![0.0; 8]);
        let any = q(QuantScheme::Int8Channel, Rounding::Nearest);
        assert!(matches!(
            quantize(&[1.0; 5], 2, 3, any),
            Err(ModelError::WrongLength { .. })
        ));
        assert!(quantize(&[], 0, 3, any).is_err());
        assert!(matches!(
            quantize(&[1.0, f32::NAN], 1, 2, any),
            Err(ModelError::NonFinite { index: 1, .. })
        ));
    }
}
