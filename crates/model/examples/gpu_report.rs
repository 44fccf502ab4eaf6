//! Measures the CUDA backend on the GPU at hand and prints `simulations/results/gpu.md`'s
//! tables (markdown): the device; agreement with the CPU; run-to-run reproducibility;
//! device-hashed roots against CPU roots; every swapped kernel against the honest GPU noise
//! floor; the cost of committing on the device; leaf-hash throughput against memory
//! bandwidth; attention kernel times; the kernels' registers and shared memory as ptxas reports
//! them. Every figure is measured in this run.
//!
//! ```sh
//! cargo run --release -p veritrace-model --features cuda --example gpu_report > simulations/results/gpu.md
//! ```
//!
//! Exits 2 with a message when no GPU can be opened.

use std::process::ExitCode;

use veritrace_commit::{commit_trace, HasherId};
use veritrace_model::cuda::{bench, Gpu, GpuBert, GpuLlama, RunOptions};
use veritrace_model::{minilm_dir, seeded_prompt, BertModel, Device, LlamaModel, Setup, Trace};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One SDPA measurement: dtype, the backend PyTorch chose, milliseconds per call.
type SdpaRow = (String, String, f64);

/// PyTorch's `scaled_dot_product_attention` on the attention table's shapes, measured by
/// `benches/sdpa.py --json` on this GPU: the torch version and `(dtype, backend, ms)` rows, or
/// why it could not run.
fn sdpa() -> Result<(String, Vec<SdpaRow>), String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../benches/sdpa.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--json")
        .output()
        .map_err(|e| format!("python3 could not run: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{} printed no JSON: {e}", script.display()))?;
    let rows = v["results"]
        .as_array()
        .ok_or("no results")?
        .iter()
        .map(|r| {
            Some((
                r["dtype"].as_str()?.to_string(),
                r["backend"].as_str()?.to_string(),
                r["ms"].as_f64()?,
            ))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("a result without dtype, backend or ms")?;
    Ok((v["torch"].as_str().unwrap_or("?").to_string(), rows))
}

/// Keep the hidden states and hash the leaves on the device.
fn commit(hasher: HasherId, chunk: u32) -> RunOptions {
    RunOptions {
        download: true,
        commit: Some((hasher, chunk)),
    }
}

fn setup(s: &str) -> Setup {
    s.parse().expect("a valid setup")
}

fn main() -> ExitCode {
    let gpu = match Gpu::open(Device::Cuda(0)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("gpu_report: {e}");
            return ExitCode::from(2);
        }
    };
    match report(&gpu) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_report: {e}");
            ExitCode::from(1)
        }
    }
}

fn report(gpu: &std::sync::Arc<Gpu>) -> veritrace_model::Result<()> {
    let (ma, mi) = gpu.capability();
    let (_, total) = gpu.memory()?;
    let bw = gpu.memory_bandwidth()?;
    println!("# The CUDA backend on {}\n", gpu.name());
    println!(
        "Device: `cuda:0`, {} (sm_{ma}{mi}), {:.1} GiB, theoretical memory bandwidth {:.0} GB/s. \
         Produced by `cargo run --release -p veritrace-model --features cuda --example gpu_report`; \
         every figure below is measured in that run.\n",
        gpu.name(),
        total as f64 / (1u64 << 30) as f64,
        bw / 1e9
    );

    println!("## Agreement with the CPU (f32, eager)\n");
    println!("Relative L∞ (max |gpu − cpu| / max |cpu|, worst layer); the tests' stated tolerance is 1e-4.\n");
    println!("| model | tokens | relative L∞ | h_0 bitwise |\n|---|---|---|---|");
    let mut models = Vec::new();
    for preset in ["tiny", "small"] {
        let m = LlamaModel::preset(preset)?;
        let tokens = seeded_prompt(m.config().vocab_size, 1, 256);
        let cpu = m.trace(&Setup::F32_EAGER, &tokens, 16)?;
        let g = GpuLlama::new(gpu.clone(), &m, &Setup::F32_EAGER)?.trace(&tokens)?;
        println!(
            "| {preset} | 256 | {:.2e} | {} |",
            g.max_rel_linf(&cpu),
            g.layers[0] == cpu.layers[0]
        );
        models.push((preset, m));
    }
    if let Some(dir) = minilm_dir() {
        let m = BertModel::load(&dir)?;
        let tokens = veritrace_model::bert_prompt(m.config().vocab_size, 1, 128);
        let cpu = m.trace(&Setup::F32_EAGER, &tokens, 128)?;
        let g = GpuBert::new(gpu.clone(), &m, &Setup::F32_EAGER)?.trace(&tokens)?;
        println!("| MiniLM | 128 | {:.2e} | — |", g.max_rel_linf(&cpu));
    } else {
        println!("| MiniLM | — | not installed (scripts/install-minilm.sh) | — |");
    }

    println!("\n## Run-to-run reproducibility (tiny, 130 tokens, two runs)\n");
    println!("| setup | bitwise identical |\n|---|---|");
    let tiny = &models[0].1;
    let tokens = seeded_prompt(tiny.config().vocab_size, 2, 130);
    for s in [
        "f32/attn=eager",
        "bf16/attn=eager",
        "f16/attn=eager",
        "f32/attn=tiled:32",
        "bf16/attn=tiled:16",
        "f32/attn=window:32",
        "f32/attn=topk:32",
        "f32/attn=eager/order=decode",
        "f32/attn=eager/quant=int8-channel",
        "f32/attn=eager/quant=int4-g32",
        "f32/attn=eager/splitk=4",
        "f32/attn=eager/batch=4",
    ] {
        let g = GpuLlama::new(gpu.clone(), tiny, &setup(s))?;
        let (a, b) = (g.trace(&tokens)?, g.trace(&tokens)?);
        println!(
            "| `{s}` | {} |",
            if a.bitwise_eq(&b) { "yes" } else { "**no**" }
        );
    }

    println!("\n## Device-hashed roots\n");
    println!("| model | tokens | chunk | hasher | leaves | root equals the CPU commitment |\n|---|---|---|---|---|---|");
    let g = GpuLlama::new(gpu.clone(), tiny, &Setup::F32_EAGER)?;
    let minilm = match minilm_dir() {
        Some(dir) => {
            let m = BertModel::load(&dir)?;
            let tokens = veritrace_model::bert_prompt(m.config().vocab_size, 3, 128);
            Some((GpuBert::new(gpu.clone(), &m, &Setup::F32_EAGER)?, tokens))
        }
        None => None,
    };
    for hasher in [HasherId::Blake3, HasherId::Sha256] {
        let mut runs = Vec::new();
        for (n, chunk) in [(300usize, 16u32), (37, 5), (2048, 16)] {
            let tokens = seeded_prompt(tiny.config().vocab_size, 3, n);
            runs.push(("tiny", n, chunk, g.run(&tokens, commit(hasher, chunk))?));
        }
        if let Some((b, tokens)) = &minilm {
            runs.push((
                "MiniLM",
                tokens.len(),
                16,
                b.run(tokens, commit(hasher, 16))?,
            ));
        }
        for (model, n, chunk, run) in runs {
            let trace = run.trace.expect("downloaded");
            let bytes = trace.layer_bytes();
            let refs: Vec<&[u8]> = bytes.iter().map(|b| b.as_slice()).collect();
            let cpu = commit_trace(hasher, &trace.geometry(chunk)?, &refs)
                .map_err(|e| veritrace_model::ModelError::InvalidArgument(e.to_string()))?;
            println!(
                "| {model} | {n} | {chunk} | {} | {} | {} |",
                hasher.name(),
                run.leaves.len(),
                run.root == Some(cpu.root())
            );
        }
    }

    println!("\n## Swapped kernels against the honest GPU noise floor\n");
    println!(
        "Deviation = relative L∞ of the swapped setup's GPU trace from the honest GPU trace (worst layer, \
         4 prompts of 128 tokens). Honest floor = the largest deviation among honest runs: GPU vs CPU, \
         GPU split-K 2 and 3, GPU batch 2, GPU decode order (one-row products). A swap is detectable when its deviation is well above the floor.\n"
    );
    for (preset, m) in &models {
        for reference in ["f32/attn=eager", "bf16/attn=eager"] {
            let r = setup(reference);
            let p = reference.split('/').next().unwrap_or("f32");
            let prompts: Vec<Vec<u32>> = (0..4)
                .map(|i| seeded_prompt(m.config().vocab_size, 10 + i, 128))
                .collect();
            let honest_g = GpuLlama::new(gpu.clone(), m, &r)?;
            let honest: Vec<Trace> = prompts
                .iter()
                .map(|t| honest_g.trace(t))
                .collect::<Result<_, _>>()?;
            let mut floor = 0f64;
            let mut floor_rows = Vec::new();
            let cpu_dev = prompts
                .iter()
                .zip(&honest)
                .map(|(t, h)| Ok(h.max_rel_linf(&m.trace(&r, t, 16)?)))
                .collect::<veritrace_model::Result<Vec<f64>>>()?;
            let cpu_max = cpu_dev.iter().copied().fold(0.0, f64::max);
            floor = floor.max(cpu_max);
            floor_rows.push(("GPU vs CPU".to_string(), cpu_max));
            for v in [
                Setup { split_k: 2, ..r },
                Setup { split_k: 3, ..r },
                Setup { batch: 2, ..r },
                Setup {
                    order: veritrace_model::Order::Decode,
                    ..r
                },
            ] {
                let g = GpuLlama::new(gpu.clone(), m, &v)?;
                let mut d = 0f64;
                for (t, h) in prompts.iter().zip(&honest) {
                    d = d.max(g.trace(t)?.max_rel_linf(h));
                }
                floor = floor.max(d);
                floor_rows.push((format!("`{v}`"), d));
            }
            println!("### {preset}, reference `{reference}`\n");
            println!("| run | deviation | / floor |\n|---|---|---|");
            for (name, d) in &floor_rows {
                println!("| honest: {name} | {d:.2e} | {:.2} |", d / floor.max(1e-30));
            }
            let other = if p == "f32" { "bf16" } else { "f16" };
            for s in [
                format!("{p}/attn=tiled:16"),
                format!("{p}/attn=tiled:64"),
                format!("{p}/attn=window:32"),
                format!("{p}/attn=topk:32"),
                format!("{p}/attn=eager/quant=int8-channel"),
                format!("{p}/attn=eager/quant=int8-channel:mse"),
                format!("{p}/attn=eager/quant=int4-g32"),
                format!("{p}/attn=eager/quant=int4-g128"),
                format!("{other}/attn=eager"),
                format!("{p}/attn=eager/skip=2"),
                format!("{p}/attn=eager/reuse=2"),
            ] {
                let g = GpuLlama::new(gpu.clone(), m, &setup(&s))?;
                let mut d = 0f64;
                for (t, h) in prompts.iter().zip(&honest) {
                    d = d.max(g.trace(t)?.max_rel_linf(h));
                }
                println!("| swap: `{s}` | {d:.2e} | {:.1} |", d / floor.max(1e-30));
            }
            println!();
        }
    }

    println!("## Cost of committing on the device (small decoder, 2048 tokens, chunk 16)\n");
    let small = &models[1].1;
    let tokens = seeded_prompt(small.config().vocab_size, 0, 2048);
    let g = GpuLlama::new(gpu.clone(), small, &Setup::F32_EAGER)?;
    let plain = RunOptions {
        download: false,
        commit: None,
    };
    g.run_ms(&tokens, plain)?; // warm-up
    println!(
        "GPU time from CUDA events, median of 21 interleaved runs each. The leaves are hashed on a \
         second stream while the next layer computes; the last column is the hashing alone, every \
         layer one after another on an idle GPU (what the overlap hides).\n"
    );
    println!(
        "| hasher | forward (ms) | forward + device commit (ms) | overhead | hashing alone (ms) |\n|---|---|---|---|---|"
    );
    let (t32, d32) = (tokens.len() as u32, small.config().hidden_size as u32);
    let states = small.config().num_layers as f64 + 1.0;
    for hasher in [HasherId::Blake3, HasherId::Sha256] {
        let with = RunOptions {
            download: false,
            commit: Some((hasher, 16)),
        };
        g.run_ms(&tokens, with)?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..21 {
            a.push(g.run_ms(&tokens, plain)?.1);
            b.push(g.run_ms(&tokens, with)?.1);
        }
        let (fa, fb) = (median(a), median(b));
        let alone = states * bench::hash_layer_ms(gpu, t32, d32, 16, hasher, 20)?;
        println!(
            "| {} | {fa:.3} | {fb:.3} | {:+.2}% | {alone:.3} |",
            hasher.name(),
            (fb / fa - 1.0) * 100.0
        );
    }

    println!("\n## Leaf-hash throughput (one 2048 × 4096 f32 layer, 32 MiB, chunk 16)\n");
    println!("| hasher | ms per layer | GB/s | fraction of memory bandwidth |\n|---|---|---|---|");
    for hasher in [HasherId::Blake3, HasherId::Sha256] {
        let t = median(
            (0..5)
                .map(|_| bench::hash_layer_ms(gpu, 2048, 4096, 16, hasher, 20))
                .collect::<Result<_, _>>()?,
        );
        let gbs = 2048.0 * 4096.0 * 4.0 / (t / 1e3) / 1e9;
        println!(
            "| {} | {t:.3} | {gbs:.1} | {:.1}% |",
            hasher.name(),
            gbs * 1e9 / bw * 100.0
        );
    }

    println!("\n## Attention kernels (causal, 2048 tokens, 8 heads of 64, f32)\n");
    let sdpa = sdpa();
    let sdpa_f32 = sdpa.as_ref().ok().and_then(|(_, rows)| {
        rows.iter()
            .find(|(dtype, _, _)| dtype == "float32")
            .map(|r| r.2)
    });
    println!(
        "GPU time from CUDA events, median of 5 runs of 10 calls. The ratio is to PyTorch's \
         `scaled_dot_product_attention` in f32 on the same shapes, measured by `benches/sdpa.py` \
         right after, in this run (target for the tiled kernel: within 4x).\n"
    );
    println!("| kernel | ms per call | ratio to SDPA f32 |\n|---|---|---|");
    for s in [
        "f32/attn=eager",
        "f32/attn=tiled:32",
        "f32/attn=tiled:64",
        "f32/attn=tiled:128",
    ] {
        let t = median(
            (0..5)
                .map(|_| bench::attention_ms(gpu, 2048, 8, 64, &setup(s), 10))
                .collect::<Result<_, _>>()?,
        );
        let ratio = sdpa_f32.map_or("—".to_string(), |r| format!("{:.2}x", t / r));
        println!("| `{s}` | {t:.3} | {ratio} |");
    }
    match &sdpa {
        Ok((torch, rows)) => {
            println!("\n| PyTorch {torch} SDPA | backend chosen by PyTorch | ms per call |\n|---|---|---|");
            for (dtype, backend, ms) in rows {
                println!("| {dtype} | {backend} | {ms:.3} |");
            }
        }
        Err(why) => println!("\nPyTorch's SDPA was not measured: {why}."),
    }

    let arch = format!("sm_{ma}{mi}");
    println!("\n## Kernel resources ({arch}, ptxas)\n");
    println!("| kernel | registers | stack bytes | spill bytes (store / load) | shared bytes |\n|---|---|---|---|---|");
    for k in veritrace_model::kernels::KERNELS {
        for r in veritrace_model::cuda::kernel_resources(k, &arch)? {
            println!(
                "| `{}` | {} | {} | {} / {} | {} |",
                r.function,
                r.registers,
                r.stack_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes,
                r.shared_bytes
            );
        }
    }
    Ok(())
}
