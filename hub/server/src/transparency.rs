//! The log as a transparency log: signed checkpoints issued at a cadence,
//! and the proofs an auditor or a sender asks for.
//!
//! Checkpoints only ever sign the writer's committed tree head, and the log
//! is append-only, so any two checkpoints the hub signs are consistent; at
//! start the writer refuses a log that does not reproduce the last one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hub_core::hash::Hash;
use hub_core::ids::ExchangeId;
use hub_core::jws::SigningKey;
use hub_core::merkle;
use hub_core::note::{self, Checkpoint};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::log_writer::{LogWriter, TreeHead};
use crate::pipeline::Hub;
use crate::store::{Leadership, Role, Store, StoreError, StoredCheckpoint};

/// Sign and store a checkpoint whenever the committed tree has grown, at
/// most every `interval`, and once more at shutdown - while this process
/// holds the checkpointer role. Of several hubs sharing a database one
/// signs at a time, so the checkpoints form one sequence; when its session
/// ends another takes the role over at its next tick.
pub async fn run_checkpointer(
    store: Arc<dyn Store>,
    key: Arc<SigningKey>,
    origin: String,
    log: LogWriter,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut role: Option<Box<dyn Leadership>> = None;
    let mut last = 0;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => true,
        };
        if role.is_none() {
            match store.lead(Role::Checkpointer).await {
                Ok(Some(held)) => match store.latest_checkpoint().await {
                    Ok(latest) => {
                        last = latest.map_or(0, |c| c.size);
                        info!(last, "this hub signs the checkpoints");
                        role = Some(held);
                    }
                    Err(e) => warn!(error = %e, "cannot read the last checkpoint"),
                },
                Ok(None) => {}
                Err(e) => warn!(error = %e, "cannot ask for the checkpointer role"),
            }
        }
        if let Some(held) = role.as_mut() {
            if held.still_leading().await {
                log.refresh().await;
                let TreeHead { size, root } = log.head();
                if size > last {
                    match issue(store.as_ref(), &key, &origin, size, root).await {
                        Ok(()) => last = size,
                        Err(e) => warn!(error = %e, size, "could not store a checkpoint"),
                    }
                }
            } else {
                warn!("lost the checkpointer role");
                role = None;
            }
        }
        if stopping {
            break;
        }
    }
}

async fn issue(
    store: &dyn Store,
    key: &SigningKey,
    origin: &str,
    size: u64,
    root: Hash,
) -> Result<(), StoreError> {
    let body = Checkpoint {
        origin: origin.to_owned(),
        size,
        root,
    }
    .body();
    let note = note::sign(&body, origin, key).map_err(|e| StoreError::Invalid(e.to_string()))?;
    store
        .add_checkpoint(&StoredCheckpoint { size, root, note })
        .await?;
    info!(size, "checkpoint signed");
    Ok(())
}

/// A question about the log that cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum LogQueryError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// An inclusion proof, hashes in standard base64 as in checkpoints.
#[derive(Debug, Clone, Serialize)]
pub struct InclusionProof {
    pub index: u64,
    pub size: u64,
    pub leaf_hash: String,
    pub proof: Vec<String>,
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone, Serialize)]
pub struct ConsistencyProof {
    pub from: u64,
    pub to: u64,
    pub proof: Vec<String>,
}

fn b64(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h)).collect()
}

impl Hub {
    /// The latest signed checkpoint, with every witness cosignature it has.
    pub async fn checkpoint(&self) -> Result<StoredCheckpoint, LogQueryError> {
        let mut cp =
            self.store.latest_checkpoint().await?.ok_or_else(|| {
                LogQueryError::NotFound("no checkpoint has been signed yet".into())
            })?;
        for line in self.store.cosignatures(cp.size).await? {
            cp.note.push_str(&line);
        }
        Ok(cp)
    }

    /// Accept a witness's cosignature line of the checkpoint of `size`: it
    /// must be by a registered witness and verify over that checkpoint.
    pub async fn add_cosignature(&self, size: u64, line: &str) -> Result<String, LogQueryError> {
        if !line.starts_with('\u{2014}')
            || !line.ends_with('\n')
            || line[..line.len() - 1].contains('\n')
        {
            return Err(LogQueryError::BadRequest(
                "a cosignature is one line: '— <witness> <base64>' and a newline".into(),
            ));
        }
        let name = line.split(' ').nth(1).unwrap_or_default();
        let vkey = self
            .store
            .witnesses()
            .await?
            .into_iter()
            .find_map(|(n, v)| (n == name).then_some(v))
            .ok_or_else(|| {
                LogQueryError::BadRequest(format!("{name:?} is not a registered witness"))
            })?;
        let verifier =
            note::Verifier::parse(&vkey).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let cp = self
            .store
            .checkpoint_of_size(size)
            .await?
            .ok_or_else(|| LogQueryError::NotFound(format!("no checkpoint of size {size}")))?;
        let opened = note::open(&format!("{}{line}", cp.note), &[verifier]).map_err(|e| {
            LogQueryError::BadRequest(format!("the cosignature does not verify: {e}"))
        })?;
        if opened.cosigned_by.is_empty() {
            return Err(LogQueryError::BadRequest(
                "no cosignature by the named witness".into(),
            ));
        }
        self.store.add_cosignature(size, name, line).await?;
        info!(witness = name, size, "cosignature stored");
        Ok(name.to_owned())
    }

    /// `size`, or the latest checkpoint's size; never beyond the committed tree.
    async fn tree_size(&self, size: Option<u64>) -> Result<u64, LogQueryError> {
        let size = match size {
            Some(s) => s,
            None => self.checkpoint().await?.size,
        };
        let committed = self.log.head().size;
        if size == 0 || size > committed {
            return Err(LogQueryError::BadRequest(format!(
                "tree size {size} is not between 1 and the log's size {committed}"
            )));
        }
        Ok(size)
    }

    /// The leaves of `blocks` (256-leaf blocks by number) in the tree of
    /// `size`: what a proof needs besides the writer's kept subtree roots.
    async fn blocks(
        &self,
        blocks: BTreeSet<u64>,
        size: u64,
    ) -> Result<merkle::Blocks, LogQueryError> {
        let mut read = merkle::Blocks::new();
        for block in blocks {
            let from = block * merkle::TILE_WIDTH;
            let to = size.min(from + merkle::TILE_WIDTH);
            let leaves = self.store.leaf_hashes(from, to).await?;
            if leaves.len() as u64 != to - from {
                return Err(StoreError::Corrupt(format!(
                    "expected leaves {from}..{to}, read {}",
                    leaves.len()
                ))
                .into());
            }
            read.insert(block, leaves);
        }
        Ok(read)
    }

    /// A proof's hashes, or the error of a tree the writer does not cover.
    fn proven(proof: Option<Vec<Hash>>) -> Result<Vec<Hash>, LogQueryError> {
        proof.ok_or_else(|| {
            StoreError::Invalid("a proof needed subtree roots the log writer does not hold".into())
                .into()
        })
    }

    /// The inclusion proof of entry `index` in the tree of `size` (default:
    /// the latest checkpoint's).
    pub async fn inclusion_proof(
        &self,
        index: u64,
        size: Option<u64>,
    ) -> Result<InclusionProof, LogQueryError> {
        let size = self.tree_size(size).await?;
        if index >= size {
            return Err(LogQueryError::BadRequest(format!(
                "entry {index} is not in the tree of size {size}"
            )));
        }
        let mut proofs = self.proofs_in(size, vec![index]).await?;
        proofs
            .pop()
            .ok_or_else(|| StoreError::Invalid("no proof computed".into()).into())
    }

    /// Inclusion proofs of `indexes` in the tree of `size`, from one read of
    /// the leaves.
    async fn proofs_in(
        &self,
        size: u64,
        indexes: Vec<u64>,
    ) -> Result<Vec<InclusionProof>, LogQueryError> {
        let wanted = indexes
            .iter()
            .flat_map(|index| merkle::inclusion_blocks(*index, size))
            .collect();
        let blocks = self.blocks(wanted, size).await?;
        indexes
            .into_iter()
            .map(|index| {
                let proof = self
                    .log
                    .with_subtree_roots(|roots| roots.inclusion_proof(index, size, &blocks));
                let leaf_hash = blocks
                    .get(&(index / merkle::TILE_WIDTH))
                    .and_then(|b| b.get(usize::try_from(index % merkle::TILE_WIDTH).ok()?));
                Ok(InclusionProof {
                    index,
                    size,
                    leaf_hash: leaf_hash.map(|l| STANDARD.encode(l)).unwrap_or_default(),
                    proof: b64(&Self::proven(proof)?),
                })
            })
            .collect()
    }

    /// Inclusion proofs of every entry of one exchange.
    pub async fn exchange_proofs(
        &self,
        id: ExchangeId,
        size: Option<u64>,
    ) -> Result<Vec<InclusionProof>, LogQueryError> {
        let size = self.tree_size(size).await?;
        let indexes: Vec<u64> = self
            .store
            .indexes_of_exchange(id)
            .await?
            .into_iter()
            .filter(|i| *i < size)
            .collect();
        if indexes.is_empty() {
            return Err(LogQueryError::NotFound(format!(
                "no entry of exchange {id} in the tree of size {size}"
            )));
        }
        self.proofs_in(size, indexes).await
    }

    /// The consistency proof from size `from` to size `to`.
    pub async fn consistency_proof(
        &self,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProof, LogQueryError> {
        let to = self.tree_size(Some(to)).await?;
        if from == 0 || from > to {
            return Err(LogQueryError::BadRequest(format!(
                "need 0 < from <= to, got from={from} to={to}"
            )));
        }
        let blocks = self
            .blocks(merkle::consistency_blocks(from, to), to)
            .await?;
        let proof = self
            .log
            .with_subtree_roots(|roots| roots.consistency_proof(from, to, &blocks));
        Ok(ConsistencyProof {
            from,
            to,
            proof: b64(&Self::proven(proof)?),
        })
    }

    /// Up to `limit` (at most 1000) records from `start`.
    pub async fn log_entries(&self, start: u64, limit: u32) -> Result<Vec<Value>, LogQueryError> {
        let entries = self.store.entries(start, limit.clamp(1, 1000)).await?;
        entries
            .iter()
            .map(|e| {
                serde_json::from_str(&e.record)
                    .map_err(|err| StoreError::Corrupt(err.to_string()).into())
            })
            .collect()
    }
}

/// A C2SP `tlog-tiles` request below `/tlog/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileRequest {
    /// `tile/<L>/<N>[.p/<W>]`
    Hashes {
        level: u8,
        index: u64,
        width: Option<u16>,
    },
    /// `tile/entries/<N>[.p/<W>]`
    Entries { index: u64, width: Option<u16> },
}

/// Parse `tile/...` as tlog-tiles encodes it: the index in 3-digit groups,
/// all but the last prefixed with `x` (1234067 is `x001/x234/067`), and a
/// partial tile's width after `.p/`.
pub fn parse_tile_path(path: &str) -> Option<TileRequest> {
    let rest = path.strip_prefix("tile/")?;
    let (kind, rest) = rest.split_once('/')?;
    let mut parts: Vec<&str> = rest.split('/').collect();
    let mut width = None;
    if parts.len() >= 2 && parts[parts.len() - 2].ends_with(".p") {
        let w: u16 = parts.pop()?.parse().ok()?;
        if !(1..=255).contains(&w) || parts.last()?.len() != 5 {
            return None;
        }
        width = Some(w);
        let last = parts.pop()?;
        parts.push(last.strip_suffix(".p")?);
    }
    let (last, groups) = parts.split_last()?;
    let digits = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(last) {
        return None;
    }
    let mut index: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let g = g.strip_prefix('x')?;
        if !digits(g) || (i == 0 && g == "000") {
            return None;
        }
        index = index.checked_mul(1000)?.checked_add(g.parse().ok()?)?;
    }
    index = index.checked_mul(1000)?.checked_add(last.parse().ok()?)?;
    if kind == "entries" {
        return Some(TileRequest::Entries { index, width });
    }
    let level: u8 = kind
        .parse()
        .ok()
        .filter(|l: &u8| *l <= 7 && (kind == "0" || !kind.starts_with('0')))?;
    Some(TileRequest::Hashes {
        level,
        index,
        width,
    })
}

impl Hub {
    /// The bytes of a tile: concatenated 32-byte hashes, or an entry bundle
    /// (each record prefixed with its length as a big-endian u16). A tile is
    /// served only as wide as the committed tree fills it.
    pub async fn tile(&self, request: TileRequest) -> Result<Vec<u8>, LogQueryError> {
        let size = self.log.head().size;
        let not_yet = || LogQueryError::NotFound("the log does not fill that tile (yet)".into());
        match request {
            TileRequest::Hashes {
                level,
                index,
                width,
            } => {
                let span = merkle::tile_span(level).ok_or_else(not_yet)?;
                let per_tile = span.checked_mul(merkle::TILE_WIDTH).ok_or_else(not_yet)?;
                let first = index.checked_mul(per_tile).ok_or_else(not_yet)?;
                if first >= size {
                    return Err(not_yet());
                }
                let want = width.map_or(merkle::TILE_WIDTH, u64::from);
                // Only complete subtrees are served: the tile needs `want`
                // of them inside the committed tree.
                let end = want
                    .checked_mul(span)
                    .and_then(|n| first.checked_add(n))
                    .filter(|end| *end <= size)
                    .ok_or_else(not_yet)?;
                // Level 0 is the leaves themselves; above it each hash is
                // the root of a complete subtree, folded from the kept roots.
                if level == 0 {
                    return Ok(self.store.leaf_hashes(first, end).await?.concat());
                }
                let height = 8 * u32::from(level);
                let none = merkle::Blocks::new();
                let hashes: Option<Vec<Hash>> = self.log.with_subtree_roots(|roots| {
                    (0..want)
                        .map(|j| roots.subtree_root(first + j * span, height, &none))
                        .collect()
                });
                Ok(Self::proven(hashes)?.concat())
            }
            TileRequest::Entries { index, width } => {
                let first = index.checked_mul(merkle::TILE_WIDTH).ok_or_else(not_yet)?;
                let want = width.map_or(merkle::TILE_WIDTH as usize, usize::from);
                if first >= size {
                    return Err(not_yet());
                }
                let entries = self
                    .store
                    .entries(first, u32::try_from(want).unwrap_or(256))
                    .await?;
                if entries.len() < want {
                    return Err(not_yet());
                }
                let mut out = Vec::new();
                for e in &entries {
                    let len = u16::try_from(e.record.len()).map_err(|_| {
                        StoreError::Corrupt(format!("entry {} is longer than 65535 bytes", e.index))
                    })?;
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(e.record.as_bytes());
                }
                Ok(out)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_follow_tlog_tiles() {
        assert_eq!(
            parse_tile_path("tile/0/005"),
            Some(TileRequest::Hashes {
                level: 0,
                index: 5,
                width: None
            })
        );
        assert_eq!(
            parse_tile_path("tile/1/x001/x234/067.p/8"),
            Some(TileRequest::Hashes {
                level: 1,
                index: 1_234_067,
                width: Some(8)
            })
        );
        assert_eq!(
            parse_tile_path("tile/entries/000.p/3"),
            Some(TileRequest::Entries {
                index: 0,
                width: Some(3)
            })
        );
        for bad in [
            "tile/0/5",
            "tile/0/x000/005",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/01/000",
            "tile/9/000",
            "tile/0/x1/000",
            "tiles/0/000",
        ] {
            assert_eq!(parse_tile_path(bad), None, "{bad}");
        }
    }
}
