//! Freivalds checks against recompute (criterion), on the `small` preset (hidden 512, MLP 1376):
//! for one token row of layer 1, checking all seven linear maps (q, k, v, o, gate, up, down)
//! with [`check_linear`] given their inputs and claimed outputs, against recomputing them (the
//! seven one-row matmuls `x · Wᵀ` on candle's CPU, as the f32 forward computes them), in the
//! same run; then the time to build the whole model's verifier key (t = 1 and t = 4), whose
//! encoded size is printed.
//!
//! Run: `cargo bench -p veritrace-model --bench freivalds`.

use std::collections::HashMap;
use std::hint::black_box;

use candle_core::{Device, Tensor};
use criterion::Criterion;
use veritrace_model::freivalds::{check_linear, Matrix, VerifierKey, VerifierSecret};
use veritrace_model::LlamaModel;

/// Deterministic inputs in ±1 (the scale of normed activations).
fn inputs(seed: u32, n: usize) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i ^ seed.rotate_left(16)).wrapping_mul(0x9E37_79B9);
            (h >> 8) as f32 / 8_388_608.0 - 1.0
        })
        .collect()
}

/// One linear map of the layer: its id, weight tensor, input row (as a tensor and as f32) and
/// claimed (honest) output.
struct Map {
    matrix: Matrix,
    w: Tensor,
    xt: Tensor,
    x: Vec<f32>,
    y: Vec<f32>,
}

fn bench(c: &mut Criterion) {
    let model = LlamaModel::preset("small").expect("small");
    let secret = VerifierSecret::from_bytes([0x42; 32]);
    let key = VerifierKey::build(&secret, &model, 1).expect("key");
    let weights: HashMap<String, Vec<f32>> = model
        .named_tensors()
        .expect("weights")
        .into_iter()
        .map(|(n, _, d)| (n, d))
        .collect();
    let layer = 1;
    // Per map: the weight tensor, the input row, its claimed (honest) output.
    let maps: Vec<Map> = Matrix::LAYER
        .iter()
        .enumerate()
        .map(|(i, &m)| {
            let (out, inp) = key.dims().shape(m);
            let w = Tensor::from_slice(&weights[&m.tensor_name(layer)], (out, inp), &Device::Cpu)
                .expect("w");
            let x = inputs(i as u32, inp);
            let xt = Tensor::from_slice(&x, (1, inp), &Device::Cpu).expect("x");
            let y = xt
                .matmul(&w.t().expect("t"))
                .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                .expect("y");
            Map {
                matrix: m,
                w,
                xt,
                x,
                y,
            }
        })
        .collect();
    for m in &maps {
        let check = check_linear(&key, layer, m.matrix, &m.x, &m.y, 1).expect("check");
        assert!(check.passed, "{:?}: {check:?}", m.matrix);
    }

    let mut g = c.benchmark_group("freivalds_small_layer_row");
    g.bench_function("freivalds_7_maps_t1", |b| {
        b.iter(|| {
            for m in &maps {
                black_box(
                    check_linear(&key, layer, m.matrix, black_box(&m.x), black_box(&m.y), 1)
                        .expect("check"),
                );
            }
        })
    });
    g.bench_function("recompute_7_maps", |b| {
        b.iter(|| {
            for m in &maps {
                black_box(
                    black_box(&m.xt)
                        .matmul(&m.w.t().expect("t"))
                        .and_then(|y| y.flatten_all()?.to_vec1::<f32>())
                        .expect("matmul"),
                );
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("freivalds_small_key_build");
    g.sample_size(10);
    for t in [1u32, 4] {
        let key = VerifierKey::build(&secret, &model, t).expect("key");
        eprintln!(
            "small verifier key, t = {t}: {} bytes ({:.2} MiB)",
            key.to_bytes().len(),
            key.to_bytes().len() as f64 / (1 << 20) as f64
        );
        g.bench_function(format!("build_t{t}"), |b| {
            b.iter(|| black_box(VerifierKey::build(&secret, &model, t).expect("key")))
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
