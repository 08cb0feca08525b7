//! Write a synthetic bundle for benchmarking `hub audit verify` (events,
//! each followed by its two subscribers' receipts):
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
    let started = std::time::Instant::now();
    hub_audit::synthetic::write_keyed_bundle(
        &dir,
        entries,
        every,
        &ring::rand::SystemRandom::new(),
        &|n| eprint!("\r{n} entries"),
    )?;
    eprintln!(
        "\rwrote {entries} entries to {} in {:.1?}",
        dir.display(),
        started.elapsed()
    );
    Ok(())
}
