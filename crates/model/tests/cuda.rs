//! The CUDA backend on a real GPU: agreement with the CPU, run-to-run reproducibility,
//! device-hashed roots equal to CPU roots, and every swapped kernel standing out of the honest
//! GPU noise floor.
//!
//! Without a CUDA driver every GPU test skips with a message, and
//! `no_driver_is_a_typed_error` checks the error a user gets instead.
#![cfg(feature = "cuda")]

mod synthetic_bert;

use veritrace_commit::{commit_trace, HasherId};
use veritrace_model::cuda::{driver_present, Gpu, GpuBert, GpuLlama, RunOptions};
use veritrace_model::{
    minilm_dir, seeded_prompt, BertModel, Device, LlamaModel, ModelError, Runner, Setup, Trace,
};

fn gpu_or_skip() -> Option<std::sync::Arc<Gpu>> {
    if !driver_present() {
        eprintln!("skipping: no CUDA driver (libcuda) on this machine");
        return None;
    }
    match Gpu::open(Device::Cuda(0)) {
        Ok(g) => Some(g),
        Err(ModelError::DeviceUnavailable { reason, .. }) => {
            eprintln!("skipping: cuda:0 unavailable: {reason}");
            None
        }
        Err(e) => panic!("opening cuda:0 failed: {e}"),
    }
}

fn setup(s: &str) -> Setup {
    s.parse().unwrap()
}

/// The largest per-layer relative L∞ deviation ([`Trace::max_rel_linf`]).
fn trace_dev(a: &Trace, b: &Trace) -> f64 {
    a.max_rel_linf(b)
}

fn same_bits(a: &Trace, b: &Trace) -> bool {
    a.bitwise_eq(b)
}

/// The relative L∞ deviation of rows `a` from rows `b` (of one layer).
fn rel_linf(a: &[f32], b: &[f32]) -> f64 {
    let one = |v: &[f32]| Trace {
        tokens: 1,
        hidden: v.len(),
        layers: vec![v.to_vec()],
        keys: Vec::new(),
    };
    one(a).max_rel_linf(&one(b))
}

#[test]
fn no_driver_is_a_typed_error() {
    if driver_present() {
        eprintln!("skipping: a CUDA driver is present");
        return;
    }
    for r in [
        Gpu::open(Device::Cuda(0)).map(|_| ()),
        Runner::new(Device::Cuda(0)).map(|_| ()),
    ] {
        match r {
            Err(ModelError::DeviceUnavailable { device, reason }) => {
                assert_eq!(device, "cuda:0");
                assert!(reason.contains("driver"), "{reason}");
            }
            other => panic!("expected DeviceUnavailable, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_ordinal_is_a_typed_error() {
    let Some(_) = gpu_or_skip() else { return };
    match Gpu::open(Device::Cuda(999)) {
        Err(ModelError::DeviceUnavailable { reason, .. }) => {
            assert!(reason.contains("GPU"), "{reason}")
        }
        other => panic!("expected DeviceUnavailable, got {other:?}"),
    }
}

/// Stated tolerance of the GPU f32 decoder against the CPU f32 decoder: relative L∞ per layer
/// (reduction-order noise of f32 over 4–8 layers is ~1e-6).
const F32_TOLERANCE: f64 = 1e-4;

#[test]
fn gpu_decoder_matches_the_cpu_f32_path_within_tolerance() {
    let Some(gpu) = gpu_or_skip() else { return };
    for preset in ["tiny", "small"] {
        let m = LlamaModel::preset(preset).unwrap();
        let tokens = seeded_prompt(m.config().vocab_size, 1, 96);
        let s = Setup::F32_EAGER;
        let cpu = m.trace(&s, &tokens, 16).unwrap();
        let g = GpuLlama::new(gpu.clone(), &m, &s).unwrap();
        let dev = g.trace(&tokens).unwrap();
        let d = trace_dev(&dev, &cpu);
        eprintln!("{preset}: GPU vs CPU f32 relative L∞ = {d:.3e}");
        assert!(d <= F32_TOLERANCE, "{preset}: {d:e} > {F32_TOLERANCE:e}");
        assert_eq!(
            dev.layers[0], cpu.layers[0],
            "h_0 is a table lookup on both"
        );
    }
}

#[test]
fn the_same_setup_is_bitwise_reproducible_run_to_run() {
    let Some(gpu) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let tokens = seeded_prompt(m.config().vocab_size, 2, 130);
    for s in [
        "f32/attn=eager",
        "bf16/attn=eager",
        "f32/attn=tiled:32",
        "bf16/attn=tiled:16",
        "f32/attn=eager/quant=int8-channel",
        "f32/attn=eager/quant=int4-g32",
        "f32/attn=eager/splitk=4",
        "f16/attn=window:32",
    ] {
        let g = GpuLlama::new(gpu.clone(), &m, &setup(s)).unwrap();
        let a = g.trace(&tokens).unwrap();
        let b = g.trace(&tokens).unwrap();
        assert!(same_bits(&a, &b), "{s}: two runs differ");
    }
}

#[test]
fn device_hashed_roots_equal_cpu_roots() {
    let Some(gpu) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let g = GpuLlama::new(gpu, &m, &Setup::F32_EAGER).unwrap();
    for (n, chunk) in [(100usize, 16u32), (37, 5), (64, 64), (300, 7)] {
        let tokens = seeded_prompt(m.config().vocab_size, 3, n);
        for hasher in [HasherId::Blake3, HasherId::Sha256] {
            let run = g
                .run(
                    &tokens,
                    RunOptions {
                        download: true,
                        commit: Some((hasher, chunk)),
                    },
                )
                .unwrap();
            let trace = run.trace.unwrap();
            let geometry = trace.geometry(chunk).unwrap();
            let bytes = trace.layer_bytes();
            let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
            let cpu = commit_trace(hasher, &geometry, &refs).unwrap();
            assert_eq!(
                run.leaves,
                cpu.leaves(),
                "{hasher:?} n={n} chunk={chunk}: leaves"
            );
            assert_eq!(
                run.root,
                Some(cpu.root()),
                "{hasher:?} n={n} chunk={chunk}: root"
            );
        }
    }
    // Hashing runs on its own stream, overlapping the next layers, and a hidden state is freed
    // once hashed: without downloads (nothing then holds the compute stream back), over every
    // layer of the small decoder, and with a reused layer (which reads two states back), the
    // leaves are still those of the CPU commitment of the same run's trace.
    let small = LlamaModel::preset("small").unwrap();
    for s in [
        "f32/attn=eager",
        "f32/attn=eager/reuse=3",
        "bf16/attn=tiled:64",
    ] {
        let g = GpuLlama::new(Gpu::open(Device::Cuda(0)).unwrap(), &small, &setup(s)).unwrap();
        let tokens = seeded_prompt(small.config().vocab_size, 5, 512);
        let trace = g.trace(&tokens).unwrap();
        let geometry = trace.geometry(16).unwrap();
        let bytes = trace.layer_bytes();
        let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
        for hasher in [HasherId::Blake3, HasherId::Sha256] {
            let cpu = commit_trace(hasher, &geometry, &refs).unwrap();
            for _ in 0..3 {
                let run = g
                    .run(
                        &tokens,
                        RunOptions {
                            download: false,
                            commit: Some((hasher, 16)),
                        },
                    )
                    .unwrap();
                assert!(run.leaves == cpu.leaves(), "{s} {hasher:?}: leaves");
                assert_eq!(run.root, Some(cpu.root()), "{s} {hasher:?}: root");
            }
        }
    }
    let err = GpuLlama::new(Gpu::open(Device::Cuda(0)).unwrap(), &m, &Setup::F32_EAGER)
        .unwrap()
        .run(
            &[1, 2, 3],
            RunOptions {
                download: false,
                commit: Some((HasherId::Poseidon, 1)),
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("poseidon"), "{err}");
}

/// Every swapped kernel (another attention algorithm, quantization, precision, a skipped
/// layer) deviates from the honest GPU trace by far more than the honest noise floor, which is
/// the largest deviation among honest runs: GPU vs CPU, and GPU split-K and decode-order
/// variants (other reduction orders on the same GPU).
#[test]
fn each_swapped_kernel_is_detectable_against_the_honest_gpu_noise_floor() {
    let Some(gpu) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let tokens = seeded_prompt(m.config().vocab_size, 4, 128);
    for reference in ["f32/attn=eager", "bf16/attn=eager"] {
        let r = setup(reference);
        let honest = GpuLlama::new(gpu.clone(), &m, &r)
            .unwrap()
            .trace(&tokens)
            .unwrap();
        let mut floor: f64 = trace_dev(&honest, &m.trace(&r, &tokens, 16).unwrap());
        for s in [
            Setup { split_k: 2, ..r },
            Setup { split_k: 3, ..r },
            Setup {
                order: veritrace_model::Order::Decode,
                ..r
            },
        ] {
            let t = GpuLlama::new(gpu.clone(), &m, &s)
                .unwrap()
                .trace(&tokens)
                .unwrap();
            floor = floor.max(trace_dev(&t, &honest));
        }
        let p = reference.split('/').next().unwrap();
        for swap in [
            format!("{p}/attn=tiled:16"),
            format!("{p}/attn=window:32"),
            format!("{p}/attn=topk:32"),
            format!("{p}/attn=eager/quant=int8-channel"),
            format!("{p}/attn=eager/quant=int4-g32"),
            format!("{p}/attn=eager/skip=2"),
            if p == "f32" {
                "bf16/attn=eager".into()
            } else {
                "f16/attn=eager".into()
            },
        ] {
            let s = setup(&swap);
            let t = GpuLlama::new(gpu.clone(), &m, &s)
                .unwrap()
                .trace(&tokens)
                .unwrap();
            let d = trace_dev(&t, &honest);
            eprintln!(
                "{reference}: {swap}: deviation {d:.3e}, honest floor {floor:.3e}, ratio {:.1}",
                d / floor.max(1e-30)
            );
            if swap.contains("tiled") && p == "f32" {
                // In f32 the online softmax is a reduction-order change, as on the CPU.
                continue;
            }
            assert!(
                d > 3.0 * floor,
                "{reference} -> {swap}: {d:e} vs floor {floor:e}"
            );
        }
    }
}

/// Top-k attention and the decode order on the GPU: the same rule as the CPU's.
///
/// * decode (one-row products) agrees with the CPU decode within the f32 tolerance and is
///   bitwise reproducible;
/// * top-k agrees with the CPU's top-k far better than with eager attention: a top-k run is
///   top-k, not eager. It is not held to the f32 tolerance, since a score within rounding noise
///   of a row's threshold can be kept on one device and dropped on the other (selection is
///   discontinuous); the deviation seen is printed.
#[test]
fn gpu_topk_and_decode_follow_the_cpu_rules() {
    let Some(gpu) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let tokens = seeded_prompt(m.config().vocab_size, 6, 96);
    let decode = setup("f32/attn=eager/order=decode");
    let g = GpuLlama::new(gpu.clone(), &m, &decode).unwrap();
    let dev = g.trace(&tokens).unwrap();
    let cpu = m.trace(&decode, &tokens, 16).unwrap();
    let d = trace_dev(&dev, &cpu);
    eprintln!("decode: GPU vs CPU f32 relative L∞ = {d:.3e}");
    assert!(d <= F32_TOLERANCE, "{d:e}");
    assert!(same_bits(&dev, &g.trace(&tokens).unwrap()));

    let topk = setup("f32/attn=topk:8");
    let g = GpuLlama::new(gpu, &m, &topk).unwrap();
    let dev = g.trace(&tokens).unwrap();
    assert!(same_bits(&dev, &g.trace(&tokens).unwrap()));
    let cpu_topk = m.trace(&topk, &tokens, 16).unwrap();
    let cpu_eager = m.trace(&Setup::F32_EAGER, &tokens, 16).unwrap();
    let (to_topk, to_eager) = (trace_dev(&dev, &cpu_topk), trace_dev(&dev, &cpu_eager));
    eprintln!("top-k:8: GPU vs CPU top-k {to_topk:.3e}, vs CPU eager {to_eager:.3e}");
    assert!(to_topk * 10.0 < to_eager, "{to_topk:e} vs {to_eager:e}");
}

#[test]
fn gpu_recompute_of_a_cell_agrees_with_the_gpu_trace() {
    let Some(_) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let runner = Runner::new(Device::Cuda(0)).unwrap();
    let s = Setup::F32_EAGER;
    let tokens = seeded_prompt(m.config().vocab_size, 5, 64);
    let trace = runner.llama_trace(&m, &s, &tokens, 16).unwrap();
    let d = m.config().hidden_size;
    for (layer, chunk) in [(1usize, 0usize), (2, 1), (4, 3)] {
        let end = (chunk + 1) * 16;
        let inputs = &trace.layers[layer - 1][..end * d];
        let rows = runner
            .llama_recompute_cell(
                &m,
                &s,
                16,
                layer,
                chunk,
                veritrace_model::CellInputs::Hidden(inputs),
            )
            .unwrap();
        let want = &trace.layers[layer][chunk * 16 * d..end * d];
        assert!(
            rel_linf(&rows, want) <= F32_TOLERANCE,
            "layer {layer} chunk {chunk}"
        );
    }
    let mut bad = trace.layers[0][..16 * d].to_vec();
    bad[5] = f32::NAN;
    assert!(matches!(
        runner.llama_recompute_cell(&m, &s, 16, 1, 0, veritrace_model::CellInputs::Hidden(&bad)),
        Err(ModelError::NonFinite { .. })
    ));
}

#[test]
fn unsupported_setups_and_bad_input_are_typed_errors() {
    let Some(gpu) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    for s in ["f32/attn=tiled:129", "f32/attn=tiled:4096"] {
        match GpuLlama::new(gpu.clone(), &m, &setup(s)) {
            Err(ModelError::UnsupportedOnDevice { .. }) => {}
            other => panic!("{s}: expected UnsupportedOnDevice, got {other:?}"),
        }
    }
    let g = GpuLlama::new(gpu, &m, &Setup::F32_EAGER).unwrap();
    assert!(g.trace(&[]).is_err());
    assert!(matches!(
        g.trace(&[u32::MAX]),
        Err(ModelError::TokenOutOfRange { .. })
    ));
}

/// The encoder on the GPU without MiniLM (the synthetic BERT of the encoder tests, so this runs
/// on any GPU machine): each attention kind, a quantized and a split-K setup, and a padding
/// mask agree with the CPU encoder and are bitwise reproducible; a GPU layer recompute under
/// the mask gives the trace's rows; bad masks and the one refused window case are typed
/// errors.
#[test]
fn gpu_encoder_follows_the_cpu_encoder_with_and_without_a_padding_mask() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (m, dir) = synthetic_bert::model("gpu");
    let tokens = synthetic_bert::tokens(37);
    let padded: Vec<u32> = (0..37).map(|i| u32::from(i < 30)).collect();
    for s in [
        "f32/attn=eager",
        "f32/attn=tiled:8",
        "f32/attn=window:16",
        "f32/attn=topk:8",
        "f32/attn=eager/quant=int8-channel",
        "f32/attn=eager/splitk=2",
    ] {
        let st = setup(s);
        let g = GpuBert::new(gpu.clone(), &m, &st).unwrap();
        for mask in [vec![1; 37], padded.clone()] {
            let dev = g.trace_masked(&tokens, &mask).unwrap();
            assert!(
                same_bits(&dev, &g.trace_masked(&tokens, &mask).unwrap()),
                "{s}"
            );
            let cpu = m.trace_masked(&st, &tokens, &mask, 16).unwrap();
            let d = trace_dev(&dev, &cpu);
            eprintln!(
                "encoder {s}, {} attended: GPU vs CPU relative L∞ = {d:.3e}",
                mask.iter().sum::<u32>()
            );
            if s.contains("topk") {
                // Selection is discontinuous (see gpu_topk_and_decode_follow_the_cpu_rules).
                let eager = m
                    .trace_masked(&Setup::F32_EAGER, &tokens, &mask, 16)
                    .unwrap();
                assert!(d * 10.0 < trace_dev(&dev, &eager), "{s}: {d:e}");
            } else {
                assert!(d <= F32_TOLERANCE, "{s}: {d:e}");
            }
            // A cell of layer 2 recomputed on the GPU from every row of layer 1.
            let rows = g
                .layer_rows_masked(2, &dev.layers[1], 16..32, &mask)
                .unwrap();
            let want = &dev.layers[2][16 * 24..32 * 24];
            assert!(
                rows.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{s}: GPU recompute differs from the GPU trace"
            );
        }
    }
    // The mask matters: masked keys change the attended rows.
    let g = GpuBert::new(gpu.clone(), &m, &Setup::F32_EAGER).unwrap();
    let (all, some) = (
        g.trace(&tokens).unwrap(),
        g.trace_masked(&tokens, &padded).unwrap(),
    );
    assert!(trace_dev(&some, &all) > 1e-3);
    // Bad masks are the CPU encoder's typed errors.
    assert!(matches!(
        g.trace_masked(&tokens, &[1; 5]),
        Err(ModelError::WrongLength { .. })
    ));
    assert!(g.trace_masked(&tokens, &[0; 37]).is_err());
    assert!(g.trace_masked(&tokens, &[2; 37]).is_err());
    // A masked position whose window holds no attended key: the CPU falls back to every
    // attended key, the GPU refuses.
    let first_five: Vec<u32> = (0..37).map(|i| u32::from(i < 5)).collect();
    let w = GpuBert::new(gpu, &m, &setup("f32/attn=window:4")).unwrap();
    assert!(matches!(
        w.trace_masked(&tokens, &first_five),
        Err(ModelError::UnsupportedOnDevice { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// The encoder commits on the device too: the leaves hashed on the GPU (with and without the
/// hidden states copied back, with a padding mask and a reused layer) are those of the CPU
/// commitment of the same run's trace.
#[test]
fn gpu_encoder_device_hashed_roots_equal_cpu_roots() {
    let Some(gpu) = gpu_or_skip() else { return };
    let (m, dir) = synthetic_bert::model("gpu-commit");
    let tokens = synthetic_bert::tokens(37);
    let padded: Vec<u32> = (0..37).map(|i| u32::from(i < 30)).collect();
    for s in ["f32/attn=eager", "bf16/attn=tiled:8/reuse=2"] {
        let g = GpuBert::new(gpu.clone(), &m, &setup(s)).unwrap();
        let trace = g.trace_masked(&tokens, &padded).unwrap();
        for (hasher, chunk) in [(HasherId::Blake3, 16u32), (HasherId::Sha256, 5)] {
            let geometry = trace.geometry(chunk).unwrap();
            let bytes = trace.layer_bytes();
            let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
            let cpu = commit_trace(hasher, &geometry, &refs).unwrap();
            for download in [true, false] {
                let run = g
                    .run_masked(
                        &tokens,
                        &padded,
                        RunOptions {
                            download,
                            commit: Some((hasher, chunk)),
                        },
                    )
                    .unwrap();
                assert!(run.leaves == cpu.leaves(), "{s} {hasher:?}: leaves");
                assert_eq!(run.root, Some(cpu.root()), "{s} {hasher:?}: root");
                assert_eq!(run.trace.is_some(), download);
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gpu_minilm_matches_the_cpu_encoder_within_tolerance() {
    let Some(gpu) = gpu_or_skip() else { return };
    let Some(dir) = minilm_dir() else {
        eprintln!("skipping: all-MiniLM-L6-v2 is not installed (bash scripts/install-minilm.sh)");
        return;
    };
    let m = BertModel::load(&dir).unwrap();
    let tokens = veritrace_model::bert_prompt(m.config().vocab_size, 1, 128);
    let s = Setup::F32_EAGER;
    let cpu = m.trace(&s, &tokens, 128).unwrap();
    let g = GpuBert::new(gpu.clone(), &m, &s).unwrap();
    let dev = g.trace(&tokens).unwrap();
    let d = trace_dev(&dev, &cpu);
    eprintln!("MiniLM: GPU vs CPU f32 relative L∞ = {d:.3e}");
    assert!(d <= F32_TOLERANCE, "{d:e}");
    let again = g.trace(&tokens).unwrap();
    assert!(same_bits(&dev, &again), "MiniLM runs differ");
    let bf = GpuBert::new(gpu, &m, &setup("bf16/attn=tiled:32"))
        .unwrap()
        .trace(&tokens)
        .unwrap();
    assert!(trace_dev(&bf, &dev) > 10.0 * d.max(1e-7));
}

#[test]
fn a_gpu_prover_commits_with_device_leaves_to_the_cpu_root() {
    let Some(_) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let (bert, dir) = synthetic_bert::model("gpu-prover");
    let runner = Runner::new(Device::Cuda(0)).unwrap();
    let prompt = seeded_prompt(m.config().vocab_size, 6, 40);
    let encoded = synthetic_bert::tokens(30);
    let runs = [HasherId::Blake3, HasherId::Sha256, HasherId::Poseidon]
        .into_iter()
        .flat_map(|hasher| {
            [
                runner.llama_prove_run_committed(&m, &Setup::F32_EAGER, &prompt, 4, 8, hasher),
                runner.bert_prove_encode_committed(&bert, &Setup::F32_EAGER, &encoded, 8, hasher),
            ]
            .map(|r| (hasher, r))
        });
    for (hasher, run) in runs {
        let (statement, trace, leaves) = run.unwrap();
        assert_eq!(leaves.is_some(), hasher != HasherId::Poseidon, "{hasher:?}");
        let mut cpu =
            veritrace_protocol::Prover::new(statement.clone(), trace.layer_bytes()).unwrap();
        if let Some(leaves) = leaves {
            let mut dev =
                veritrace_protocol::Prover::with_leaves(statement, trace.layer_bytes(), leaves)
                    .unwrap();
            assert_eq!(
                dev.commit().unwrap().root,
                cpu.commit().unwrap().root,
                "{hasher:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// The GPU engine's sub-layer capture (issue 16): its hidden states are bitwise its own trace's
/// (the copies change no arithmetic); a keyed verifier checks every cell from the GPU's values,
/// each linear map within the rigorous Freivalds bound (the GPU's reduction order is one of
/// those the bound holds for) and the nonlinear parts, recomputed on the CPU, within the GPU's
/// f32 noise floor; int8 weights run on the GPU while f32 is claimed fail every cell; a
/// session over a statement proved on the GPU at the sub-layer level is accepted.
#[test]
fn gpu_sublayer_values_pass_the_keyed_check() {
    use veritrace_model::freivalds::{check_cell, CellClaim, Matrix, VerifierKey, VerifierSecret};
    use veritrace_model::sublayer::{KeyedVerifier, SubLayerLayout};
    let Some(gpu) = gpu_or_skip() else { return };
    let m = LlamaModel::preset("tiny").unwrap();
    let c = m.config().clone();
    let (d, tile) = (c.hidden_size, 8usize);
    let tokens = seeded_prompt(c.vocab_size, 7, 37);
    let n = tokens.len();
    let key = VerifierKey::build(&VerifierSecret::from_bytes([5; 32]), &m, 2).unwrap();
    let layout = SubLayerLayout::of(&c);
    // (cells passed, cells with a failed linear map, largest nonlinear deviation)
    let check_all = |s: &str| -> (usize, usize, f64) {
        let g = GpuLlama::new(gpu.clone(), &m, &setup(s)).unwrap();
        let (trace, sub) = g.trace_sublayers(&tokens).unwrap();
        assert!(same_bits(&trace, &g.trace(&tokens).unwrap()), "{s}");
        let (mut passed, mut linear_failed, mut worst) = (0, 0, 0f64);
        for layer in 1..=c.num_layers {
            for chunk in 0..n.div_ceil(tile) {
                let (lo, e) = (chunk * tile, ((chunk + 1) * tile).min(n));
                let s_l = &sub[layer - 1];
                let context = layout.rows(s_l, 0..e, 0..0).unwrap();
                let cell = layout.rows(s_l, 0..0, lo..e).unwrap();
                let claim = CellClaim {
                    h_in: &trace.layers[layer - 1][..e * d],
                    h_out: &trace.layers[layer][lo * d..e * d],
                    context: &context,
                    cell: &cell,
                };
                let r = check_cell(
                    &key,
                    &m,
                    &Setup::F32_EAGER,
                    tile,
                    layer,
                    chunk,
                    &claim,
                    F32_TOLERANCE,
                )
                .unwrap();
                passed += usize::from(r.passed);
                linear_failed += usize::from(r.linear.iter().any(|(_, l)| !l.passed));
                worst = r.nonlinear.iter().fold(worst, |w, &(_, x)| w.max(x));
                assert_eq!(
                    r.linear.len(),
                    7,
                    "{:?}",
                    r.linear.iter().map(|(m, _)| *m).collect::<Vec<Matrix>>()
                );
            }
        }
        (passed, linear_failed, worst)
    };
    let cells = c.num_layers * n.div_ceil(tile);
    let (passed, linear_failed, worst) = check_all("f32/attn=eager");
    eprintln!("GPU f32 sub-layer values: {passed}/{cells} cells pass, nonlinear worst {worst:.3e}");
    assert_eq!((passed, linear_failed), (cells, 0));
    assert!(worst <= F32_TOLERANCE);
    let (passed, linear_failed, _) = check_all("f32/attn=eager/quant=int8-channel");
    eprintln!("GPU int8 claimed as f32: {passed}/{cells} cells pass");
    assert_eq!((passed, linear_failed), (0, cells));

    // a statement proved on the GPU at the sub-layer level, checked end to end
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use veritrace_protocol::tolerance::TolerancePolicy;
    use veritrace_protocol::{
        ChallengeParams, LayerCheck, Mode, Prover, SamplingStrategy, Step, Verdict, Verifier,
        VerifierConfig,
    };
    let runner = Runner::new(Device::Cuda(0)).unwrap();
    let (statement, trace, sub) = runner
        .llama_prove_run_sublayers(&m, &Setup::F32_EAGER, &tokens, 4, 8, HasherId::Blake3)
        .unwrap();
    assert_eq!(statement.trace_level, layout.trace_level().unwrap());
    let parts = sub.parts(&statement).unwrap();
    let mut prover = Prover::new(statement, trace.layer_bytes())
        .unwrap()
        .with_sublayer_parts(parts)
        .unwrap();
    let engine = KeyedVerifier {
        tolerance: F32_TOLERANCE,
        ..KeyedVerifier::exact(&m, &key)
    };
    let cfg = VerifierConfig {
        mode: Mode::Interactive,
        params: ChallengeParams {
            samples: 12,
            strategy: SamplingStrategy::Uniform,
            pow_bits: 0,
            attention: None,
        },
        rounds: 1,
        tolerance: TolerancePolicy::Exact,
        method: LayerCheck::Freivalds,
    };
    let mut rng = ChaCha20Rng::from_seed([9; 32]);
    let mut v = Verifier::new(cfg, engine).unwrap();
    let mut step = v.receive_commitment(prover.commit().unwrap(), &mut rng);
    let verdict = loop {
        match step {
            Step::Decided(verdict) => break verdict,
            Step::Challenge(ch) => {
                let opening = prover.open(&ch).unwrap();
                step = v.receive_opening(&opening, &mut rng);
            }
            Step::AwaitOpening => panic!("interactive"),
        }
    };
    assert_eq!(verdict, Verdict::Accept, "{verdict:?}");
}
