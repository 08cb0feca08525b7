//! A detached JWS and the payload it claims to sign (first line: the JWS;
//! the rest: the payload), checked against a key set. Never a panic.
#![no_main]

use std::sync::LazyLock;

use hub_core::jws::{Jwk, Jwks, SigningKey, verify_detached};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<Jwks> = LazyLock::new(|| {
    let rng = ring::rand::SystemRandom::new();
    let (key, _) = SigningKey::generate(&rng).expect("a key");
    Jwks {
        keys: vec![key.public_jwk()],
    }
});

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (jws, payload) = data.split_at(split);
    if let Ok(jws) = std::str::from_utf8(jws) {
        let _ = verify_detached(jws, payload, &KEYS);
        let _ = Jwk::parse(jws);
    }
});
