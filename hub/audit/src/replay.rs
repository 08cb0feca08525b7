//! Replay: re-run the pipeline's decisions (`hub_core::decide`) for every
//! logged request, event and refusal, against the registry exported with
//! the bundle, and report every entry whose recorded outcome differs.
//!
//! The registry is the one in force at export: grants changed since an
//! entry was logged show up as differences, which the report lists for a
//! person to judge.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use hub_core::decide;
use hub_core::ids::Member;
use hub_core::schema::Catalog;
use serde::Serialize;
use serde_json::{Value, json};

use hub_core::body::DataKey;

use crate::{BodyLine, BundleError, RegistrySnapshot, invalid, io, manifest, read_json};

/// An entry whose replayed outcome is not the recorded one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub index: u64,
    pub kind: String,
    /// `accepted`, or the refusal code the hub logged.
    pub recorded: String,
    /// `accepted`, or the refusal code the decisions give now.
    pub replayed: String,
    pub detail: String,
}

/// What [`replay`] found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    pub entries: u64,
    pub replayed: u64,
    pub matched: u64,
    pub differences: Vec<Difference>,
}

/// The request the hub received, rebuilt from a logged entry and its body:
/// the canonical envelope with the sender's signature, or the raw bytes of
/// a request refused before its envelope could be read.
fn request_bytes(record: &Value, body: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("envelope").is_none() && v.is_object() => {
            let mut request = json!({ "envelope": v });
            if let Some(sig) = record.get("sender_signature") {
                request["signature"] = sig.clone();
            }
            serde_json::to_vec(&request).unwrap_or_default()
        }
        _ => body.to_vec(),
    }
}

/// Replay every decision in the bundle in `dir`, opening the bodies with
/// `data_key`. `progress` gets (done, all).
pub fn replay(
    dir: &Path,
    data_key: &DataKey,
    progress: &dyn Fn(u64, u64),
) -> Result<ReplayReport, BundleError> {
    let manifest = manifest(dir)?;
    if !manifest.bodies {
        return Err(invalid(
            dir,
            "the bundle has no bodies: export it with bodies to replay",
        ));
    }
    let registry: RegistrySnapshot = read_json(&dir.join("registry.json"))?;
    let registry = registry.index();
    let catalog = Catalog::builtin().map_err(|e| invalid(dir, e))?;
    let entries_path = dir.join("entries.jsonl");
    let bodies_path = dir.join("bodies.jsonl");
    let entries = BufReader::new(File::open(&entries_path).map_err(io(&entries_path))?).lines();
    let mut bodies = BufReader::new(File::open(&bodies_path).map_err(io(&bodies_path))?).lines();
    let mut pending: Option<BodyLine> = None;
    let mut report = ReplayReport::default();
    for (index, line) in (0u64..).zip(entries) {
        let line = line.map_err(io(&entries_path))?;
        report.entries += 1;
        if pending.as_ref().is_none_or(|b| b.index < index) {
            pending = None;
            for l in bodies.by_ref() {
                let b: BodyLine = serde_json::from_str(&l.map_err(io(&bodies_path))?)
                    .map_err(|e| invalid(&bodies_path, e))?;
                if b.index >= index {
                    pending = Some(b);
                    break;
                }
            }
        }
        let record: Value = serde_json::from_str(&line)
            .map_err(|e| invalid(&entries_path, format!("entry {index}: {e}")))?;
        let kind = record["kind"].as_str().unwrap_or_default().to_owned();
        if !matches!(kind.as_str(), "request" | "event" | "refusal") {
            continue;
        }
        let Some(body) = pending.as_ref().filter(|b| b.index == index) else {
            continue;
        };
        let commitment = record["body_hash"].as_str().unwrap_or_default();
        let Some((_, body)) = body
            .sealed()
            .and_then(|sealed| data_key.open(&sealed, commitment))
        else {
            return Err(invalid(
                &bodies_path,
                format!(
                    "entry {index}: the body does not open with data key {}",
                    data_key.id()
                ),
            ));
        };
        let who: Member = serde_json::from_value(record["sender"].clone())
            .map_err(|e| invalid(&entries_path, format!("entry {index}: sender: {e}")))?;
        let recorded = if kind == "refusal" {
            record["error"]["code"]
                .as_str()
                .unwrap_or("refusal")
                .to_owned()
        } else {
            "accepted".to_owned()
        };
        let (replayed, detail) =
            match decide::decide(&request_bytes(&record, &body), &who, &registry, &catalog) {
                Ok(_) => ("accepted".to_owned(), String::new()),
                Err(r) => (r.code().to_owned(), r.to_string()),
            };
        report.replayed += 1;
        if replayed == recorded {
            report.matched += 1;
        } else {
            report.differences.push(Difference {
                index,
                kind,
                recorded,
                replayed,
                detail,
            });
        }
        if index % 4096 == 0 {
            progress(index, manifest.entries);
        }
    }
    progress(report.entries, manifest.entries);
    Ok(report)
}
