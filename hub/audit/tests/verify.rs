//! The verifier pinpoints every kind of tampering, on bundles built here
//! with the core's own sealing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use hub_audit::{Depth, Options, Report, checks, verify};
use hub_core::body::DataKey;
use hub_core::ids::ExchangeId;
use hub_core::jws::{Jwks, SigningKey};

const ORIGIN: &str = "test.invalid/log";
const N: u64 = 40;

fn key() -> SigningKey {
    let rng = ring::rand::SystemRandom::new();
    SigningKey::generate(&rng).unwrap().0
}

fn checkpoint(key: &SigningKey, size: u64, root: [u8; 32]) -> hub_audit::BundleCheckpoint {
    hub_audit::synthetic::checkpoint(ORIGIN, key, size, root).unwrap()
}

fn data_key() -> std::sync::Arc<DataKey> {
    std::sync::Arc::new(DataKey::from_bytes(&[5; 32]))
}

/// A bundle of N entries with checkpoints at 10, 20, 30 and 40; returns the pinned keys.
fn build(dir: &Path, key: &SigningKey) -> Jwks {
    hub_audit::synthetic::write_bundle(dir, ORIGIN, key, &data_key(), N, 10, &|_| {}).unwrap()
}

fn run(dir: &Path, pinned: &Jwks) -> Report {
    verify(
        dir,
        pinned,
        &Options {
            data_key: Some(data_key()),
            ..Options::default()
        },
        &|_, _| {},
    )
    .unwrap()
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
    assert_eq!(report.checkpoints, 4);
    assert_eq!(report.checks[checks::HUB_SIGNATURE].passed, N);
    assert_eq!(report.checks[checks::BODY_HASH].passed, N);
    assert_eq!(report.checks[checks::CHECKPOINT_ROOT].passed, 4);
    assert_eq!(report.checks[checks::CHECKPOINT_CONSISTENCY].passed, 3);
}

#[test]
fn a_changed_byte_is_pinpointed() {
    let (dir, _, pinned) = fresh();
    let mut l = lines(dir.path(), "entries.jsonl");
    l[17] = l[17].replacen("\"000.00.00.G", "\"000.00.00.H", 1);
    write_lines(dir.path(), "entries.jsonl", &l);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::HUB_SIGNATURE), [Some(17)]);
    assert_eq!(failed(&report, checks::CHAIN), [Some(18)]);
    assert_eq!(
        failed(&report, checks::CHECKPOINT_ROOT),
        [Some(19), Some(29), Some(39)]
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

/// Consistency between consecutive checkpoints across 256-entry blocks
/// (the verifier keeps only the roots of complete blocks and the leaves
/// of two), at cadences that end checkpoints inside blocks, on their
/// boundaries and several blocks apart; a validly signed checkpoint with
/// another root fails with the proofs on either side of it.
#[test]
fn consecutive_checkpoints_are_consistent_across_blocks() {
    const ENTRIES: u64 = 1_100;
    let key = key();
    for every in [7, 128, 256, 300, 1_100] {
        let dir = tempfile::tempdir().unwrap();
        let pinned = hub_audit::synthetic::write_bundle(
            dir.path(),
            ORIGIN,
            &key,
            &data_key(),
            ENTRIES,
            every,
            &|_| {},
        )
        .unwrap();
        let report = run(dir.path(), &pinned);
        assert!(report.ok(), "every {every}: {:?}", report.findings);
        let checkpoints = report.checkpoints;
        assert_eq!(checkpoints, ENTRIES.div_ceil(every), "every {every}");
        let consistent = |report: &Report| {
            report
                .checks
                .get(checks::CHECKPOINT_CONSISTENCY)
                .map_or(0, |c| c.passed)
        };
        assert_eq!(consistent(&report), checkpoints - 1, "every {every}");
        if checkpoints < 3 {
            continue;
        }
        let mut wrong = lines(dir.path(), "checkpoints.jsonl");
        wrong[1] = serde_json::to_string(&checkpoint(&key, 2 * every, [7; 32])).unwrap();
        write_lines(dir.path(), "checkpoints.jsonl", &wrong);
        let report = run(dir.path(), &pinned);
        assert_eq!(
            failed(&report, checks::CHECKPOINT_ROOT),
            [Some(2 * every - 1)],
            "every {every}"
        );
        assert_eq!(
            failed(&report, checks::CHECKPOINT_CONSISTENCY),
            [None, None],
            "every {every}: the proofs into and out of the wrong root"
        );
        assert_eq!(consistent(&report), checkpoints - 3, "every {every}");
    }
}

#[test]
fn forged_replaced_and_forked_checkpoints_are_caught() {
    let (dir, key, pinned) = fresh();
    let original = lines(dir.path(), "checkpoints.jsonl");

    // Signed by a key nobody pinned.
    let mut forged = original.clone();
    forged[1] = serde_json::to_string(&checkpoint(&self::key(), 20, [9; 32])).unwrap();
    write_lines(dir.path(), "checkpoints.jsonl", &forged);
    assert_eq!(
        failed(&run(dir.path(), &pinned), checks::CHECKPOINT_SIGNATURE).len(),
        1
    );

    // A genuine signature over another root: a fork at size 20 that the entries disprove.
    let mut fork = original.clone();
    fork.insert(
        2,
        serde_json::to_string(&checkpoint(&key, 20, [9; 32])).unwrap(),
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
fn a_bundle_with_a_checkpoint_per_entry_is_checked_at_every_one() {
    // A quiet hub signs a checkpoint for nearly every entry.
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let n = 300;
    let pinned =
        hub_audit::synthetic::write_bundle(dir.path(), ORIGIN, &key, &data_key(), n, 1, &|_| {})
            .unwrap();
    let report = run(dir.path(), &pinned);
    assert!(report.ok(), "{:?}", report.findings);
    assert_eq!(report.checkpoints, n);
    assert_eq!(report.checks[checks::CHECKPOINT_ROOT].passed, n);
    assert_eq!(report.checks[checks::CHECKPOINT_CONSISTENCY].passed, n - 1);
    assert_eq!(report.entries_after_last_checkpoint, 0);
    let original = lines(dir.path(), "checkpoints.jsonl");

    // A second root for size 100, beside the first: a fork.
    let mut fork = original.clone();
    fork.insert(
        100,
        serde_json::to_string(&checkpoint(&key, 100, [9; 32])).unwrap(),
    );
    write_lines(dir.path(), "checkpoints.jsonl", &fork);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::FORK), [None]);
    assert_eq!(report.checks[checks::CHECKPOINT_ROOT].passed, n);

    // Two checkpoints swapped: the one that comes late is out of order
    // and no longer compared; the rest are.
    let mut swapped = original.clone();
    swapped.swap(200, 201);
    write_lines(dir.path(), "checkpoints.jsonl", &swapped);
    let report = run(dir.path(), &pinned);
    assert_eq!(failed(&report, checks::CHECKPOINT_ORDER), [None]);
    assert!(failed(&report, checks::CHECKPOINT_ROOT).is_empty());
    assert_eq!(report.checks[checks::CHECKPOINT_ROOT].passed, n - 1);

    // The last entries gone: the checkpoints beyond them still count.
    write_lines(dir.path(), "checkpoints.jsonl", &original);
    let entries = lines(dir.path(), "entries.jsonl");
    write_lines(dir.path(), "entries.jsonl", &entries[..290]);
    let report = run(dir.path(), &pinned);
    assert_eq!(report.checkpoints, n);
    assert_eq!(report.checks[checks::CHECKPOINT_ROOT].passed, 290);
    assert_eq!(failed(&report, checks::TRUNCATED), [None, None]);
}

#[test]
fn unknown_and_expired_keys_are_refused() {
    let (dir, key, _) = fresh();
    let stranger = Jwks {
        keys: vec![self::key().public_jwk()],
    };
    let report = run(dir.path(), &stranger);
    assert_eq!(report.checks[checks::HUB_SIGNATURE].failed, N);
    assert_eq!(report.checks[checks::CHECKPOINT_SIGNATURE].failed, 4);

    let mut expired = key.public_jwk();
    expired.valid_until = Some("2020-01-01T00:00:00Z".into());
    let report = run(
        dir.path(),
        &Jwks {
            keys: vec![expired],
        },
    );
    // Every record, and every one of the 4 checkpoints (signed after its last entry).
    assert_eq!(report.checks[checks::KEY_VALIDITY].failed, N + 4);
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.detail.starts_with("checkpoint of size 40"))
    );
}

#[test]
fn a_changed_body_is_caught_and_bodies_are_sealed() {
    let (dir, _, pinned) = fresh();
    let mut l = lines(dir.path(), "bodies.jsonl");
    // Bodies are sealed: the recipient's member code is not there in clear.
    assert!(
        !std::fs::read_to_string(dir.path().join("bodies.jsonl"))
            .unwrap()
            .contains("G08")
    );
    // One flipped ciphertext bit: the body no longer opens against its commitment.
    let mut line: serde_json::Value = serde_json::from_str(&l[3]).unwrap();
    let mut bytes = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        line["body"].as_str().unwrap(),
    )
    .unwrap();
    bytes[0] ^= 1;
    line["body"] = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes).into();
    l[3] = line.to_string();
    write_lines(dir.path(), "bodies.jsonl", &l);
    assert_eq!(
        failed(&run(dir.path(), &pinned), checks::BODY_HASH),
        [Some(3)]
    );
    // Without the data key the change is still caught: the entry commits to
    // the stored bytes too. The bodies themselves are not opened.
    let report = verify(dir.path(), &pinned, &Options::default(), &|_, _| {}).unwrap();
    assert_eq!(failed(&report, checks::STORED_BODY), [Some(3)]);
    assert!(!report.checks.contains_key(checks::BODY_HASH));
}

#[test]
fn prove_checks_an_exchanges_inclusion() {
    let (dir, _, pinned) = fresh();
    let id = hub_audit::synthetic::exchange_id(12).to_string();
    let proof = hub_audit::prove(dir.path(), &pinned, &id).unwrap();
    assert_eq!(proof.size, 40);
    // The event and its two receipts.
    let indexes: Vec<u64> = proof.proofs.iter().map(|p| p.index).collect();
    assert_eq!(indexes, [12, 13, 14]);
    assert!(
        hub_audit::prove(
            dir.path(),
            &pinned,
            &ExchangeId::from_parts(1, [0; 10]).to_string()
        )
        .is_err()
    );
}

#[test]
fn prove_gives_valid_proofs_anywhere_in_a_log_of_several_blocks() {
    // Four 256-entry blocks, the last one partial.
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    let pinned = hub_audit::synthetic::write_bundle(
        dir.path(),
        ORIGIN,
        &key,
        &data_key(),
        1_000,
        100,
        &|_| {},
    )
    .unwrap();
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    };
    // The first exchange, one across the first two blocks, one inside a
    // block, the last one.
    for (event, indexes) in [
        (0, [0, 1, 2]),
        (255, [255, 256, 257]),
        (600, [600, 601, 602]),
        (996, [996, 997, 998]),
    ] {
        let id = hub_audit::synthetic::exchange_id(event).to_string();
        let report = hub_audit::prove(dir.path(), &pinned, &id).unwrap();
        assert_eq!(report.size, 1_000);
        let root: [u8; 32] = b64(&report.root).try_into().unwrap();
        let found: Vec<u64> = report.proofs.iter().map(|p| p.index).collect();
        assert_eq!(found, indexes);
        for p in &report.proofs {
            let leaf: [u8; 32] = b64(&p.leaf_hash).try_into().unwrap();
            let path: Vec<Vec<u8>> = p.proof.iter().map(|h| b64(h)).collect();
            hub_core::merkle::verify_inclusion(p.index, report.size, &leaf, &path, &root)
                .unwrap_or_else(|e| panic!("entry {}: {e}", p.index));
        }
    }
}

#[test]
fn integrity_only_still_catches_a_changed_byte_without_checking_signatures() {
    let (dir, _, pinned) = fresh();
    let mut l = lines(dir.path(), "entries.jsonl");
    l[17] = l[17].replacen("\"000.00.00.G", "\"000.00.00.H", 1);
    write_lines(dir.path(), "entries.jsonl", &l);
    let report = verify(
        dir.path(),
        &pinned,
        &Options {
            depth: Depth::Integrity,
            ..Options::default()
        },
        &|_, _| {},
    )
    .unwrap();
    assert!(!report.checks.contains_key(checks::HUB_SIGNATURE));
    assert_eq!(failed(&report, checks::CHAIN), [Some(18)]);
    assert_eq!(
        failed(&report, checks::CHECKPOINT_ROOT),
        [Some(19), Some(29), Some(39)]
    );
}

#[test]
fn a_witness_quorum_can_be_demanded() {
    let (dir, _, pinned) = fresh();
    let witness_key = key();
    let witness = hub_core::note::cosigner_for("witness.invalid/w1", &witness_key).unwrap();
    let options = Options {
        witnesses: vec![witness.clone()],
        quorum: 1,
        ..Options::default()
    };
    // Nobody cosigned yet.
    let report = verify(dir.path(), &pinned, &options, &|_, _| {}).unwrap();
    assert_eq!(failed(&report, checks::WITNESS_QUORUM), [None]);
    // The witness cosigns the latest checkpoint.
    let mut l = lines(dir.path(), "checkpoints.jsonl");
    let mut last: hub_audit::BundleCheckpoint = serde_json::from_str(l.last().unwrap()).unwrap();
    let body = last.note.split("\n\n").next().unwrap().to_owned() + "\n";
    last.note.push_str(
        &hub_core::note::cosign(&body, "witness.invalid/w1", &witness_key, 1_800_000_000).unwrap(),
    );
    *l.last_mut().unwrap() = serde_json::to_string(&last).unwrap();
    write_lines(dir.path(), "checkpoints.jsonl", &l);
    let report = verify(dir.path(), &pinned, &options, &|_, _| {}).unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    // Two required, one present.
    let other = hub_core::note::cosigner_for("witness.invalid/w2", &key()).unwrap();
    let options = Options {
        witnesses: vec![witness, other],
        quorum: 2,
        ..Options::default()
    };
    let report = verify(dir.path(), &pinned, &options, &|_, _| {}).unwrap();
    assert_eq!(failed(&report, checks::WITNESS_QUORUM), [None]);
}

#[test]
fn a_seal_moved_to_another_record_of_its_batch_is_caught() {
    let (dir, _, pinned) = fresh();
    let mut entries = lines(dir.path(), "entries.jsonl");
    let mut records: Vec<serde_json::Value> = entries
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // One batch, one signature: only the paths differ.
    assert_eq!(
        records[3]["hub_seal"]["signature"],
        records[5]["hub_seal"]["signature"]
    );
    let (three, five) = (records[3]["hub_seal"].take(), records[5]["hub_seal"].take());
    records[3]["hub_seal"] = five;
    records[5]["hub_seal"] = three;
    for i in [3, 5] {
        entries[i] = String::from_utf8(hub_core::jcs::canonicalize(&records[i]).unwrap()).unwrap();
    }
    write_lines(dir.path(), "entries.jsonl", &entries);
    let report = run(dir.path(), &pinned);
    // The statements, hence the leaves, the chain and the checkpoints, are
    // untouched: the seals alone tell.
    assert_eq!(
        failed(&report, checks::HUB_SIGNATURE),
        vec![Some(3), Some(5)]
    );
    assert_eq!(report.findings.len(), 2, "{:?}", report.findings);
}

/// A log the hub signed whole, whose entries contradict each other: only
/// reading them against each other shows it.
#[test]
fn receipts_that_do_not_match_what_was_delivered_are_caught() {
    use hub_audit::synthetic::{PUBLISHER, SUBSCRIBERS, exchange_id};
    use hub_core::log::{EntryDraft, EntryKind};
    let dir = tempfile::tempdir().unwrap();
    let key = key();
    // Events at 0, 3, 6 (each acknowledged by both) and 9 (by nobody yet).
    let mut entries: Vec<(EntryDraft, serde_json::Value)> =
        hub_audit::synthetic::events_acknowledged(10)
            .unwrap()
            .collect();
    let receipt = |sender: &str, exchange: u64, names: u64| {
        let (mut draft, body) = entries[1].clone();
        assert_eq!(draft.kind, EntryKind::Receipt);
        draft.sender = sender.parse().unwrap();
        draft.exchange_id = exchange_id(exchange);
        draft.refers_to = Some(names);
        (draft, body)
    };
    let tampered = [
        receipt(SUBSCRIBERS[0], 9, 9), // 10: tax acknowledges event 9
        receipt(SUBSCRIBERS[0], 9, 9), // 11: ... twice
        receipt(PUBLISHER, 9, 9),      // 12: its publisher, never sent it
        receipt(SUBSCRIBERS[1], 0, 9), // 13: a receipt of exchange 0 naming event 9
        receipt(SUBSCRIBERS[1], 3, 3), // 14: event 3 was acknowledged by both
    ];
    entries.extend(tampered);
    let pinned =
        hub_audit::synthetic::write_log(dir.path(), ORIGIN, &key, &data_key(), entries, 5, &|_| {})
            .unwrap();
    let report = run(dir.path(), &pinned);
    let details: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
    assert_eq!(
        details,
        [
            format!(
                "entry 11: reference: {} acknowledged entry 9 already",
                SUBSCRIBERS[0]
            ),
            format!(
                "entry 12: reference: acknowledged by {PUBLISHER}, to whom entry 9 was not delivered"
            ),
            format!(
                "entry 13: reference: refers to entry 9 of exchange {}, not of its own exchange {}",
                exchange_id(9),
                exchange_id(0)
            ),
            "entry 14: reference: every recipient of entry 3 acknowledged it already".to_owned(),
        ]
    );
    assert_eq!(report.checks[checks::REFERENCE].passed, 11);
}
