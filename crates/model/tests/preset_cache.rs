//! The preset cache (`veritrace_model::preset_cache`): the first use writes the file, the next
//! loads it (the same model, bit for bit); a damaged file (a flipped value, a truncation,
//! garbage, a NaN, another shape, something that is not a file) is ignored and rewritten; no
//! directory means no cache; an unwritable directory still gives the model. Every test has its
//! own directory and passes it explicitly (`LlamaModel::preset_cached`), so no test depends on
//! the process environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use veritrace_model::preset_cache::{cache_dir_from, cache_file, known_digest};
use veritrace_model::{LlamaModel, ModelConfig, NamedTensor};

/// The seeded weights, built without any cache.
fn seeded(name: &str) -> LlamaModel {
    LlamaModel::new(ModelConfig::preset(name).unwrap()).unwrap()
}

fn same_tensors(a: &[NamedTensor], b: &[NamedTensor]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.0 == y.0
                && x.1 == y.1
                && x.2
                    .iter()
                    .map(|v| v.to_bits())
                    .eq(y.2.iter().map(|v| v.to_bits()))
        })
}

/// Asserts that `model` is preset `name` exactly (digest and every tensor's bits).
fn assert_is_preset(model: &LlamaModel, name: &str) {
    let want = seeded(name);
    assert_eq!(model.digest(), want.digest(), "{name}: digest");
    assert_eq!(model.digest(), known_digest(name).unwrap(), "{name}");
    assert_eq!(model.config(), want.config(), "{name}: config");
    assert!(
        same_tensors(
            &model.named_tensors().unwrap(),
            &want.named_tensors().unwrap()
        ),
        "{name}: tensors"
    );
}

#[cfg(unix)]
fn inode(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

/// Populates a fresh cache with `tiny` and returns (directory guard, file, its bytes).
fn populated() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let file = cache_file(dir.path(), "tiny").unwrap();
    assert!(!file.exists());
    let model = LlamaModel::preset_cached("tiny", Some(dir.path())).unwrap();
    assert_is_preset(&model, "tiny");
    let bytes = std::fs::read(&file).expect("the first use writes the cache file");
    (dir, file, bytes)
}

/// Only the cache file is left in its directory (no temporary file behind).
fn only_the_cache_file(file: &Path) {
    let names: Vec<OsString> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![file.file_name().unwrap().to_os_string()]);
}

#[test]
fn the_file_is_named_by_the_preset_and_its_known_digest() {
    let dir = Path::new("/some/cache");
    assert_eq!(
        cache_file(dir, "small").unwrap(),
        dir.join("presets").join(
            "small-1abd758535abd2113c6dae259ba6492552eff6d8febe3b3e55ce743362602fd4.safetensors"
        )
    );
    assert_eq!(cache_file(dir, "huge"), None);
    assert_eq!(known_digest("minilm"), None);
}

#[test]
fn first_use_writes_the_file_and_the_next_loads_it() {
    let (dir, file, bytes) = populated();
    only_the_cache_file(&file);
    // It is an ordinary safetensors checkpoint of the preset's weights.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), seeded("tiny").named_tensors().unwrap().len());
    #[cfg(unix)]
    let before = inode(&file);
    let model = LlamaModel::preset_cached("tiny", Some(dir.path())).unwrap();
    assert_is_preset(&model, "tiny");
    // Loaded, not rebuilt: a rebuild would have renamed a new file over it.
    #[cfg(unix)]
    assert_eq!(inode(&file), before, "the second use read the cache");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    // A generation from the cached model is the seeded model's.
    let prompt = [5u32, 9, 2, 7];
    let setup = veritrace_model::Setup::default();
    assert_eq!(
        model.generate(&setup, &prompt, 4, 4).unwrap(),
        seeded("tiny").generate(&setup, &prompt, 4, 4).unwrap()
    );
}

/// Replaces the cache file with `damaged`, then checks the preset is still the right model and
/// the file was rewritten to the good bytes.
fn survives(damaged: &[u8], what: &str) {
    let (dir, file, good) = populated();
    std::fs::write(&file, damaged).unwrap();
    let model = LlamaModel::preset_cached("tiny", Some(dir.path())).unwrap();
    assert_is_preset(&model, "tiny");
    assert_eq!(std::fs::read(&file).unwrap(), good, "{what}: rewritten");
    only_the_cache_file(&file);
}

/// The byte offset of the first data byte of `name` in a safetensors file.
fn data_offset(bytes: &[u8], name: &str) -> usize {
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(name).unwrap();
    // the view's data is a subslice of `bytes`
    let at = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
    assert!(at >= 8 + header);
    at
}

#[test]
fn a_flipped_value_is_detected_by_the_digest() {
    let (_, _, good) = populated();
    for name in [
        "model.embed_tokens.weight",
        "model.layers.3.mlp.down_proj.weight",
        "lm_head.weight",
    ] {
        let mut bad = good.clone();
        let at = data_offset(&bad, name) + 4 * 17;
        bad[at] ^= 0x01; // the lowest mantissa bit of one value: still finite
        survives(&bad, name);
    }
}

#[test]
fn a_non_finite_value_is_refused() {
    let (_, _, good) = populated();
    let mut bad = good.clone();
    let at = data_offset(&bad, "model.norm.weight");
    bad[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    survives(&bad, "NaN");
}

#[test]
fn truncated_and_garbage_files_are_ignored() {
    let (_, _, good) = populated();
    for len in [0, 4, 8, 100, good.len() / 2, good.len() - 1] {
        survives(&good[..len], &format!("truncated to {len} bytes"));
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 64]);
    survives(&longer, "trailing bytes");
    let garbage: Vec<u8> = (0..good.len() as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    survives(&garbage, "garbage");
    // a header length far past the end
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend_from_slice(&good[8..]);
    survives(&huge, "header length");
}

#[test]
fn other_shapes_names_or_dtypes_are_refused() {
    let model = seeded("tiny");
    let tensors = model.named_tensors().unwrap();
    let write = |tensors: &[(String, Vec<usize>, Vec<u8>, safetensors::Dtype)]| -> Vec<u8> {
        let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = tensors
            .iter()
            .map(|(n, s, b, d)| {
                (
                    n.as_str(),
                    safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                )
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let raw: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect(),
                safetensors::Dtype::F32,
            )
        })
        .collect();
    // the same values, the embedding transposed in shape
    let mut transposed = raw.clone();
    transposed[0].1.reverse();
    survives(&write(&transposed), "another shape");
    // a tensor renamed
    let mut renamed = raw.clone();
    renamed[1].0 = "model.layers.0.input_layernorm.gain".into();
    survives(&write(&renamed), "a renamed tensor");
    // a tensor missing, and one too many
    survives(&write(&raw[1..]), "a missing tensor");
    let mut extra = raw.clone();
    extra.push(("extra".into(), vec![1], vec![0; 4], safetensors::Dtype::F32));
    survives(&write(&extra), "an extra tensor");
    // the same bytes as another dtype
    let mut as_i32 = raw.clone();
    as_i32[2].3 = safetensors::Dtype::I32;
    survives(&write(&as_i32), "another dtype");
    // the `small` preset's file under `tiny`'s name
    let small = seeded("small").named_tensors().unwrap();
    let small_raw: Vec<_> = small
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                d.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                safetensors::Dtype::F32,
            )
        })
        .collect();
    survives(&write(&small_raw), "another preset's weights");
}

#[test]
fn a_directory_in_place_of_the_file_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let file = cache_file(dir.path(), "tiny").unwrap();
    std::fs::create_dir_all(&file).unwrap();
    let model = LlamaModel::preset_cached("tiny", Some(dir.path())).unwrap();
    assert_is_preset(&model, "tiny");
    assert!(file.is_dir(), "never replaced");
}

#[test]
fn no_directory_means_no_cache() {
    // `off` and empty turn the cache off, whatever else is set
    let some = |s: &str| Some(OsString::from(s));
    for off in ["off", ""] {
        assert_eq!(
            cache_dir_from(some(off), some("/xdg"), some("/home/u")),
            None
        );
    }
    assert_eq!(
        cache_dir_from(some("/c"), some("/xdg"), some("/home/u")),
        Some(PathBuf::from("/c"))
    );
    assert_eq!(
        cache_dir_from(None, some("/xdg"), some("/home/u")),
        Some(PathBuf::from("/xdg/veritrace"))
    );
    // a relative XDG_CACHE_HOME is invalid (the XDG rule) and ignored
    for xdg in [None, some("relative"), some("")] {
        assert_eq!(
            cache_dir_from(None, xdg, some("/home/u")),
            Some(PathBuf::from("/home/u/.cache/veritrace"))
        );
    }
    assert_eq!(cache_dir_from(None, None, some("")), None);
    assert_eq!(cache_dir_from(None, None, None), None);
    // No directory: the seeded model, nothing written (the process's own directory is untouched
    // too: nothing is written relative to it).
    let model = LlamaModel::preset_cached("tiny", None).unwrap();
    assert_is_preset(&model, "tiny");
}

#[test]
fn an_unwritable_directory_still_gives_the_model() {
    // A regular file where the cache directory should be: no directory can be created under it
    // (whatever the user's privileges, root's included).
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let model = LlamaModel::preset_cached("tiny", Some(&blocker)).unwrap();
    assert_is_preset(&model, "tiny");
    assert_eq!(std::fs::read(&blocker).unwrap(), b"x");
    // A read-only directory (for a user without the privilege to write anyway).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let model = LlamaModel::preset_cached("tiny", Some(&ro)).unwrap();
        assert_is_preset(&model, "tiny");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn unknown_presets_are_refused_with_or_without_a_cache() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        LlamaModel::preset_cached("huge", Some(dir.path())),
        Err(veritrace_model::ModelError::UnknownPreset(_))
    ));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
