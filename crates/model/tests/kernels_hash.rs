//! kernels/leaf_hash.cu run on the CPU through the host shim: the BLAKE3 and SHA-256 leaf digests
//! the kernels compute for a layer's cells equal `TraceGeometry::hash_cell` bit for bit, and the
//! root built from them over all layers equals `commit_trace`'s.
//!
//! The geometries cover preimages (`0x00 || header || elements`, 36 + element bytes) shorter than
//! one 64-byte block, of exactly 64, 1024 and 16384 bytes, one byte past a block or a BLAKE3
//! chunk, BLAKE3 chunk counts that are and are not powers of two (1 to 18), cells above 16 KiB,
//! element byte counts that are not multiples of 4, cells whose elements are not 4-aligned in
//! memory (bf16/f16 with odd hidden, and layers placed 1 to 3 bytes past an aligned address),
//! a shorter last cell, a chunk larger than the layer, and layer and chunk indices of more than
//! one byte.

mod host;

use std::collections::BTreeSet;
use std::path::Path;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use veritrace_commit::{
    commit_trace, root_of, CellId, Digest, Dtype, HasherId, TraceGeometry, CELL_HEADER_LEN,
};

struct Driver {
    _dir: tempfile::TempDir,
    exe: std::path::PathBuf,
}

fn driver() -> Option<Driver> {
    host::build("hash_driver.cpp").map(|(dir, exe)| Driver { _dir: dir, exe })
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn digests(bytes: &[u8]) -> Vec<Digest> {
    assert_eq!(bytes.len() % 32, 0);
    bytes
        .chunks_exact(32)
        .map(|c| Digest(c.try_into().unwrap()))
        .collect()
}

/// The kernels' BLAKE3 and SHA-256 leaf digests of every cell of layer `layer` (element bytes
/// `bytes`), with the layer `shift` bytes past a 4-aligned address and `block` threads a block.
fn kernel_leaves(
    d: &Driver,
    g: &TraceGeometry,
    layer: u32,
    bytes: &[u8],
    shift: u32,
    block: u32,
) -> (Vec<Digest>, Vec<Digest>) {
    let dir = tempfile::tempdir().unwrap();
    let params = dir.path().join("params");
    let input = dir.path().join("layer");
    let out_b3 = dir.path().join("blake3");
    let out_sha = dir.path().join("sha256");
    std::fs::write(
        &params,
        format!(
            "{layer} {} {} {} {} {} {shift} {block}\n",
            g.tokens,
            g.hidden,
            g.chunk,
            g.dtype.size(),
            g.dtype.code()
        ),
    )
    .unwrap();
    std::fs::write(&input, bytes).unwrap();
    let args: [&Path; 4] = [&params, &input, &out_b3, &out_sha];
    host::run(&d.exe, &args);
    let b3 = digests(&std::fs::read(&out_b3).unwrap());
    let sha = digests(&std::fs::read(&out_sha).unwrap());
    let cells = g.chunks_per_layer() as usize;
    assert_eq!(b3.len(), cells, "BLAKE3 digests of {g:?}");
    assert_eq!(sha.len(), cells, "SHA-256 digests of {g:?}");
    (b3, sha)
}

/// One layer to hash: geometry (with `layers` = layer index + 1), layer index, placement.
struct Case {
    tokens: u32,
    hidden: u32,
    chunk: u32,
    dtype: Dtype,
    layer: u32,
    shift: u32,
    block: u32,
}

const fn case(tokens: u32, hidden: u32, chunk: u32, dtype: Dtype, layer: u32) -> Case {
    Case {
        tokens,
        hidden,
        chunk,
        dtype,
        layer,
        shift: 0,
        block: 32,
    }
}

const fn placed(c: Case, shift: u32, block: u32) -> Case {
    Case { shift, block, ..c }
}

const CASES: &[Case] = &[
    // Shorter than one block: 38, 60 and 48 bytes (last cell of one row).
    case(1, 1, 1, Dtype::F16, 0),
    case(5, 3, 2, Dtype::F32, 1),
    // Exactly one block (28 element bytes), one byte more (29), i8 at odd lengths.
    case(4, 7, 1, Dtype::F32, 2),
    case(3, 29, 1, Dtype::I8, 3),
    // Exactly one BLAKE3 chunk (988 element bytes), 1024 element bytes, one byte past a chunk.
    case(6, 247, 1, Dtype::F32, 0),
    case(2, 256, 1, Dtype::F32, 0),
    case(3, 989, 1, Dtype::I8, 7),
    // bf16 with odd hidden: every other cell starts 2 bytes past a word (2 chunks each).
    case(7, 511, 1, Dtype::Bf16, 4),
    // Several KiB: 7 chunks and a last cell of 3; 5 chunks (f32, tokens a multiple of chunk).
    case(10, 1023, 3, Dtype::Bf16, 5),
    case(9, 384, 3, Dtype::F32, 6),
    // Exactly 16 chunks (16384 bytes); 17 chunks and a last cell of 9; 18 and a last of 13.
    case(3, 4087, 1, Dtype::F32, 1),
    case(5, 4100, 2, Dtype::F16, 2),
    case(7, 1100, 4, Dtype::F32, 3),
    // Above 16 KiB with a misaligned last cell: 13 chunks, then 5 chunks at byte offset 12294.
    case(4, 2049, 3, Dtype::Bf16, 9),
    // A chunk longer than the layer: one cell of 3 rows; one cell of 6 chunks.
    case(3, 50, 8, Dtype::Bf16, 0),
    case(2, 700, 5, Dtype::F32, 0),
    // Many short cells, f16 with odd hidden.
    case(37, 5, 2, Dtype::F16, 11),
    // A cell of 313 chunks (nine tree levels, odd nodes carried on several), merged by blocks
    // of 128 and of 3 threads (several pairs per thread on the lower levels).
    case(2, 40000, 2, Dtype::F32, 1),
    placed(case(2, 40000, 2, Dtype::F32, 1), 0, 3),
    // Layer and chunk indices of several bytes (header byte order).
    case(300, 1, 1, Dtype::I8, 0x0102_0304),
    // Layers 1 to 3 bytes past an aligned address, odd and other block sizes.
    placed(case(11, 333, 4, Dtype::F16, 8), 1, 7),
    placed(case(10, 1023, 3, Dtype::Bf16, 5), 2, 1),
    placed(case(7, 1100, 4, Dtype::F32, 3), 3, 128),
    placed(case(5, 3, 2, Dtype::F32, 1), 1, 64),
    placed(case(4, 2049, 3, Dtype::Bf16, 9), 3, 3),
    placed(case(6, 247, 1, Dtype::F32, 0), 2, 128),
];

fn preimage_len(g: &TraceGeometry, cell: CellId) -> usize {
    1 + CELL_HEADER_LEN + g.cell_byte_range(cell).unwrap().len()
}

#[test]
fn the_cases_cover_the_edges_of_both_hashes() {
    let mut lens = BTreeSet::new();
    let mut misaligned = false;
    for c in CASES {
        let g = TraceGeometry::new(c.layer + 1, c.tokens, c.hidden, c.chunk, c.dtype).unwrap();
        for chunk in 0..g.chunks_per_layer() {
            let cell = CellId {
                layer: c.layer,
                chunk,
            };
            lens.insert(preimage_len(&g, cell));
            let start = g.cell_byte_range(cell).unwrap().start + c.shift as usize;
            misaligned |= !start.is_multiple_of(4);
        }
    }
    let chunks: BTreeSet<usize> = lens.iter().map(|n| n.div_ceil(1024)).collect();
    for n in [64, 1024, 1025, 16384] {
        assert!(lens.contains(&n), "a preimage of {n} bytes");
    }
    assert!(
        lens.iter().any(|&n| n < 64),
        "a preimage shorter than a block"
    );
    assert!(
        lens.iter().any(|&n| n > 16 * 1024 + 1024),
        "a cell above 16 KiB"
    );
    assert!(
        lens.iter().any(|&n| !n.is_multiple_of(4)),
        "a length not a multiple of 4"
    );
    for k in [1, 2, 3, 5, 7, 9, 13, 16, 17, 18] {
        assert!(chunks.contains(&k), "a cell of {k} BLAKE3 chunks");
    }
    assert!(misaligned, "a cell whose elements are not 4-aligned");
}

#[test]
fn leaf_digests_equal_hash_cell_for_blake3_and_sha256() {
    let Some(d) = driver() else { return };
    for (i, c) in CASES.iter().enumerate() {
        let g = TraceGeometry::new(c.layer + 1, c.tokens, c.hidden, c.chunk, c.dtype).unwrap();
        let bytes = random_bytes(g.layer_byte_len(), 1000 + i as u64);
        let (b3, sha) = kernel_leaves(&d, &g, c.layer, &bytes, c.shift, c.block);
        for chunk in 0..g.chunks_per_layer() {
            let cell = CellId {
                layer: c.layer,
                chunk,
            };
            let elements = &bytes[g.cell_byte_range(cell).unwrap()];
            let what = format!(
                "case {i} ({} x {} {} chunk {} layer {} shift {} block {}), cell {chunk} of {} bytes",
                c.tokens,
                c.hidden,
                c.dtype,
                c.chunk,
                c.layer,
                c.shift,
                c.block,
                preimage_len(&g, cell)
            );
            let want = g.hash_cell(&HasherId::Blake3, cell, elements).unwrap();
            assert_eq!(b3[chunk as usize], want, "BLAKE3, {what}");
            let want = g.hash_cell(&HasherId::Sha256, cell, elements).unwrap();
            assert_eq!(sha[chunk as usize], want, "SHA-256, {what}");
        }
    }
}

#[test]
fn roots_from_kernel_leaves_equal_commit_trace() {
    let Some(d) = driver() else { return };
    let geometries = [
        // The spec's cell-vector geometry (section 12.5).
        TraceGeometry::new(3, 5, 4, 2, Dtype::F32).unwrap(),
        // bf16 with odd hidden, a short last cell.
        TraceGeometry::new(4, 13, 33, 4, Dtype::Bf16).unwrap(),
        // Cells of 9 BLAKE3 chunks and a last cell of 3.
        TraceGeometry::new(3, 10, 700, 3, Dtype::F32).unwrap(),
        // f16 with odd hidden, many cells, odd layer byte length (layer l is then not 4-aligned
        // inside one trace-wide buffer: placed at shift l * len mod 4).
        TraceGeometry::new(5, 21, 45, 2, Dtype::F16).unwrap(),
    ];
    for (gi, g) in geometries.iter().enumerate() {
        let layers: Vec<Vec<u8>> = (0..g.layers)
            .map(|l| random_bytes(g.layer_byte_len(), 7000 + 100 * gi as u64 + u64::from(l)))
            .collect();
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        let mut b3 = Vec::new();
        let mut sha = Vec::new();
        for (l, bytes) in layers.iter().enumerate() {
            let shift = (l * g.layer_byte_len() % 4) as u32;
            let (x, y) = kernel_leaves(&d, g, l as u32, bytes, shift, 32);
            b3.extend(x);
            sha.extend(y);
        }
        for (hasher, leaves) in [(HasherId::Blake3, &b3), (HasherId::Sha256, &sha)] {
            let tree = commit_trace(hasher, g, &refs).unwrap();
            assert_eq!(leaves.as_slice(), tree.leaves(), "{hasher} leaves of {g:?}");
            assert_eq!(
                root_of(hasher, leaves).unwrap(),
                tree.root(),
                "{hasher} root of {g:?}"
            );
        }
    }
}
