//! The `hub` command. Everything it does lives in the `hub` library crate.
#![forbid(unsafe_code)]

use clap::Parser;

// glibc's allocator showed as ~20 % of the hub's CPU under load (many
// threads freeing what others allocated); mimalloc handles that pattern.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hub::Cli::parse();
    hub::init_tracing();
    match hub::run(cli).await {
        Ok(code) => code,
        Err(e) => hub::report_failure(&e),
    }
}
