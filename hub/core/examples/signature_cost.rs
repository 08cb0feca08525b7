//! What one Ed25519 signature and one verification cost on this machine
//! (ring, as the hub, the SDK and the audit tools use it), over a detached
//! JWS of an envelope-sized payload; and how many of each one core could
//! do per second if it did nothing else:
//!
//! ```sh
//! cargo run --release -p hub-core --example signature_cost
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Instant;

use hub_core::jws::{Jwks, SigningKey, verify_detached};

fn main() {
    let n = 20_000u32;
    let rng = ring::rand::SystemRandom::new();
    let (key, _) = SigningKey::generate(&rng).unwrap();
    let keys = Jwks {
        keys: vec![key.public_jwk()],
    };
    // About the size of a canonical citizen.lookup envelope.
    let payload = vec![b'x'; 700];
    let t = Instant::now();
    let mut jws = String::new();
    for _ in 0..n {
        jws = std::hint::black_box(key.sign_detached(&payload));
    }
    let sign_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(verify_detached(&jws, &payload, &keys).unwrap());
    }
    let verify_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "Ed25519 detached JWS sign:   {sign_us:.1} us ({:.0}/s on one core)",
        1e6 / sign_us
    );
    println!(
        "Ed25519 detached JWS verify: {verify_us:.1} us ({:.0}/s on one core)",
        1e6 / verify_us
    );
}
