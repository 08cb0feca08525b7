//! Write a synthetic bundle for benchmarking `hub audit verify`:
//!
//! ```sh
//! cargo run --release -p hub-audit --example synthetic_bundle -- /tmp/bundle 1000000
//! ```
//!
//! It writes the bundle, `<bundle>/pinned-jwks.json` (the key to pin) and
//! `<bundle>/data.key` (the key that opens the bodies).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(entries)) = (args.next(), args.next()) else {
        eprintln!("usage: synthetic_bundle <out dir> <entries> [checkpoint every, default 1000]");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let entries: u64 = entries.parse()?;
    let every: u64 = args.next().map_or(Ok(1000), |s| s.parse())?;
    let rng = ring::rand::SystemRandom::new();
    let (key, _) = hub_core::jws::SigningKey::generate(&rng)?;
    let mut data_key = [0u8; 32];
    ring::rand::SecureRandom::fill(&rng, &mut data_key).map_err(|_| "no randomness")?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("data.key"),
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data_key),
    )?;
    let data_key = hub_core::body::DataKey::from_bytes(&data_key);
    let started = std::time::Instant::now();
    let jwks = hub_audit::synthetic::write_bundle(
        &dir,
        "bench.invalid/log",
        &key,
        &data_key,
        entries,
        every,
        &|n| {
            eprint!("\r{n} entries");
        },
    )?;
    std::fs::write(dir.join("pinned-jwks.json"), serde_json::to_string(&jwks)?)?;
    eprintln!(
        "\rwrote {entries} entries to {} in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    Ok(())
}
