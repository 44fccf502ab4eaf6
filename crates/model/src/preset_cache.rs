//! A cache of the seeded presets' weights, so that a process naming `tiny` or `small` reads
//! them from a file instead of drawing them from the ChaCha20 stream again.
//!
//! [`crate::LlamaModel::preset`] looks in [`cache_dir`] for the file [`cache_file`]
//! (`presets/<name>-<known digest>.safetensors`), loads it through
//! [`crate::LlamaModel::from_tensors`] (which checks every name, shape and value and computes the
//! model digest) and uses it **only if** that digest is the preset's known digest
//! ([`PRESET_DIGESTS`], the known answers of `crates/model/tests/forward.rs`). Anything else — no
//! file, an unreadable, truncated or rewritten one, other values — falls back silently to the
//! seeded weights, which are then written to the cache atomically (a temporary file in the same
//! directory, renamed over the old one). A cache therefore never changes which model is used,
//! and a failure to write it (a read-only directory, a full disk) costs only the time it saves.
//!
//! The directory is `$VERITRACE_CACHE_DIR` if set, else `$XDG_CACHE_HOME/veritrace`, else
//! `$HOME/.cache/veritrace`; `VERITRACE_CACHE_DIR=off` (or empty) turns the cache off. The
//! values are read with positioned reads into the tensors' own buffers (so the file's pages do
//! not count as the process's memory beside them); the header is validated through a read-only
//! mapping, so as for every mapped file here a cache file must not be truncated in place while a
//! process opens it (veritrace itself only ever replaces it by renaming).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use veritrace_commit::Digest;

use crate::files::{self, TempOutput};
use crate::llama::{weight_elements, write_weights};
use crate::{LlamaModel, ModelConfig, NamedTensor};

/// The environment variable naming the cache directory (`off` or empty: no cache).
pub const CACHE_ENV: &str = "VERITRACE_CACHE_DIR";

/// The presets' model digests (hex): known answers, asserted against the seeded build in
/// `crates/model/tests/forward.rs`. A cached file is used only if its digest is the one here.
pub const PRESET_DIGESTS: [(&str, &str); 2] = [
    (
        "tiny",
        "ad06166cfcf8885c9f17ac2cbe1583c95f5ac57ded9525c8737c0cf638b1e81d",
    ),
    (
        "small",
        "1abd758535abd2113c6dae259ba6492552eff6d8febe3b3e55ce743362602fd4",
    ),
];

/// The known model digest of preset `name` ([`PRESET_DIGESTS`]), `None` for another name.
pub fn known_digest(name: &str) -> Option<Digest> {
    PRESET_DIGESTS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, hex)| Digest::from_hex(hex).ok())
}

/// The cache directory from the environment: [`cache_dir_from`] of `VERITRACE_CACHE_DIR`,
/// `XDG_CACHE_HOME` and `HOME`.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(
        std::env::var_os(CACHE_ENV),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

/// The cache directory for these values of `VERITRACE_CACHE_DIR`, `XDG_CACHE_HOME` and `HOME`:
/// the first, unless it is `off` or empty (then `None`: no cache); else `XDG_CACHE_HOME/veritrace`
/// if that is an absolute path (the XDG rule); else `HOME/.cache/veritrace` if `HOME` is set
/// and not empty; else `None`.
pub fn cache_dir_from(
    veritrace: Option<OsString>,
    xdg_cache_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    if let Some(dir) = veritrace {
        if dir.is_empty() || dir == "off" {
            return None;
        }
        return Some(PathBuf::from(dir));
    }
    if let Some(xdg) = xdg_cache_home.map(PathBuf::from) {
        if xdg.is_absolute() {
            return Some(xdg.join("veritrace"));
        }
    }
    home.filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".cache").join("veritrace"))
}

/// The cache file of preset `name` in `dir`: `dir/presets/<name>-<known digest hex>.safetensors`
/// (`None` for a name without a known digest).
pub fn cache_file(dir: &Path, name: &str) -> Option<PathBuf> {
    let digest = known_digest(name)?;
    Some(
        dir.join("presets")
            .join(format!("{name}-{}.safetensors", digest.to_hex())),
    )
}

/// The model in the cache file `path`, if it is a safetensors file of F32 tensors that
/// [`LlamaModel::from_tensors`] accepts for `config` and its digest is `known`; `None` for
/// anything else (never an error, never a panic).
pub(crate) fn load(path: &Path, config: &ModelConfig, known: Digest) -> Option<LlamaModel> {
    use rayon::prelude::*;
    let data_bytes = weight_elements(config).checked_mul(4)?;
    let limit = data_bytes.checked_add(8 + files::MAX_HEADER_BYTES)?;
    let (file, size) = files::open_regular(path).ok()?;
    if size < data_bytes || size > limit {
        return None;
    }
    // Mapped for the header's validation (only its pages are touched); the values are read into
    // their own buffers with positioned reads, so the file's pages never count as this process's
    // memory beside the copy.
    let map = crate::trace_file::map_file(&file).ok()?;
    let (header, metadata) = safetensors::SafeTensors::read_metadata(&map).ok()?;
    let base = 8 + header as u64;
    let tensors: Vec<NamedTensor> = metadata
        .tensors()
        .into_par_iter()
        .map(|(name, info)| {
            if info.dtype != safetensors::Dtype::F32 {
                return None;
            }
            let (start, end) = info.data_offsets;
            let n = (end - start) / 4;
            let mut values = vec![0f32; n];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut values);
            if bytes.len() != end - start {
                return None;
            }
            read_at(&file, &map, bytes, base + start as u64)?;
            if cfg!(target_endian = "big") {
                for v in &mut values {
                    *v = f32::from_bits(u32::from_le(v.to_bits()));
                }
            }
            Some((name, info.shape.clone(), values))
        })
        .collect::<Option<_>>()?;
    drop(map);
    let model = LlamaModel::from_tensors(config.clone(), tensors).ok()?;
    (model.digest() == known).then_some(model)
}

/// Fills `out` from byte `offset` of the file: a positioned read where there is one, else a
/// copy from the mapping.
fn read_at(file: &std::fs::File, map: &[u8], out: &mut [u8], offset: u64) -> Option<()> {
    #[cfg(unix)]
    {
        let _ = map;
        use std::os::unix::fs::FileExt;
        file.read_exact_at(out, offset).ok()
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        let start = usize::try_from(offset).ok()?;
        out.copy_from_slice(map.get(start..start.checked_add(out.len())?)?);
        Some(())
    }
}

/// The seeded `tensors` written to a temporary file beside the cache file `path` (its
/// directories created), ready to be put in place with [`TempOutput::persist`]; `None` if that
/// cannot be done (the cache is then simply not written).
pub(crate) fn stage(path: &Path, tensors: &[NamedTensor]) -> Option<TempOutput> {
    std::fs::create_dir_all(path.parent()?).ok()?;
    let tmp = TempOutput::beside(path).ok()?;
    write_weights(tensors, tmp.path()).ok()?;
    Some(tmp)
}
