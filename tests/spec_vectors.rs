//! Checks `specs/vectors/commitment.json` against the implementation and against the document.
//!
//! Every vector in the JSON file is recomputed with `veritrace-commit` and compared. The
//! Certificate Transparency (RFC 6962) values are also compared with constants copied from the
//! public test suite, so a wrong JSON file cannot pass by agreeing with a wrong implementation.
//! Finally every root in the JSON file must appear verbatim in `specs/commitment.md`, so the
//! document and the vectors cannot drift apart.
//!
//! Regenerate the vectors with
//! `cargo run --example gen_commitment_vectors > specs/vectors/commitment.json`.

mod common;

use common::{arr, s, u, unhex};
use std::collections::BTreeSet;

use serde_json::Value;
use veritrace::commit::poseidon::LEAF_TAG;
use veritrace::commit::proof::{MAX_PROOF_SIBLINGS, PROOF_MAGIC, PROOF_VERSION};
use veritrace::commit::trace::{COMMITMENT_LEN, COMMITMENT_MAGIC, COMMITMENT_VERSION};
use veritrace::commit::{
    commit_trace, root_of, sibling_count, verify_batch, verify_inclusion, BatchProof, CellId,
    CommitError, Digest, Dtype, Hasher, HasherId, MerkleTree, Poseidon, StreamingBuilder,
    TraceCommitment, TraceCommitter, TraceGeometry, CELL_DOMAIN, CELL_HEADER_LEN, MAX_TREE_SIZE,
};

/// Raw leaf data of the Certificate Transparency merkle_tree_test.
const CT_LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Certificate Transparency tree heads (SHA-256) for sizes 1..8.
const CT_ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// Certificate Transparency audit paths: (leaf index, tree size, path).
const CT_PATHS: [(u64, u64, [&str; 3]); 2] = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// circomlib's poseidon([1, 2]).
const CIRCOM_POSEIDON_1_2: &str =
    "115cc0f5e7d690413df64c6b9662e9cf2a3617f2743245519e19607a4417189a";

/// The BN254 scalar field modulus, big-endian.
const BN254_P: &str = "30644e72e131a029b85045b68181585d2833e84879b9709143e1f593f0000001";

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/vectors/commitment.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn spec_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/commitment.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

fn digest(v: &Value) -> Digest {
    Digest::from_hex(s(v)).unwrap_or_else(|e| panic!("bad digest {v}: {e}"))
}

fn digests(v: &Value) -> Vec<Digest> {
    arr(v).iter().map(digest).collect()
}

fn hasher(v: &Value) -> HasherId {
    s(v).parse().expect("known hasher name")
}

fn indices(v: &Value) -> Vec<u64> {
    arr(v).iter().map(u).collect()
}

/// The variant name of an error (the names the JSON file uses).
fn error_name(e: &CommitError) -> String {
    format!("{e:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

fn ct_data() -> Vec<Vec<u8>> {
    CT_LEAVES.iter().map(|h| hex::decode(h).unwrap()).collect()
}

#[test]
fn ct_vectors_match_the_public_values() {
    let v = vectors();
    let r = &v["rfc6962"];
    let leaves: Vec<&str> = arr(&r["leaves_hex"]).iter().map(s).collect();
    assert_eq!(
        leaves, CT_LEAVES,
        "JSON leaves differ from the CT test inputs"
    );
    let roots: Vec<&str> = arr(&r["roots"]["sha256"]).iter().map(s).collect();
    assert_eq!(
        roots, CT_ROOTS,
        "JSON SHA-256 roots differ from the CT tree heads"
    );
    let paths = arr(&r["audit_paths"]);
    assert_eq!(paths.len(), CT_PATHS.len());
    for (p, (index, size, want)) in paths.iter().zip(CT_PATHS) {
        assert_eq!(s(&p["hasher"]), "sha256");
        assert_eq!(u(&p["index"]), index);
        assert_eq!(u(&p["size"]), size);
        let got: Vec<&str> = arr(&p["siblings"]).iter().map(s).collect();
        assert_eq!(got, want, "JSON audit path of leaf {index}");
    }

    // The implementation reproduces the public values.
    let data = ct_data();
    for n in 1..=8 {
        let tree = MerkleTree::from_leaf_data(HasherId::Sha256, &data[..n]).unwrap();
        assert_eq!(tree.root().to_hex(), CT_ROOTS[n - 1], "size {n}");
        let mut b = StreamingBuilder::new(HasherId::Sha256);
        for d in &data[..n] {
            b.push_leaf(&[d]).unwrap();
        }
        assert_eq!(
            b.finish().unwrap().to_hex(),
            CT_ROOTS[n - 1],
            "streaming, size {n}"
        );
    }
    let tree = MerkleTree::from_leaf_data(HasherId::Sha256, &data).unwrap();
    for (index, size, want) in CT_PATHS {
        let proof = tree.prove_inclusion(index).unwrap();
        let got: Vec<String> = proof.siblings.iter().map(Digest::to_hex).collect();
        assert_eq!(got, want, "audit path of leaf {index}");
        let leaf = HasherId::Sha256.hash_leaf(&[&data[index as usize]]);
        let root = Digest::from_hex(CT_ROOTS[size as usize - 1]).unwrap();
        verify_inclusion(&HasherId::Sha256, &root, size, index, &leaf, &proof).unwrap();
    }
}

#[test]
fn rfc6962_leaves_under_every_hasher() {
    let v = vectors();
    let r = &v["rfc6962"];
    let data: Vec<Vec<u8>> = arr(&r["leaves_hex"]).iter().map(unhex).collect();
    for h in HasherId::ALL {
        let want_leaves = digests(&r["leaf_digests"][h.name()]);
        let leaves: Vec<Digest> = data.iter().map(|d| h.hash_leaf(&[d])).collect();
        assert_eq!(leaves, want_leaves, "{h} leaf digests");
        let want_roots = digests(&r["roots"][h.name()]);
        assert_eq!(want_roots.len(), data.len());
        for n in 1..=data.len() {
            let tree = MerkleTree::from_leaf_data(h, &data[..n]).unwrap();
            assert_eq!(tree.root(), want_roots[n - 1], "{h} root of size {n}");
            assert_eq!(root_of(h, &leaves[..n]).unwrap(), want_roots[n - 1]);
        }
    }
}

#[test]
fn constants() {
    let v = vectors();
    let c = &v["constants"];
    assert_eq!(unhex(&c["cell_domain_hex"]), CELL_DOMAIN);
    assert_eq!(s(&c["cell_domain_ascii"]).as_bytes(), CELL_DOMAIN);
    assert_eq!(s(&c["poseidon_leaf_tag_ascii"]).as_bytes(), LEAF_TAG);
    let tag = unhex(&c["poseidon_leaf_tag_hex"]);
    assert_eq!(tag.len(), 32);
    assert!(tag[..32 - LEAF_TAG.len()].iter().all(|&b| b == 0));
    assert_eq!(&tag[32 - LEAF_TAG.len()..], LEAF_TAG);
    assert_eq!(s(&c["poseidon_modulus_hex"]), BN254_P);
    let p = Digest::from_hex(BN254_P).unwrap();
    let mut p_minus_1 = p;
    p_minus_1.0[31] -= 1;
    assert!(!Poseidon.is_canonical(&p));
    assert!(Poseidon.is_canonical(&p_minus_1));
    assert_eq!(u(&c["max_tree_size"]), MAX_TREE_SIZE);
    assert_eq!(MAX_TREE_SIZE, 1 << 40);
    assert_eq!(u(&c["max_proof_siblings"]), MAX_PROOF_SIBLINGS);
    assert_eq!(s(&c["proof_magic_ascii"]), PROOF_MAGIC);
    assert_eq!(u(&c["proof_version"]), u64::from(PROOF_VERSION));
    assert_eq!(s(&c["commitment_magic_ascii"]), COMMITMENT_MAGIC);
    assert_eq!(u(&c["commitment_version"]), u64::from(COMMITMENT_VERSION));
    assert_eq!(u(&c["commitment_len"]), COMMITMENT_LEN as u64);
    assert_eq!(s(&c["leaf_prefix_hex"]), "00");
    assert_eq!(s(&c["node_prefix_hex"]), "01");
    for h in HasherId::ALL {
        assert_eq!(u(&c["hasher_codes"][h.name()]), u64::from(h.code()));
    }
    for d in Dtype::ALL {
        assert_eq!(u(&c["dtype_codes"][d.name()]), u64::from(d.code()));
    }
}

#[test]
fn node_vectors() {
    let v = vectors();
    let nodes = arr(&v["nodes"]);
    assert_eq!(nodes.len(), 6);
    for n in nodes {
        let h = hasher(&n["hasher"]);
        let got = h.hash_node(&digest(&n["left"]), &digest(&n["right"]));
        assert_eq!(got, digest(&n["node"]), "{h} node");
    }
    let circom = nodes
        .iter()
        .find(|n| s(&n["hasher"]) == "poseidon" && s(&n["left"]).ends_with("01"))
        .expect("the poseidon(1, 2) vector");
    assert_eq!(s(&circom["node"]), CIRCOM_POSEIDON_1_2);
}

#[test]
fn poseidon_leaf_vectors() {
    let v = vectors();
    let leaves = arr(&v["poseidon_leaves"]);
    assert!(leaves.len() >= 5);
    for x in leaves {
        let n = u(&x["length"]) as usize;
        let data = unhex(&x["data_hex"]);
        let formula: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
        assert_eq!(data, formula, "data of length {n}");
        // The sequence [n, e_1, ..., e_m] of the spec, as 32-byte big-endian words.
        let mut seq = vec![format!("{n:064x}")];
        for piece in data.chunks(31) {
            seq.push(format!("{:0>64}", hex::encode(piece)));
        }
        let got: Vec<&str> = arr(&x["sequence"]).iter().map(s).collect();
        assert_eq!(got, seq, "sequence of length {n}");
        assert_eq!(u(&x["blocks"]) as usize, seq.len().div_ceil(11));
        assert_eq!(
            Poseidon.hash_leaf(&[&data]),
            digest(&x["digest"]),
            "leaf of length {n}"
        );
    }
}

/// Exact binary16 bits of a value the float formula produces.
fn f16_bits(x: f32) -> u16 {
    if x == 0.0 {
        return 0;
    }
    let b = x.to_bits();
    let exp = ((b >> 23) & 0xff) as i32 - 127;
    assert!(
        (-14..=15).contains(&exp) && b & 0x1fff == 0,
        "{x} not exact"
    );
    (((b >> 31) as u16) << 15) | (((exp + 15) as u16) << 10) | ((b & 0x7f_ffff) >> 13) as u16
}

/// A layer of a trace vector from the formulas of the spec (section 12.5).
fn formula_layer(g: &TraceGeometry, l: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for t in 0..g.tokens {
        for k in 0..g.hidden {
            let v = (100 * l + 10 * t + k) as f32 / 4.0 - 3.0;
            match g.dtype {
                Dtype::F32 => out.extend(v.to_le_bytes()),
                Dtype::F16 => out.extend(f16_bits(v).to_le_bytes()),
                Dtype::Bf16 => {
                    assert_eq!(v.to_bits() & 0xffff, 0, "{v} not exact in bf16");
                    out.extend(((v.to_bits() >> 16) as u16).to_le_bytes());
                }
                Dtype::I8 => out.push(((37 * l + 11 * t + 5 * k) % 256) as u8),
            }
        }
    }
    out
}

fn geometry(t: &Value) -> TraceGeometry {
    let g = &t["geometry"];
    TraceGeometry::new(
        u(&g["layers"]) as u32,
        u(&g["tokens"]) as u32,
        u(&g["hidden"]) as u32,
        u(&g["chunk"]) as u32,
        s(&g["dtype"]).parse().expect("known dtype"),
    )
    .expect("valid geometry")
}

#[test]
fn trace_vectors() {
    let v = vectors();
    let traces = arr(&v["traces"]);
    assert_eq!(traces.len(), 6);
    let dtypes: BTreeSet<&str> = traces.iter().map(|t| s(&t["geometry"]["dtype"])).collect();
    assert_eq!(dtypes.len(), 4, "every dtype has a vector");
    for t in traces {
        let name = s(&t["name"]);
        let g = geometry(t);
        assert_eq!(u(&t["chunks_per_layer"]), u64::from(g.chunks_per_layer()));
        assert_eq!(u(&t["num_cells"]), g.num_cells());
        let layers: Vec<Vec<u8>> = arr(&t["layers_hex"]).iter().map(unhex).collect();
        assert_eq!(layers.len(), g.layers as usize);
        for (l, layer) in layers.iter().enumerate() {
            assert_eq!(*layer, formula_layer(&g, l as u32), "{name} layer {l}");
        }
        let cells = arr(&t["cells"]);
        assert_eq!(cells.len() as u64, g.num_cells());
        let mut leaves = vec![Vec::new(); 3];
        for (i, c) in cells.iter().enumerate() {
            let i = i as u64;
            let cell = CellId {
                layer: u(&c["layer"]) as u32,
                chunk: u(&c["chunk"]) as u32,
            };
            assert_eq!(u(&c["index"]), i);
            assert_eq!(g.cell_index(cell).unwrap(), i);
            assert_eq!(
                i,
                u64::from(cell.layer) * u64::from(g.chunks_per_layer()) + u64::from(cell.chunk)
            );
            assert_eq!(g.cell_at(i).unwrap(), cell);
            let rows = g.cell_rows(cell).unwrap();
            assert_eq!(u64::from(rows.start), u(&c["row_start"]));
            assert_eq!(u64::from(rows.end), u(&c["row_end"]));
            let range = g.cell_byte_range(cell).unwrap();
            assert_eq!(range.start as u64, u(&c["byte_start"]));
            assert_eq!(range.end as u64, u(&c["byte_end"]));

            // The header, built from the table of the spec.
            let mut header = b"veritrace/cell/v1".to_vec();
            header.extend(cell.layer.to_le_bytes());
            header.extend(cell.chunk.to_le_bytes());
            header.push(g.dtype.code());
            header.push(2);
            header.extend((rows.end - rows.start).to_le_bytes());
            header.extend(g.hidden.to_le_bytes());
            assert_eq!(header.len(), CELL_HEADER_LEN);
            assert_eq!(g.cell_header(cell).unwrap().to_vec(), header);
            assert_eq!(unhex(&c["header_hex"]), header, "{name} cell {i} header");
            let elements = &layers[cell.layer as usize][range];
            let mut preimage = header.clone();
            preimage.extend_from_slice(elements);
            assert_eq!(
                unhex(&c["preimage_hex"]),
                preimage,
                "{name} cell {i} preimage"
            );

            for (k, h) in HasherId::ALL.into_iter().enumerate() {
                let want = digest(&c["leaf"][h.name()]);
                assert_eq!(
                    g.hash_cell(&h, cell, elements).unwrap(),
                    want,
                    "{name} {h} {i}"
                );
                assert_eq!(h.hash_leaf(&[&preimage]), want);
                leaves[k].push(want);
            }
        }
        let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
        for (k, h) in HasherId::ALL.into_iter().enumerate() {
            let want = digest(&t["roots"][h.name()]);
            assert_eq!(
                commit_trace(h, &g, &refs).unwrap().root(),
                want,
                "{name} {h}"
            );
            assert_eq!(root_of(h, &leaves[k]).unwrap(), want, "{name} {h} leaves");
            let mut c = TraceCommitter::new(h, g).unwrap();
            for l in &refs {
                c.push_layer(l).unwrap();
            }
            let commitment = c.finish().unwrap();
            assert_eq!(commitment.root, want, "{name} {h} streaming");

            // The binary trace commitment, built from the table of the spec.
            let mut vttc = b"VTTC\x01".to_vec();
            vttc.push(h.code());
            for x in [g.layers, g.tokens, g.hidden, g.chunk] {
                vttc.extend(x.to_le_bytes());
            }
            vttc.push(g.dtype.code());
            vttc.extend(want.0);
            assert_eq!(commitment.to_bytes(), vttc, "{name} {h} commitment");
            assert_eq!(unhex(&t["commitment_hex"][h.name()]), vttc);
            assert_eq!(TraceCommitment::from_bytes(&vttc).unwrap(), commitment);
        }
    }
}

/// All leaf data of a batch vector's tree.
fn source_data(v: &Value, source: &str, size: u64) -> Vec<Vec<u8>> {
    match source {
        "le64" => (0..size).map(|i| i.to_le_bytes().to_vec()).collect(),
        "rfc6962" => ct_data()[..size as usize].to_vec(),
        name => {
            let t = arr(&v["traces"])
                .iter()
                .find(|t| s(&t["name"]) == name)
                .unwrap_or_else(|| panic!("unknown leaf source {name}"));
            arr(&t["cells"])
                .iter()
                .map(|c| unhex(&c["preimage_hex"]))
                .collect()
        }
    }
}

#[test]
fn batch_proof_vectors() {
    let v = vectors();
    let cases = arr(&v["batch_proofs"]);
    assert!(cases.len() >= 10);
    for b in cases {
        let name = s(&b["name"]);
        let h = hasher(&b["hasher"]);
        let size = u(&b["size"]);
        let idx = indices(&b["indices"]);
        let data = source_data(&v, s(&b["leaf_source"]), size);
        assert_eq!(data.len() as u64, size, "{name}");
        let tree = MerkleTree::from_leaf_data(h, &data).unwrap();
        let root = digest(&b["root"]);
        assert_eq!(tree.root(), root, "{name} {h} root");

        let proof = tree.prove(&idx).unwrap();
        let want = digests(&b["siblings"]);
        assert_eq!(proof.siblings, want, "{name} {h} siblings");
        assert_eq!(sibling_count(size, &idx).unwrap(), want.len() as u64);

        let encoding = unhex(&b["encoding_hex"]);
        assert_eq!(proof.to_bytes(), encoding, "{name} {h} encoding");
        assert_eq!(encoding.len(), proof.encoded_len());
        assert_eq!(BatchProof::from_bytes(&encoding).unwrap(), proof);
        assert_eq!(serde_json::to_string(&proof).unwrap(), s(&b["json"]));
        let parsed: BatchProof = serde_json::from_str(s(&b["json"])).unwrap();
        assert_eq!(parsed, proof);

        let mut sorted = idx.clone();
        sorted.sort_unstable();
        let opened: Vec<(u64, Digest)> = arr(&b["leaves"])
            .iter()
            .map(|l| {
                let i = u(&l["index"]);
                let d = digest(&l["digest"]);
                assert_eq!(unhex(&l["data_hex"]), data[i as usize]);
                assert_eq!(h.hash_leaf(&[&data[i as usize]]), d, "{name} leaf {i}");
                (i, d)
            })
            .collect();
        assert_eq!(opened.iter().map(|l| l.0).collect::<Vec<_>>(), sorted);
        verify_batch(&h, &root, size, &opened, &proof).unwrap();
        if idx.len() == 1 {
            verify_inclusion(&h, &root, size, idx[0], &opened[0].1, &proof).unwrap();
        }
    }
}

#[test]
fn batch_rejection_vectors() {
    let v = vectors();
    let cases = arr(&v["batch_rejections"]);
    assert!(cases.len() >= 10);
    let mut errors = BTreeSet::new();
    for r in cases {
        let name = s(&r["name"]);
        let h = hasher(&r["hasher"]);
        let leaves: Vec<(u64, Digest)> = arr(&r["leaves"])
            .iter()
            .map(|l| (u(&l["index"]), digest(&l["digest"])))
            .collect();
        let proof = BatchProof {
            siblings: digests(&r["siblings"]),
        };
        let err =
            verify_batch(&h, &digest(&r["root"]), u(&r["size"]), &leaves, &proof).expect_err(name);
        assert_eq!(error_name(&err), s(&r["error"]), "{h} {name}: {err}");
        errors.insert(error_name(&err));
    }
    for e in [
        "EmptyTree",
        "TreeTooLarge",
        "NoIndices",
        "DuplicateIndex",
        "IndexOutOfRange",
        "WrongSiblingCount",
        "NonCanonicalDigest",
        "RootMismatch",
    ] {
        assert!(errors.contains(e), "no rejection vector yields {e}");
    }
}

#[test]
fn encoding_rejection_vectors() {
    let v = vectors();
    let cases = arr(&v["encoding_rejections"]);
    assert!(cases.len() >= 8);
    for r in cases {
        let name = s(&r["name"]);
        let err = BatchProof::from_bytes(&unhex(&r["hex"])).expect_err(name);
        assert_eq!(error_name(&err), s(&r["error"]), "{name}: {err}");
    }
}

#[test]
fn commitment_rejection_vectors() {
    let v = vectors();
    let cases = arr(&v["commitment_rejections"]);
    assert!(cases.len() >= 8);
    for r in cases {
        let name = s(&r["name"]);
        let err = TraceCommitment::from_bytes(&unhex(&r["hex"])).expect_err(name);
        assert_eq!(error_name(&err), s(&r["error"]), "{name}: {err}");
    }
}

#[test]
fn size_binding_vector() {
    let v = vectors();
    let x = &v["size_binding"];
    let h = hasher(&x["hasher"]);
    let size = u(&x["size"]);
    let data = source_data(&v, s(&x["leaf_source"]), size);
    let tree = MerkleTree::from_leaf_data(h, &data).unwrap();
    assert_eq!(tree.root(), digest(&x["root"]));
    let level1 = digests(&x["level1"]);
    let want: Vec<Digest> = (0..size.div_ceil(2))
        .map(|j| tree.node(1, j).unwrap())
        .collect();
    assert_eq!(level1, want);
    assert_eq!(root_of(h, &level1).unwrap(), tree.root());
    assert_eq!(digest(&x["root_of_level1_as_7_leaf_digests"]), tree.root());
}

/// Collects the string values of every key that starts with "root", at any depth.
fn collect_roots(v: &Value, under_root: bool, out: &mut BTreeSet<String>) {
    match v {
        Value::String(x) if under_root => {
            out.insert(x.clone());
        }
        Value::Array(items) => {
            for i in items {
                collect_roots(i, under_root, out);
            }
        }
        Value::Object(map) => {
            for (k, x) in map {
                collect_roots(x, under_root || k.starts_with("root"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_root_appears_in_the_spec() {
    let v = vectors();
    let spec = spec_text();
    let mut roots = BTreeSet::new();
    collect_roots(&v, false, &mut roots);
    assert!(roots.len() >= 40, "only {} roots found", roots.len());
    let missing: Vec<&String> = roots
        .iter()
        .filter(|r| !spec.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "roots in specs/vectors/commitment.json missing from specs/commitment.md: {missing:?}"
    );
    for r in &roots {
        assert_eq!(r.len(), 64, "{r} is not a 32-byte hex digest");
    }
    assert!(
        spec.contains("cargo run --example gen_commitment_vectors > specs/vectors/commitment.json")
    );
}
