//! Compiles the repository's `schemas/` folder into the core, so the hub,
//! adapters and auditors' tools all carry the same catalog.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(dir: &Path, root: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            let rel = path.strip_prefix(root).unwrap_or(&path).with_extension("");
            let id = rel.to_string_lossy().replace('\\', "/");
            out.push((id, path));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest.join("../../schemas");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut docs = Vec::new();
    collect(&root, &root, &mut docs);
    docs.sort();
    let mut src = String::from(
        "/// Every `schemas/**/*.json`: (catalog id, text).\npub const BUILTIN: &[(&str, &str)] = &[\n",
    );
    for (id, path) in &docs {
        println!("cargo:rerun-if-changed={}", path.display());
        let _ = writeln!(
            src,
            "    ({id:?}, include_str!({:?})),",
            path.display().to_string()
        );
    }
    src.push_str("];\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("builtin_schemas.rs");
    if let Err(e) = std::fs::write(&out, src) {
        panic!("writing {}: {e}", out.display());
    }
}
