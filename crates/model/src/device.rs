//! Where a model runs: the CPU (candle, the reference arithmetic) or an NVIDIA GPU (the `cuda`
//! feature: kernels/*.cu through NVRTC and cudarc).

use std::fmt;
use std::str::FromStr;

use crate::ModelError;

/// A compute device, written `cpu` or `cuda[:N]` (`cuda` is `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// The CPU: candle-core, the arithmetic every verifier recomputes with.
    #[default]
    Cpu,
    /// The NVIDIA GPU of this ordinal.
    Cuda(usize),
}

impl Device {
    /// Whether this build can run models on this device at all (the `cuda` feature is on for
    /// `cuda:N`); the driver and the GPU are checked only when the device is opened.
    pub fn compiled_in(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Cuda(_) => cfg!(feature = "cuda"),
        }
    }

    /// `Ok` for the CPU and, with the `cuda` feature, for a GPU; a typed error naming the
    /// missing feature otherwise.
    pub fn check_compiled_in(self) -> Result<(), ModelError> {
        if self.compiled_in() {
            Ok(())
        } else {
            Err(ModelError::DeviceUnavailable {
                device: self.to_string(),
                reason: "this build has no CUDA support (rebuild with `--features cuda`)".into(),
            })
        }
    }
}

impl Device {
    /// Whether this device's kernels implement `setup`: the CPU runs every setup; a GPU runs
    /// every setup whose tiled attention blocks hold at most [`GPU_MAX_TILE`] keys (a larger
    /// block is a typed [`ModelError::UnsupportedOnDevice`]): every precision, eager, tiled,
    /// window and top-k attention, every quantization, split-K, batch, the decode order, skip
    /// and reuse; not the batch-invariant kernels (`kernels=invariant`, CPU only).
    pub fn check_setup(self, setup: &crate::Setup) -> Result<(), ModelError> {
        if self == Device::Cpu {
            return Ok(());
        }
        if setup.kernels == crate::Kernels::Invariant {
            return Err(ModelError::UnsupportedOnDevice {
                setup: setup.to_string(),
                device: self.to_string(),
                reason: "the batch-invariant kernels run on the CPU only".into(),
            });
        }
        match setup.attention {
            crate::Attention::Tiled { block } if block > GPU_MAX_TILE => {
                Err(ModelError::UnsupportedOnDevice {
                    setup: setup.to_string(),
                    device: self.to_string(),
                    reason: format!("the tiled kernel holds blocks of at most {GPU_MAX_TILE} keys"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// One device this build and machine can run models on, for `veritrace devices`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    /// The device (`cpu`, `cuda:N`).
    pub device: Device,
    /// What it is: the GPU's name, compute capability and memory, or `candle-core (CPU)`.
    pub description: String,
}

/// The devices models can run on here: the CPU always, then every GPU the CUDA driver reports
/// (without compiling kernels), and — when there is no usable GPU — why not (the `cuda`
/// feature is off, no driver, no libnvrtc or libcublas).
pub fn list_devices() -> (Vec<DeviceInfo>, Option<String>) {
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut out = vec![DeviceInfo {
        device: Device::Cpu,
        description: format!("candle-core (CPU), {} threads", cpu_threads()),
    }];
    #[cfg(not(feature = "cuda"))]
    let why = Some("this build has no CUDA support (rebuild with `--features cuda`)".to_string());
    #[cfg(feature = "cuda")]
    let why = match crate::cuda::list_gpus() {
        Ok(gpus) if gpus.is_empty() => Some("the CUDA driver reports no GPU".to_string()),
        Ok(gpus) => {
            out.extend(gpus);
            None
        }
        Err(e) => Some(e),
    };
    (out, why)
}

fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Largest key block of the GPU's tiled attention kernel (`VT_MAX_TILE` in kernels/common.cuh).
pub const GPU_MAX_TILE: usize = crate::kernels::MAX_TILE;

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || {
            ModelError::InvalidArgument(format!(
                "device {s:?}: expected `cpu`, `cuda` or `cuda:N` (N a GPU ordinal)"
            ))
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 4 {
                    return Err(bad());
                }
                Ok(Device::Cuda(n.parse().map_err(|_| bad())?))
            }
        }
    }
}

/// Runs the models on one device: the CPU (candle) or a GPU (the `cuda` feature). The
/// simulator and the CLI go through this, so that a prover and a verifier can sit on different
/// devices without either knowing how the other computes.
pub struct Runner {
    device: Device,
    #[cfg(feature = "cuda")]
    gpu: Option<GpuState>,
}

#[cfg(feature = "cuda")]
struct GpuState {
    gpu: std::sync::Arc<crate::cuda::Gpu>,
    /// Decoders prepared on the GPU, per (model digest, setup).
    llamas: std::sync::Mutex<
        std::collections::HashMap<
            (veritrace_commit::Digest, String),
            std::sync::Arc<crate::cuda::GpuLlama>,
        >,
    >,
    /// Encoders prepared on the GPU, per (model digest, setup).
    berts: std::sync::Mutex<
        std::collections::HashMap<
            (veritrace_commit::Digest, String),
            std::sync::Arc<crate::cuda::GpuBert>,
        >,
    >,
}

/// A prover's run with the cells' leaf digests when they were hashed on the device:
/// the statement, the trace, and the leaves for [`veritrace_protocol::Prover::with_leaves`]
/// (`None` when the cells are to be hashed on the host).
pub type CommittedRun = (
    veritrace_protocol::Statement,
    crate::Trace,
    Option<Vec<veritrace_commit::Digest>>,
);

/// What a prover's GPU run keeps: every hidden state, and the leaf digests hashed on the device
/// when `commit` is asked and `hasher` has a device kernel (BLAKE3, SHA-256).
#[cfg(feature = "cuda")]
fn prover_run_options(
    hasher: veritrace_commit::HasherId,
    chunk: u32,
    commit: bool,
) -> crate::cuda::RunOptions {
    let on_device = commit
        && matches!(
            hasher,
            veritrace_commit::HasherId::Blake3 | veritrace_commit::HasherId::Sha256
        );
    crate::cuda::RunOptions {
        download: true,
        commit: on_device.then_some((hasher, chunk)),
    }
}

/// The trace a prover's GPU run kept, and its device leaves when it hashed them.
#[cfg(feature = "cuda")]
fn trace_and_leaves(
    run: crate::cuda::GpuRun,
) -> Result<(crate::Trace, Option<Vec<veritrace_commit::Digest>>), ModelError> {
    let leaves = run.root.is_some().then_some(run.leaves);
    let trace = run
        .trace
        .ok_or_else(|| ModelError::Cuda("the run kept no trace".into()))?;
    Ok((trace, leaves))
}

/// A prove-run on the GPU: greedy generation, then one traced run of `prompt ‖ output`, with
/// the cells hashed on the device when `commit` (and the hasher has a device kernel).
#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn gpu_prove_run(
    m: &crate::cuda::GpuLlama,
    model: &crate::LlamaModel,
    setup: &crate::Setup,
    prompt: &[u32],
    n_out: usize,
    chunk: u32,
    hasher: veritrace_commit::HasherId,
    commit: bool,
) -> Result<CommittedRun, ModelError> {
    let output = m.generate(prompt, n_out)?;
    let tokens: Vec<u32> = prompt.iter().chain(&output).copied().collect();
    let run = m.run(&tokens, prover_run_options(hasher, chunk, commit))?;
    let (trace, leaves) = trace_and_leaves(run)?;
    let (statement, trace) = model.statement_for(setup, prompt, output, trace, chunk, hasher)?;
    Ok((statement, trace, leaves))
}

/// The prepared model of `key` in `map`, made with `make` on first use.
#[cfg(feature = "cuda")]
fn cached<T>(
    map: &std::sync::Mutex<
        std::collections::HashMap<(veritrace_commit::Digest, String), std::sync::Arc<T>>,
    >,
    key: (veritrace_commit::Digest, String),
    make: impl FnOnce() -> Result<T, ModelError>,
) -> Result<std::sync::Arc<T>, ModelError> {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = map.get(&key) {
        return Ok(m.clone());
    }
    let m = std::sync::Arc::new(make()?);
    map.insert(key, m.clone());
    Ok(m)
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Runner({})", self.device)
    }
}

impl Runner {
    /// A runner on `device`; for a GPU, opens it (compiling the kernels) or fails with
    /// [`ModelError::DeviceUnavailable`].
    pub fn new(device: Device) -> Result<Self, ModelError> {
        device.check_compiled_in()?;
        #[cfg(feature = "cuda")]
        {
            let gpu = match device {
                Device::Cpu => None,
                Device::Cuda(_) => Some(GpuState {
                    gpu: crate::cuda::Gpu::open(device)?,
                    llamas: Default::default(),
                    berts: Default::default(),
                }),
            };
            Ok(Runner { device, gpu })
        }
        #[cfg(not(feature = "cuda"))]
        Ok(Runner { device })
    }

    /// The CPU runner (nothing to open), shared.
    pub fn cpu() -> &'static Runner {
        static CPU: std::sync::OnceLock<Runner> = std::sync::OnceLock::new();
        CPU.get_or_init(|| Runner {
            device: Device::Cpu,
            #[cfg(feature = "cuda")]
            gpu: None,
        })
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// A one-line description: `cpu`, or `cuda:0 (NVIDIA H100 …, sm_90)`.
    pub fn describe(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Some(g) = &self.gpu {
            let (ma, mi) = g.gpu.capability();
            return format!("{} ({}, sm_{ma}{mi})", self.device, g.gpu.name());
        }
        self.device.to_string()
    }

    #[cfg(feature = "cuda")]
    fn gpu_llama(
        &self,
        model: &crate::LlamaModel,
        setup: &crate::Setup,
    ) -> Result<Option<std::sync::Arc<crate::cuda::GpuLlama>>, ModelError> {
        let Some(g) = &self.gpu else { return Ok(None) };
        cached(&g.llamas, (model.digest(), setup.to_string()), || {
            crate::cuda::GpuLlama::new(g.gpu.clone(), model, setup)
        })
        .map(Some)
    }

    #[cfg(feature = "cuda")]
    fn gpu_bert(
        &self,
        model: &crate::BertModel,
        setup: &crate::Setup,
    ) -> Result<Option<std::sync::Arc<crate::cuda::GpuBert>>, ModelError> {
        let Some(g) = &self.gpu else { return Ok(None) };
        cached(&g.berts, (model.digest(), setup.to_string()), || {
            crate::cuda::GpuBert::new(g.gpu.clone(), model, setup)
        })
        .map(Some)
    }

    /// The decoder's trace of `tokens` under `setup` on this device (`tile` is the CPU's chunk
    /// size; the GPU runs the sequence as one shape).
    pub fn llama_trace(
        &self,
        model: &crate::LlamaModel,
        setup: &crate::Setup,
        tokens: &[u32],
        tile: usize,
    ) -> Result<crate::Trace, ModelError> {
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_llama(model, setup)? {
            return m.trace(tokens);
        }
        model.trace(setup, tokens, tile)
    }

    /// [`crate::LlamaModel::prove_run`] on this device: greedy generation and the trace of
    /// `prompt ‖ output`, with the statement of that run.
    pub fn llama_prove_run(
        &self,
        model: &crate::LlamaModel,
        setup: &crate::Setup,
        prompt: &[u32],
        n_out: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<(veritrace_protocol::Statement, crate::Trace), ModelError> {
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_llama(model, setup)? {
            let (statement, trace, _) =
                gpu_prove_run(&m, model, setup, prompt, n_out, chunk, hasher, false)?;
            return Ok((statement, trace));
        }
        model.prove_run(setup, prompt, n_out, chunk, hasher)
    }

    /// [`crate::LlamaModel::prove_run_sublayers`] on this device: greedy generation, the trace
    /// of `prompt ‖ output` with every layer's sub-layer values (issue 16), and the statement of
    /// that run at the sub-layer trace level. On a GPU the values are the GPU's
    /// (`GpuLlama::trace_sublayers` under the `cuda` feature: its own kernels' arithmetic, checked by a
    /// keyed verifier within its Freivalds bound and nonlinear tolerance like any other
    /// engine's); the cells are hashed on the host.
    ///
    /// # Errors
    /// As `prove_run_sublayers`, and a GPU that refuses the setup.
    pub fn llama_prove_run_sublayers(
        &self,
        model: &crate::LlamaModel,
        setup: &crate::Setup,
        prompt: &[u32],
        n_out: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<
        (
            veritrace_protocol::Statement,
            crate::Trace,
            crate::sublayer::SubLayerTrace,
        ),
        ModelError,
    > {
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_llama(model, setup)? {
            let output = m.generate(prompt, n_out)?;
            let tokens: Vec<u32> = prompt.iter().chain(&output).copied().collect();
            let (trace, sub) = m.trace_sublayers(&tokens)?;
            return model.sublayer_statement(setup, (prompt, output), (trace, &sub), chunk, hasher);
        }
        model.prove_run_sublayers(setup, prompt, n_out, chunk, hasher)
    }

    /// [`Runner::llama_prove_run`], also returning the cells' leaf digests when they were
    /// hashed on the device (a GPU and a BLAKE3 or SHA-256 statement: each layer hashed as it
    /// finishes, only digests copied back), for
    /// [`veritrace_protocol::Prover::with_leaves`]; `None` on the CPU or for Poseidon.
    pub fn llama_prove_run_committed(
        &self,
        model: &crate::LlamaModel,
        setup: &crate::Setup,
        prompt: &[u32],
        n_out: usize,
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<CommittedRun, ModelError> {
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_llama(model, setup)? {
            return gpu_prove_run(&m, model, setup, prompt, n_out, chunk, hasher, true);
        }
        let (statement, trace) =
            self.llama_prove_run(model, setup, prompt, n_out, chunk, hasher)?;
        Ok((statement, trace, None))
    }

    /// [`crate::LlamaModel::recompute_cell`] on this device. On a GPU, a transformer layer's
    /// cell is recomputed from its input rows by one GPU layer pass; the embedding layer is a
    /// table lookup, the same on every device.
    pub fn llama_recompute_cell(
        &self,
        model: &crate::LlamaModel,
        setup: &crate::Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: crate::CellInputs<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        #[cfg(feature = "cuda")]
        if let (crate::CellInputs::Hidden(x), Some(m)) = (&inputs, self.gpu_llama(model, setup)?) {
            let d = model.config().hidden_size;
            let t = x.len() / d.max(1);
            let start = chunk.saturating_mul(tile);
            if tile == 0 || start >= t || t > start + tile {
                return Err(ModelError::InvalidArgument(format!(
                    "{t} input rows do not end within chunk {chunk} of {tile} rows"
                )));
            }
            return m.layer_rows(layer, x, start..t);
        }
        model.recompute_cell(setup, tile, layer, chunk, inputs)
    }

    /// [`crate::BertModel::trace`] on this device.
    pub fn bert_trace(
        &self,
        model: &crate::BertModel,
        setup: &crate::Setup,
        tokens: &[u32],
        tile: usize,
    ) -> Result<crate::Trace, ModelError> {
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_bert(model, setup)? {
            return m.trace(tokens);
        }
        model.trace(setup, tokens, tile)
    }

    /// [`crate::BertModel::prove_encode`] on this device.
    pub fn bert_prove_encode(
        &self,
        model: &crate::BertModel,
        setup: &crate::Setup,
        tokens: &[u32],
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<(veritrace_protocol::Statement, crate::Trace), ModelError> {
        let (statement, trace, _) = self.bert_prove(model, setup, tokens, chunk, hasher, false)?;
        Ok((statement, trace))
    }

    /// [`Runner::bert_prove_encode`], also returning the cells' leaf digests when they were
    /// hashed on the device (a GPU and a BLAKE3 or SHA-256 statement), as
    /// [`Runner::llama_prove_run_committed`] does for the decoder; `None` on the CPU or for
    /// Poseidon.
    pub fn bert_prove_encode_committed(
        &self,
        model: &crate::BertModel,
        setup: &crate::Setup,
        tokens: &[u32],
        chunk: u32,
        hasher: veritrace_commit::HasherId,
    ) -> Result<CommittedRun, ModelError> {
        self.bert_prove(model, setup, tokens, chunk, hasher, true)
    }

    /// An encoding for a prover on this device, with the leaves hashed on a GPU when `commit`.
    fn bert_prove(
        &self,
        model: &crate::BertModel,
        setup: &crate::Setup,
        tokens: &[u32],
        chunk: u32,
        hasher: veritrace_commit::HasherId,
        #[allow(unused_variables)] commit: bool,
    ) -> Result<CommittedRun, ModelError> {
        #[cfg(feature = "cuda")]
        if let Some(m) = self.gpu_bert(model, setup)? {
            let (trace, leaves) =
                trace_and_leaves(m.run(tokens, prover_run_options(hasher, chunk, commit))?)?;
            let (statement, trace) = model.statement_for(setup, tokens, trace, chunk, hasher)?;
            return Ok((statement, trace, leaves));
        }
        let (statement, trace) = model.prove_encode(setup, tokens, chunk, hasher)?;
        Ok((statement, trace, None))
    }

    /// [`crate::BertModel::recompute_cell`] on this device (a GPU layer pass over every row for
    /// a transformer layer; the embedding layer on the CPU).
    pub fn bert_recompute_cell(
        &self,
        model: &crate::BertModel,
        setup: &crate::Setup,
        tile: usize,
        layer: usize,
        chunk: usize,
        inputs: crate::CellInputs<'_>,
    ) -> Result<Vec<f32>, ModelError> {
        #[cfg(feature = "cuda")]
        if let (crate::CellInputs::Hidden(x), Some(m)) = (&inputs, self.gpu_bert(model, setup)?) {
            let d = model.config().hidden_size;
            let t = x.len() / d.max(1);
            let start = chunk.saturating_mul(tile);
            if tile == 0 || start >= t {
                return Err(ModelError::InvalidArgument(format!(
                    "chunk {chunk} of {tile} rows is not within {t} rows"
                )));
            }
            return m.layer_rows(layer, x, start..(start + tile).min(t));
        }
        model.recompute_cell(setup, tile, layer, chunk, inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (s, d) in [
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda(0)),
            ("cuda:0", Device::Cuda(0)),
            ("cuda:3", Device::Cuda(3)),
        ] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            Device::Cuda(2).to_string().parse::<Device>().unwrap(),
            Device::Cuda(2)
        );
    }

    #[test]
    fn malformed_devices_are_typed_errors() {
        for s in [
            "",
            "gpu",
            "cuda:",
            "cuda:-1",
            "cuda:x",
            "cuda:99999",
            "CPU",
            "cuda:1:2",
        ] {
            assert!(
                matches!(s.parse::<Device>(), Err(ModelError::InvalidArgument(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_gpu_runs_every_setup_but_tiles_beyond_its_kernel() {
        let gpu = Device::Cuda(0);
        for s in [
            "f32/attn=eager",
            "bf16/attn=topk:8",
            "f32/attn=eager/order=decode",
            "f16/attn=window:16/quant=int4-g32/splitk=2",
            "f32/attn=tiled:128/batch=2/skip=1",
        ] {
            let setup: crate::Setup = s.parse().unwrap();
            gpu.check_setup(&setup)
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        let big: crate::Setup = format!("f32/attn=tiled:{}", GPU_MAX_TILE + 1)
            .parse()
            .unwrap();
        assert!(matches!(
            gpu.check_setup(&big),
            Err(ModelError::UnsupportedOnDevice { .. })
        ));
        assert!(Device::Cpu.check_setup(&big).is_ok());
    }

    #[test]
    fn a_gpu_without_the_feature_names_the_feature() {
        assert!(Device::Cpu.check_compiled_in().is_ok());
        let r = Device::Cuda(0).check_compiled_in();
        if cfg!(feature = "cuda") {
            assert!(r.is_ok());
        } else {
            assert!(r.unwrap_err().to_string().contains("--features cuda"));
        }
    }
}
