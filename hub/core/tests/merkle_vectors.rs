//! Every RFC 6962 / RFC 9162 inclusion and consistency vector published by
//! transparency-dev (in `../shared/vectors/merkle/`), edge cases included:
//! the verifier accepts exactly the ones without `wantErr`.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hub_core::merkle::{ProofError, verify_consistency, verify_inclusion};
use serde_json::Value;

fn bytes(v: &Value) -> Vec<u8> {
    STANDARD.decode(v.as_str().unwrap()).unwrap()
}

fn list(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .map(|a| a.iter().map(bytes).collect())
        .unwrap_or_default()
}

/// Run `verify` on every vector below `folder`; it must fail exactly on `wantErr`.
fn check_every(folder: &str, verify: impl Fn(&Value) -> Result<(), ProofError>) {
    let Some(dir) = common::vectors_dir(folder) else {
        return;
    };
    let files = common::json_files(&dir);
    assert!(
        files.len() >= 40,
        "found only {} vectors in {folder}",
        files.len()
    );
    for file in files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let result = verify(&v);
        let want_err = v["wantErr"].as_bool().unwrap();
        assert_eq!(
            result.is_err(),
            want_err,
            "{}: {} -> {result:?}",
            file.display(),
            v["desc"]
        );
    }
}

#[test]
fn every_inclusion_vector() {
    check_every("merkle/inclusion", |v| {
        verify_inclusion(
            v["leafIdx"].as_u64().unwrap(),
            v["treeSize"].as_u64().unwrap(),
            &bytes(&v["leafHash"]),
            &list(&v["proof"]),
            &bytes(&v["root"]),
        )
    });
}

#[test]
fn every_consistency_vector() {
    check_every("merkle/consistency", |v| {
        verify_consistency(
            v["size1"].as_u64().unwrap(),
            v["size2"].as_u64().unwrap(),
            &bytes(&v["root1"]),
            &bytes(&v["root2"]),
            &list(&v["proof"]),
        )
    });
}
