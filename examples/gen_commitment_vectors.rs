//! Generates the machine-readable test vectors of `specs/commitment.md`.
//!
//! ```text
//! cargo run --example gen_commitment_vectors > specs/vectors/commitment.json
//! ```
//!
//! Every value is computed by `veritrace-commit` itself; the integration test
//! `tests/spec_vectors.rs` recomputes them and `specs/reference/commitment_ref.py` checks the
//! BLAKE3 and SHA-256 ones independently. The output is deterministic (object keys sorted).

use serde_json::{json, Value};
use veritrace::commit::poseidon::{BYTES_PER_ELEMENT, ELEMENTS_PER_BLOCK, LEAF_TAG};
use veritrace::commit::proof::{MAX_PROOF_SIBLINGS, PROOF_MAGIC, PROOF_VERSION};
use veritrace::commit::trace::{COMMITMENT_LEN, COMMITMENT_MAGIC, COMMITMENT_VERSION};
use veritrace::commit::{
    commit_trace, root_of, sibling_count, verify_batch, BatchProof, CommitError, Digest, Dtype,
    Hasher, HasherId, MerkleTree, Poseidon, TraceCommitment, TraceGeometry, CELL_DOMAIN,
    MAX_TREE_SIZE,
};

/// The BN254 scalar field modulus p, big-endian.
const BN254_P: &str = "30644e72e131a029b85045b68181585d2833e84879b9709143e1f593f0000001";

/// The RFC 6962 / Certificate Transparency test leaves (raw leaf data).
const RFC6962_LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Formula of the floating-point trace elements.
const FLOAT_FORMULA: &str = "v(l, t, k) = (100*l + 10*t + k) / 4 - 3, exact in f32, f16 and bf16 for these shapes; element (l, t, k) = layer l, token row t, column k";
/// Formula of the i8 trace elements.
const I8_FORMULA: &str = "byte(l, t, k) = (37*l + 11*t + 5*k) mod 256, read as a two's-complement i8; element (l, t, k) = layer l, token row t, column k";

/// The trace vectors: name, layers, tokens, hidden, chunk, dtype.
const TRACES: [(&str, u32, u32, u32, u32, Dtype); 6] = [
    ("f32-3x5x4-c2", 3, 5, 4, 2, Dtype::F32),
    ("f16-2x3x3-c2", 2, 3, 3, 2, Dtype::F16),
    ("bf16-2x4x2-c3", 2, 4, 2, 3, Dtype::Bf16),
    ("i8-4x7x3-c3", 4, 7, 3, 3, Dtype::I8),
    ("f32-1x3x2-c8", 1, 3, 2, 8, Dtype::F32),
    ("f32-2x6x32-c4", 2, 6, 32, 4, Dtype::F32),
];

fn main() {
    let v = vectors();
    println!(
        "{}",
        serde_json::to_string_pretty(&v).expect("a JSON value serializes")
    );
}

fn hex_of(d: &Digest) -> Value {
    Value::String(d.to_hex())
}

fn hexes(ds: &[Digest]) -> Value {
    Value::Array(ds.iter().map(hex_of).collect())
}

/// The variant name of an error, e.g. `WrongSiblingCount`.
fn error_name(e: &CommitError) -> String {
    format!("{e:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

/// Exact binary16 bits of an f32 in the normal f16 range (or zero); panics if rounding is needed.
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 31) as u16) << 15;
    if x == 0.0 {
        return sign;
    }
    let exp = ((b >> 23) & 0xff) as i32 - 127;
    let mant = b & 0x7f_ffff;
    assert!(
        (-14..=15).contains(&exp),
        "{x} is outside the normal f16 range"
    );
    assert_eq!(mant & 0x1fff, 0, "{x} is not exact in f16");
    sign | (((exp + 15) as u16) << 10) | (mant >> 13) as u16
}

/// Exact bfloat16 bits of an f32; panics if rounding is needed.
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    assert_eq!(b & 0xffff, 0, "{x} is not exact in bf16");
    (b >> 16) as u16
}

/// Little-endian bytes of one element of a trace vector (see the two formulas).
fn element_bytes(dtype: Dtype, l: u32, t: u32, k: u32) -> Vec<u8> {
    let v = (100 * l + 10 * t + k) as f32 / 4.0 - 3.0;
    match dtype {
        Dtype::F32 => v.to_le_bytes().to_vec(),
        Dtype::F16 => f16_bits(v).to_le_bytes().to_vec(),
        Dtype::Bf16 => bf16_bits(v).to_le_bytes().to_vec(),
        Dtype::I8 => vec![((37 * l + 11 * t + 5 * k) % 256) as u8],
    }
}

/// Layer `l` of a trace vector: row-major `[tokens, hidden]`, little-endian elements.
fn layer_bytes(g: &TraceGeometry, l: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(g.layer_byte_len());
    for t in 0..g.tokens {
        for k in 0..g.hidden {
            out.extend(element_bytes(g.dtype, l, t, k));
        }
    }
    out
}

/// Big-endian 32-byte encoding of a small integer.
fn be32(n: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[24..].copy_from_slice(&n.to_be_bytes());
    out
}

/// Left-pads big-endian bytes (at most 32) to 32 bytes.
fn pad32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[32 - bytes.len()..].copy_from_slice(bytes);
    out
}

/// The Poseidon leaf chain's input sequence `[n, e_1, …, e_m]` as 32-byte big-endian words.
fn poseidon_sequence(data: &[u8]) -> Vec<[u8; 32]> {
    let mut seq = vec![be32(data.len() as u64)];
    seq.extend(data.chunks(BYTES_PER_ELEMENT).map(pad32));
    seq
}

fn le64_leaf(i: u64) -> Vec<u8> {
    i.to_le_bytes().to_vec()
}

fn vectors() -> Value {
    let mut top = serde_json::Map::new();
    top.insert("about".into(), about());
    top.insert("constants".into(), constants());
    top.insert("rfc6962".into(), rfc6962());
    top.insert("nodes".into(), nodes());
    top.insert("poseidon_leaves".into(), poseidon_leaves());
    top.insert("traces".into(), traces());
    top.insert("batch_proofs".into(), batch_proofs());
    top.insert("batch_rejections".into(), batch_rejections());
    top.insert("size_binding".into(), size_binding());
    top.insert("encoding_rejections".into(), encoding_rejections());
    top.insert("commitment_rejections".into(), commitment_rejections());
    Value::Object(top)
}

fn about() -> Value {
    json!({
        "title": "veritrace commitment test vectors",
        "spec": "specs/commitment.md",
        "generator": "cargo run --example gen_commitment_vectors > specs/vectors/commitment.json",
        "checked_by": ["tests/spec_vectors.rs", "specs/reference/commitment_ref.py"],
        "conventions": [
            "All byte strings and digests are lowercase hex without a 0x prefix.",
            "roots[h][n-1] in rfc6962 is the root of the first n leaves under hasher h.",
            "le64 leaf source: leaf i of a tree has the 8-byte little-endian encoding of i as its data.",
            "rfc6962 leaf source: the first `size` leaves of rfc6962.leaves_hex.",
            "trace leaf source: the cells of the named trace vector, in leaf-index order.",
            "Errors are named after veritrace-commit's CommitError variants; the order of checks is the one of specs/commitment.md section 8.3."
        ]
    })
}

fn constants() -> Value {
    let p = Digest::from_hex(BN254_P).expect("valid hex");
    let mut p_minus_1 = p;
    p_minus_1.0[31] -= 1;
    assert!(Poseidon.is_canonical(&p_minus_1) && !Poseidon.is_canonical(&p));
    json!({
        "leaf_prefix_hex": "00",
        "node_prefix_hex": "01",
        "cell_domain_ascii": std::str::from_utf8(CELL_DOMAIN).expect("ASCII"),
        "cell_domain_hex": hex::encode(CELL_DOMAIN),
        "poseidon_modulus_hex": BN254_P,
        "poseidon_leaf_tag_ascii": std::str::from_utf8(LEAF_TAG).expect("ASCII"),
        "poseidon_leaf_tag_hex": hex::encode(pad32(LEAF_TAG)),
        "poseidon_bytes_per_element": BYTES_PER_ELEMENT,
        "poseidon_elements_per_block": ELEMENTS_PER_BLOCK,
        "max_tree_size": MAX_TREE_SIZE,
        "proof_magic_ascii": PROOF_MAGIC,
        "proof_version": PROOF_VERSION,
        "commitment_magic_ascii": COMMITMENT_MAGIC,
        "commitment_version": COMMITMENT_VERSION,
        "commitment_len": COMMITMENT_LEN,
        "max_proof_siblings": MAX_PROOF_SIBLINGS,
        "hasher_codes": {"blake3": HasherId::Blake3.code(), "sha256": HasherId::Sha256.code(), "poseidon": HasherId::Poseidon.code()},
        "dtype_codes": {"f32": Dtype::F32.code(), "f16": Dtype::F16.code(), "bf16": Dtype::Bf16.code(), "i8": Dtype::I8.code()}
    })
}

fn rfc6962() -> Value {
    let data: Vec<Vec<u8>> = RFC6962_LEAVES
        .iter()
        .map(|h| hex::decode(h).expect("valid hex"))
        .collect();
    let mut leaf_digests = serde_json::Map::new();
    let mut roots = serde_json::Map::new();
    for h in HasherId::ALL {
        let leaves: Vec<Digest> = data.iter().map(|d| h.hash_leaf(&[d])).collect();
        leaf_digests.insert(h.name().into(), hexes(&leaves));
        let rs: Vec<Digest> = (1..=data.len())
            .map(|n| {
                MerkleTree::from_leaf_data(h, &data[..n])
                    .expect("non-empty")
                    .root()
            })
            .collect();
        roots.insert(h.name().into(), hexes(&rs));
    }
    let tree = MerkleTree::from_leaf_data(HasherId::Sha256, &data).expect("non-empty");
    let paths: Vec<Value> = [0u64, 5]
        .iter()
        .map(|&i| {
            json!({
                "hasher": "sha256",
                "size": 8,
                "index": i,
                "siblings": hexes(&tree.prove_inclusion(i).expect("in range").siblings),
            })
        })
        .collect();
    json!({
        "source": "RFC 6962 / Certificate Transparency merkle_tree_test: raw leaf data, tree heads for sizes 1..8, audit paths",
        "leaves_hex": RFC6962_LEAVES,
        "leaf_digests": leaf_digests,
        "roots": roots,
        "audit_paths": paths,
    })
}

fn nodes() -> Value {
    let one = Digest(be32(1));
    let two = Digest(be32(2));
    let l = HasherId::Sha256.hash_leaf(&[]);
    let r = HasherId::Sha256.hash_leaf(&[&[0]]);
    let mut out = Vec::new();
    for h in HasherId::ALL {
        out.push(json!({"hasher": h.name(), "left": hex_of(&one), "right": hex_of(&two), "node": hex_of(&h.hash_node(&one, &two))}));
        let (l, r) = if h == HasherId::Sha256 {
            (l, r)
        } else {
            (h.hash_leaf(&[]), h.hash_leaf(&[&[0]]))
        };
        out.push(json!({"hasher": h.name(), "left": hex_of(&l), "right": hex_of(&r), "node": hex_of(&h.hash_node(&l, &r))}));
    }
    Value::Array(out)
}

fn poseidon_leaves() -> Value {
    let out: Vec<Value> = [0usize, 1, 31, 32, 100, 310, 311, 341, 342]
        .iter()
        .map(|&n| {
            let data: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
            let seq = poseidon_sequence(&data);
            let blocks = seq.len().div_ceil(ELEMENTS_PER_BLOCK);
            json!({
                "length": n,
                "data": "byte i = i mod 256",
                "data_hex": hex::encode(&data),
                "sequence": seq.iter().map(hex::encode).collect::<Vec<_>>(),
                "blocks": blocks,
                "digest": hex_of(&Poseidon.hash_leaf(&[&data])),
            })
        })
        .collect();
    Value::Array(out)
}

/// Builds the geometry and layers of a trace vector.
fn trace_data(
    (_, layers, tokens, hidden, chunk, dtype): (&str, u32, u32, u32, u32, Dtype),
) -> (TraceGeometry, Vec<Vec<u8>>) {
    let g = TraceGeometry::new(layers, tokens, hidden, chunk, dtype).expect("valid geometry");
    let data = (0..layers).map(|l| layer_bytes(&g, l)).collect();
    (g, data)
}

fn trace_tree(h: HasherId, g: &TraceGeometry, data: &[Vec<u8>]) -> MerkleTree {
    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    commit_trace(h, g, &refs).expect("consistent trace")
}

fn traces() -> Value {
    let out: Vec<Value> = TRACES
        .iter()
        .map(|&spec| {
            let (g, data) = trace_data(spec);
            let cells: Vec<Value> = (0..g.num_cells())
                .map(|i| {
                    let cell = g.cell_at(i).expect("in range");
                    let rows = g.cell_rows(cell).expect("in range");
                    let range = g.cell_byte_range(cell).expect("in range");
                    let header = g.cell_header(cell).expect("in range");
                    let elements = &data[cell.layer as usize][range.clone()];
                    let mut preimage = header.to_vec();
                    preimage.extend_from_slice(elements);
                    let mut leaf = serde_json::Map::new();
                    for h in HasherId::ALL {
                        let d = g.hash_cell(&h, cell, elements).expect("valid cell");
                        leaf.insert(h.name().into(), hex_of(&d));
                    }
                    json!({
                        "index": i,
                        "layer": cell.layer,
                        "chunk": cell.chunk,
                        "row_start": rows.start,
                        "row_end": rows.end,
                        "byte_start": range.start,
                        "byte_end": range.end,
                        "header_hex": hex::encode(header),
                        "preimage_hex": hex::encode(&preimage),
                        "leaf": leaf,
                    })
                })
                .collect();
            let mut roots = serde_json::Map::new();
            let mut commitments = serde_json::Map::new();
            for h in HasherId::ALL {
                let root = trace_tree(h, &g, &data).root();
                roots.insert(h.name().into(), hex_of(&root));
                let c = TraceCommitment {
                    root,
                    hasher: h,
                    geometry: g,
                };
                let bytes = c.to_bytes();
                assert_eq!(TraceCommitment::from_bytes(&bytes).expect("round trip"), c);
                commitments.insert(h.name().into(), Value::String(hex::encode(bytes)));
            }
            json!({
                "name": spec.0,
                "geometry": {"layers": g.layers, "tokens": g.tokens, "hidden": g.hidden, "chunk": g.chunk, "dtype": g.dtype.name()},
                "chunks_per_layer": g.chunks_per_layer(),
                "num_cells": g.num_cells(),
                "element_formula": if g.dtype == Dtype::I8 { I8_FORMULA } else { FLOAT_FORMULA },
                "layers_hex": data.iter().map(hex::encode).collect::<Vec<_>>(),
                "cells": cells,
                "roots": roots,
                "commitment_hex": commitments,
            })
        })
        .collect();
    Value::Array(out)
}

/// Leaf data of every leaf of a tree for a batch vector's leaf source.
fn source_data(source: &str, size: u64) -> Vec<Vec<u8>> {
    match source {
        "le64" => (0..size).map(le64_leaf).collect(),
        "rfc6962" => RFC6962_LEAVES[..size as usize]
            .iter()
            .map(|h| hex::decode(h).expect("valid hex"))
            .collect(),
        name => {
            let spec = *TRACES.iter().find(|t| t.0 == name).expect("a known trace");
            let (g, data) = trace_data(spec);
            assert_eq!(g.num_cells(), size);
            (0..size)
                .map(|i| {
                    let cell = g.cell_at(i).expect("in range");
                    let mut p = g.cell_header(cell).expect("in range").to_vec();
                    p.extend_from_slice(
                        &data[cell.layer as usize][g.cell_byte_range(cell).expect("in range")],
                    );
                    p
                })
                .collect()
        }
    }
}

/// The batch vectors: name, hasher, leaf source, size, indices.
fn batch_cases() -> Vec<(&'static str, HasherId, &'static str, u64, Vec<u64>)> {
    use HasherId::*;
    let mut v = vec![
        ("ct-8-audit-0", Sha256, "rfc6962", 8, vec![0]),
        ("ct-8-audit-5", Sha256, "rfc6962", 8, vec![5]),
        ("ct-8-batch", Sha256, "rfc6962", 8, vec![2, 3, 6]),
        ("ct-7-last", Sha256, "rfc6962", 7, vec![6]),
        ("ct-7-ends", Sha256, "rfc6962", 7, vec![0, 6]),
        ("single-leaf", Blake3, "le64", 1, vec![0]),
    ];
    for h in HasherId::ALL {
        v.push(("le64-13-scattered", h, "le64", 13, vec![0, 1, 2, 7, 12]));
        v.push(("le64-13-last", h, "le64", 13, vec![12]));
        v.push(("le64-13-run", h, "le64", 13, vec![4, 5, 6, 7]));
    }
    v.push(("le64-13-all", Blake3, "le64", 13, (0..13).collect()));
    v.push(("trace-f32-cells", Blake3, "f32-3x5x4-c2", 9, vec![8, 1, 4]));
    v.push(("trace-f32-cells", Sha256, "f32-3x5x4-c2", 9, vec![8, 1, 4]));
    v
}

fn batch_proofs() -> Value {
    let out: Vec<Value> = batch_cases()
        .into_iter()
        .map(|(name, h, source, size, indices)| {
            let data = source_data(source, size);
            let tree = MerkleTree::from_leaf_data(h, &data).expect("non-empty");
            let proof = tree.prove(&indices).expect("valid indices");
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            let opened: Vec<(u64, Digest)> = sorted
                .iter()
                .map(|&i| (i, tree.leaf(i).expect("in range")))
                .collect();
            verify_batch(&h, &tree.root(), size, &opened, &proof).expect("honest proof verifies");
            assert_eq!(
                sibling_count(size, &indices).expect("valid"),
                proof.siblings.len() as u64
            );
            let bytes = proof.to_bytes();
            assert_eq!(BatchProof::from_bytes(&bytes).expect("round trip"), proof);
            json!({
                "name": name,
                "hasher": h.name(),
                "leaf_source": source,
                "size": size,
                "indices": indices,
                "leaves": opened.iter().map(|(i, d)| json!({
                    "index": i,
                    "data_hex": hex::encode(&data[*i as usize]),
                    "digest": hex_of(d),
                })).collect::<Vec<_>>(),
                "root": hex_of(&tree.root()),
                "siblings": hexes(&proof.siblings),
                "encoding_hex": hex::encode(&bytes),
                "json": serde_json::to_string(&proof).expect("serializes"),
            })
        })
        .collect();
    Value::Array(out)
}

fn batch_rejections() -> Value {
    let mut out = Vec::new();
    let mut case = |name: &str,
                    h: HasherId,
                    root: Digest,
                    size: u64,
                    leaves: Vec<(u64, Digest)>,
                    siblings: Vec<Digest>| {
        let proof = BatchProof { siblings };
        let err = verify_batch(&h, &root, size, &leaves, &proof)
            .expect_err("a rejection vector must be rejected");
        out.push(json!({
            "name": name,
            "hasher": h.name(),
            "root": hex_of(&root),
            "size": size,
            "leaves": leaves.iter().map(|(i, d)| json!({"index": i, "digest": hex_of(d)})).collect::<Vec<_>>(),
            "siblings": hexes(&proof.siblings),
            "error": error_name(&err),
        }));
    };
    for h in [HasherId::Blake3, HasherId::Poseidon] {
        let data = source_data("le64", 13);
        let tree = MerkleTree::from_leaf_data(h, &data).expect("non-empty");
        let root = tree.root();
        let idx = [0u64, 1, 2, 7, 12];
        let leaves: Vec<(u64, Digest)> = idx.iter().map(|&i| (i, tree.leaf(i).unwrap())).collect();
        let sibs = tree.prove(&idx).expect("valid").siblings;
        case("empty-index-set", h, root, 13, vec![], sibs.clone());
        case("zero-size", h, root, 0, leaves.clone(), sibs.clone());
        case(
            "size-above-limit",
            h,
            root,
            MAX_TREE_SIZE + 1,
            leaves.clone(),
            sibs.clone(),
        );
        let mut dup = leaves.clone();
        dup.push(leaves[1]);
        case("duplicate-index", h, root, 13, dup, sibs.clone());
        let mut far = leaves.clone();
        far[4].0 = 13;
        case("index-equals-size", h, root, 13, far, sibs.clone());
        let mut short = sibs.clone();
        short.pop();
        case("one-sibling-missing", h, root, 13, leaves.clone(), short);
        let mut long = sibs.clone();
        long.push(sibs[0]);
        case("one-sibling-extra", h, root, 13, leaves.clone(), long);
        case("no-siblings", h, root, 13, leaves.clone(), vec![]);
        let mut flipped = sibs.clone();
        flipped[2].0[31] ^= 1;
        case("sibling-bit-flipped", h, root, 13, leaves.clone(), flipped);
        let mut swapped = leaves.clone();
        let d = swapped[0].1;
        swapped[0].1 = swapped[3].1;
        swapped[3].1 = d;
        case("leaf-digests-swapped", h, root, 13, swapped, sibs.clone());
        let mut moved = leaves.clone();
        moved[3].0 = 8;
        case(
            "leaf-claimed-at-wrong-index",
            h,
            root,
            13,
            moved,
            sibs.clone(),
        );
        case("wrong-size-12", h, root, 12, leaves.clone(), sibs.clone());
        case("wrong-size-16", h, root, 16, leaves.clone(), sibs.clone());
        let mut other_root = root;
        other_root.0[0] ^= 0x80;
        case(
            "wrong-root",
            h,
            other_root,
            13,
            leaves.clone(),
            sibs.clone(),
        );
        if h == HasherId::Poseidon {
            let p = Digest::from_hex(BN254_P).expect("valid hex");
            let mut at_p = sibs.clone();
            at_p[1] = p;
            case("sibling-equals-modulus", h, root, 13, leaves.clone(), at_p);
            let mut ff = sibs.clone();
            ff[0] = Digest([0xff; 32]);
            case("sibling-all-ones", h, root, 13, leaves.clone(), ff);
        }
    }
    Value::Array(out)
}

/// The root of 13 leaves is also the root of the 7 level-1 digests taken as "leaves": a root does
/// not bind the tree size by itself; the leaf function (no leaf data hashes to a node digest) and
/// the verifier's own size do.
fn size_binding() -> Value {
    let h = HasherId::Blake3;
    let tree = MerkleTree::from_leaf_data(h, &source_data("le64", 13)).expect("non-empty");
    let level1: Vec<Digest> = (0..7).map(|j| tree.node(1, j).expect("exists")).collect();
    let reroot = root_of(h, &level1).expect("non-empty");
    assert_eq!(reroot, tree.root());
    json!({
        "hasher": h.name(),
        "leaf_source": "le64",
        "size": 13,
        "root": hex_of(&tree.root()),
        "level1": hexes(&level1),
        "root_of_level1_as_7_leaf_digests": hex_of(&reroot),
    })
}

fn encoding_rejections() -> Value {
    let good = MerkleTree::from_leaf_data(HasherId::Sha256, &source_data("rfc6962", 8))
        .expect("non-empty")
        .prove(&[5])
        .expect("valid")
        .to_bytes();
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    cases.push(("empty-input", vec![]));
    cases.push(("magic-only-prefix", b"VTB".to_vec()));
    let mut bad_magic = good.clone();
    bad_magic[3] = b'Q';
    cases.push(("bad-magic", bad_magic));
    let mut v2 = good.clone();
    v2[4] = 2;
    cases.push(("version-2", v2));
    let mut v0 = good.clone();
    v0[4] = 0;
    cases.push(("version-0", v0));
    cases.push(("count-missing", good[..5].to_vec()));
    cases.push(("count-truncated", good[..8].to_vec()));
    cases.push(("last-digest-truncated", good[..good.len() - 1].to_vec()));
    let mut trailing = good.clone();
    trailing.push(0);
    cases.push(("trailing-byte", trailing));
    let mut more = good.clone();
    more[5] = 2;
    cases.push(("count-smaller-than-payload", more));
    let mut over = b"VTBP\x01".to_vec();
    over.extend_from_slice(&(MAX_PROOF_SIBLINGS as u32 + 1).to_le_bytes());
    cases.push(("count-above-limit", over));
    let mut huge = b"VTBP\x01".to_vec();
    huge.extend_from_slice(&(MAX_PROOF_SIBLINGS as u32).to_le_bytes());
    cases.push(("count-at-limit-without-payload", huge));
    let out: Vec<Value> = cases
        .into_iter()
        .map(|(name, bytes)| {
            let err = BatchProof::from_bytes(&bytes).expect_err("must be rejected");
            json!({"name": name, "hex": hex::encode(&bytes), "error": error_name(&err)})
        })
        .collect();
    Value::Array(out)
}

/// Binary trace commitments (`VTTC`) that a strict decoder must refuse.
fn commitment_rejections() -> Value {
    let (g, data) = trace_data(TRACES[0]);
    let good = TraceCommitment {
        root: trace_tree(HasherId::Sha256, &g, &data).root(),
        hasher: HasherId::Sha256,
        geometry: g,
    }
    .to_bytes();
    let edit = |offset: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[offset..offset + bytes.len()].copy_from_slice(bytes);
        b
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty-input", vec![]),
        ("truncated-root", good[..COMMITMENT_LEN - 1].to_vec()),
        ("bad-magic", edit(0, b"VTBP")),
        ("version-2", edit(4, &[2])),
        ("hasher-code-0", edit(5, &[0])),
        ("hasher-code-4", edit(5, &[4])),
        ("layers-0", edit(6, &0u32.to_le_bytes())),
        ("chunk-0", edit(18, &0u32.to_le_bytes())),
        ("dtype-code-0", edit(22, &[0])),
        ("dtype-code-5", edit(22, &[5])),
        (
            "too-many-cells",
            edit(
                6,
                &[u32::MAX.to_le_bytes(), u32::MAX.to_le_bytes()].concat(),
            ),
        ),
        (
            "layer-too-large-to-address",
            edit(
                10,
                &[u32::MAX.to_le_bytes(), u32::MAX.to_le_bytes()].concat(),
            ),
        ),
    ];
    let mut trailing = good.clone();
    trailing.push(0);
    cases.push(("trailing-byte", trailing));
    let mut poseidon = edit(5, &[HasherId::Poseidon.code()]);
    poseidon[23..].copy_from_slice(&Digest::from_hex(BN254_P).expect("valid hex").0);
    cases.push(("poseidon-root-equals-modulus", poseidon));
    let out: Vec<Value> = cases
        .into_iter()
        .map(|(name, bytes)| {
            let err = TraceCommitment::from_bytes(&bytes).expect_err("must be rejected");
            json!({"name": name, "hex": hex::encode(&bytes), "error": error_name(&err)})
        })
        .collect();
    Value::Array(out)
}
