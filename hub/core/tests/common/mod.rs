#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Where the published test vectors are: `../shared/vectors/` beside the
//! repository (or `$HUB_SHARED_DIR/vectors`). Without them a test says so and
//! skips - except under `CI=true`, where their absence is a failure.

use std::path::PathBuf;

pub fn vectors_dir(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("HUB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("vectors")
        .join(name);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the shared vectors are missing at {}",
        dir.display()
    );
    eprintln!("SKIPPED: test vectors not found at {}", dir.display());
    None
}

/// Every `*.json` file below `dir`, sorted.
pub fn json_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}
