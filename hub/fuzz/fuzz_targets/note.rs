//! Signed notes and checkpoints as an auditor or witness reads them: the
//! note with its signature lines, the checkpoint body, a verifier key.
//! Never a panic.
#![no_main]

use std::sync::LazyLock;

use hub_core::jws::SigningKey;
use hub_core::note::{self, Checkpoint, Verifier};
use libfuzzer_sys::fuzz_target;

static KNOWN: LazyLock<Vec<Verifier>> = LazyLock::new(|| {
    let rng = ring::rand::SystemRandom::new();
    let (key, _) = SigningKey::generate(&rng).expect("a key");
    vec![
        note::verifier_for("hub.invalid/exchange-log", &key).expect("a verifier"),
        note::cosigner_for("witness.invalid", &key).expect("a cosigner"),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = note::open(text, &KNOWN);
    let _ = Checkpoint::parse_body(text);
    let _ = Verifier::parse(text);
});
