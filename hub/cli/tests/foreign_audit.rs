//! An auditor's own tool, written in another language from docs/audit.md
//! and docs/protocol.md alone (`docs/examples/python_audit.py`), checks
//! the integrity of a real hub's exported log - the traffic of the Python
//! client (`docs/examples/python_client.py`) and a refusal - and finds a
//! changed record and a removed one; across a rotation of the hub's key it
//! follows the hand-over from the key pinned before, and agrees with
//! `hub audit verify` on forged hand-overs and keys used outside their
//! periods. Needs `python3` with `cryptography`
//! (`.ci/python` installs Debian's); without it the test says it was
//! skipped, and fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{audit_verify, export, hub, publish_registration, serve, stop, text};

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

/// `hub audit verify` of `bundle` against `jwks` (no data key).
fn rust_audit(data: &Path, bundle: &Path, jwks: &Path) -> Output {
    audit_verify(data, bundle, jwks, None)
}

#[test]
fn a_python_audit_follows_the_hub_key_hand_over_and_the_keys_periods_as_hub_audit_does() {
    let Some(python) = hub_e2e::services::python_with(&["cryptography"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let pki = data.join("pki");
    // An event under the first hub key; the key pinned then; a rotation
    // while the hub is stopped; an event under the second key.
    let served = serve(data);
    let before = publish_registration(data, &served.api);
    assert!(before.status.success(), "{}", text(&before));
    stop(served);
    let old_pinned = data.join("old-pinned.json");
    std::fs::copy(pki.join("hub-jwks.json"), &old_pinned).unwrap();
    let rotate = hub(data, &["rotate-hub-key"]);
    assert!(rotate.status.success(), "{}", text(&rotate));
    let served = serve(data);
    let after = publish_registration(data, &served.api);
    assert!(after.status.success(), "{}", text(&after));
    stop(served);
    let bundle = export(data, "bundle");

    // Both auditors reach the new key from the old one.
    let followed = audit(python, &bundle, &old_pinned);
    assert!(followed.status.success(), "{}", text(&followed));
    assert!(
        text(&followed).contains("1 of 1 hand-over(s) followed: 0 failure(s)"),
        "{}",
        text(&followed)
    );
    let rust = rust_audit(data, &bundle, &old_pinned);
    assert!(rust.status.success(), "{}", text(&rust));

    // Without the hand-over the old key vouches for nothing the new one
    // sealed or signed.
    let handovers_path = bundle.join("hub-key-handovers.json");
    let handovers = std::fs::read_to_string(&handovers_path).unwrap();
    std::fs::write(&handovers_path, "[]").unwrap();
    let unfollowed = audit(python, &bundle, &old_pinned);
    fails_naming(
        &unfollowed,
        &[": hub_signature: ", ": checkpoint_signature: "],
    );
    assert!(!rust_audit(data, &bundle, &old_pinned).status.success());

    // A hand-over changed after signing (its new key's start moved back)
    // is not followed, and the same seals fail.
    let mut moved: serde_json::Value = serde_json::from_str(&handovers).unwrap();
    moved[0]["key"]["valid_from"] = serde_json::json!("2000-01-01T00:00:00.000Z");
    std::fs::write(&handovers_path, moved.to_string()).unwrap();
    let forged = audit(python, &bundle, &old_pinned);
    fails_naming(
        &forged,
        &["FAILED handover 0: key_handover: ", ": hub_signature: "],
    );
    assert!(
        text(&forged).contains("0 of 1 hand-over(s) followed"),
        "{}",
        text(&forged)
    );
    assert!(!rust_audit(data, &bundle, &old_pinned).status.success());
    std::fs::write(&handovers_path, &handovers).unwrap();

    // A pinned set saying the first key's period ended before it sealed
    // anything: its seals and checkpoints fail `key_validity`, while the
    // second key, pinned too, still vouches for its own.
    let mut ended: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pki.join("hub-jwks.json")).unwrap()).unwrap();
    let first_kid =
        serde_json::from_str::<serde_json::Value>(&handovers).unwrap()[0]["retires"].clone();
    let first = ended["keys"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|k| k["kid"] == first_kid)
        .unwrap();
    first["valid_until"] = serde_json::json!("2000-01-01T00:00:00Z");
    let ended_path = data.join("ended.json");
    std::fs::write(&ended_path, ended.to_string()).unwrap();
    let expired = audit(python, &bundle, &ended_path);
    fails_naming(
        &expired,
        &["FAILED entry 0: key_validity: ", "FAILED checkpoint "],
    );
    assert!(
        text(&expired)
            .lines()
            .filter(|l| l.starts_with("FAILED entry"))
            .all(|l| l.contains(": key_validity: ")),
        "{}",
        text(&expired)
    );
    let rust = rust_audit(data, &bundle, &ended_path);
    assert!(!rust.status.success(), "{}", text(&rust));
    assert!(text(&rust).contains("key_validity"), "{}", text(&rust));
}
