//! The BERT encoder (all-MiniLM-L6-v2) on a GPU ([`GpuBert`]).
//!
//! The CPU encoder's arithmetic ([`crate::bert`]) with the GPU's reduction order: the same
//! operations, roundings and f32 statistics, the whole sequence as one shape. Per layer on
//! `x = h_{l-1}`:
//!
//! ```text
//! q, k, v = x·Wqᵀ + bq, x·Wkᵀ + bk, x·Wvᵀ + bv          (bias added in the precision)
//! a   = LN_attn((attn(q, k, v)·Woᵀ + bo) + x)           (bidirectional)
//! h_l = LN_out((gelu(a·Wiᵀ + bi)·Wo2ᵀ + bo2) + a)
//! ```
//!
//! `h_0 = LN_emb((word + type) + pos)`: the sums are formed on the host exactly as on the CPU
//! and the LayerNorm runs on the device.

use std::sync::Arc;

use cudarc::driver::CudaSlice;

use super::gpu::{elementwise, launch, per_row, precision_code, round_host, Gpu};
use super::llama::check_gpu_setup;
use super::ops::{self, Linear};
use super::run::{run_layers, GpuRun, RunOptions};
use crate::{BertModel, ModelError, Result, Setup, Trace};

struct GpuLinear {
    w: Linear,
    /// The bias, rounded to the precision.
    b: CudaSlice<f32>,
}

struct GpuLayer {
    q: GpuLinear,
    k: GpuLinear,
    v: GpuLinear,
    o: GpuLinear,
    attn_ln: (CudaSlice<f32>, CudaSlice<f32>),
    i: GpuLinear,
    o2: GpuLinear,
    out_ln: (CudaSlice<f32>, CudaSlice<f32>),
}

/// The encoder's weights on a GPU, prepared for one numeric setup.
pub struct GpuBert {
    gpu: Arc<Gpu>,
    model: BertModel,
    setup: Setup,
    emb_ln: (CudaSlice<f32>, CudaSlice<f32>),
    layers: Vec<GpuLayer>,
}

impl std::fmt::Debug for GpuBert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBert({:?}, {})", self.gpu, self.setup)
    }
}

impl GpuBert {
    /// Uploads `model`'s weights to `gpu`, prepared for `setup`.
    pub fn new(gpu: Arc<Gpu>, model: &BertModel, setup: &Setup) -> Result<Self> {
        model.check_setup(setup)?;
        check_gpu_setup(setup, &gpu)?;
        let c = model.config().clone();
        let (d, m) = (c.hidden_size, c.intermediate_size);
        let mut t = model.dense_tensors()?.into_iter();
        let mut next = || {
            t.next()
                .ok_or_else(|| ModelError::Cuda("encoder tensor list ended early".into()))
        };
        let emb_ln = (gpu.upload(&next()?)?, gpu.upload(&next()?)?);
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for _ in 0..c.num_hidden_layers {
            let q = Self::lin_with(&gpu, &mut next, d, d, setup)?;
            let k = Self::lin_with(&gpu, &mut next, d, d, setup)?;
            let v = Self::lin_with(&gpu, &mut next, d, d, setup)?;
            let o = Self::lin_with(&gpu, &mut next, d, d, setup)?;
            let attn_ln = (gpu.upload(&next()?)?, gpu.upload(&next()?)?);
            let i = Self::lin_with(&gpu, &mut next, m, d, setup)?;
            let o2 = Self::lin_with(&gpu, &mut next, d, m, setup)?;
            let out_ln = (gpu.upload(&next()?)?, gpu.upload(&next()?)?);
            layers.push(GpuLayer {
                q,
                k,
                v,
                o,
                attn_ln,
                i,
                o2,
                out_ln,
            });
        }
        Ok(GpuBert {
            gpu,
            model: model.clone(),
            setup: *setup,
            emb_ln,
            layers,
        })
    }

    fn lin_with(
        gpu: &Gpu,
        next: &mut impl FnMut() -> Result<Vec<f32>>,
        out: usize,
        inp: usize,
        setup: &Setup,
    ) -> Result<GpuLinear> {
        let w = Linear::prepare(gpu, &next()?, out, inp, setup)?;
        let b: Vec<f32> = next()?
            .iter()
            .map(|&x| round_host(x, setup.precision))
            .collect();
        Ok(GpuLinear {
            w,
            b: gpu.upload(&b)?,
        })
    }

    /// `x·Wᵀ + b` over `t` rows.
    fn linear(&self, x: &CudaSlice<f32>, t: usize, l: &GpuLinear) -> Result<CudaSlice<f32>> {
        let gpu = &*self.gpu;
        let mut y = ops::linear(gpu, x, t, &l.w, &self.setup)?;
        let (t32, o32, p) = (
            t as i32,
            l.w.out as i32,
            precision_code(self.setup.precision),
        );
        launch!(
            gpu,
            "vt_add_bias",
            elementwise(t * l.w.out),
            &mut y,
            &l.b,
            &t32,
            &o32,
            &p
        );
        Ok(y)
    }

    /// `LN(x)` over `t` rows of the hidden size.
    fn layer_norm(
        &self,
        x: &CudaSlice<f32>,
        t: usize,
        ln: &(CudaSlice<f32>, CudaSlice<f32>),
    ) -> Result<CudaSlice<f32>> {
        let gpu = &*self.gpu;
        let d = self.model.config().hidden_size;
        let mut y = gpu.zeros::<f32>(t * d)?;
        let (t32, d32) = (t as i32, d as i32);
        let eps = self.model.config().layer_norm_eps as f32;
        let p = precision_code(self.setup.precision);
        launch!(
            gpu,
            "vt_layer_norm",
            per_row(t),
            x,
            &ln.0,
            &ln.1,
            &mut y,
            &t32,
            &d32,
            &eps,
            &p
        );
        Ok(y)
    }

    /// The additive key mask of an attention mask (`0` where it is 1, `−∞` where it is 0) on
    /// the device, after the CPU encoder's checks; `None` when every position is attended.
    ///
    /// Under `attn=window:W` the CPU lets a query whose window holds no attended key attend to
    /// every attended key instead; the GPU kernels take one mask for all queries, so such a
    /// mask is refused ([`ModelError::UnsupportedOnDevice`]). It happens only to a masked
    /// position at least `W` away from every attended one.
    fn key_mask(&self, mask: &[u32], t: usize) -> Result<Option<CudaSlice<f32>>> {
        BertModel::check_mask(mask, t)?;
        if mask.iter().all(|&m| m == 1) {
            return Ok(None);
        }
        if let crate::Attention::Window { size } = self.setup.attention {
            let visible: Vec<usize> = (0..t).filter(|&k| mask[k] == 1).collect();
            if let Some(p) = (0..t).find(|&p| !visible.iter().any(|&k| p.abs_diff(k) < size)) {
                return Err(ModelError::UnsupportedOnDevice {
                    setup: self.setup.to_string(),
                    device: self.gpu.device().to_string(),
                    reason: format!(
                        "position {p}'s window of {size} holds no attended key (the CPU's \
                         fallback to every attended key has no GPU kernel)"
                    ),
                });
            }
        }
        let values: Vec<f32> = mask
            .iter()
            .map(|&m| if m == 1 { 0.0 } else { f32::NEG_INFINITY })
            .collect();
        Ok(Some(self.gpu.upload(&values)?))
    }

    /// Encoder layer `l` (0-based) on `x` (`[t, d]`), keys masked by `key_mask`.
    fn layer(
        &self,
        l: usize,
        x: &CudaSlice<f32>,
        t: usize,
        key_mask: Option<&CudaSlice<f32>>,
    ) -> Result<CudaSlice<f32>> {
        let gpu = &*self.gpu;
        let c = self.model.config();
        let (d, hd, heads) = (c.hidden_size, c.head_dim(), c.num_attention_heads);
        let p = precision_code(self.setup.precision);
        let w = &self.layers[l];
        let q = self.linear(x, t, &w.q)?;
        let k = self.linear(x, t, &w.k)?;
        let v = self.linear(x, t, &w.v)?;
        let ctx = ops::attention(
            gpu,
            &q,
            &k,
            &v,
            t,
            heads,
            heads,
            hd,
            false,
            key_mask,
            &self.setup,
        )?;
        let mut a = self.linear(&ctx, t, &w.o)?;
        let n = (t * d) as i32;
        launch!(gpu, "vt_add_inplace", elementwise(t * d), &mut a, x, &n, &p);
        let a = self.layer_norm(&a, t, &w.attn_ln)?;
        let mut m = self.linear(&a, t, &w.i)?;
        let nm = (t * c.intermediate_size) as i32;
        launch!(
            gpu,
            "vt_gelu",
            elementwise(t * c.intermediate_size),
            &mut m,
            &nm,
            &p
        );
        let mut h = self.linear(&m, t, &w.o2)?;
        launch!(
            gpu,
            "vt_add_inplace",
            elementwise(t * d),
            &mut h,
            &a,
            &n,
            &p
        );
        self.layer_norm(&h, t, &w.out_ln)
    }

    /// The trace of `tokens` (every hidden state copied back), as [`BertModel::trace`] gives
    /// on the CPU.
    pub fn trace(&self, tokens: &[u32]) -> Result<Trace> {
        self.trace_masked(tokens, &vec![1; tokens.len()])
    }

    /// As [`GpuBert::trace`], with an attention mask (one entry per token, 1 = attend, 0 =
    /// masked), as [`BertModel::trace_masked`] on the CPU; see `GpuBert::key_mask` for the
    /// one window case the GPU refuses.
    pub fn trace_masked(&self, tokens: &[u32], mask: &[u32]) -> Result<Trace> {
        let run = self.run_masked(
            tokens,
            mask,
            RunOptions {
                download: true,
                commit: None,
            },
        )?;
        run.trace
            .ok_or_else(|| ModelError::Cuda("the run kept no trace".into()))
    }

    /// Encodes `tokens` on the GPU (every token attended), keeping what `options` asks for:
    /// the hidden states, and the cells' leaf digests hashed on the device as each layer
    /// finishes (as [`super::GpuLlama::run`]).
    pub fn run(&self, tokens: &[u32], options: RunOptions) -> Result<GpuRun> {
        self.run_masked(tokens, &vec![1; tokens.len()], options)
    }

    /// As [`GpuBert::run`], with the attention mask of [`GpuBert::trace_masked`].
    pub fn run_masked(&self, tokens: &[u32], mask: &[u32], options: RunOptions) -> Result<GpuRun> {
        let gpu = &*self.gpu;
        let _held = gpu.lock();
        let c = self.model.config();
        let (t, d) = (tokens.len(), c.hidden_size);
        let sums = self.model.embedding_sums(self.setup.precision, tokens)?;
        let key_mask = self.key_mask(mask, t)?;
        let h0 = self.layer_norm(&gpu.upload(&sums)?, t, &self.emb_ln)?;
        run_layers(
            gpu,
            &self.setup,
            h0,
            (t, d),
            c.num_hidden_layers,
            options,
            |i, x| self.layer(i, x, t, key_mask.as_ref()),
        )
    }

    /// Rows `rows` of `h_layer` computed on the GPU from every row of `h_{layer-1}` (`input`):
    /// a verifier's recompute of one cell on this GPU.
    pub fn layer_rows(
        &self,
        layer: usize,
        input: &[f32],
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        let t = input.len() / self.model.config().hidden_size.max(1);
        self.layer_rows_masked(layer, input, rows, &vec![1; t])
    }

    /// As [`GpuBert::layer_rows`], with the attention mask of [`GpuBert::trace_masked`].
    pub fn layer_rows_masked(
        &self,
        layer: usize,
        input: &[f32],
        rows: std::ops::Range<usize>,
        mask: &[u32],
    ) -> Result<Vec<f32>> {
        let c = self.model.config();
        let d = c.hidden_size;
        let t = ops::check_layer_input(layer, c.num_hidden_layers, d, input, &rows, &self.setup)?;
        let gpu = &*self.gpu;
        let _held = gpu.lock();
        let key_mask = self.key_mask(mask, t)?;
        let x = gpu.upload(input)?;
        let h = self.layer(layer - 1, &x, t, key_mask.as_ref())?;
        let all = gpu.download(&h)?;
        Ok(all[rows.start * d..rows.end * d].to_vec())
    }
}
