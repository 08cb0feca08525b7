//! Every RFC 8785 vector in `../shared/vectors/jcs/`: `input/X.json`
//! canonicalizes to exactly the bytes of `output/X.json`.

use std::path::PathBuf;

fn vectors_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("HUB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"))
        .join("vectors/jcs");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the shared vectors are missing at {}",
        dir.display()
    );
    eprintln!("SKIPPED: RFC 8785 vectors not found at {}", dir.display());
    None
}

#[test]
fn every_rfc8785_vector_canonicalizes_exactly() {
    let Some(dir) = vectors_dir() else { return };
    let mut count = 0;
    let mut inputs: Vec<_> = std::fs::read_dir(dir.join("input"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    inputs.sort();
    for input in inputs {
        let name = input.file_name().unwrap().to_owned();
        let text = std::fs::read_to_string(&input).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        let expected = std::fs::read(dir.join("output").join(&name)).unwrap();
        let got = hub_core::jcs::canonicalize(&value).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&expected),
            "vector {name:?}"
        );
        let hex_path = dir.join("outhex").join(name).with_extension("txt");
        if let Ok(hex) = std::fs::read_to_string(hex_path) {
            let want: Vec<u8> = hex
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            assert_eq!(got, want);
        }
        count += 1;
    }
    assert!(count >= 6, "expected at least 6 vectors, found {count}");
}
