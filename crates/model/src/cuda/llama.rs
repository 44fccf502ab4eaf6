//! The built-in Llama-style decoder on a GPU ([`GpuLlama`]).
//!
//! The arithmetic rules are the CPU decoder's ([`crate::llama`]): the same operations in the
//! same precision, with the same roundings (kernels/norm.cu), but the whole sequence is one
//! shape (no tiles) and the matmuls and reductions run in the GPU's order. The result is
//! therefore honest "other hardware": within reduction-order noise of the CPU trace, bitwise
//! reproducible run to run on the same GPU.
//!
//! Per layer, on `x = h_{l-1}` (`[T, d]` f32 on the device):
//!
//! ```text
//! n = rmsnorm(x; g_attn);  q = rope(n Wqᵀ);  k = rope(n Wkᵀ);  v = n Wvᵀ
//! a = x + attn(q, k, v) Woᵀ                     (causal; eager, tiled:B or window:W kernels)
//! m = rmsnorm(a; g_mlp);   h_l = a + (silu(m Wgateᵀ) ⊙ m Wupᵀ) Wdownᵀ
//! ```
//!
//! Linear layers are cuBLAS SGEMM (rounded to the precision afterwards), or the split-K kernel
//! for `splitk=S`, or the dequantize-and-multiply kernel for int8 per-channel / int4 group
//! weights. When the trace is committed on the device, each `h_l` is hashed into its cells'
//! leaf digests by kernels/leaf_hash.cu as soon as the layer finishes ([`RunOptions::commit`]),
//! on a second stream, so that hashing `h_l` overlaps computing `h_{l+1}` (`cuda/run.rs`).

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::gpu::{elementwise, launch, per_row, precision_code, round_host, Gpu};
use super::ops::{self, Linear};
use super::run::{run_layers, GpuRun, RunOptions};
use crate::{LlamaModel, ModelConfig, ModelError, Result, Setup, SubLayers, Trace};

/// The rotary embedding's cosine and sine tables of a run's positions, on the device.
type RopeTables = (CudaSlice<f32>, CudaSlice<f32>);

struct GpuLayer {
    attn_norm: CudaSlice<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    mlp_norm: CudaSlice<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The decoder's weights on a GPU, prepared for one numeric setup.
pub struct GpuLlama {
    gpu: Arc<Gpu>,
    model: LlamaModel,
    setup: Setup,
    layers: Vec<GpuLayer>,
}

impl std::fmt::Debug for GpuLlama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuLlama({:?}, {})", self.gpu, self.setup)
    }
}

/// Checks what the GPU kernels implement ([`crate::Device::check_setup`]).
pub(crate) fn check_gpu_setup(setup: &Setup, gpu: &Gpu) -> Result<()> {
    gpu.device().check_setup(setup)
}

fn tensor<'a>(tensors: &'a [crate::NamedTensor], name: &str) -> Result<&'a [f32]> {
    tensors
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, v)| v.as_slice())
        .ok_or_else(|| ModelError::Cuda(format!("decoder has no tensor {name}")))
}

impl GpuLlama {
    /// Uploads `model`'s weights to `gpu`, prepared for `setup` (rounded to its precision,
    /// quantized as it says).
    pub fn new(gpu: Arc<Gpu>, model: &LlamaModel, setup: &Setup) -> Result<Self> {
        model.check_setup(setup)?;
        check_gpu_setup(setup, &gpu)?;
        let c = model.config().clone();
        if let Some(w) = c.sliding_window {
            return Err(ModelError::UnsupportedSetup(format!(
                "the CUDA decoder does not compute a sliding window (Mistral, {w} positions) \
                 yet; run this model on the CPU"
            )));
        }
        if c.qkv_bias() {
            return Err(ModelError::UnsupportedSetup(
                "the CUDA decoder does not compute query/key/value biases (Qwen2) yet; run \
                 this model on the CPU"
                    .into(),
            ));
        }
        let hd = c.head_dim();
        let tensors = model.named_tensors()?;
        // Norm gains stay f32: the norms compute in f32 and round once.
        let gain =
            |name: String| -> Result<CudaSlice<f32>> { gpu.upload(tensor(&tensors, &name)?) };
        let lin = |name: String, out: usize, inp: usize| -> Result<Linear> {
            Linear::prepare(&gpu, tensor(&tensors, &name)?, out, inp, setup)
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let pre = format!("model.layers.{i}");
            layers.push(GpuLayer {
                attn_norm: gain(format!("{pre}.input_layernorm.weight"))?,
                wq: lin(
                    format!("{pre}.self_attn.q_proj.weight"),
                    c.num_heads * hd,
                    c.hidden_size,
                )?,
                wk: lin(
                    format!("{pre}.self_attn.k_proj.weight"),
                    c.num_kv_heads * hd,
                    c.hidden_size,
                )?,
                wv: lin(
                    format!("{pre}.self_attn.v_proj.weight"),
                    c.num_kv_heads * hd,
                    c.hidden_size,
                )?,
                wo: lin(
                    format!("{pre}.self_attn.o_proj.weight"),
                    c.hidden_size,
                    c.num_heads * hd,
                )?,
                mlp_norm: gain(format!("{pre}.post_attention_layernorm.weight"))?,
                gate: lin(
                    format!("{pre}.mlp.gate_proj.weight"),
                    c.intermediate_size,
                    c.hidden_size,
                )?,
                up: lin(
                    format!("{pre}.mlp.up_proj.weight"),
                    c.intermediate_size,
                    c.hidden_size,
                )?,
                down: lin(
                    format!("{pre}.mlp.down_proj.weight"),
                    c.hidden_size,
                    c.intermediate_size,
                )?,
            });
        }
        Ok(GpuLlama {
            gpu,
            model: model.clone(),
            setup: *setup,
            layers,
        })
    }

    /// The setup the weights were prepared for.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// `cos`/`sin` tables `[rows, hd/2]` for positions `0..rows`: angles in f64, rounded to f32
    /// and then to the precision, as the CPU decoder's tables.
    fn rope_tables(&self, rows: usize) -> Result<RopeTables> {
        let c = self.config();
        let hd = c.head_dim();
        let half = hd / 2;
        let p = self.setup.precision;
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        let inv_freq = c.rope_inv_freq();
        for pos in 0..rows {
            for &f in inv_freq.iter().take(half) {
                let a = pos as f64 * f;
                cos.push(round_host(a.cos() as f32, p));
                sin.push(round_host(a.sin() as f32, p));
            }
        }
        Ok((self.gpu.upload(&cos)?, self.gpu.upload(&sin)?))
    }

    /// Runs transformer layer `l` (0-based) on `x` (`[t, d]`), returning `h_{l+1}`.
    /// Layer `l` (0-based) on `t` rows `x`; with `sub`, every linear map's input and output is
    /// copied back into it as it is computed ([`SubLayers`]: `q` and `k` before the rotary
    /// embedding, `o` and `down` before their residual adds), the arithmetic unchanged.
    fn layer(
        &self,
        l: usize,
        x: &CudaSlice<f32>,
        t: usize,
        rope: &RopeTables,
        mut sub: Option<&mut SubLayers>,
    ) -> Result<CudaSlice<f32>> {
        let gpu = &*self.gpu;
        let c = self.config();
        let (d, hd, nh, nkv) = (c.hidden_size, c.head_dim(), c.num_heads, c.num_kv_heads);
        let p = precision_code(self.setup.precision);
        let eps = c.rms_norm_eps as f32;
        let w = &self.layers[l];
        let (t32, d32) = (t as i32, d as i32);

        let mut n = gpu.zeros::<f32>(t * d)?;
        launch!(
            gpu,
            "vt_rms_norm",
            per_row(t),
            x,
            &w.attn_norm,
            &mut n,
            &t32,
            &d32,
            &eps,
            &p
        );
        let mut q = ops::linear(gpu, &n, t, &w.wq, &self.setup)?;
        let mut k = ops::linear(gpu, &n, t, &w.wk, &self.setup)?;
        let v = ops::linear(gpu, &n, t, &w.wv, &self.setup)?;
        if let Some(s) = sub.as_deref_mut() {
            s.normed = gpu.download(&n)?;
            s.q = gpu.download(&q)?;
            s.k = gpu.download(&k)?;
            s.v = gpu.download(&v)?;
        }
        let hd32 = hd as i32;
        for (buf, heads) in [(&mut q, nh), (&mut k, nkv)] {
            let h32 = heads as i32;
            launch!(
                gpu,
                "vt_rope",
                elementwise(t * heads * hd / 2),
                buf,
                &rope.0,
                &rope.1,
                &t32,
                &h32,
                &hd32,
                &p
            );
        }
        let attn = ops::attention(gpu, &q, &k, &v, t, nh, nkv, hd, true, None, &self.setup)?;
        let mut a = ops::linear(gpu, &attn, t, &w.wo, &self.setup)?;
        if let Some(s) = sub.as_deref_mut() {
            s.attn = gpu.download(&attn)?;
            s.o = gpu.download(&a)?;
        }
        let n_all = (t * d) as i32;
        launch!(
            gpu,
            "vt_add_inplace",
            elementwise(t * d),
            &mut a,
            x,
            &n_all,
            &p
        );

        let mut m = gpu.zeros::<f32>(t * d)?;
        launch!(
            gpu,
            "vt_rms_norm",
            per_row(t),
            &a,
            &w.mlp_norm,
            &mut m,
            &t32,
            &d32,
            &eps,
            &p
        );
        let g = ops::linear(gpu, &m, t, &w.gate, &self.setup)?;
        let u = ops::linear(gpu, &m, t, &w.up, &self.setup)?;
        let inter = c.intermediate_size;
        let mut gu = gpu.zeros::<f32>(t * inter)?;
        let n_inter = (t * inter) as i32;
        launch!(
            gpu,
            "vt_silu_mul",
            elementwise(t * inter),
            &g,
            &u,
            &mut gu,
            &n_inter,
            &p
        );
        let mut h = ops::linear(gpu, &gu, t, &w.down, &self.setup)?;
        if let Some(s) = sub {
            s.mlp_in = gpu.download(&m)?;
            s.gate = gpu.download(&g)?;
            s.up = gpu.download(&u)?;
            s.act = gpu.download(&gu)?;
            s.down = gpu.download(&h)?;
        }
        launch!(
            gpu,
            "vt_add_inplace",
            elementwise(t * d),
            &mut h,
            &a,
            &n_all,
            &p
        );
        Ok(h)
    }

    /// A run's inputs: `h_0` (the embedding rows of `tokens`, rounded to the precision, on the
    /// host) and the rotary tables of its positions (on the device). No tokens: refused.
    fn inputs(&self, tokens: &[u32]) -> Result<(Vec<f32>, RopeTables)> {
        if tokens.is_empty() {
            return Err(ModelError::InvalidArgument("no tokens to run".into()));
        }
        let p = self.setup.precision;
        let h0: Vec<f32> = self
            .model
            .embed_tokens(tokens)?
            .into_iter()
            .map(|x| round_host(x, p))
            .collect();
        Ok((h0, self.rope_tables(tokens.len())?))
    }

    /// Runs the whole sequence `tokens` on the GPU: `h_0` (the embedding rows, rounded to the
    /// precision) and every layer, applying the setup's skipped or reused layer.
    pub fn run(&self, tokens: &[u32], options: RunOptions) -> Result<GpuRun> {
        let gpu = &*self.gpu;
        let _held = gpu.lock();
        let (h0, rope) = self.inputs(tokens)?;
        let (t, d) = (tokens.len(), self.config().hidden_size);
        let h0 = gpu.upload(&h0)?;
        run_layers(
            gpu,
            &self.setup,
            h0,
            (t, d),
            self.config().num_layers,
            options,
            |i, x| self.layer(i, x, t, &rope, None),
        )
    }

    /// [`GpuLlama::run`] timed on the GPU (CUDA events around the whole run): milliseconds.
    /// With `options.commit` the time includes hashing every layer on the device and copying
    /// the digests back; without it, the forward alone.
    pub fn run_ms(&self, tokens: &[u32], options: RunOptions) -> Result<(GpuRun, f64)> {
        let (run, ms) = self.gpu.clone().timed(|| self.run(tokens, options))?;
        Ok((run, f64::from(ms)))
    }

    /// The trace of `tokens` (every hidden state copied back), as [`LlamaModel::trace`] gives
    /// on the CPU.
    pub fn trace(&self, tokens: &[u32]) -> Result<Trace> {
        let run = self.run(
            tokens,
            RunOptions {
                download: true,
                commit: None,
            },
        )?;
        run.trace
            .ok_or_else(|| ModelError::Cuda("the run kept no trace".into()))
    }

    /// The trace of `tokens` and each layer's sub-layer values on the GPU, as
    /// [`LlamaModel::trace_sublayers`] gives on the CPU: the same tensors (the inputs and
    /// outputs of every linear map, f32 `[tokens, width]`), computed by this engine's kernels
    /// in one pass per layer and copied back. The hidden states are bitwise [`GpuLlama::trace`]'s
    /// (the copies change no arithmetic). A skipped or reused layer computes no linear map:
    /// refused, as on the CPU.
    pub fn trace_sublayers(&self, tokens: &[u32]) -> Result<(Trace, Vec<SubLayers>)> {
        if self.setup.skip.is_some() || self.setup.reuse.is_some() {
            return Err(ModelError::UnsupportedSetup(format!(
                "{}: a skipped or reused layer computes no linear map",
                self.setup
            )));
        }
        let gpu = &*self.gpu;
        let _held = gpu.lock();
        let (h0, rope) = self.inputs(tokens)?;
        let c = self.config();
        let (t, d) = (tokens.len(), c.hidden_size);
        let mut x = gpu.upload(&h0)?;
        let mut layers = vec![h0];
        let mut subs = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let mut sub = SubLayers::default();
            x = self.layer(l, &x, t, &rope, Some(&mut sub))?;
            layers.push(gpu.download(&x)?);
            subs.push(sub);
        }
        Ok((
            Trace {
                tokens: t,
                hidden: d,
                layers,
                keys: Vec::new(),
            },
            subs,
        ))
    }

    /// Greedy generation on the GPU: each step runs the whole sequence and picks the next token
    /// from the last row of `h_L` with the CPU's LM head ([`LlamaModel::next_token_from_row`]).
    pub fn generate(&self, prompt: &[u32], n_out: usize) -> Result<Vec<u32>> {
        let mut seq = prompt.to_vec();
        let d = self.config().hidden_size;
        for _ in 0..n_out {
            let trace = self.trace(&seq)?;
            let last = trace.layers.last().expect("at least h_0");
            let row = &last[(seq.len() - 1) * d..seq.len() * d];
            seq.push(self.model.next_token_from_row(&self.setup, row)?);
        }
        Ok(seq[prompt.len()..].to_vec())
    }

    /// The rows `rows` of `h_{layer}` computed on the GPU from the rows `0..input.len()/d` of
    /// `h_{layer-1}` (causal attention reads only earlier rows): a verifier's recompute of one
    /// cell on this GPU.
    pub fn layer_rows(
        &self,
        layer: usize,
        input: &[f32],
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let d = self.config().hidden_size;
        let t = ops::check_layer_input(
            layer,
            self.config().num_layers,
            d,
            input,
            &rows,
            &self.setup,
        )?;
        let gpu = &*self.gpu;
        let _held = gpu.lock();
        let x = gpu.upload(input)?;
        let rope = self.rope_tables(t)?;
        let h = self.layer(layer - 1, &x, t, &rope, None)?;
        let all = gpu.download(&h)?;
        Ok(all[rows.start * d..rows.end * d].to_vec())
    }
}
