//! Known-answer tests against the public RFC 6962 / Certificate Transparency vectors
//! (certificate-transparency merkle_tree_test: leaves, tree heads for sizes 1..8, audit paths).

use veritrace_commit::{verify_inclusion, Digest, Hasher, HasherId, MerkleTree, Sha256};

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (leaf index, tree size, audit path)
const PATHS: [(u64, u64, [&str; 3]); 2] = [
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

fn data() -> Vec<Vec<u8>> {
    LEAVES.iter().map(|h| hex::decode(h).unwrap()).collect()
}

#[test]
fn tree_heads_for_every_size() {
    let data = data();
    for n in 1..=8 {
        let tree = MerkleTree::from_leaf_data(HasherId::Sha256, &data[..n]).unwrap();
        assert_eq!(tree.root().to_hex(), ROOTS[n - 1], "size {n}");
        let mut b = veritrace_commit::StreamingBuilder::new(HasherId::Sha256);
        for d in &data[..n] {
            b.push_leaf(&[d]).unwrap();
        }
        assert_eq!(
            b.finish().unwrap().to_hex(),
            ROOTS[n - 1],
            "streaming, size {n}"
        );
    }
}

#[test]
fn audit_paths() {
    let data = data();
    let tree = MerkleTree::from_leaf_data(HasherId::Sha256, &data).unwrap();
    for (index, size, path) in PATHS {
        let proof = tree.prove_inclusion(index).unwrap();
        let got: Vec<String> = proof.siblings.iter().map(Digest::to_hex).collect();
        assert_eq!(got, path, "leaf {index} of {size}");
        let leaf = Sha256.hash_leaf(&[&data[index as usize]]);
        let root = Digest::from_hex(ROOTS[size as usize - 1]).unwrap();
        verify_inclusion(&Sha256, &root, size, index, &leaf, &proof).unwrap();
    }
}
