//! An auditor's own tool, written in another language from docs/audit.md
//! and docs/protocol.md alone (`docs/examples/python_audit.py`), checks
//! the integrity of a real hub's exported log - the traffic of the Python
//! client (`docs/examples/python_client.py`) and a refusal - and finds a
//! changed record and a removed one. Needs `python3` with `cryptography`
//! (`.ci/python` installs Debian's); without it the test says it was
//! skipped, and fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{export, hub, serve, stop, text};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/examples")
        .join(name)
}

fn audit(python: &str, bundle: &Path, jwks: &Path) -> Output {
    Command::new(python)
        .arg(example("python_audit.py"))
        .arg(bundle)
        .arg("--jwks")
        .arg(jwks)
        .output()
        .unwrap()
}

/// `out` is a failed audit naming every one of `findings`.
fn fails_naming(out: &Output, findings: &[&str]) {
    assert!(!out.status.success(), "{}", text(out));
    for finding in findings {
        assert!(text(out).contains(finding), "{finding}: {}", text(out));
    }
}

#[test]
fn a_python_audit_written_from_the_docs_checks_a_real_export_and_finds_tampering() {
    let Some(python) = hub_e2e::services::python_with(&["cryptography"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    let pki = data.join("pki");
    let client = Command::new(python)
        .arg(example("python_client.py"))
        .arg("--pki")
        .arg(&pki)
        .args(["--api", served.api.trim_start_matches("https://")])
        .args(["--public", served.public.trim_start_matches("https://")])
        .output()
        .unwrap();
    assert!(client.status.success(), "{}", text(&client));
    let refused = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.00.Z01/bank-ekyc",
            "--hub",
            &served.api,
            "citizen.lookup",
            r#"{"personal_id":"001085012345"}"#,
            "--purpose",
            "kyc",
            "--case",
            "KYC-0001",
        ],
    );
    assert!(text(&refused).contains("no_grant"), "{}", text(&refused));
    // The python client waited for a checkpoint covering its receipt; the
    // refusal may come after the last one, which the audit counts apart.
    stop(served);
    let bundle = export(data, "bundle");
    let jwks = pki.join("hub-jwks.json");

    let clean = audit(python, &bundle, &jwks);
    assert!(clean.status.success(), "{}", text(&clean));
    let said = text(&clean);
    let entries: usize = said
        .split(" entries, ")
        .next()
        .and_then(|n| n.trim().rsplit('\n').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{said}"));
    let lines = std::fs::read_to_string(bundle.join("entries.jsonl")).unwrap();
    assert_eq!(entries, lines.lines().count(), "{said}");
    assert_eq!(
        entries, 5,
        "request, response, event, receipt, refusal: {said}"
    );
    assert!(said.contains("0 failure(s)"), "{said}");

    // A record changed after the fact: its seal no longer holds, and the
    // tree no longer has the checkpoint's root.
    let original = lines.clone();
    let changed = original.replacen("PY-DKKD-0001", "PY-DKKD-0002", 1);
    assert_ne!(changed, original, "the event is in the bundle");
    std::fs::write(bundle.join("entries.jsonl"), &changed).unwrap();
    let tampered = audit(python, &bundle, &jwks);
    fails_naming(&tampered, &[": hub_signature: ", ": checkpoint_root: "]);

    // A record removed: the chain breaks where it was.
    let mut kept: Vec<&str> = original.lines().collect();
    kept.remove(2);
    std::fs::write(bundle.join("entries.jsonl"), kept.join("\n") + "\n").unwrap();
    let removed = audit(python, &bundle, &jwks);
    fails_naming(
        &removed,
        &["FAILED entry 2: index: ", "FAILED entry 2: chain: "],
    );

    // A key set that is not the hub's: every seal and checkpoint fails.
    std::fs::write(bundle.join("entries.jsonl"), &original).unwrap();
    let stranger = data.join("stranger-jwks.json");
    let key = hub_server::pki::generate_signing_key(&data.join("stranger.key")).unwrap();
    std::fs::write(
        &stranger,
        serde_json::to_string(&hub_core::jws::Jwks {
            keys: vec![key.public_jwk()],
        })
        .unwrap(),
    )
    .unwrap();
    let unpinned = audit(python, &bundle, &stranger);
    fails_naming(
        &unpinned,
        &[": checkpoint_signature: ", ": hub_signature: "],
    );
}
