//! RFC 9162 inclusion and consistency proofs: arbitrary proofs never panic
//! the verifiers, and the proofs the hub makes for a tree built from the
//! input always verify (an inclusion proof made alone or with the rest of
//! its batch alike).
#![no_main]

use hub_core::merkle::{self, Tree};
use libfuzzer_sys::fuzz_target;

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, v) in data.iter().skip(at).take(8).enumerate() {
        b[i] = *v;
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    // Garbage in: the verifiers refuse it without panicking.
    let (a, b) = (u64_at(data, 0), u64_at(data, 8));
    let hashes: Vec<&[u8]> = data.get(16..).unwrap_or_default().chunks(32).collect();
    let leaf = hashes.first().copied().unwrap_or_default();
    let root = hashes.get(1).copied().unwrap_or_default();
    let proof = hashes.get(2..).unwrap_or_default();
    let _ = merkle::verify_inclusion(a, b, leaf, proof, root);
    let _ = merkle::verify_consistency(a, b, leaf, root, proof);

    // A small tree from the input: its own proofs verify.
    let n = u64::from(data.first().copied().unwrap_or(0) % 70);
    let mut tree = Tree::new();
    for i in 0..n {
        tree.push(merkle::node_hash(&i.to_le_bytes(), data));
    }
    if n == 0 {
        return;
    }
    let index = a % n;
    let old = 1 + b % n;
    let root_n = tree.root_at(n).expect("the root of the whole tree");
    let leaf = merkle::node_hash(&index.to_le_bytes(), data);
    let proof = tree.inclusion_proof(index, n).expect("an inclusion proof");
    merkle::verify_inclusion(index, n, &leaf, &proof, &root_n)
        .expect("its own inclusion proof verifies");
    let together = tree.inclusion_proofs(n).expect("every inclusion proof");
    assert_eq!(
        together.get(index as usize),
        Some(&proof),
        "made together, the same proof"
    );
    let root_old = tree.root_at(old).expect("an old root");
    let proof = tree.consistency_proof(old, n).expect("a consistency proof");
    merkle::verify_consistency(old, n, &root_old, &root_n, &proof)
        .expect("its own consistency proof verifies");
});
