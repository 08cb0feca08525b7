//! What the Merkle tree adds to each log append, against the rest of
//! sealing an entry (serialising the statement, canonical JSON twice, one
//! Ed25519 signature):
//!
//! ```sh
//! cargo run --release -p hub-core --example append_cost
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use hub_core::ids::{ExchangeId, ServiceName};
use hub_core::log::{EntryDraft, EntryKind, seal};
use hub_core::merkle::Frontier;

fn main() {
    let n = 200_000u64;
    let rng = ring::rand::SystemRandom::new();
    let (key, _) = hub_core::jws::SigningKey::generate(&rng).unwrap();
    let draft = EntryDraft {
        receiver: Some("000.00.00.G01/population-registry".parse().unwrap()),
        service: Some(ServiceName::parse("citizen.lookup").unwrap()),
        version: Some(1),
        purpose: Some(hub_core::ids::PurposeCode::parse("public_service").unwrap()),
        case_ref: Some(hub_core::ids::CaseRef::parse("HS-2026-0001").unwrap()),
        schema: Some("services/citizen.lookup/v1/request".into()),
        body_hash: "i248mnGisXnGJmReVw-jr-VJgacsB9rrjsymTi5ZAwo".into(),
        ..EntryDraft::new(
            EntryKind::Request,
            ExchangeId::from_parts(1_800_000_000_000, [1; 10]),
            "000.00.29.H29/one-stop".parse().unwrap(),
        )
    };
    let t = Instant::now();
    let mut prev = [0u8; 32];
    let mut leaves = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = seal(
            draft.clone(),
            i,
            &prev,
            time::OffsetDateTime::UNIX_EPOCH,
            &key,
        )
        .unwrap();
        prev = s.leaf_hash;
        leaves.push(s.leaf_hash);
    }
    let seal_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let t = Instant::now();
    let mut f = Frontier::new();
    for (i, leaf) in leaves.iter().enumerate() {
        f.push(*leaf);
        // The writer folds the root once per committed batch; count one per 64 entries.
        if i % 64 == 0 {
            std::hint::black_box(f.root());
        }
    }
    let tree_ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "seal (JCS x2 + Ed25519 sign + leaf hash): {:.2} us/entry",
        seal_ns / 1000.0
    );
    println!(
        "Merkle frontier push + root per 64:       {:.2} us/entry ({:.1}% of sealing)",
        tree_ns / 1000.0,
        100.0 * tree_ns / seal_ns
    );
}
