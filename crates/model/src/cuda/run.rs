//! A whole-sequence run on a GPU, shared by the decoder and the encoder: `h_0`, then every
//! layer in turn (or the setup's skipped or reused layer), each hidden state optionally copied
//! back and optionally committed on the device.
//!
//! # Committing on the device
//!
//! With [`RunOptions::commit`], each `h_l` is hashed into its cells' leaf digests
//! (kernels/leaf_hash.cu, the leaf encoding of specs/commitment.md) as soon as the compute
//! stream has produced it, on the GPU's second stream: hashing `h_l` overlaps computing
//! `h_{l+1}`, only 32-byte digests are copied back, and the Merkle root is built from them on
//! the host. The two streams are ordered by explicit events:
//!
//! ```text
//! compute:  … layer l ── written_l ─────────── layer l+1 … layer l+2 ── wait(hashed_l) ── free h_l
//!                            │                                              ▲
//! hash:                      └─ wait ── hash h_l into digests ── hashed_l ──┘
//! ```
//!
//! A state is freed only after its hashing has finished, the digests are copied back only
//! after the last layer's hashing, and on any early return the compute stream first waits for
//! everything queued on the hash stream (so nothing it reads or writes is freed under it).

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use std::sync::Arc;
use veritrace_commit::{Digest, HasherId, TraceGeometry};

use super::gpu::{cuda_err, Gpu};
use super::ops;
use crate::{ModelError, Result, Setup, Trace};

/// What a GPU run keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Copy every hidden state back to the host (the trace a prover opens cells from).
    pub download: bool,
    /// Hash each layer's cells on the device with this hasher and chunk size (BLAKE3 or
    /// SHA-256), so only 32-byte leaf digests leave the GPU.
    pub commit: Option<(HasherId, u32)>,
}

/// The result of a GPU run.
#[derive(Debug, Clone)]
pub struct GpuRun {
    /// The hidden states, when [`RunOptions::download`] was set.
    pub trace: Option<Trace>,
    /// Leaf digests of every cell, layer-major, when [`RunOptions::commit`] was set.
    pub leaves: Vec<Digest>,
    /// The Merkle root of [`GpuRun::leaves`] (built on the host from the digests).
    pub root: Option<Digest>,
}

/// An event recorded on `stream` now (its work so far).
fn record(stream: &Arc<CudaStream>) -> Result<CudaEvent> {
    stream
        .record_event(None)
        .map_err(|e| cuda_err("event record", e))
}

/// Makes `stream`'s later work wait for `event`.
fn wait(stream: &Arc<CudaStream>, event: &CudaEvent) -> Result<()> {
    stream.wait(event).map_err(|e| cuda_err("stream wait", e))
}

/// The leaf digests of a run being hashed on the GPU's hash stream.
struct DeviceCommit<'a> {
    gpu: &'a Gpu,
    hasher: HasherId,
    geometry: TraceGeometry,
    /// `num_cells · 32` bytes, layer-major.
    digests: CudaSlice<u8>,
    /// `hashed[l]`: the hash stream has finished with `h_l`.
    hashed: Vec<CudaEvent>,
}

impl<'a> DeviceCommit<'a> {
    /// Digests for `states` hidden states of `tokens × hidden` f32 in cells of `chunk` rows.
    fn new(
        gpu: &'a Gpu,
        (hasher, chunk): (HasherId, u32),
        states: usize,
        tokens: usize,
        hidden: usize,
    ) -> Result<Self> {
        ops::check_device_hasher(hasher)?;
        let geometry = TraceGeometry::new(
            states as u32,
            tokens as u32,
            hidden as u32,
            chunk,
            veritrace_commit::Dtype::F32,
        )
        .map_err(|e| ModelError::InvalidArgument(e.to_string()))?;
        let digests = gpu.zeros::<u8>(geometry.num_cells() as usize * 32)?;
        Ok(DeviceCommit {
            gpu,
            hasher,
            geometry,
            digests,
            hashed: Vec::with_capacity(states),
        })
    }

    /// Queues the hashing of `h_l` (`state`, just produced on the compute stream) on the hash
    /// stream.
    fn layer(&mut self, l: usize, state: &CudaSlice<f32>) -> Result<()> {
        let gpu = self.gpu;
        let written = record(&gpu.stream)?;
        wait(&gpu.hash_stream, &written)?;
        ops::leaf_digests(
            gpu,
            &gpu.hash_stream,
            state,
            l as u32,
            &self.geometry,
            self.hasher,
            &mut self.digests,
        )?;
        self.hashed.push(record(&gpu.hash_stream)?);
        Ok(())
    }

    /// Makes the compute stream wait until `h_l` has been hashed (before it frees `h_l`).
    fn release(&self, l: usize) -> Result<()> {
        match self.hashed.get(l) {
            Some(done) => wait(&self.gpu.stream, done),
            None => Ok(()),
        }
    }

    /// Waits for the last layer's hashing and returns the leaves and their root.
    fn finish(self) -> Result<(Vec<Digest>, Digest)> {
        if let Some(done) = self.hashed.last() {
            wait(&self.gpu.stream, done)?;
        }
        let bytes = self.gpu.download(&self.digests)?;
        let leaves: Vec<Digest> = bytes
            .chunks_exact(32)
            .map(|c| Digest(c.try_into().expect("32 bytes")))
            .collect();
        let root = veritrace_commit::root_of(self.hasher, &leaves)
            .map_err(|e| ModelError::InvalidArgument(e.to_string()))?;
        Ok((leaves, root))
    }
}

impl Drop for DeviceCommit<'_> {
    fn drop(&mut self) {
        // Runs before the digest buffer is freed, and (declared after the states) before they
        // are. Nothing to report from a drop: a failed join leaves a failed context, which the
        // next call on this GPU reports.
        let _ = self.gpu.stream.join(&self.gpu.hash_stream);
    }
}

/// Runs `h_0` (already on the device, `[tokens, hidden]`) through `layers` layers on the
/// GPU: `layer(i, x)` computes transformer layer `i` (0-based) from `x = h_i`; the setup's
/// skipped layer copies `h_{l-1}` and its reused layer applies the previous update again
/// ([`ops::reuse_update`]). Keeps what `options` asks for. The caller holds [`Gpu::lock`].
pub(crate) fn run_layers(
    gpu: &Gpu,
    setup: &Setup,
    h0: CudaSlice<f32>,
    (tokens, hidden): (usize, usize),
    layers: usize,
    options: RunOptions,
    mut layer: impl FnMut(usize, &CudaSlice<f32>) -> Result<CudaSlice<f32>>,
) -> Result<GpuRun> {
    let n = tokens * hidden;
    let mut layers_host = Vec::new();
    let mut states: Vec<CudaSlice<f32>> = Vec::with_capacity(layers + 1);
    states.push(h0);
    // Declared after `states`, so dropped (joining the streams) before they are freed.
    let mut commit = options
        .commit
        .map(|c| DeviceCommit::new(gpu, c, layers + 1, tokens, hidden))
        .transpose()?;
    for l in 0..=layers {
        if l > 0 {
            let next = if setup.skip == Some(l) {
                let mut y = gpu.zeros::<f32>(n)?;
                gpu.stream
                    .memcpy_dtod(&states[l - 1], &mut y)
                    .map_err(|e| cuda_err("copy", e))?;
                y
            } else if setup.reuse == Some(l) {
                ops::reuse_update(gpu, &states[l - 1], &states[l - 2], n, setup.precision)?
            } else {
                layer(l - 1, &states[l - 1])?
            };
            states.push(next);
        }
        if let Some(c) = commit.as_mut() {
            c.layer(l, &states[l])?;
        }
        if options.download {
            layers_host.push(gpu.download(&states[l])?);
        }
        if l >= 2 {
            // h_{l-2} is read by nothing after layer l (a reuse reads two layers back), and
            // is freed once its hashing has finished.
            if let Some(c) = &commit {
                c.release(l - 2)?;
            }
            states[l - 2] = gpu.zeros::<f32>(1)?;
        }
    }
    let (leaves, root) = match commit {
        Some(c) => {
            let (leaves, root) = c.finish()?;
            (leaves, Some(root))
        }
        None => {
            gpu.synchronize()?;
            (Vec::new(), None)
        }
    };
    let trace = options.download.then(|| Trace {
        tokens,
        hidden,
        layers: layers_host,
        keys: Vec::new(),
    });
    Ok(GpuRun {
        trace,
        leaves,
        root,
    })
}
