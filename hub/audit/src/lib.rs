//! The auditor's toolkit: the exported log bundle and its offline
//! verification, trusting nothing but the hub's pinned public keys.
//!
//! A bundle is a directory:
//!
//! | file | content |
//! | --- | --- |
//! | `manifest.json` | format, log origin, number of entries, whether bodies are included |
//! | `entries.jsonl` | one record per line, exactly as logged (RFC 8785 canonical JSON), from index 0 |
//! | `bodies.jsonl` | optional; per line `{"index": i, "body": "<base64>"}`, in entry order |
//! | `checkpoints.jsonl` | per line `{"size": n, "note": "<signed note>"}`, by size |
//! | `registry.json` | the registry at export: agencies (with their envelope-signing keys), services, grants |
//! | `hub-key-handovers.json` | the hub key's rotations, each new key signed by the one it retired (`hub_core::handover`); absent in older bundles |
//!
//! [`verify`] follows the hand-overs from the pinned keys to the keys that
//! came after them, then checks every checkpoint signature against those,
//! that checkpoint sizes never decrease and no two disagree, that the tree
//! recomputed from the entries has each checkpoint's root, every entry's
//! canonical form, index, chain link, hub signature and key validity, and,
//! where bodies are present, every body hash, agency signature and schema.
#![forbid(unsafe_code)]

pub mod references;
pub mod registry;
pub mod replay;
pub mod synthetic;

pub use registry::RegistrySnapshot;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::references::{Link, References};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hub_core::body::{DataKey, SealedBody};
use hub_core::handover::{self, HandoverError, KeyHandover};
use hub_core::hash::Hash;
use hub_core::jcs;
use hub_core::jws::{self, Jwk, Jwks};
use hub_core::log::{BatchSeal, SEAL_MEMBER, SealVerifier, canonical_record_leaf_hash};
use hub_core::merkle::{self, Blocks, Frontier, SubtreeRoots, TILE_WIDTH};
use hub_core::note::{self, Checkpoint, Verifier};
use hub_core::schema::Catalog;
use hub_core::timefmt::parse_rfc3339;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The bundle format this crate reads and writes.
pub const FORMAT: &str = "hub-audit-bundle/1";

/// The most findings a report lists; the rest are counted.
const MAX_FINDINGS: usize = 1000;

/// A bundle cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn invalid(path: &Path, message: impl std::fmt::Display) -> BundleError {
    BundleError::Invalid {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub origin: String,
    pub entries: u64,
    pub bodies: bool,
    pub exported_at: String,
}

/// One line of `checkpoints.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleCheckpoint {
    pub size: u64,
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BodyLine {
    pub(crate) index: u64,
    /// The data key's id.
    pub(crate) key_id: String,
    /// base64 AES-GCM nonce.
    pub(crate) nonce: String,
    /// base64 `AES-256-GCM(salt || body)`.
    pub(crate) body: String,
}

impl BodyLine {
    pub(crate) fn sealed(&self) -> Option<SealedBody> {
        Some(SealedBody {
            key_id: self.key_id.clone(),
            nonce: STANDARD.decode(&self.nonce).ok()?.try_into().ok()?,
            ciphertext: STANDARD.decode(&self.body).ok()?,
        })
    }
}

/// Writes a bundle entry by entry.
pub struct BundleWriter {
    dir: PathBuf,
    entries: BufWriter<File>,
    bodies: Option<BufWriter<File>>,
    checkpoints: BufWriter<File>,
    count: u64,
}

impl std::fmt::Debug for BundleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BundleWriter({}, {} entries)",
            self.dir.display(),
            self.count
        )
    }
}

fn create(path: &Path) -> Result<BufWriter<File>, BundleError> {
    Ok(BufWriter::new(File::create(path).map_err(io(path))?))
}

impl BundleWriter {
    /// Start a bundle in `dir` (created; it must not hold a bundle already).
    pub fn create(dir: &Path, with_bodies: bool) -> Result<Self, BundleError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let manifest = dir.join("manifest.json");
        if manifest.exists() {
            return Err(invalid(&manifest, "a bundle is already there"));
        }
        Ok(Self {
            entries: create(&dir.join("entries.jsonl"))?,
            bodies: if with_bodies {
                Some(create(&dir.join("bodies.jsonl"))?)
            } else {
                None
            },
            checkpoints: create(&dir.join("checkpoints.jsonl"))?,
            dir: dir.to_owned(),
            count: 0,
        })
    }

    /// Append the next checkpoint (by size) with its cosignature lines.
    pub fn push_checkpoint(&mut self, checkpoint: &BundleCheckpoint) -> Result<(), BundleError> {
        let path = self.dir.join("checkpoints.jsonl");
        let line = serde_json::to_string(checkpoint).map_err(|e| invalid(&path, e))?;
        writeln!(self.checkpoints, "{line}").map_err(io(&path))
    }

    /// Append the next entry (its canonical record) and, if kept, its body.
    pub fn push(&mut self, record: &str, body: Option<&SealedBody>) -> Result<(), BundleError> {
        let path = self.dir.join("entries.jsonl");
        writeln!(self.entries, "{record}").map_err(io(&path))?;
        if let (Some(out), Some(body)) = (self.bodies.as_mut(), body) {
            let line = serde_json::to_string(&BodyLine {
                index: self.count,
                key_id: body.key_id.clone(),
                nonce: STANDARD.encode(body.nonce),
                body: STANDARD.encode(&body.ciphertext),
            })
            .map_err(|e| invalid(&path, e))?;
            writeln!(out, "{line}").map_err(io(&self.dir.join("bodies.jsonl")))?;
        }
        self.count += 1;
        Ok(())
    }

    /// Write the agency keys, the hub key's hand-overs and the manifest,
    /// and flush.
    pub fn finish(
        mut self,
        origin: &str,
        exported_at: &str,
        registry: &RegistrySnapshot,
        key_handovers: &[KeyHandover],
    ) -> Result<Manifest, BundleError> {
        self.entries
            .flush()
            .map_err(io(&self.dir.join("entries.jsonl")))?;
        if let Some(b) = self.bodies.as_mut() {
            b.flush().map_err(io(&self.dir.join("bodies.jsonl")))?;
        }
        self.checkpoints
            .flush()
            .map_err(io(&self.dir.join("checkpoints.jsonl")))?;
        let path = self.dir.join("registry.json");
        let text = serde_json::to_string_pretty(registry).map_err(|e| invalid(&path, e))?;
        std::fs::write(&path, text).map_err(io(&path))?;
        let path = self.dir.join(KEY_HANDOVERS);
        let text = serde_json::to_string_pretty(key_handovers).map_err(|e| invalid(&path, e))?;
        std::fs::write(&path, text).map_err(io(&path))?;
        let manifest = Manifest {
            format: FORMAT.into(),
            origin: origin.into(),
            entries: self.count,
            bodies: self.bodies.is_some(),
            exported_at: exported_at.into(),
        };
        let path = self.dir.join("manifest.json");
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| invalid(&path, e))?;
        std::fs::write(&path, text).map_err(io(&path))?;
        Ok(manifest)
    }
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BundleError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_json::from_str(&text).map_err(|e| invalid(path, e))
}

fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, BundleError> {
    let file = File::open(path).map_err(io(path))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| invalid(path, format!("line {}: {e}", n + 1)))?,
        );
    }
    Ok(out)
}

/// The bundle file with the hub key's hand-overs.
const KEY_HANDOVERS: &str = "hub-key-handovers.json";

/// The hub keys the bundle in `dir` leads to from `pinned`: the pinned ones
/// and every key handed over to from them (`hub_core::handover::follow`),
/// with each hand-over's outcome. A bundle without the file (exported
/// before hand-overs existed) has none.
pub fn hub_keys(
    dir: &Path,
    pinned: &Jwks,
) -> Result<(Jwks, Vec<Result<(), HandoverError>>), BundleError> {
    let path = dir.join(KEY_HANDOVERS);
    let handovers: Vec<KeyHandover> = if path.exists() {
        read_json(&path)?
    } else {
        Vec::new()
    };
    Ok(handover::follow(pinned, &handovers))
}

/// The manifest of the bundle in `dir`.
pub fn manifest(dir: &Path) -> Result<Manifest, BundleError> {
    let path = dir.join("manifest.json");
    let m: Manifest = read_json(&path)?;
    if m.format != FORMAT {
        return Err(invalid(
            &path,
            format!("format {:?}, expected {FORMAT:?}", m.format),
        ));
    }
    Ok(m)
}

/// The names of the checks, as reports and findings use them.
pub mod checks {
    pub const CANONICAL_FORM: &str = "canonical_form";
    pub const SEQUENCE: &str = "sequence";
    pub const CHAIN: &str = "chain";
    pub const HUB_SIGNATURE: &str = "hub_signature";
    pub const KEY_VALIDITY: &str = "key_validity";
    pub const KEY_HANDOVER: &str = "key_handover";
    pub const BODY_HASH: &str = "body_hash";
    pub const STORED_BODY: &str = "stored_body";
    pub const SENDER_SIGNATURE: &str = "sender_signature";
    pub const SCHEMA: &str = "schema";
    pub const REFERENCE: &str = "reference";
    pub const CHECKPOINT_SIGNATURE: &str = "checkpoint_signature";
    pub const CHECKPOINT_ORDER: &str = "checkpoint_order";
    pub const FORK: &str = "fork";
    pub const CHECKPOINT_ROOT: &str = "checkpoint_root";
    pub const CHECKPOINT_CONSISTENCY: &str = "checkpoint_consistency";
    pub const TRUNCATED: &str = "truncated";
    pub const WITNESS_QUORUM: &str = "witness_quorum";
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The entry index, or the checkpoint size for checkpoint checks.
    pub index: Option<u64>,
    pub check: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "entry {i}: {}: {}", self.check, self.detail),
            None => write!(f, "{}: {}", self.check, self.detail),
        }
    }
}

/// Counts per check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub origin: String,
    pub entries: u64,
    pub checkpoints: u64,
    pub checks: BTreeMap<&'static str, Tally>,
    pub findings: Vec<Finding>,
    pub findings_not_listed: u64,
    /// Entries after the last checkpoint: checked one by one, but not yet
    /// under a signed root.
    pub entries_after_last_checkpoint: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    fn record(&mut self, check: &'static str, index: Option<u64>, result: Result<(), String>) {
        let tally = self.checks.entry(check).or_default();
        match result {
            Ok(()) => tally.passed += 1,
            Err(detail) => {
                tally.failed += 1;
                if self.findings.len() < MAX_FINDINGS {
                    self.findings.push(Finding {
                        index,
                        check,
                        detail,
                    });
                } else {
                    self.findings_not_listed += 1;
                }
            }
        }
    }
}

/// The checkpoint verifier for `origin` derived from the pinned JWKS.
pub fn checkpoint_verifiers(origin: &str, pinned: &Jwks) -> Vec<Verifier> {
    pinned
        .keys
        .iter()
        .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
        .filter_map(|k| URL_SAFE_NO_PAD.decode(&k.x).ok())
        .filter_map(|x| <[u8; 32]>::try_from(x).ok())
        .filter_map(|x| Verifier::new(origin, x).ok())
        .collect()
}

/// The pinned keys, in order, with the id their note signatures carry.
fn note_key_ids<'a>(origin: &str, pinned: &'a Jwks) -> Vec<([u8; 4], &'a Jwk)> {
    pinned
        .keys
        .iter()
        .flat_map(|jwk| {
            checkpoint_verifiers(
                origin,
                &Jwks {
                    keys: vec![jwk.clone()],
                },
            )
            .into_iter()
            .map(move |v| (v.key_id, jwk))
        })
        .collect()
}

fn within_validity(jwk: &Jwk, time: &str) -> Result<(), String> {
    let t = parse_rfc3339(time).ok_or_else(|| format!("unreadable time {time:?}"))?;
    let bound = |b: &Option<String>| b.as_deref().and_then(parse_rfc3339);
    if bound(&jwk.valid_from).is_some_and(|from| t < from)
        || bound(&jwk.valid_until).is_some_and(|until| t > until)
    {
        return Err(format!("key {} was not valid at {time}", jwk.kid));
    }
    Ok(())
}

/// What [`verify`] checks beyond the pinned hub keys.
#[derive(Debug, Clone)]
pub struct Options {
    pub depth: Depth,
    /// Witnesses whose cosignatures count (cosignature verifier keys).
    pub witnesses: Vec<Verifier>,
    /// How many of them must have cosigned the latest checkpoint.
    pub quorum: usize,
    /// Opens the bodies; without it the bodies (sealed) are not checked.
    pub data_key: Option<std::sync::Arc<DataKey>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            depth: Depth::Full,
            witnesses: Vec::new(),
            quorum: 0,
            data_key: None,
        }
    }
}

/// Verify the bundle in `dir` against the `pinned` hub keys and `options`.
/// `progress` is called with (entries done, entries in all).
pub fn verify(
    dir: &Path,
    pinned: &Jwks,
    options: &Options,
    progress: &dyn Fn(u64, u64),
) -> Result<Report, BundleError> {
    let depth = options.depth;
    let manifest = manifest(dir)?;
    let mut report = Report {
        origin: manifest.origin.clone(),
        ..Report::default()
    };
    // From here on, "pinned" is what the pinned keys vouch for.
    let (trusted, handovers) = hub_keys(dir, pinned)?;
    for outcome in handovers {
        report.record(
            checks::KEY_HANDOVER,
            None,
            outcome.map_err(|e| e.to_string()),
        );
    }
    let pinned = &trusted;
    let mut verifiers = checkpoint_verifiers(&manifest.origin, pinned);
    verifiers.extend(options.witnesses.iter().cloned());
    let mut latest_cosigners: (u64, Vec<String>) = (0, Vec::new());
    let mut checkpoint_keys: BTreeMap<u64, &Jwk> = BTreeMap::new();
    let registry: RegistrySnapshot = read_json(&dir.join("registry.json"))?;
    let agency_keys = registry.agency_keys();
    let catalog = Catalog::builtin().map_err(|e| invalid(dir, e))?;

    // Checkpoints: signatures, order, forks.
    let raw: Vec<BundleCheckpoint> = read_lines(&dir.join("checkpoints.jsonl"))?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // The signatures on every core (one Ed25519 verification or more per
    // checkpoint, and a hub may sign one a second); the rest in order.
    let opened = par_map(&raw, threads, |_, c| {
        open_checkpoint(c, &verifiers, &manifest.origin)
    })
    .map_err(|e| invalid(dir, e))?;
    let pinned_ids = note_key_ids(&manifest.origin, pinned);
    let mut checkpoints: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut last_size = 0;
    for (c, opened) in raw.iter().zip(opened) {
        report.checkpoints += 1;
        let (cp, signers) = match opened {
            Ok(OpenedCheckpoint {
                checkpoint: cp,
                cosigners,
                signers,
            }) => {
                report.record(checks::CHECKPOINT_SIGNATURE, None, Ok(()));
                if cp.size >= latest_cosigners.0 {
                    latest_cosigners = (cp.size, cosigners);
                }
                (cp, signers)
            }
            Err(e) => {
                report.record(
                    checks::CHECKPOINT_SIGNATURE,
                    None,
                    Err(format!("checkpoint of size {}: {e}", c.size)),
                );
                continue;
            }
        };
        let order = if cp.size < last_size {
            Err(format!(
                "checkpoint of size {} follows one of size {last_size}",
                cp.size
            ))
        } else {
            Ok(())
        };
        report.record(checks::CHECKPOINT_ORDER, None, order);
        last_size = last_size.max(cp.size);
        match checkpoints.get(&cp.size) {
            Some(root) if *root != cp.root => report.record(
                checks::FORK,
                None,
                Err(format!(
                    "two signed checkpoints of size {} with different roots",
                    cp.size
                )),
            ),
            _ => {
                checkpoints.insert(cp.size, cp.root);
                // The first pinned key whose signature is on it.
                if let Some((_, jwk)) = pinned_ids.iter().find(|(id, _)| signers.contains(id)) {
                    checkpoint_keys.insert(cp.size, jwk);
                }
                report.record(checks::FORK, None, Ok(()));
            }
        }
    }

    // Entries, in batches: the independent checks of a batch run on every
    // core, then the order-dependent ones (sequence, chain, tree) in order.
    let ctx = Ctx {
        pinned,
        seals: SealVerifier::new(),
        data_key: options.data_key.as_deref(),
        agencies: &agency_keys,
        catalog: &catalog,
        depth,
    };
    let entries_path = dir.join("entries.jsonl");
    let file = File::open(&entries_path).map_err(io(&entries_path))?;
    let mut lines = BufReader::new(file).lines();
    let bodies_path = dir.join("bodies.jsonl");
    let mut bodies = if manifest.bodies && depth == Depth::Full {
        let f = File::open(&bodies_path).map_err(io(&bodies_path))?;
        Some(BufReader::new(f).lines())
    } else {
        None
    };
    let mut pending_body: Option<BodyLine> = None;
    let mut tree = CheckpointedTree::default();
    let mut references = References::new();
    let mut prev: Hash = [0; 32];
    let mut expected: u64 = 0;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        for line in lines.by_ref().take(BATCH) {
            batch.push(line.map_err(io(&entries_path))?);
        }
        if batch.is_empty() {
            break;
        }
        let first = expected;
        let mut batch_bodies: Vec<Option<BodyLine>> = vec![None; batch.len()];
        if let Some(body_lines) = bodies.as_mut() {
            loop {
                if pending_body.is_none() {
                    match body_lines.next() {
                        Some(l) => {
                            let l = l.map_err(io(&bodies_path))?;
                            pending_body = Some(
                                serde_json::from_str(&l).map_err(|e| invalid(&bodies_path, e))?,
                            );
                        }
                        None => break,
                    }
                }
                match pending_body.take() {
                    Some(b) if b.index < first + batch.len() as u64 => {
                        if let Some(slot) = b.index.checked_sub(first).and_then(|o| {
                            batch_bodies.get_mut(usize::try_from(o).unwrap_or(usize::MAX))
                        }) {
                            *slot = Some(b);
                        }
                    }
                    other => {
                        pending_body = other;
                        break;
                    }
                }
            }
        }
        let checked = check_batch(&batch, &batch_bodies, &ctx, threads)
            .map_err(|e| invalid(&entries_path, e))?;
        for c in checked {
            let index = expected;
            for (check, result) in c.outcomes {
                report.record(check, Some(index), result);
            }
            report.record(
                checks::SEQUENCE,
                Some(index),
                if c.claimed_index == Some(index) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected index {index}, the entry says {:?} (deleted, inserted or reordered)",
                        c.claimed_index
                    ))
                },
            );
            report.record(
                checks::CHAIN,
                Some(index),
                if c.prev.as_deref() == Some(URL_SAFE_NO_PAD.encode(prev).as_str()) {
                    Ok(())
                } else {
                    Err("prev is not the previous entry's leaf hash".into())
                },
            );
            if depth == Depth::Full {
                report.record(
                    checks::REFERENCE,
                    Some(index),
                    references.check(index, c.link.as_ref()),
                );
            }
            tree.push(c.leaf);
            prev = c.leaf;
            expected += 1;
            // A checkpoint is signed after the last entry it covers: its key
            // must have been valid then.
            if let (Some(jwk), Some(time)) = (checkpoint_keys.get(&expected), c.time.as_deref()) {
                report.record(
                    checks::KEY_VALIDITY,
                    Some(index),
                    within_validity(jwk, time)
                        .map_err(|e| format!("checkpoint of size {expected}: {e}")),
                );
            }
            if let Some(root) = checkpoints.get(&expected) {
                let (root, consistency) = tree.checkpoint(root);
                report.record(checks::CHECKPOINT_ROOT, Some(index), root);
                if let Some(consistency) = consistency {
                    report.record(checks::CHECKPOINT_CONSISTENCY, None, consistency);
                }
            }
        }
        progress(expected, manifest.entries);
    }
    report.entries = expected;
    report.entries_after_last_checkpoint =
        expected.saturating_sub(checkpoints.keys().next_back().copied().unwrap_or(0));
    if expected != manifest.entries {
        report.record(
            checks::TRUNCATED,
            None,
            Err(format!(
                "the manifest lists {} entries, the bundle has {expected}",
                manifest.entries
            )),
        );
    }
    if options.quorum > 0 {
        let (size, cosigners) = &latest_cosigners;
        report.record(
            checks::WITNESS_QUORUM,
            None,
            if cosigners.len() >= options.quorum {
                Ok(())
            } else {
                Err(format!(
                    "the latest checkpoint (size {size}) has {} of the {} required witness cosignatures ({})",
                    cosigners.len(),
                    options.quorum,
                    cosigners.join(", ")
                ))
            },
        );
    }
    if let Some((&size, _)) = checkpoints.iter().next_back()
        && size > expected
    {
        report.record(
            checks::TRUNCATED,
            None,
            Err(format!(
                "a checkpoint of size {size} was signed but the bundle has {expected} entries"
            )),
        );
    }
    Ok(report)
}

/// Lines verified per batch.
const BATCH: usize = 16_384;

/// How much [`verify`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// The log's integrity: leaf hashes, sequence, chain, the tree against
    /// every checkpoint, and the checkpoints' signatures.
    Integrity,
    /// Also every record's canonical form, hub signature and key validity,
    /// every body's hash, agency signature and schema, and what each entry
    /// answers or acknowledges ([`references`]).
    Full,
}

type Outcome = (&'static str, Result<(), String>);

/// The checks of one entry that need no other entry.
struct Checked {
    claimed_index: Option<u64>,
    prev: Option<String>,
    time: Option<String>,
    leaf: Hash,
    /// What the reference check reads (a full check only).
    link: Option<Link>,
    outcomes: Vec<Outcome>,
}

struct Ctx<'a> {
    pinned: &'a Jwks,
    /// Batch signatures already checked.
    seals: SealVerifier,
    data_key: Option<&'a DataKey>,
    agencies: &'a BTreeMap<String, Jwks>,
    catalog: &'a Catalog,
    depth: Depth,
}

/// What the integrity check reads of a record.
#[derive(Deserialize)]
struct Head {
    index: u64,
    prev: String,
    time: String,
}

/// The log's tree as the entries build it, keeping what the checks at
/// each checkpoint need and no more: the right edge, the roots of complete
/// 256-leaf blocks and up (`SubtreeRoots`, 1/256th of the leaves), and the
/// leaves of at most two blocks - the one where the previous checkpoint
/// ends and the current one, the only ones `merkle::consistency_blocks`
/// names for consecutive checkpoints.
#[derive(Default)]
struct CheckpointedTree {
    frontier: Frontier,
    roots: SubtreeRoots,
    blocks: Blocks,
    /// The last checkpoint passed: its size and signed root.
    last: Option<(u64, Hash)>,
}

impl CheckpointedTree {
    fn push(&mut self, leaf: Hash) {
        let size = self.frontier.size();
        if size > 0 && size.is_multiple_of(TILE_WIDTH) {
            let done = size / TILE_WIDTH - 1;
            if self.last.map(|(a, _)| a / TILE_WIDTH) != Some(done) {
                self.blocks.remove(&done);
            }
        }
        self.blocks.entry(size / TILE_WIDTH).or_default().push(leaf);
        self.frontier.push_keeping(leaf, &mut self.roots);
    }

    /// A checkpoint signed `root` for the tree so far: whether the entries
    /// give that root, and (after the first checkpoint) whether an RFC 9162
    /// consistency proof from the previous checkpoint, built from the
    /// entries, verifies against both signed roots.
    fn checkpoint(&mut self, root: &Hash) -> (Result<(), String>, Option<Result<(), String>>) {
        let size = self.frontier.size();
        let matches = if self.frontier.root() == *root {
            Ok(())
        } else {
            Err(format!(
                "the entries do not give the signed root of the checkpoint of size {size}"
            ))
        };
        let consistency = self.last.map(|(a, root_a)| {
            self.roots
                .consistency_proof(a, size, &self.blocks)
                .ok_or_else(|| format!("no consistency proof from {a} to {size}"))
                .and_then(|proof| {
                    merkle::verify_consistency(a, size, &root_a, root, &proof)
                        .map_err(|e| format!("checkpoints of sizes {a} and {size}: {e}"))
                })
        });
        self.last = Some((size, *root));
        self.blocks.retain(|block, _| *block >= size / TILE_WIDTH);
        (matches, consistency)
    }
}

/// A checkpoint whose note verified.
struct OpenedCheckpoint {
    checkpoint: Checkpoint,
    /// The witnesses that cosigned it.
    cosigners: Vec<String>,
    /// The ids of the log keys that signed it.
    signers: Vec<[u8; 4]>,
}

/// Open a checkpoint's note with the log's and the witnesses' keys.
fn open_checkpoint(
    c: &BundleCheckpoint,
    verifiers: &[Verifier],
    origin: &str,
) -> Result<OpenedCheckpoint, String> {
    let o = note::open(&c.note, verifiers).map_err(|e| e.to_string())?;
    if o.signed_by.is_empty() {
        return Err("no signature by the log's pinned key".to_owned());
    }
    let cp = Checkpoint::parse_body(&o.body).map_err(|e| e.to_string())?;
    if cp.origin != origin {
        return Err(format!(
            "origin {:?} is not the log's {origin:?}",
            cp.origin
        ));
    }
    if cp.size != c.size {
        return Err(format!(
            "the note says size {} but is filed under {}",
            cp.size, c.size
        ));
    }
    Ok(OpenedCheckpoint {
        checkpoint: cp,
        cosigners: o.cosigned_by.into_iter().map(|(n, _)| n).collect(),
        signers: o.signed_by.into_iter().map(|(_, id)| id).collect(),
    })
}

/// `f` of each item (with its position), in order, on up to `threads`
/// threads.
fn par_map<T: Sync, U: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(usize, &T) -> U + Sync,
) -> Result<Vec<U>, String> {
    if threads <= 1 || items.len() < 256 {
        return Ok(items.iter().enumerate().map(|(i, t)| f(i, t)).collect());
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                scope.spawn(move || {
                    part.iter()
                        .enumerate()
                        .map(|(i, t)| f(n * chunk + i, t))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for h in handles {
            out.extend(
                h.join()
                    .map_err(|_| "a verification thread panicked".to_owned())?,
            );
        }
        Ok(out)
    })
}

fn check_batch(
    lines: &[String],
    bodies: &[Option<BodyLine>],
    ctx: &Ctx<'_>,
    threads: usize,
) -> Result<Vec<Checked>, String> {
    par_map(lines, threads, |i, l| {
        check_entry(l, bodies.get(i).and_then(Option::as_ref), ctx)
    })
}

fn check_entry(line: &str, body: Option<&BodyLine>, ctx: &Ctx<'_>) -> Checked {
    let leaf = canonical_record_leaf_hash(line);
    if ctx.depth == Depth::Integrity {
        return match serde_json::from_str::<Head>(line) {
            Ok(h) => Checked {
                claimed_index: Some(h.index),
                prev: Some(h.prev),
                time: Some(h.time),
                leaf,
                link: None,
                outcomes: Vec::new(),
            },
            Err(e) => Checked {
                claimed_index: None,
                prev: None,
                time: None,
                leaf,
                link: None,
                outcomes: vec![(checks::CANONICAL_FORM, Err(format!("not a record: {e}")))],
            },
        };
    }
    let mut outcomes = Vec::with_capacity(8);
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            outcomes.push((checks::CANONICAL_FORM, Err(format!("not JSON: {e}"))));
            return Checked {
                claimed_index: None,
                prev: None,
                time: None,
                leaf,
                link: None,
                outcomes,
            };
        }
    };
    let canonical = match jcs::canonicalize(&value) {
        Ok(c) if c == line.as_bytes() => Ok(()),
        Ok(_) => Err("not in RFC 8785 form".to_owned()),
        Err(e) => Err(e.to_string()),
    };
    let signed = if canonical.is_ok() {
        signature_of_canonical(line, &value, &leaf, ctx)
    } else {
        ctx.seals
            .verify_record(&value, ctx.pinned)
            .map_err(|e| e.to_string())
    };
    outcomes.push((checks::CANONICAL_FORM, canonical));
    if let Some(jwk) = signed.as_deref().ok().and_then(|kid| ctx.pinned.find(kid)) {
        outcomes.push((
            checks::KEY_VALIDITY,
            within_validity(jwk, value["time"].as_str().unwrap_or_default()),
        ));
    }
    outcomes.push((checks::HUB_SIGNATURE, signed.map(|_| ())));
    if let Some(body) = body
        && let Some(expected) = value["sealed_body_hash"].as_str()
    {
        let stored = body.sealed().map(|s| s.hash());
        outcomes.push((
            checks::STORED_BODY,
            if stored.as_deref() == Some(expected) {
                Ok(())
            } else {
                Err("the stored (sealed) body is not the one logged".into())
            },
        ));
    }
    if let (Some(body), Some(key)) = (body, ctx.data_key) {
        check_body(&mut outcomes, &value, body, key, ctx);
    }
    Checked {
        claimed_index: value["index"].as_u64(),
        prev: value["prev"].as_str().map(str::to_owned),
        time: value["time"].as_str().map(str::to_owned),
        leaf,
        link: Link::deserialize(&value).ok(),
        outcomes,
    }
}

/// The hub's seal of a record whose line is canonical, `leaf` the line's
/// leaf hash. Version 2: the seal's path from `leaf` to the batch root,
/// whose signature is checked once per batch. Version 1: the signed
/// statement is the line without its one `hub_signature` member (RFC 8785
/// writes each member independently), so nothing is re-serialized.
fn signature_of_canonical(
    line: &str,
    value: &Value,
    leaf: &Hash,
    ctx: &Ctx<'_>,
) -> Result<String, String> {
    const MEMBER: &str = ",\"hub_signature\":\"";
    let slow = || {
        ctx.seals
            .verify_record(value, ctx.pinned)
            .map_err(|e| e.to_string())
    };
    if let Some(seal) = value.get(SEAL_MEMBER) {
        let seal: BatchSeal = serde_json::from_value(seal.clone())
            .map_err(|e| format!("hub_seal is malformed: {e}"))?;
        let index = value["index"].as_u64().ok_or("the record has no index")?;
        return ctx
            .seals
            .verify_seal(&seal, index, leaf, ctx.pinned)
            .map_err(|e| e.to_string());
    }
    let Some(sig) = value.get("hub_signature").and_then(Value::as_str) else {
        return slow();
    };
    if line.matches("\"hub_signature\":").count() != 1 {
        return slow();
    }
    let Some(start) = line.find(MEMBER) else {
        return slow();
    };
    let sig_start = start + MEMBER.len();
    let end = sig_start + sig.len();
    if line.get(sig_start..end) != Some(sig) || line.as_bytes().get(end) != Some(&b'"') {
        return slow();
    }
    let mut statement = String::with_capacity(line.len());
    statement.push_str(&line[..start]);
    statement.push_str(&line[end + 1..]);
    jws::verify_detached(sig, statement.as_bytes(), ctx.pinned).map_err(|e| e.to_string())
}

fn check_body(
    outcomes: &mut Vec<Outcome>,
    record: &Value,
    line: &BodyLine,
    key: &DataKey,
    ctx: &Ctx<'_>,
) {
    let commitment = record["body_hash"].as_str().unwrap_or_default();
    let opened = line
        .sealed()
        .and_then(|sealed| key.open(&sealed, commitment));
    let Some((salt, body)) = opened else {
        outcomes.push((
            checks::BODY_HASH,
            Err(format!(
                "the body does not open with data key {} against body_hash",
                key.id()
            )),
        ));
        return;
    };
    if hub_core::body::commitment(&salt, &body) != commitment {
        outcomes.push((
            checks::BODY_HASH,
            Err("the body does not match body_hash".into()),
        ));
        return;
    }
    outcomes.push((checks::BODY_HASH, Ok(())));
    let kind = record["kind"].as_str().unwrap_or_default();
    let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
        return;
    };
    // Accepted envelopes carry the sender's signature over the canonical body.
    if matches!(kind, "request" | "event")
        && let Some(sig) = record["sender_signature"].as_str()
    {
        let sender = format!(
            "{}/{}",
            record["sender"]["agency"].as_str().unwrap_or_default(),
            record["sender"]["subsystem"].as_str().unwrap_or_default()
        );
        let time = record["time"].as_str().unwrap_or_default();
        let result = match ctx.agencies.get(sender.as_str()) {
            // A retired key's signature counts only from before it retired.
            Some(keys) => jws::verify_detached(sig, &body, keys)
                .map_err(|e| e.to_string())
                .and_then(|kid| match keys.find(&kid) {
                    Some(jwk) => within_validity(jwk, time),
                    None => Err(format!("no key {kid}")),
                }),
            None => Err(format!("no registered key for {sender}")),
        };
        outcomes.push((checks::SENDER_SIGNATURE, result));
    }
    // A minimised response holds only the fields it lists: the hub
    // validated the provider's full answer, which nobody keeps.
    if let Some(released) = record.get("fields").filter(|_| kind == "response") {
        let result =
            serde_json::from_value::<Vec<hub_core::fields::FieldPointer>>(released.clone())
                .map_err(|e| format!("fields: {e}"))
                .and_then(|released| {
                    if hub_core::fields::holds_only(&parsed, &released) {
                        Ok(())
                    } else {
                        Err("the body holds more than the fields the entry lists".into())
                    }
                });
        outcomes.push((checks::SCHEMA, result));
    } else if let Some(schema) = record["schema"].as_str() {
        let instance = if matches!(kind, "request" | "event") {
            &parsed["payload"]
        } else {
            &parsed
        };
        let result = ctx
            .catalog
            .validate(schema, instance)
            .map_err(|e| format!("not valid against {schema}: {e:?}"));
        outcomes.push((checks::SCHEMA, result));
    }
}

/// The inclusion proof of every entry of `exchange_id` against the bundle's
/// latest checkpoint, checked. Returns (checkpoint size, [(index, proof)]).
pub fn prove(dir: &Path, pinned: &Jwks, exchange_id: &str) -> Result<ProofReport, BundleError> {
    let manifest = manifest(dir)?;
    let (trusted, _) = hub_keys(dir, pinned)?;
    let verifiers = checkpoint_verifiers(&manifest.origin, &trusted);
    let raw: Vec<BundleCheckpoint> = read_lines(&dir.join("checkpoints.jsonl"))?;
    let last = raw
        .last()
        .ok_or_else(|| invalid(dir, "the bundle has no checkpoint"))?;
    let opened = note::open(&last.note, &verifiers)
        .map_err(|e| invalid(dir, format!("latest checkpoint: {e}")))?;
    let cp = Checkpoint::parse_body(&opened.body).map_err(|e| invalid(dir, e))?;
    let path = dir.join("entries.jsonl");
    let file = File::open(&path).map_err(io(&path))?;
    let mut leaves = Vec::new();
    let mut indexes = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io(&path))?;
        if leaves.len() as u64 == cp.size {
            break;
        }
        if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["exchange_id"] == exchange_id) {
            indexes.push(leaves.len() as u64);
        }
        leaves.push(canonical_record_leaf_hash(&line));
    }
    if (leaves.len() as u64) < cp.size {
        return Err(invalid(
            dir,
            format!(
                "the checkpoint covers {} entries, the bundle has {}",
                cp.size,
                leaves.len()
            ),
        ));
    }
    if indexes.is_empty() {
        return Err(invalid(
            dir,
            format!(
                "no entry of exchange {exchange_id} in the tree of size {}",
                cp.size
            ),
        ));
    }
    let mut proofs = Vec::new();
    for index in indexes {
        let proof = merkle::inclusion_proof(&leaves, index).unwrap_or_default();
        let leaf = leaves[usize::try_from(index).unwrap_or(0)];
        merkle::verify_inclusion(index, cp.size, &leaf, &proof, &cp.root)
            .map_err(|e| invalid(dir, format!("entry {index}: {e}")))?;
        proofs.push(EntryProof {
            index,
            leaf_hash: STANDARD.encode(leaf),
            proof: proof.iter().map(|h| STANDARD.encode(h)).collect(),
        });
    }
    Ok(ProofReport {
        exchange_id: exchange_id.to_owned(),
        checkpoint: last.note.clone(),
        size: cp.size,
        root: STANDARD.encode(cp.root),
        proofs,
    })
}

/// What [`prove`] prints.
#[derive(Debug, Clone, Serialize)]
pub struct ProofReport {
    pub exchange_id: String,
    pub checkpoint: String,
    pub size: u64,
    pub root: String,
    pub proofs: Vec<EntryProof>,
}

/// One entry's inclusion proof.
#[derive(Debug, Clone, Serialize)]
pub struct EntryProof {
    pub index: u64,
    pub leaf_hash: String,
    pub proof: Vec<String>,
}
