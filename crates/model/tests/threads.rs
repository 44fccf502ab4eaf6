//! 1 vs 2 threads give bit-identical traces, under the reference setup and several others. candle's CPU matmul sizes its gemm parallelism from
//! `RAYON_NUM_THREADS` (read at each call), so this test sets it as well as running the forward
//! inside rayon pools of 1 and 2 threads: with 1, gemm runs `Parallelism::None`; with 2,
//! `Parallelism::Rayon(2)` on the 2-thread pool. It is the only test in this binary, so changing
//! the environment races with no other thread.

use veritrace_model::{LlamaModel, Setup, Trace};

fn bits(t: &Trace) -> Vec<Vec<u32>> {
    t.layers
        .iter()
        .map(|l| l.iter().map(|v| v.to_bits()).collect())
        .collect()
}

#[test]
fn one_and_two_threads_give_bit_identical_traces() {
    let tiny = LlamaModel::preset("tiny").unwrap();
    let small = LlamaModel::preset("small").unwrap();
    let tokens: Vec<u32> = (0..24u32).map(|i| (3 + 41 * i * i) % 512).collect();
    let run = |threads: usize| {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let out = pool.install(|| {
            assert_eq!(rayon::current_num_threads(), threads);
            let mut traces = vec![
                tiny.trace(&Setup::F32_EAGER, &tokens, 8).unwrap(),
                small.trace(&Setup::F32_EAGER, &tokens, 8).unwrap(),
            ];
            // Other setups on the tiny model: 16-bit, another attention, quantized, split-K,
            // decode order.
            for s in [
                "bf16/attn=tiled:4",
                "f16/attn=topk:5/quant=int4-g32:mse",
                "f32/attn=eager/quant=int8-channel/splitk=3/batch=2",
                "f32/attn=window:6/order=decode",
            ] {
                traces.push(tiny.trace(&s.parse().unwrap(), &tokens, 8).unwrap());
            }
            traces
        });
        std::env::remove_var("RAYON_NUM_THREADS");
        out
    };
    let (one, two) = (run(1), run(2));
    for (i, (a, b)) in one.iter().zip(&two).enumerate() {
        assert_eq!(bits(a), bits(b), "trace {i}");
    }
}
