//! Synthetic bundles for tests and benchmarks: a log of receipt entries
//! sealed and signed exactly as the hub seals them, with checkpoints.

use std::path::Path;

use hub_core::body::{DataKey, commitment};
use hub_core::ids::{ExchangeId, ServiceName};
use hub_core::jcs;
use hub_core::jws::{Jwks, SigningKey};
use hub_core::log::{EntryDraft, EntryKind, place, seal_batch};
use hub_core::merkle::Frontier;
use hub_core::note::{self, Checkpoint};
use serde_json::json;
use time::OffsetDateTime;

use crate::{BundleCheckpoint, BundleError, BundleWriter};

/// The exchange id of synthetic entry `i`.
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

/// Write a bundle of `entries` entries to `dir`, sealed in batches of
/// [`GROUP_COMMIT`], with a checkpoint every `checkpoint_every` entries and
/// at the end, bodies sealed with `data_key`; returns the keys to pin.
pub fn write_bundle(
    dir: &Path,
    origin: &str,
    key: &SigningKey,
    data_key: &DataKey,
    entries: u64,
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
    let mut checkpoints = Vec::new();
    let t0 = OffsetDateTime::now_utc();
    let tax: hub_core::ids::Member = "000.00.00.G08/tax"
        .parse()
        .map_err(|e: hub_core::ids::IdError| invalid(e.to_string()))?;
    let service =
        ServiceName::parse("enterprise.registered").map_err(|e| invalid(e.to_string()))?;
    for i in 0..entries {
        let body = json!({"acknowledged": exchange_id(i), "recipient": "000.00.00.G08/tax"});
        let plain = jcs::canonicalize(&body).map_err(|e| invalid(e.to_string()))?;
        let mut salt = [0u8; 16];
        salt[8..].copy_from_slice(&i.to_be_bytes());
        let body_hash = commitment(&salt, &plain);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let sealed_body = data_key.seal(&salt, &plain, &body_hash, nonce);
        let draft = EntryDraft {
            service: Some(service.clone()),
            version: Some(1),
            body_hash,
            refers_to: i.checked_sub(1),
            sealed_body_hash: Some(sealed_body.hash()),
            ..EntryDraft::new(EntryKind::Receipt, exchange_id(i), tax.clone())
        };
        let placed = place(draft, i, &prev, t0).map_err(|e| invalid(e.to_string()))?;
        frontier.push(placed.leaf_hash);
        prev = placed.leaf_hash;
        batch.push((placed, sealed_body));
        if batch.len() == GROUP_COMMIT || i + 1 == entries {
            let (placed, bodies): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
            let sealed = seal_batch(placed, key).map_err(|e| invalid(e.to_string()))?;
            for (sealed, body) in sealed.iter().zip(&bodies) {
                writer.push(&String::from_utf8_lossy(&sealed.canonical), Some(body))?;
            }
        }
        if (i + 1) % checkpoint_every.max(1) == 0 || i + 1 == entries {
            checkpoints.push(checkpoint(origin, key, i + 1, frontier.root())?);
        }
        if (i + 1).is_multiple_of(10_000) {
            progress(i + 1);
        }
    }
    writer.finish(
        origin,
        "2026-11-22T00:00:00.000Z",
        &checkpoints,
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
    Ok(paths)
}
