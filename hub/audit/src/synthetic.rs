//! Synthetic bundles for tests and benchmarks: a log of events, each
//! followed by its two subscribers' receipts, sealed and signed exactly as
//! the hub seals them, with checkpoints.

use std::path::Path;

use hub_core::body::{DataKey, commitment};
use hub_core::ids::{ExchangeId, IdError, Member, ServiceName};
use hub_core::jcs;
use hub_core::jws::{Jwks, SigningKey};
use hub_core::log::{EntryDraft, EntryKind, place, seal_batch};
use hub_core::merkle::Frontier;
use hub_core::note::{self, Checkpoint};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::{BundleCheckpoint, BundleError, BundleWriter};

/// Who publishes every synthetic event.
pub const PUBLISHER: &str = "000.00.00.G09/enterprise-registry";
/// The two subscribers that acknowledge every synthetic event.
pub const SUBSCRIBERS: [&str; 2] = ["000.00.00.G08/tax", "000.00.00.G22/social-insurance"];

/// What [`write_keyed_bundle`] leaves beside a bundle to say how its log is
/// laid out, so that a benchmark reuses only a bundle of today's layout.
const LAYOUT_FILE: &str = "synthetic-layout";
const LAYOUT: &str = "events-each-acknowledged-by-two/1";

/// The exchange id of the synthetic event at entry `i` (`i` a multiple of
/// 3), which the two receipts after it share.
pub fn exchange_id(i: u64) -> ExchangeId {
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&i.to_be_bytes());
    ExchangeId::from_parts(1_800_000_000_000 + i, random)
}

/// A signed checkpoint of `origin` at `size` with `root`.
pub fn checkpoint(
    origin: &str,
    key: &SigningKey,
    size: u64,
    root: [u8; 32],
) -> Result<BundleCheckpoint, BundleError> {
    let body = Checkpoint {
        origin: origin.into(),
        size,
        root,
    }
    .body();
    let note = note::sign(&body, origin, key).map_err(|e| BundleError::Invalid {
        path: "checkpoint".into(),
        message: e.to_string(),
    })?;
    Ok(BundleCheckpoint { size, note })
}

/// How many entries the synthetic log seals with one signature, as a
/// hub's group commit under load does.
const GROUP_COMMIT: usize = 100;

/// `entries` synthetic entries: events of `enterprise.registered`, each
/// followed by its two subscribers' receipts; with each, its body.
pub fn events_acknowledged(
    entries: u64,
) -> Result<impl Iterator<Item = (EntryDraft, Value)>, IdError> {
    let publisher: Member = PUBLISHER.parse()?;
    let subscribers: [Member; 2] = [SUBSCRIBERS[0].parse()?, SUBSCRIBERS[1].parse()?];
    let service = ServiceName::parse("enterprise.registered")?;
    Ok((0..entries).map(move |i| {
        let event = i - i % 3;
        let id = exchange_id(event);
        let (body, draft) = match i % 3 {
            0 => (
                json!({"payload": {"enterprise_code": format!("{:010}", i / 3)}}),
                EntryDraft {
                    recipients: subscribers.to_vec(),
                    ..EntryDraft::new(EntryKind::Event, id, publisher.clone())
                },
            ),
            n => {
                let recipient = &subscribers[usize::from(n == 2)];
                (
                    json!({"acknowledged": id, "recipient": recipient}),
                    EntryDraft {
                        refers_to: Some(event),
                        ..EntryDraft::new(EntryKind::Receipt, id, recipient.clone())
                    },
                )
            }
        };
        let draft = EntryDraft {
            service: Some(service.clone()),
            version: Some(1),
            ..draft
        };
        (draft, body)
    }))
}

/// Write a bundle of [`events_acknowledged`] to `dir`: see [`write_log`].
pub fn write_bundle(
    dir: &Path,
    origin: &str,
    key: &SigningKey,
    data_key: &DataKey,
    entries: u64,
    checkpoint_every: u64,
    progress: &dyn Fn(u64),
) -> Result<Jwks, BundleError> {
    write_log(
        dir,
        origin,
        key,
        data_key,
        events_acknowledged(entries).map_err(|e| BundleError::Invalid {
            path: dir.to_owned(),
            message: e.to_string(),
        })?,
        checkpoint_every,
        progress,
    )
}

/// Write a bundle of `entries` (each draft with its body) to `dir`: the
/// bodies committed to and sealed with `data_key`, the entries sealed in
/// batches of 100 (`GROUP_COMMIT`) and signed with `key`, a checkpoint every
/// `checkpoint_every` entries and at the end; returns the keys to pin.
pub fn write_log(
    dir: &Path,
    origin: &str,
    key: &SigningKey,
    data_key: &DataKey,
    entries: impl IntoIterator<Item = (EntryDraft, Value)>,
    checkpoint_every: u64,
    progress: &dyn Fn(u64),
) -> Result<Jwks, BundleError> {
    let invalid = |e: String| BundleError::Invalid {
        path: dir.to_owned(),
        message: e,
    };
    let mut writer = BundleWriter::create(dir, true)?;
    let mut frontier = Frontier::new();
    let mut prev = [0u8; 32];
    let mut batch = Vec::with_capacity(GROUP_COMMIT);
    let t0 = OffsetDateTime::now_utc();
    let mut entries = entries.into_iter().peekable();
    let mut i = 0u64;
    while let Some((draft, body)) = entries.next() {
        let last = entries.peek().is_none();
        let plain = jcs::canonicalize(&body).map_err(|e| invalid(e.to_string()))?;
        let mut salt = [0u8; 16];
        salt[8..].copy_from_slice(&i.to_be_bytes());
        let body_hash = commitment(&salt, &plain);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let sealed_body = data_key.seal(&salt, &plain, &body_hash, nonce);
        let draft = EntryDraft {
            body_hash,
            sealed_body_hash: Some(sealed_body.hash()),
            ..draft
        };
        let placed = place(draft, i, &prev, t0).map_err(|e| invalid(e.to_string()))?;
        frontier.push(placed.leaf_hash);
        prev = placed.leaf_hash;
        batch.push((placed, sealed_body));
        if batch.len() == GROUP_COMMIT || last {
            let (placed, bodies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            let sealed = seal_batch(placed, key).map_err(|e| invalid(e.to_string()))?;
            for (sealed, body) in sealed.iter().zip(&bodies) {
                writer.push(&String::from_utf8_lossy(&sealed.canonical), Some(body))?;
            }
        }
        i += 1;
        if i.is_multiple_of(checkpoint_every.max(1)) || last {
            writer.push_checkpoint(&checkpoint(origin, key, i, frontier.root())?)?;
        }
        if i.is_multiple_of(10_000) {
            progress(i);
        }
    }
    writer.finish(
        origin,
        "2026-11-22T00:00:00.000Z",
        &crate::RegistrySnapshot::default(),
        &[],
    )?;
    Ok(Jwks {
        keys: vec![key.public_jwk()],
    })
}

/// Where [`write_keyed_bundle`] put the keys an auditor needs.
#[derive(Debug, Clone)]
pub struct KeyedBundle {
    /// The hub key to pin (`--jwks`).
    pub pinned_jwks: std::path::PathBuf,
    /// The key that opens the bodies (`--data-key`), base64.
    pub data_key: std::path::PathBuf,
}

/// [`write_bundle`] with a fresh signing key and data key drawn from `rng`,
/// written beside the bundle as `pinned-jwks.json` and `data.key`: a bundle
/// `hub audit verify` can check end to end, for benchmarks.
pub fn write_keyed_bundle(
    dir: &Path,
    entries: u64,
    checkpoint_every: u64,
    rng: &dyn ring::rand::SecureRandom,
    progress: &dyn Fn(u64),
) -> Result<KeyedBundle, BundleError> {
    let invalid = |e: String| BundleError::Invalid {
        path: dir.to_owned(),
        message: e,
    };
    let (key, _) = SigningKey::generate(rng).map_err(|e| invalid(e.to_string()))?;
    let mut data_key = [0u8; 32];
    rng.fill(&mut data_key)
        .map_err(|_| invalid("no randomness".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| invalid(e.to_string()))?;
    let paths = KeyedBundle {
        pinned_jwks: dir.join("pinned-jwks.json"),
        data_key: dir.join("data.key"),
    };
    std::fs::write(
        &paths.data_key,
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, data_key),
    )
    .map_err(|e| invalid(e.to_string()))?;
    let jwks = write_bundle(
        dir,
        "bench.invalid/log",
        &key,
        &DataKey::from_bytes(&data_key),
        entries,
        checkpoint_every,
        progress,
    )?;
    let jwks = serde_json::to_string(&jwks).map_err(|e| invalid(e.to_string()))?;
    std::fs::write(&paths.pinned_jwks, jwks).map_err(|e| invalid(e.to_string()))?;
    std::fs::write(dir.join(LAYOUT_FILE), LAYOUT).map_err(|e| invalid(e.to_string()))?;
    Ok(paths)
}

/// Whether `dir` holds a whole bundle of `entries` entries that
/// [`write_keyed_bundle`] wrote in today's layout, with its keys.
pub fn is_reusable(dir: &Path, entries: u64) -> bool {
    dir.join("pinned-jwks.json").exists()
        && dir.join("data.key").exists()
        && std::fs::read_to_string(dir.join(LAYOUT_FILE)).is_ok_and(|l| l == LAYOUT)
        && crate::manifest(dir).is_ok_and(|m| m.entries == entries)
}
