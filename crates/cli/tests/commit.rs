//! End-to-end tests of `veritrace commit`: the built binary run on safetensors files written to a
//! temporary directory.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use tempfile::TempDir;
use veritrace_commit::{commit_trace, Dtype, HasherId, TraceGeometry};

/// One tensor to write: name, dtype, shape, raw bytes.
struct T {
    name: String,
    dtype: StDtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn elem_size(dtype: StDtype) -> usize {
    dtype.bitsize() / 8
}

/// Deterministic pseudo-random bytes (xorshift64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn tensor(name: &str, dtype: StDtype, shape: &[usize], seed: u64) -> T {
    let len = shape.iter().product::<usize>() * elem_size(dtype);
    T {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        bytes: noise(seed, len),
    }
}

/// `layers` tensors `h.0 …` of one dtype and shape.
fn trace(layers: usize, dtype: StDtype, tokens: usize, hidden: usize) -> Vec<T> {
    (0..layers)
        .map(|l| tensor(&format!("h.{l}"), dtype, &[tokens, hidden], l as u64 + 1))
        .collect()
}

fn serialize(tensors: &[T]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

struct Dir(TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    fn write_bytes(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn write(&self, name: &str, tensors: &[T]) -> PathBuf {
        self.write_bytes(name, &serialize(tensors))
    }

    /// A file with a hand-written JSON header followed by `data`.
    fn write_raw(&self, name: &str, header: &str, data: &[u8]) -> PathBuf {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        self.write_bytes(name, &bytes)
    }
}

mod common;

use common::{veritrace, Output};

fn commit(path: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["commit", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    veritrace(&args)
}

/// Runs `commit --json`, checks success, returns the parsed object.
fn commit_json(path: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let o = commit(path, &args);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    serde_json::from_str(o.stdout.trim()).unwrap()
}

/// The root veritrace-commit computes for the same tensors.
fn expected_root(tensors: &[T], dtype: Dtype, chunk: u32, hasher: HasherId) -> String {
    let layers: Vec<&[u8]> = tensors.iter().map(|t| t.bytes.as_slice()).collect();
    let shape = &tensors[0].shape;
    let g = TraceGeometry::new(
        layers.len() as u32,
        shape[0] as u32,
        shape[1] as u32,
        chunk,
        dtype,
    )
    .unwrap();
    commit_trace(hasher, &g, &layers).unwrap().root().to_hex()
}

/// Asserts exit code 2 and an `error:` message containing every needle.
fn assert_refused(o: &Output, needles: &[&str]) {
    assert_eq!(o.code, 2, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert!(o.stderr.starts_with("error:"), "stderr: {}", o.stderr);
    for n in needles {
        assert!(o.stderr.contains(n), "{n:?} not in stderr: {}", o.stderr);
    }
    assert!(o.stdout.is_empty(), "stdout: {}", o.stdout);
}

#[test]
fn f32_root_matches_the_library_for_blake3_and_sha256() {
    let dir = Dir::new();
    // 50 tokens with chunk 16: the last cell of each layer holds 2 rows.
    let t = trace(4, StDtype::F32, 50, 24);
    let path = dir.write("t.safetensors", &t);
    for hasher in [HasherId::Blake3, HasherId::Sha256] {
        let v = commit_json(&path, &["--hasher", hasher.name(), "--chunk", "16"]);
        assert_eq!(v["root"], expected_root(&t, Dtype::F32, 16, hasher));
        assert_eq!(v["hasher"], hasher.name());
    }
}

#[test]
fn poseidon_on_a_tiny_trace() {
    let dir = Dir::new();
    let t = trace(2, StDtype::F32, 3, 4);
    let path = dir.write("t.safetensors", &t);
    let v = commit_json(&path, &["--hasher", "poseidon", "--chunk", "2"]);
    assert_eq!(
        v["root"],
        expected_root(&t, Dtype::F32, 2, HasherId::Poseidon)
    );
    assert_eq!(v["cells"], 4);
}

#[test]
fn text_output_names_root_hasher_geometry_cells_and_file() {
    let dir = Dir::new();
    let t = trace(3, StDtype::F32, 70, 8);
    let path = dir.write("t.safetensors", &t);
    let o = commit(&path, &[]);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let root = expected_root(&t, Dtype::F32, 32, HasherId::Blake3);
    assert!(
        o.stdout.contains(&format!("root      {root}")),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("hasher    blake3"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains("3 layers x 70 tokens x 8 hidden, chunk 32 tokens, dtype f32"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("cells     9 (3 per layer)"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains(path.to_str().unwrap()), "{}", o.stdout);
}

#[test]
fn json_output_has_every_field() {
    let dir = Dir::new();
    let t = trace(5, StDtype::F32, 64, 16);
    let path = dir.write("t.safetensors", &t);
    let v = commit_json(&path, &["--chunk", "10"]);
    assert_eq!(
        v["root"],
        expected_root(&t, Dtype::F32, 10, HasherId::Blake3)
    );
    assert_eq!(v["hasher"], "blake3");
    assert_eq!(
        v["geometry"],
        serde_json::json!({"layers": 5, "tokens": 64, "hidden": 16, "chunk": 10, "dtype": "f32"})
    );
    assert_eq!(v["cells"], 35);
    assert_eq!(v["file"], path.to_str().unwrap());
}

#[test]
fn f16_bf16_and_i8_traces_are_committed_as_stored() {
    let dir = Dir::new();
    for (st, dtype) in [
        (StDtype::F16, Dtype::F16),
        (StDtype::BF16, Dtype::Bf16),
        (StDtype::I8, Dtype::I8),
    ] {
        let t = trace(3, st, 9, 6);
        let path = dir.write(&format!("{dtype}.safetensors"), &t);
        let v = commit_json(&path, &["--chunk", "4"]);
        assert_eq!(
            v["root"],
            expected_root(&t, dtype, 4, HasherId::Blake3),
            "{dtype}"
        );
        assert_eq!(v["geometry"]["dtype"], dtype.name());
    }
}

#[test]
fn other_tensors_are_ignored() {
    let dir = Dir::new();
    let t = trace(3, StDtype::F32, 8, 4);
    let mut with_extras = trace(3, StDtype::F32, 8, 4);
    with_extras.push(tensor("k.1", StDtype::F64, &[2, 3, 4], 99));
    with_extras.push(tensor("attn_keys", StDtype::I32, &[0], 98));
    with_extras.push(tensor("h", StDtype::U8, &[5], 97));
    let a = commit_json(&dir.write("a.safetensors", &t), &[]);
    let b = commit_json(&dir.write("b.safetensors", &with_extras), &[]);
    assert_eq!(a["root"], b["root"]);
    assert_eq!(b["geometry"]["layers"], 3);
}

#[test]
fn layer_order_comes_from_names_not_file_order() {
    // Eleven layers: name order (h.1, h.10, h.2, ...) differs from numeric order.
    let dir = Dir::new();
    let t = trace(11, StDtype::F32, 4, 2);
    let v = commit_json(&dir.write("t.safetensors", &t), &["--chunk", "3"]);
    assert_eq!(
        v["root"],
        expected_root(&t, Dtype::F32, 3, HasherId::Blake3)
    );
}

#[test]
fn root_changes_when_one_byte_changes() {
    let dir = Dir::new();
    let t = trace(3, StDtype::F32, 10, 4);
    let path = dir.write("t.safetensors", &t);
    let before = commit_json(&path, &[]);
    let mut bytes = std::fs::read(&path).unwrap();
    // The last byte of the file is the last element byte of some layer.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let after = commit_json(&path, &[]);
    assert_ne!(before["root"], after["root"]);

    // And through the library: flipping one byte of layer 1 changes the expected root too.
    let mut changed = trace(3, StDtype::F32, 10, 4);
    changed[1].bytes[17] ^= 0x80;
    let path2 = dir.write("t2.safetensors", &changed);
    let v = commit_json(&path2, &[]);
    assert_eq!(
        v["root"],
        expected_root(&changed, Dtype::F32, 32, HasherId::Blake3)
    );
    assert_ne!(v["root"], before["root"]);
}

#[test]
fn chunk_larger_than_tokens_gives_one_cell_per_layer() {
    let dir = Dir::new();
    let t = trace(2, StDtype::F32, 5, 3);
    let v = commit_json(&dir.write("t.safetensors", &t), &["--chunk", "1000"]);
    assert_eq!(v["cells"], 2);
    assert_eq!(
        v["root"],
        expected_root(&t, Dtype::F32, 1000, HasherId::Blake3)
    );
}

// ---- refusals ----

#[test]
fn missing_file_and_directory_are_refused() {
    let dir = Dir::new();
    let missing = dir.0.path().join("nope.safetensors");
    assert_refused(&commit(&missing, &[]), &["cannot read", "nope.safetensors"]);
    assert_refused(&commit(dir.0.path(), &[]), &["not a regular file"]);
}

#[test]
fn garbage_empty_and_truncated_files_are_refused() {
    let dir = Dir::new();
    let empty = dir.write_bytes("empty.safetensors", b"");
    assert_refused(&commit(&empty, &[]), &["not a valid safetensors file"]);

    for (i, len) in [1usize, 7, 8, 9, 100, 4096].into_iter().enumerate() {
        let p = dir.write_bytes(&format!("garbage{i}"), &noise(i as u64 + 7, len));
        assert_refused(&commit(&p, &[]), &["not a valid safetensors file"]);
    }

    let good = serialize(&trace(3, StDtype::F32, 10, 4));
    for cut in [4, 8, 20, good.len() / 2, good.len() - 1] {
        let p = dir.write_bytes(&format!("cut{cut}"), &good[..cut]);
        assert_refused(&commit(&p, &[]), &["not a valid safetensors file"]);
    }
    let mut padded = good.clone();
    padded.push(0);
    let p = dir.write_bytes("padded", &padded);
    assert_refused(&commit(&p, &[]), &["not a valid safetensors file"]);
}

#[test]
fn absurd_offsets_are_refused_without_overflow() {
    let dir = Dir::new();
    let header = format!(
        r#"{{"h.0":{{"dtype":"U8","shape":[{m}],"data_offsets":[0,{m}]}}}}"#,
        m = usize::MAX
    );
    let p = dir.write_raw("huge", &header, &[0; 16]);
    assert_refused(&commit(&p, &[]), &["not a valid safetensors file"]);
    // Offsets that sum to just below usize::MAX: safetensors' own end-of-file check
    // (`end + 8 + header_len == file_len`) would overflow on them.
    let big = (1u64 << 61) - 1;
    let mut entries: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                r#""h.{i}":{{"dtype":"U8","shape":[{big}],"data_offsets":[{},{}]}}"#,
                i * big,
                (i + 1) * big
            )
        })
        .collect();
    entries.push(format!(
        r#""x":{{"dtype":"U8","shape":[4],"data_offsets":[{},{}]}}"#,
        8 * big,
        8 * big + 4
    ));
    assert_eq!(8 * big + 4, u64::MAX - 3);
    let p = dir.write_raw("overflow", &format!("{{{}}}", entries.join(",")), &[0; 16]);
    assert_refused(
        &commit(&p, &[]),
        &["not a valid safetensors file", "truncated"],
    );

    let header = r#"{"h.0":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
    let p = dir.write_raw("bad-json", &header[..header.len() - 1], &[0; 16]);
    assert_refused(&commit(&p, &[]), &["not a valid safetensors file"]);
    let p = dir.write_raw("bad-dtype", &header.replace("F32", "F33"), &[0; 16]);
    assert_refused(&commit(&p, &[]), &["not a valid safetensors file"]);
}

#[test]
fn mutated_files_never_panic() {
    let dir = Dir::new();
    let good = serialize(&trace(3, StDtype::F16, 6, 4));
    let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let path = dir.0.path().join("m");
    for i in 0..200u64 {
        let mut bytes = good.clone();
        let r = noise(i + 1000, 3);
        let pos = (usize::from(r[0]) << 8 | usize::from(r[1])) % header_end;
        bytes[pos] = r[2];
        std::fs::write(&path, &bytes).unwrap();
        let o = commit(&path, &[]);
        assert!(o.code == 0 || o.code == 2, "code {}: {}", o.code, o.stderr);
        if o.code == 2 {
            assert!(o.stderr.starts_with("error:"), "{}", o.stderr);
        }
    }
}

#[test]
fn no_layer_tensors_is_refused() {
    let dir = Dir::new();
    let p = dir.write(
        "t",
        &[
            tensor("k.0", StDtype::F32, &[2, 2], 1),
            tensor("x", StDtype::F32, &[2], 2),
        ],
    );
    assert_refused(&commit(&p, &[]), &["no layer tensors", "\"k.0\"", "\"x\""]);
    let p = dir.write("empty", &[]);
    assert_refused(&commit(&p, &[]), &["no layer tensors", "no tensors at all"]);
}

#[test]
fn missing_layers_are_named() {
    let dir = Dir::new();
    let mut t = trace(3, StDtype::F32, 4, 2);
    t.remove(1);
    assert_refused(
        &commit(&dir.write("gap", &t), &[]),
        &["h.1 is missing", "h.2"],
    );
    let mut t = trace(2, StDtype::F32, 4, 2);
    t.remove(0);
    assert_refused(&commit(&dir.write("no0", &t), &[]), &["h.0 is missing"]);
}

#[test]
fn bad_layer_names_are_refused() {
    let dir = Dir::new();
    for (bad, why) in [
        ("h.x", "not a decimal integer"),
        ("h.01", "leading zero"),
        ("h.00", "leading zero"),
        ("h.", "empty"),
        ("h.-1", "not a decimal integer"),
        ("h.+1", "not a decimal integer"),
        ("h.1.5", "not a decimal integer"),
        ("h. 1", "not a decimal integer"),
        ("h.99999999999", "too large"),
    ] {
        let mut t = trace(2, StDtype::F32, 4, 2);
        t.push(tensor(bad, StDtype::F32, &[4, 2], 5));
        let o = commit(&dir.write("t", &t), &[]);
        assert_refused(&o, &[&format!("{bad:?}"), why]);
    }
}

#[test]
fn non_2d_tensors_are_refused() {
    let dir = Dir::new();
    let mut t = trace(3, StDtype::F32, 4, 2);
    t[2] = tensor("h.2", StDtype::F32, &[4, 2, 1], 3);
    assert_refused(
        &commit(&dir.write("3d", &t), &[]),
        &["h.2", "[4, 2, 1]", "2-D"],
    );
    let t = vec![tensor("h.0", StDtype::F32, &[8], 3)];
    assert_refused(&commit(&dir.write("1d", &t), &[]), &["h.0", "[8]", "2-D"]);
    let t = vec![tensor("h.0", StDtype::F32, &[], 3)];
    assert_refused(&commit(&dir.write("0d", &t), &[]), &["h.0", "[]", "2-D"]);
}

#[test]
fn mismatched_shapes_and_dtypes_are_named() {
    let dir = Dir::new();
    let mut t = trace(3, StDtype::F32, 4, 2);
    t[2] = tensor("h.2", StDtype::F32, &[4, 3], 3);
    assert_refused(
        &commit(&dir.write("shape", &t), &[]),
        &["h.2", "[4, 3]", "[4, 2]", "same shape"],
    );
    let mut t = trace(3, StDtype::F32, 4, 2);
    t[1] = tensor("h.1", StDtype::F16, &[4, 2], 3);
    assert_refused(
        &commit(&dir.write("dtype", &t), &[]),
        &["h.1", "F16", "F32", "same dtype"],
    );
}

#[test]
fn unsupported_dtypes_are_named_with_the_supported_ones() {
    let dir = Dir::new();
    for dtype in [StDtype::F64, StDtype::I32, StDtype::U8, StDtype::BOOL] {
        let t = trace(2, dtype, 4, 2);
        let o = commit(&dir.write("t", &t), &[]);
        assert_refused(
            &o,
            &[
                "h.0",
                &dtype.to_string(),
                "not supported",
                "F32, F16, BF16, I8",
            ],
        );
    }
    // Only a later layer has an unsupported dtype.
    let mut t = trace(2, StDtype::F32, 4, 2);
    t[1] = tensor("h.1", StDtype::F64, &[4, 2], 3);
    assert_refused(
        &commit(&dir.write("t", &t), &[]),
        &["h.1", "F64", "not supported"],
    );
}

#[test]
fn zero_sized_dimensions_are_refused() {
    let dir = Dir::new();
    for shape in [[0usize, 4], [4, 0], [0, 0]] {
        let t = vec![
            tensor("h.0", StDtype::F32, &shape, 1),
            tensor("h.1", StDtype::F32, &shape, 2),
        ];
        let o = commit(&dir.write("t", &t), &[]);
        assert_refused(&o, &["h.0", &format!("{shape:?}"), "at least one token"]);
    }
}

#[test]
fn bad_options_are_usage_errors() {
    let dir = Dir::new();
    let p = dir.write("t", &trace(2, StDtype::F32, 4, 2));
    assert_refused(&commit(&p, &["--chunk", "0"]), &["--chunk"]);
    assert_refused(&commit(&p, &["--chunk=-3"]), &["--chunk"]);
    assert_refused(&commit(&p, &["--chunk", "x"]), &["--chunk"]);
    assert_refused(
        &commit(&p, &["--hasher", "md5"]),
        &["md5", "blake3, sha256, poseidon"],
    );
    assert_refused(&veritrace(&["commit"]), &["TRACE.safetensors"]);
    assert_refused(&veritrace(&["frobnicate"]), &["frobnicate"]);
}

#[test]
fn help_explains_the_file_format() {
    for args in [&["--help"][..], &["commit", "--help"][..]] {
        let o = veritrace(args);
        assert_eq!(o.code, 0);
        assert!(o.stdout.contains("h.0"), "{}", o.stdout);
        assert!(o.stdout.contains("F32, F16, BF16 or I8"), "{}", o.stdout);
    }
}
