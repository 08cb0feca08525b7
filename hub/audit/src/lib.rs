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
//! | `registry.json` | the registry at export: agencies (with their envelope-signing keys), services, grants, subscriptions |
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
use hub_core::merkle::{self, BlockTrees, Frontier, SubtreeRoots, TILE_WIDTH};
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
    // `cause`, not `source`: the message names it already, and a source
    // would be printed twice in an error chain (`{:#}`).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |cause| BundleError::Io {
        path: path.to_owned(),
        cause,
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

/// The last line of a JSON-lines file, read as a `T`; `None` if it is empty.
fn last_line<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, BundleError> {
    let file = File::open(path).map_err(io(path))?;
    let mut last = None;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        last = Some((n, line.map_err(io(path))?));
    }
    last.map(|(n, line)| {
        serde_json::from_str(&line).map_err(|e| invalid(path, format!("line {}: {e}", n + 1)))
    })
    .transpose()
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
    let registry: RegistrySnapshot = read_json(&dir.join("registry.json"))?;
    let agency_keys = registry.agency_keys();
    let catalog = Catalog::builtin().map_err(|e| invalid(dir, e))?;
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    // Checkpoints are read as the entries reach their sizes, a chunk at a
    // time: a hub signs one a second, more than the entries in a quiet log.
    let pinned_ids = note_key_ids(&manifest.origin, pinned);
    let mut checkpoints = CheckpointStream::open(
        &dir.join("checkpoints.jsonl"),
        &verifiers,
        &manifest.origin,
        &pinned_ids,
        threads,
        CHECKPOINT_CHUNK,
    )?;
    let mut next_checkpoint = checkpoints.next(&mut report)?;

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
            // Checkpoints of sizes the entries have passed came out of
            // order (reported as such); they cannot be compared any more.
            while next_checkpoint.as_ref().is_some_and(|c| c.size < expected) {
                next_checkpoint = checkpoints.next(&mut report)?;
            }
            if let Some(signed) = next_checkpoint.take_if(|c| c.size == expected) {
                // A checkpoint is signed after the last entry it covers: its
                // key must have been valid then.
                if let (Some(jwk), Some(time)) = (signed.key, c.time.as_deref()) {
                    report.record(
                        checks::KEY_VALIDITY,
                        Some(index),
                        within_validity(jwk, time)
                            .map_err(|e| format!("checkpoint of size {expected}: {e}")),
                    );
                }
                let (root, consistency) = tree.checkpoint(&signed.root);
                report.record(checks::CHECKPOINT_ROOT, Some(index), root);
                if let Some(consistency) = consistency {
                    report.record(checks::CHECKPOINT_CONSISTENCY, None, consistency);
                }
                next_checkpoint = checkpoints.next(&mut report)?;
            }
        }
        progress(expected, manifest.entries);
    }
    // The checkpoints beyond the entries, through the checks that need
    // only the checkpoints.
    while next_checkpoint.is_some() {
        next_checkpoint = checkpoints.next(&mut report)?;
    }
    report.entries = expected;
    report.entries_after_last_checkpoint = expected.saturating_sub(checkpoints.largest);
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
        let (size, cosigners) = &checkpoints.latest_cosigners;
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
    if checkpoints.largest > expected {
        let size = checkpoints.largest;
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
/// 256-leaf blocks and up (`SubtreeRoots`, 1/256th of the leaves), and
/// at most two blocks - the one where the previous checkpoint ends and the
/// current one, the only ones `merkle::consistency_blocks` names for
/// consecutive checkpoints - with their subtrees' roots, so that checkpoints
/// a few entries apart do not hash a block's leaves again for each proof.
#[derive(Default)]
struct CheckpointedTree {
    frontier: Frontier,
    roots: SubtreeRoots,
    blocks: BlockTrees,
    /// The last checkpoint passed: its size and signed root.
    last: Option<(u64, Hash)>,
}

impl CheckpointedTree {
    fn push(&mut self, leaf: Hash) {
        let size = self.frontier.size();
        if size > 0 && size.is_multiple_of(TILE_WIDTH) {
            let done = size / TILE_WIDTH - 1;
            if self.last.map(|(a, _)| a / TILE_WIDTH) != Some(done) {
                self.blocks.remove(done);
            }
        }
        self.blocks.push(size, leaf);
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
        self.blocks.retain(|block| block >= size / TILE_WIDTH);
        (matches, consistency)
    }
}

/// Checkpoints read from the bundle per chunk, to bound memory (~30 MB of
/// notes). Smaller chunks cost time: 4,096 made verifying a bundle with a
/// checkpoint per entry ~10 % slower (docs/performance.md).
const CHECKPOINT_CHUNK: usize = 65_536;

/// A line of `checkpoints.jsonl`: the size it is filed under and its note,
/// opened or why not.
type CheckpointLine = (u64, Result<OpenedCheckpoint, String>);

/// A checkpoint to compare with the entries when they reach its size.
struct SignedCheckpoint<'a> {
    size: u64,
    root: Hash,
    /// The first pinned key whose signature is on it.
    key: Option<&'a Jwk>,
}

/// `checkpoints.jsonl` read in file order a chunk at a time, the chunk's
/// signatures checked on every core, each checkpoint put through the
/// checks that need only the checkpoints before it: signature, order and
/// fork. In a bundle in order, two checkpoints of one size are neighbours.
struct CheckpointStream<'a> {
    path: PathBuf,
    lines: std::iter::Enumerate<std::io::Lines<BufReader<File>>>,
    opened: std::collections::VecDeque<CheckpointLine>,
    verifiers: &'a [Verifier],
    origin: &'a str,
    pinned_ids: &'a [([u8; 4], &'a Jwk)],
    threads: usize,
    /// How many lines are read and opened at a time.
    chunk: usize,
    /// The largest size read so far, for the order check.
    last_size: u64,
    /// The last checkpoint handed on, for the fork check.
    last: Option<(u64, Hash)>,
    /// The largest size signed.
    largest: u64,
    /// The latest checkpoint's size and the witnesses that cosigned it.
    latest_cosigners: (u64, Vec<String>),
}

impl<'a> CheckpointStream<'a> {
    fn open(
        path: &Path,
        verifiers: &'a [Verifier],
        origin: &'a str,
        pinned_ids: &'a [([u8; 4], &'a Jwk)],
        threads: usize,
        chunk: usize,
    ) -> Result<Self, BundleError> {
        let file = File::open(path).map_err(io(path))?;
        Ok(Self {
            path: path.to_owned(),
            lines: BufReader::new(file).lines().enumerate(),
            opened: std::collections::VecDeque::new(),
            verifiers,
            origin,
            pinned_ids,
            threads,
            chunk: chunk.max(1),
            last_size: 0,
            last: None,
            largest: 0,
            latest_cosigners: (0, Vec::new()),
        })
    }

    /// The next checkpoint of a new size, in order and validly signed, its
    /// checks and those of the checkpoints skipped on the way recorded.
    fn next(&mut self, report: &mut Report) -> Result<Option<SignedCheckpoint<'a>>, BundleError> {
        while let Some((filed_as, opened)) = self.read()? {
            report.checkpoints += 1;
            let OpenedCheckpoint {
                checkpoint: cp,
                cosigners,
                signers,
            } = match opened {
                Ok(opened) => opened,
                Err(e) => {
                    report.record(
                        checks::CHECKPOINT_SIGNATURE,
                        None,
                        Err(format!("checkpoint of size {filed_as}: {e}")),
                    );
                    continue;
                }
            };
            report.record(checks::CHECKPOINT_SIGNATURE, None, Ok(()));
            if cp.size >= self.latest_cosigners.0 {
                self.latest_cosigners = (cp.size, cosigners);
            }
            self.largest = self.largest.max(cp.size);
            let in_order = cp.size >= self.last_size;
            report.record(
                checks::CHECKPOINT_ORDER,
                None,
                if in_order {
                    Ok(())
                } else {
                    Err(format!(
                        "checkpoint of size {} follows one of size {}",
                        cp.size, self.last_size
                    ))
                },
            );
            self.last_size = self.last_size.max(cp.size);
            match self.last {
                Some((size, root)) if size == cp.size => {
                    report.record(
                        checks::FORK,
                        None,
                        if root == cp.root {
                            Ok(())
                        } else {
                            Err(format!(
                                "two signed checkpoints of size {size} with different roots"
                            ))
                        },
                    );
                }
                // Out of order: past what the entries can be compared with.
                _ if !in_order => {}
                _ => {
                    report.record(checks::FORK, None, Ok(()));
                    self.last = Some((cp.size, cp.root));
                    let key = self
                        .pinned_ids
                        .iter()
                        .find(|(id, _)| signers.contains(id))
                        .map(|(_, jwk)| *jwk);
                    return Ok(Some(SignedCheckpoint {
                        size: cp.size,
                        root: cp.root,
                        key,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// The next line's size and opened note, reading the next chunk when
    /// the last one is used up.
    fn read(&mut self) -> Result<Option<CheckpointLine>, BundleError> {
        if self.opened.is_empty() {
            let mut chunk: Vec<BundleCheckpoint> = Vec::with_capacity(self.chunk);
            for (n, line) in self.lines.by_ref().take(self.chunk) {
                let line = line.map_err(io(&self.path))?;
                chunk.push(
                    serde_json::from_str(&line)
                        .map_err(|e| invalid(&self.path, format!("line {}: {e}", n + 1)))?,
                );
            }
            let opened = par_map(&chunk, self.threads, |_, c| {
                open_checkpoint(c, self.verifiers, self.origin)
            })
            .map_err(|e| invalid(&self.path, e))?;
            self.opened = chunk.iter().map(|c| c.size).zip(opened).collect();
        }
        Ok(self.opened.pop_front())
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
    let last: BundleCheckpoint = last_line(&dir.join("checkpoints.jsonl"))?
        .ok_or_else(|| invalid(dir, "the bundle has no checkpoint"))?;
    let opened = note::open(&last.note, &verifiers)
        .map_err(|e| invalid(dir, format!("latest checkpoint: {e}")))?;
    let cp = Checkpoint::parse_body(&opened.body).map_err(|e| invalid(dir, e))?;
    let path = dir.join("entries.jsonl");
    let file = File::open(&path).map_err(io(&path))?;
    // The tree's kept subtree roots, and the leaves of the 256-leaf blocks
    // that hold the exchange's entries and of the last one: what the
    // proofs need (`merkle::inclusion_blocks`), whatever the log's size.
    let mut tree = Frontier::new();
    let mut roots = SubtreeRoots::default();
    let mut blocks = BlockTrees::default();
    let mut indexes = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io(&path))?;
        let index = tree.size();
        if index == cp.size {
            break;
        }
        let block = index / TILE_WIDTH;
        if index.is_multiple_of(TILE_WIDTH)
            && let Some(done) = block.checked_sub(1)
            && indexes.last().is_none_or(|i| i / TILE_WIDTH != done)
        {
            blocks.remove(done);
        }
        if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["exchange_id"] == exchange_id) {
            indexes.push(index);
        }
        let leaf = canonical_record_leaf_hash(&line);
        blocks.push(index, leaf);
        tree.push_keeping(leaf, &mut roots);
    }
    if tree.size() < cp.size {
        return Err(invalid(
            dir,
            format!(
                "the checkpoint covers {} entries, the bundle has {}",
                cp.size,
                tree.size()
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
        let proof = roots
            .inclusion_proof(index, cp.size, &blocks)
            .unwrap_or_default();
        let leaf = blocks.leaf(index).unwrap_or_default();
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

#[cfg(test)]
mod checkpoint_stream_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Every checkpoint handed on, and the report, reading `chunk` lines
    /// at a time.
    fn stream(dir: &Path, pinned: &Jwks, chunk: usize) -> (Vec<u64>, Report) {
        let verifiers = checkpoint_verifiers(ORIGIN, pinned);
        let ids = note_key_ids(ORIGIN, pinned);
        let path = dir.join("checkpoints.jsonl");
        let mut checkpoints =
            CheckpointStream::open(&path, &verifiers, ORIGIN, &ids, 2, chunk).unwrap();
        let mut report = Report::default();
        let mut sizes = Vec::new();
        while let Some(c) = checkpoints.next(&mut report).unwrap() {
            assert!(c.key.is_some(), "signed by the pinned key");
            sizes.push(c.size);
        }
        (sizes, report)
    }

    const ORIGIN: &str = "test.invalid/log";

    #[test]
    fn the_checks_do_not_depend_on_the_chunks_the_lines_are_read_in() {
        let dir = tempfile::tempdir().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let key = hub_core::jws::SigningKey::generate(&rng).unwrap().0;
        let data_key = DataKey::from_bytes(&[5; 32]);
        let pinned =
            synthetic::write_bundle(dir.path(), ORIGIN, &key, &data_key, 30, 1, &|_| {}).unwrap();
        let path = dir.path().join("checkpoints.jsonl");
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        // Line i holds size i + 1. A second root for size 10, beside the
        // first; sizes 20 and 21 swapped; one with a forged signature.
        let fork = synthetic::checkpoint(ORIGIN, &key, 10, [9; 32]).unwrap();
        lines.insert(10, serde_json::to_string(&fork).unwrap());
        lines.swap(20, 21);
        let stranger = hub_core::jws::SigningKey::generate(&rng).unwrap().0;
        lines[26] =
            serde_json::to_string(&synthetic::checkpoint(ORIGIN, &stranger, 26, [1; 32]).unwrap())
                .unwrap();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();

        let (sizes, report) = stream(dir.path(), &pinned, CHECKPOINT_CHUNK);
        let expected: Vec<u64> = (1..=30).filter(|s| *s != 20 && *s != 26).collect();
        assert_eq!(
            sizes, expected,
            "the fork, the late one and the forged one are not handed on"
        );
        assert_eq!(report.checkpoints, 31);
        let failed = |check: &str| report.findings.iter().filter(|f| f.check == check).count();
        assert_eq!(failed(checks::FORK), 1);
        assert_eq!(failed(checks::CHECKPOINT_ORDER), 1);
        assert_eq!(failed(checks::CHECKPOINT_SIGNATURE), 1);
        for chunk in [1, 2, 3, 10, 11, 29] {
            let (other_sizes, other) = stream(dir.path(), &pinned, chunk);
            assert_eq!(other_sizes, sizes, "chunks of {chunk}");
            assert_eq!(other.checkpoints, report.checkpoints, "chunks of {chunk}");
            assert_eq!(
                format!("{:?}", other.findings),
                format!("{:?}", report.findings),
                "chunks of {chunk}"
            );
        }
    }
}
