//! The verifier pinpoints every kind of tampering, on bundles built here
//! with the core's own sealing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use hub_audit::{BundleCheckpoint, BundleWriter, Report, checks, verify};
use hub_core::ids::{ExchangeId, ServiceName};
use hub_core::jcs;
use hub_core::jws::{Jwks, SigningKey};
use hub_core::log::{EntryDraft, EntryKind, body_hash, seal};
use hub_core::merkle::Frontier;
use hub_core::note::{self, Checkpoint};
use serde_json::json;
use time::OffsetDateTime;

const ORIGIN: &str = "test.invalid/log";
const N: u64 = 40;
const CHECKPOINTS: [u64; 3] = [10, 25, 40];

fn key() -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    SigningKey::generate(&rng).unwrap().0
}

fn draft(i: u64, body: &serde_json::Value) -> EntryDraft {
    EntryDraft {
        kind: EntryKind::Receipt,
        exchange_id: ExchangeId::from_parts(1_800_000_000_000 + i, [i as u8; 10]),
        sender: "000.00.00.G08/tax".parse().unwrap(),
        receiver: None,
        recipients: vec![],
        service: Some(ServiceName::parse("enterprise.registered").unwrap()),
        version: Some(1),
        purpose: None,
        case_ref: None,
        on_behalf_of: None,
        schema: None,
        body_hash: body_hash(body).unwrap(),
        refers_to: None,
        error: None,
        sender_signature: None,
    }
}

fn checkpoint(key: &SigningKey, size: u64, root: [u8; 32]) -> BundleCheckpoint {
    let body = Checkpoint {
        origin: ORIGIN.into(),
        size,
        root,
    }
    .body();
    BundleCheckpoint {
        size,
        note: note::sign(&body, ORIGIN, key).unwrap(),
    }
}

/// A bundle of N entries with checkpoints at CHECKPOINTS; returns the pinned keys.
fn build(dir: &Path, key: &SigningKey) -> Jwks {
    let mut writer = BundleWriter::create(dir, true).unwrap();
    let mut frontier = Frontier::new();
    let mut prev = [0u8; 32];
    let mut checkpoints = Vec::new();
    let t0 = OffsetDateTime::now_utc();
    for i in 0..N {
        let body = json!({"acknowledged": i});
        let sealed = seal(draft(i, &body), i, &prev, t0, key).unwrap();
        writer
            .push(
                std::str::from_utf8(&sealed.canonical).unwrap(),
                Some(&jcs::canonicalize(&body).unwrap()),
            )
            .unwrap();
        frontier.push(sealed.leaf_hash);
        prev = sealed.leaf_hash;
        if CHECKPOINTS.contains(&(i + 1)) {
            checkpoints.push(checkpoint(key, i + 1, frontier.root()));
        }
    }
    writer
        .finish(ORIGIN, "2026-11-22T00:00:00.000Z", &checkpoints, &[])
        .unwrap();
    Jwks {
        keys: vec![key.public_jwk()],
    }
}

fn run(dir: &Path, pinned: &Jwks) -> Report {
    verify(dir, pinned, &|_, _| {}).unwrap()
}

fn lines(dir: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(file))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &Path, file: &str, lines: &[String]) {
    std::fs::write(dir.join(file), lines.join("\n") + "\n").unwrap();
}

fn failed(report: &Report, check: &str) -> Vec<Option<u64>> {
    report
        .findings
        .iter()
        .filter(|f| f.check == check)
        .map(|f| f.index)
        .collect()
}

fn fresh() -> (tempfile::TempDir, SigningKey, Jwks) {
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let pinned = build(dir.path(), &key);
    (dir, key, pinned)
}

#[test]
fn an_untouched_bundle_verifies() {
    let (dir, _, pinned) = fresh();
    let report = run(dir.path(), &pinned);
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.entries, N);
    assert_eq!(report.checkpoints, 3);
    assert_eq!(report.checks[checks::HUB_SIGNATURE].passed, N);
    assert_eq!(report.checks[checks::BODY_HASH].passed, N);
    assert_eq!(report.checks[checks::CHECKPOINT_ROOT].passed, 3);
}

#[test]
fn a_changed_byte_is_pinpointed() {
    let (dir, _, pinned) = fresh();
    let mut l = lines(dir.path(), "entries.jsonl");
    l[17] = l[17].replace("\"tax\"", "\"tay\"");
    write_lines(dir.path(), "entries.jsonl", &l);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::HUB_SIGNATURE), [Some(17)]);
    assert_eq!(failed(&report, checks::CHAIN), [Some(18)]);
    assert_eq!(
        failed(&report, checks::CHECKPOINT_ROOT),
        [Some(24), Some(39)]
    );
}

#[test]
fn deleted_inserted_and_reordered_entries_are_pinpointed() {
    let (dir, _, pinned) = fresh();
    let original = lines(dir.path(), "entries.jsonl");

    let mut deleted = original.clone();
    deleted.remove(5);
    write_lines(dir.path(), "entries.jsonl", &deleted);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::SEQUENCE).first(), Some(&Some(5)));
    assert!(!failed(&report, checks::TRUNCATED).is_empty());

    let mut inserted = original.clone();
    inserted.insert(8, original[7].clone());
    write_lines(dir.path(), "entries.jsonl", &inserted);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::SEQUENCE).first(), Some(&Some(8)));

    let mut reordered = original.clone();
    reordered.swap(30, 31);
    write_lines(dir.path(), "entries.jsonl", &reordered);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::SEQUENCE), [Some(30), Some(31)]);
    assert_eq!(failed(&report, checks::CHECKPOINT_ROOT), [Some(39)]);
}

#[test]
fn a_truncated_log_is_caught_by_its_checkpoints() {
    let (dir, _, pinned) = fresh();
    let mut l = lines(dir.path(), "entries.jsonl");
    l.truncate(33);
    write_lines(dir.path(), "entries.jsonl", &l);
    // Hide it from the manifest too: the signed checkpoint of size 40 still tells.
    let manifest = std::fs::read_to_string(dir.path().join("manifest.json"))
        .unwrap()
        .replace("\"entries\": 40", "\"entries\": 33");
    std::fs::write(dir.path().join("manifest.json"), manifest).unwrap();
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::TRUNCATED), [None]);
    assert!(report.findings.iter().any(|f| f.detail.contains("size 40")));
}

#[test]
fn forged_replaced_and_forked_checkpoints_are_caught() {
    let (dir, key, pinned) = fresh();
    let original = lines(dir.path(), "checkpoints.jsonl");

    // Signed by a key nobody pinned.
    let mut forged = original.clone();
    forged[1] = serde_json::to_string(&checkpoint(&self::key(), 25, [9; 32])).unwrap();
    write_lines(dir.path(), "checkpoints.jsonl", &forged);
    assert_eq!(
        failed(&run(dir.path(), &pinned), checks::CHECKPOINT_SIGNATURE).len(),
        1
    );

    // A genuine signature over another root: a fork at size 25 that the entries disprove.
    let mut fork = original.clone();
    fork.insert(
        2,
        serde_json::to_string(&checkpoint(&key, 25, [9; 32])).unwrap(),
    );
    write_lines(dir.path(), "checkpoints.jsonl", &fork);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::FORK), [None]);

    // Sizes going backwards.
    let mut backwards = original.clone();
    backwards.swap(0, 2);
    write_lines(dir.path(), "checkpoints.jsonl", &backwards);
    assert!(!failed(&run(dir.path(), &pinned), checks::CHECKPOINT_ORDER).is_empty());

    // A validly signed checkpoint the entries do not reproduce.
    let mut wrong = original.clone();
    wrong[0] = serde_json::to_string(&checkpoint(&key, 10, [7; 32])).unwrap();
    write_lines(dir.path(), "checkpoints.jsonl", &wrong);
    assert_eq!(
        failed(&run(dir.path(), &pinned), checks::CHECKPOINT_ROOT),
        [Some(9)]
    );
}

#[test]
fn unknown_and_expired_keys_are_refused() {
    let (dir, key, _) = fresh();
    let stranger = Jwks {
        keys: vec![self::key().public_jwk()],
    };
    let report = run(dir.path(), &stranger);
    assert_eq!(report.checks[checks::HUB_SIGNATURE].failed, N);
    assert_eq!(report.checks[checks::CHECKPOINT_SIGNATURE].failed, 3);

    let mut expired = key.public_jwk();
    expired.valid_until = Some("2020-01-01T00:00:00Z".into());
    let report = run(
        dir.path(),
        &Jwks {
            keys: vec![expired],
        },
    );
    assert_eq!(report.checks[checks::KEY_VALIDITY].failed, N);
}

#[test]
fn a_changed_body_is_caught() {
    let (dir, _, pinned) = fresh();
    let mut l = lines(dir.path(), "bodies.jsonl");
    let other = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        br#"{"acknowledged":999}"#,
    );
    l[3] = format!("{{\"index\":3,\"body\":\"{other}\"}}");
    write_lines(dir.path(), "bodies.jsonl", &l);
    assert_eq!(
        failed(&run(dir.path(), &pinned), checks::BODY_HASH),
        [Some(3)]
    );
}

#[test]
fn prove_checks_an_exchanges_inclusion() {
    let (dir, _, pinned) = fresh();
    let id = ExchangeId::from_parts(1_800_000_000_000 + 12, [12; 10]).to_string();
    let proof = hub_audit::prove(dir.path(), &pinned, &id).unwrap();
    assert_eq!(proof.size, 40);
    assert_eq!(proof.proofs.len(), 1);
    assert_eq!(proof.proofs[0].index, 12);
    assert!(
        hub_audit::prove(
            dir.path(),
            &pinned,
            &ExchangeId::from_parts(1, [0; 10]).to_string()
        )
        .is_err()
    );
}
