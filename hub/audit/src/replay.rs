//! Replay: re-run the pipeline's decisions (`hub_core::decide`) for every
//! logged request, event and refusal, against the registry exported with
//! the bundle, check that every response released no more than its grant's
//! fields and that every event went to exactly the subscribers granted its
//! service, and report every entry whose recorded outcome differs.
//!
//! Each entry is judged by the registry as it was when it was logged: the
//! registry exported with the bundle, with the administrators' changes
//! logged after that entry (`admin` entries, which record what they
//! replaced) undone. Changes made outside the log - the registry a hub
//! started with, services its adapters registered - are taken as exported.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use hub_core::decide;
use hub_core::fields::{FieldPointer, FieldSet};
use hub_core::ids::Member;
use hub_core::schema::Catalog;
use serde::Serialize;
use serde_json::{Value, json};

use hub_core::body::DataKey;

use crate::registry::IndexedRegistry;
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
    /// Administrators' registry changes the replay undid and made again to
    /// judge each entry by the registry of its time.
    pub registry_changes: u64,
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

/// A logged field list (`None`: absent, the whole response).
fn logged_fields(record: &Value) -> Result<Option<Vec<FieldPointer>>, String> {
    record
        .get("fields")
        .map(|f| serde_json::from_value(f.clone()).map_err(|e| format!("fields: {e}")))
        .transpose()
}

fn list(fields: Option<&[FieldPointer]>) -> String {
    fields.map_or("every field".into(), |f| {
        f.iter()
            .map(FieldPointer::as_str)
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// A request records the fields its grant released: the export-time
/// grant must release the same.
fn fields_match_grant(
    record: &Value,
    who: &Member,
    registry: &IndexedRegistry<'_>,
) -> Result<(), String> {
    let logged = logged_fields(record)?;
    let (Ok(service), Ok(purpose)) = (
        serde_json::from_value(record["service"].clone()),
        serde_json::from_value(record["purpose"].clone()),
    ) else {
        return Err("the request names no service or purpose".into());
    };
    let granted = registry
        .grant(who, &service, &purpose)
        .and_then(|g| g.fields.as_ref())
        .map(FieldSet::to_vec);
    if logged == granted {
        Ok(())
    } else {
        Err(format!(
            "the request released {}; the grant now releases {}",
            list(logged.as_deref()),
            list(granted.as_deref())
        ))
    }
}

/// An event went to exactly the subscribers that held a grant for its
/// service then (the hub's rule); unchecked if the bundle exported no
/// subscriptions.
fn recipients_match_subscriptions(
    record: &Value,
    registry: &IndexedRegistry<'_>,
) -> Result<(), String> {
    let (Ok(service), Some(version)) = (
        serde_json::from_value(record["service"].clone()),
        record["version"]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok()),
    ) else {
        return Err("the event names no service or version".into());
    };
    let Some(subscribed) = registry.recipients(&service, version) else {
        return Ok(());
    };
    // An event nobody was to receive lists none.
    let mut delivered: Vec<Member> = record
        .get("recipients")
        .map_or(Ok(Vec::new()), |r| serde_json::from_value(r.clone()))
        .map_err(|e| format!("recipients: {e}"))?;
    delivered.sort();
    if delivered.iter().eq(subscribed.iter().copied()) {
        Ok(())
    } else {
        let names = |m: &mut dyn Iterator<Item = &Member>| {
            m.map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        Err(format!(
            "delivered to [{}]; the subscribers granted {service} then were [{}]",
            names(&mut delivered.iter()),
            names(&mut subscribed.iter().copied())
        ))
    }
}

/// A response's body holds only the fields it lists, and those are
/// within what the receiver's grant releases at export.
fn released_within_grant(
    record: &Value,
    body: &[u8],
    registry: &IndexedRegistry<'_>,
) -> Result<(), String> {
    let body: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    let logged = logged_fields(record)?;
    if let Some(released) = &logged
        && !hub_core::fields::holds_only(&body, released)
    {
        return Err(format!(
            "the body holds more than the fields it lists ({})",
            list(Some(released))
        ));
    }
    let (Ok(receiver), Ok(service), Ok(purpose)) = (
        serde_json::from_value::<Member>(record["receiver"].clone()),
        serde_json::from_value(record["service"].clone()),
        serde_json::from_value(record["purpose"].clone()),
    ) else {
        return Err("the response names no receiver, service or purpose".into());
    };
    let Some(grant) = registry.grant(&receiver, &service, &purpose) else {
        // Revoked since: the request's replay reports it.
        return Ok(());
    };
    match (&grant.fields, &logged) {
        (None, _) => Ok(()),
        (Some(granted), Some(released))
            if released.iter().all(|f| granted.iter().any(|g| g == f)) =>
        {
            Ok(())
        }
        (Some(granted), _) => Err(format!(
            "{receiver} received {}; its grant releases {}",
            list(logged.as_deref()),
            granted.to_list()
        )),
    }
}

/// Every `admin` entry of the bundle, in log order: (index, change, before).
fn admin_changes(dir: &Path, data_key: &DataKey) -> Result<Vec<(u64, Value, Value)>, BundleError> {
    let entries_path = dir.join("entries.jsonl");
    let bodies_path = dir.join("bodies.jsonl");
    let mut wanted: Vec<(u64, String)> = Vec::new();
    let entries = BufReader::new(File::open(&entries_path).map_err(io(&entries_path))?).lines();
    for (index, line) in (0u64..).zip(entries) {
        let line = line.map_err(io(&entries_path))?;
        // Cheap first: most entries are not registry changes.
        if !line.contains("\"kind\":\"admin\"") {
            continue;
        }
        let record: Value = serde_json::from_str(&line)
            .map_err(|e| invalid(&entries_path, format!("entry {index}: {e}")))?;
        if record["kind"] == "admin" {
            let commitment = record["body_hash"].as_str().unwrap_or_default().to_owned();
            wanted.push((index, commitment));
        }
    }
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    let mut found = Vec::with_capacity(wanted.len());
    let mut next = wanted.iter().peekable();
    let bodies = BufReader::new(File::open(&bodies_path).map_err(io(&bodies_path))?).lines();
    for line in bodies {
        let line = line.map_err(io(&bodies_path))?;
        let b: BodyLine = serde_json::from_str(&line).map_err(|e| invalid(&bodies_path, e))?;
        // A change whose body was purged stays as exported.
        while next.peek().is_some_and(|(index, _)| *index < b.index) {
            next.next();
        }
        let Some((index, commitment)) = next.peek() else {
            break;
        };
        if *index != b.index {
            continue;
        }
        let opened = b
            .sealed()
            .and_then(|sealed| data_key.open(&sealed, commitment))
            .and_then(|(_, body)| serde_json::from_slice::<Value>(&body).ok());
        let Some(body) = opened else {
            return Err(invalid(
                &bodies_path,
                format!(
                    "entry {index}: the registry change does not open with data key {}",
                    data_key.id()
                ),
            ));
        };
        found.push((*index, body["change"].clone(), body["before"].clone()));
        next.next();
    }
    Ok(found)
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
    let exported: RegistrySnapshot = read_json(&dir.join("registry.json"))?;
    // The registry as it was at the first entry: the exported one with
    // every logged registry change undone, latest first; replay then makes
    // each change again as it passes its entry.
    let changes = admin_changes(dir, data_key)?;
    let mut registry = exported;
    for (_, change, before) in changes.iter().rev() {
        registry.undo_change(change, before);
    }
    let mut report = ReplayReport {
        registry_changes: changes.len() as u64,
        ..ReplayReport::default()
    };
    let mut changes = changes.into_iter().peekable();
    let mut indexed = registry.index();
    let catalog = Catalog::builtin().map_err(|e| invalid(dir, e))?;
    let entries_path = dir.join("entries.jsonl");
    let bodies_path = dir.join("bodies.jsonl");
    let entries = BufReader::new(File::open(&entries_path).map_err(io(&entries_path))?).lines();
    let mut bodies = BufReader::new(File::open(&bodies_path).map_err(io(&bodies_path))?).lines();
    let mut pending: Option<BodyLine> = None;
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
        if changes.peek().is_some_and(|(at, _, _)| *at == index) {
            if let Some((_, change, _)) = changes.next() {
                drop(indexed);
                registry.apply_change(&change);
                indexed = registry.index();
            }
            continue;
        }
        let record: Value = serde_json::from_str(&line)
            .map_err(|e| invalid(&entries_path, format!("entry {index}: {e}")))?;
        let kind = record["kind"].as_str().unwrap_or_default().to_owned();
        if !matches!(kind.as_str(), "request" | "event" | "refusal" | "response") {
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
        if kind == "response" {
            report.replayed += 1;
            match released_within_grant(&record, &body, &indexed) {
                Ok(()) => report.matched += 1,
                Err(detail) => report.differences.push(Difference {
                    index,
                    kind,
                    recorded: "released".into(),
                    replayed: "over_released".into(),
                    detail,
                }),
            }
            continue;
        }
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
            match decide::decide(&request_bytes(&record, &body), &who, &indexed, &catalog) {
                Ok(_) if kind == "request" => match fields_match_grant(&record, &who, &indexed) {
                    Ok(()) => ("accepted".to_owned(), String::new()),
                    Err(detail) => ("accepted_other_fields".to_owned(), detail),
                },
                Ok(_) if kind == "event" => match recipients_match_subscriptions(&record, &indexed)
                {
                    Ok(()) => ("accepted".to_owned(), String::new()),
                    Err(detail) => ("accepted_other_recipients".to_owned(), detail),
                },
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
