//! Every RFC 8785 vector in `../shared/vectors/jcs/`: `input/X.json`
//! canonicalizes to exactly the bytes of `output/X.json`, from a parsed
//! `Value` and through the canonical serializer alike.

#![allow(clippy::unwrap_used)]

mod common;

#[test]
fn every_rfc8785_vector_canonicalizes_exactly() {
    let Some(dir) = common::vectors_dir("jcs") else {
        return;
    };
    let mut count = 0;
    let inputs = common::json_files(&dir.join("input"));
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
        let serialized = hub_core::jcs::canonicalize_serialize(&value).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&serialized),
            String::from_utf8_lossy(&expected),
            "vector {name:?}, serialized"
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
