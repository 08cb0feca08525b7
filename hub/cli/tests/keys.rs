//! Key rotation with the real `hub` binary: an agency's envelope-signing
//! key and the hub's own signing key are replaced, and everything the
//! retired keys signed still verifies offline - only up to their retirement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{admin, audit_verify, export, hub, serve, stop, text};
use hub_core::ids::Member;
use hub_server::pki::{PkiPaths, generate_signing_key};

const TAX: &str = "000.00.00.G08/tax";

fn tax_verify(data: &std::path::Path, api: &str, case: &str) -> std::process::Output {
    hub(
        data,
        &[
            "send",
            "--as",
            TAX,
            "--hub",
            api,
            "citizen.verify",
            r#"{"personal_id":"001085012345","full_name":"Nguyễn Văn An","birth_date":"1985-03-12"}"#,
            "--purpose",
            "tax_administration",
            "--case",
            case,
        ],
    )
}

/// The (passed, failed) counts of `check` in `hub audit verify`'s table.
fn row(report: &str, check: &str) -> Vec<u64> {
    report
        .lines()
        .find(|l| l.starts_with(check))
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse::<u64>().unwrap())
        .collect()
}

#[test]
fn rotated_keys_sign_from_now_on_and_retired_ones_still_verify() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let pki = PkiPaths::new(data);
    let tax: Member = TAX.parse().unwrap();
    let served = serve(data);
    let before = tax_verify(data, &served.api, "T-1");
    assert!(before.status.success(), "{}", text(&before));

    // The tax office rotates its envelope-signing key: key A retires.
    let sign_key = pki.agency_signing_key(&tax);
    let key_a = data.join("tax-a.key");
    let key_a_kid = hub_server::pki::read_signing_key(&sign_key)
        .unwrap()
        .kid()
        .to_owned();
    std::fs::rename(&sign_key, &key_a).unwrap();
    let key_b = generate_signing_key(&sign_key).unwrap();
    let jwk_b = data.join("tax-b.jwk");
    std::fs::write(&jwk_b, serde_json::to_string(&key_b.public_jwk()).unwrap()).unwrap();
    let set = admin(
        data,
        &served,
        &["agency", "set-key", TAX, "--jwk", jwk_b.to_str().unwrap()],
    );
    assert!(set.status.success(), "{}", text(&set));
    assert!(text(&set).contains("is retired"), "{}", text(&set));
    let after = tax_verify(data, &served.api, "T-2");
    assert!(after.status.success(), "{}", text(&after));
    // Nothing new is accepted under the retired key.
    std::fs::rename(&sign_key, data.join("tax-b.key")).unwrap();
    std::fs::copy(&key_a, &sign_key).unwrap();
    let stale = tax_verify(data, &served.api, "T-3");
    assert!(!stale.status.success());
    assert!(
        text(&stale).contains("signature_invalid") && text(&stale).contains(key_a_kid.as_str()),
        "{}",
        text(&stale)
    );
    std::fs::rename(data.join("tax-b.key"), &sign_key).unwrap();
    stop(served);

    // The hub's own key rotates while it is stopped.
    let old_jwks = std::fs::read_to_string(pki.dir.join("hub-jwks.json")).unwrap();
    let rotate = hub(data, &["rotate-hub-key"]);
    assert!(rotate.status.success(), "{}", text(&rotate));
    let served = serve(data);
    let lookup = tax_verify(data, &served.api, "T-4");
    assert!(lookup.status.success(), "{}", text(&lookup));
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pki.dir.join("hub-jwks.json")).unwrap())
            .unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys[0]["valid_from"].is_string() && keys[1]["valid_until"].is_string());
    assert_eq!(keys[0]["valid_from"], keys[1]["valid_until"]);
    // The hub serves the hand-over: the retired key signed the new one.
    let ca = std::fs::read(pki.dir.join("ca.crt")).unwrap();
    let public = hub_client::HubClient::new(&served.public, &ca, None).unwrap();
    let (status, handovers) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(public.get_json("/.well-known/hub-key-handovers.json"))
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(handovers.as_array().unwrap().len(), 1, "{handovers}");
    assert_eq!(handovers[0]["retires"], keys[1]["kid"]);
    assert_eq!(handovers[0]["key"]["kid"], keys[0]["kid"]);
    assert_eq!(handovers[0]["key"]["valid_from"], keys[0]["valid_from"]);
    stop(served);

    // Offline, with the new key set pinned: the whole log verifies - entries
    // and checkpoints under either hub key, requests under either tax key.
    let pinned = data.join("pinned.json");
    std::fs::write(&pinned, jwks.to_string()).unwrap();
    let bundle = export(data, "bundle");
    let data_key = pki.data_key();
    // `hub audit verify` of the bundle against a pinned key set, with the
    // data key (bodies and agency signatures checked) or without.
    let verify_with = |jwks: &std::path::Path, bodies: bool| {
        audit_verify(data, &bundle, jwks, bodies.then_some(data_key.as_path()))
    };
    let verify = verify_with(&pinned, true);
    assert!(verify.status.success(), "{}", text(&verify));
    let report = text(&verify);
    assert_eq!(row(&report, "sender_signature"), [3, 0], "{report}");
    assert_eq!(row(&report, "key_handover"), [1, 0], "{report}");

    // A key set pinned before the rotation (the old key, no end date) leads
    // to the new key through the hand-over the bundle carries.
    let old_pinned = data.join("old-pinned.json");
    std::fs::write(&old_pinned, old_jwks).unwrap();
    let verify = verify_with(&old_pinned, false);
    assert!(verify.status.success(), "{}", text(&verify));
    assert_eq!(row(&text(&verify), "key_handover"), [1, 0]);
    // Without the hand-over, the old key does not vouch for what the new
    // key signed; nor with one whose new key's start was moved after the
    // old key signed it.
    let handovers_path = bundle.join("hub-key-handovers.json");
    let handovers_text = std::fs::read_to_string(&handovers_path).unwrap();
    std::fs::write(&handovers_path, "[]").unwrap();
    let verify = verify_with(&old_pinned, false);
    assert!(!verify.status.success());
    assert!(text(&verify).contains("FAILED entry"), "{}", text(&verify));
    let mut moved: serde_json::Value = serde_json::from_str(&handovers_text).unwrap();
    moved[0]["key"]["valid_from"] = serde_json::json!("2000-01-01T00:00:00.000Z");
    std::fs::write(&handovers_path, moved.to_string()).unwrap();
    let verify = verify_with(&old_pinned, false);
    assert!(!verify.status.success());
    assert_eq!(row(&text(&verify), "key_handover"), [0, 1]);
    assert!(
        text(&verify).contains("key_handover: the hand-over to")
            && text(&verify).contains("FAILED entry"),
        "{}",
        text(&verify)
    );
    std::fs::write(&handovers_path, handovers_text).unwrap();

    // A retired agency key's signature dated after its retirement fails:
    // narrow the tax office's retired key to before its first request.
    let registry_path = bundle.join("registry.json");
    let mut registry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry_path).unwrap()).unwrap();
    let tax_entry = registry["agencies"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["member"]["subsystem"] == "tax")
        .unwrap();
    assert_eq!(tax_entry["retired_keys"].as_array().unwrap().len(), 1);
    tax_entry["retired_keys"][0]["valid_until"] = serde_json::json!("2000-01-01T00:00:00Z");
    std::fs::write(&registry_path, registry.to_string()).unwrap();
    let verify = verify_with(&pinned, true);
    assert!(!verify.status.success());
    assert!(
        text(&verify).contains("sender_signature: key") && text(&verify).contains("was not valid"),
        "{}",
        text(&verify)
    );
}

/// RFC 8410's example key pair (sections 10.1 and 10.3), in the forms
/// OpenSSL writes: the private key as PKCS#8 version 1, the public key
/// as a SubjectPublicKeyInfo.
const RFC8410_PRIVATE: &str = "MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC";
const RFC8410_PUBLIC: &str = "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=";
const RFC8410_PUBLIC_RAW: &str = "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1";

#[test]
fn an_agency_registers_and_signs_with_a_key_made_by_openssl() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let pki = PkiPaths::new(data);
    let tax: Member = TAX.parse().unwrap();
    let served = serve(data);
    // The tax office's key from OpenSSL: `openssl genpkey -algorithm
    // ed25519` and `openssl pkey -pubout` write these two files.
    std::fs::write(
        pki.agency_signing_key(&tax),
        hub_server::pki::pkcs8_pem(&b64(RFC8410_PRIVATE)),
    )
    .unwrap();
    let public = data.join("tax.pub.pem");
    std::fs::write(
        &public,
        format!("-----BEGIN PUBLIC KEY-----\n{RFC8410_PUBLIC}\n-----END PUBLIC KEY-----\n"),
    )
    .unwrap();
    let set_key = |file: &Path| {
        admin(
            data,
            &served,
            &[
                "agency",
                "set-key",
                TAX,
                "--public-key",
                file.to_str().unwrap(),
            ],
        )
    };
    let set = set_key(&public);
    assert!(set.status.success(), "{}", text(&set));
    let sent = tax_verify(data, &served.api, "T-OSSL-1");
    assert!(sent.status.success(), "{}", text(&sent));
    // The kid the hub checked is the RFC 7638 thumbprint of that key.
    // (The raw key as RFC 8410 section 10.1 prints it, not cut from the DER.)
    let raw: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&RFC8410_PUBLIC_RAW[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let kid = hub_core::jws::Jwk::ed25519(&raw).kid;
    assert!(text(&set).contains(&kid), "{}", text(&set));
    // Not a public key: said so, nothing registered.
    let wrong = set_key(&pki.agency_signing_key(&tax));
    assert!(!wrong.status.success());
    assert!(
        text(&wrong).contains("neither a JWK nor a PEM public key"),
        "{}",
        text(&wrong)
    );
    stop(served);
}

#[test]
fn a_rotated_data_key_seals_what_comes_after_and_still_opens_what_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let pki = PkiPaths::new(data);
    let served = serve(data);
    let before = tax_verify(data, &served.api, "T-1");
    assert!(before.status.success(), "{}", text(&before));
    stop(served);

    let old_file = std::fs::read_to_string(pki.data_key()).unwrap();
    let old_id = hub_server::pki::read_data_key(&pki.data_key())
        .unwrap()
        .id()
        .to_owned();
    let rotate = hub(data, &["rotate-data-key"]);
    assert!(rotate.status.success(), "{}", text(&rotate));
    let new_id = hub_server::pki::read_data_key(&pki.data_key())
        .unwrap()
        .id()
        .to_owned();
    assert_ne!(new_id, old_id);
    assert!(
        text(&rotate).contains(&old_id) && text(&rotate).contains(&new_id),
        "{}",
        text(&rotate)
    );

    let served = serve(data);
    let after = tax_verify(data, &served.api, "T-2");
    assert!(after.status.success(), "{}", text(&after));
    // The hashes of personal IDs did not change: the citizen's history
    // holds the questions from before the rotation and after.
    let history = hub(
        data,
        &[
            "access-history",
            "--as",
            "000.00.00.G03/citizen-portal",
            "--hub",
            &served.api,
            "001085012345",
            "--case",
            "DSR-1",
            "--json",
        ],
    );
    assert!(history.status.success(), "{}", text(&history));
    let reply: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let cases: Vec<&str> = reply["body"]["accesses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["case_ref"].as_str())
        .collect();
    assert!(cases.contains(&"T-1") && cases.contains(&"T-2"), "{reply}");
    stop(served);

    // Offline: the bodies are sealed under both keys, and the key file
    // opens them all; the old key alone only those from before.
    let bundle = export(data, "bundle");
    let key_ids: std::collections::BTreeSet<String> =
        std::fs::read_to_string(bundle.join("bodies.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["key_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
    assert_eq!(key_ids, [old_id, new_id].into_iter().collect());
    let jwks = pki.dir.join("hub-jwks.json");
    let verify_with = |data_key: &Path| audit_verify(data, &bundle, &jwks, Some(data_key));
    let verify = verify_with(&pki.data_key());
    assert!(verify.status.success(), "{}", text(&verify));
    let opened = row(&text(&verify), "body_hash");
    assert!(opened[0] >= 4 && opened[1] == 0, "{}", text(&verify));
    let old_key = data.join("old-data.key");
    std::fs::write(&old_key, old_file).unwrap();
    let verify = verify_with(&old_key);
    assert!(!verify.status.success());
    let partly = row(&text(&verify), "body_hash");
    assert!(partly[0] >= 2 && partly[1] >= 2, "{}", text(&verify));
}
