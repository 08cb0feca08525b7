//! The log bundle reader: the input, cut at 0xFF bytes, becomes a bundle's
//! `manifest.json`, `entries.jsonl`, `checkpoints.jsonl` and
//! `bodies.jsonl`; verifying it never panics.
#![no_main]

use std::sync::LazyLock;

use hub_core::jws::{Jwks, SigningKey};
use libfuzzer_sys::fuzz_target;

static PINNED: LazyLock<Jwks> = LazyLock::new(|| {
    let rng = ring::rand::SystemRandom::new();
    let (key, _) = SigningKey::generate(&rng).expect("a key");
    Jwks {
        keys: vec![key.public_jwk()],
    }
});

const FILES: [&str; 4] = [
    "manifest.json",
    "entries.jsonl",
    "checkpoints.jsonl",
    "bodies.jsonl",
];

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    for (name, part) in FILES.iter().zip(data.split(|&b| b == 0xff)) {
        if std::fs::write(dir.path().join(name), part).is_err() {
            return;
        }
    }
    let options = hub_audit::Options::default();
    let _ = hub_audit::verify(dir.path(), &PINNED, &options, &|_, _| {});
    let _ = hub_audit::manifest(dir.path());
});
