//! "Who saw my data" (Decree 13/2023 art. 9, the data subject's right to
//! know): the hub's own query service `subject.access_history`.
//!
//! The pipeline stores with every accepted request, event and response the
//! data subjects it touched, as keyed hashes of their personal IDs
//! (`hub_core::log::subject_of`), in the transaction that logs it; a
//! background task folds them into the subject index in batches, and a
//! lookup also scans the entries the index does not cover yet. This
//! service answers from that: for one personal ID, every exchange
//! that touched the person - who asked or published, when, which service,
//! for what purpose and case, who received what fields.
//!
//! It is an ordinary query service provided by the hub itself, so asking
//! is authorised like any other query (a grant for the caller, e.g. the
//! citizen portal, with purpose `data_subject_request`), and the question
//! and its answer are themselves log entries - indexed under the same
//! person, so the next answer shows who asked before.

use std::sync::Arc;

use hub_adapter_sdk::{Adapter, AdapterError, AdapterRequest, HandlerFuture, ServiceSpec};
use hub_core::body::DataKey;
use hub_core::ids::Member;
use hub_core::log::subject_of;
use serde_json::{Map, Value, json};

use crate::store::Store;

/// The service's name.
pub const SERVICE: &str = "subject.access_history";

/// The member the hub answers its own services as.
pub const HUB_MEMBER: &str = "000.00.00.H00/hub";

/// At most this many exchanges in one answer (the oldest first); the
/// answer says `truncated` when there are more, and `next`: the `after`
/// that asks for the page that follows.
pub const MAX_ACCESSES: u32 = 1000;

/// The hub's member.
#[allow(clippy::expect_used)]
pub fn hub_member() -> Member {
    HUB_MEMBER
        .parse()
        .expect("the hub's member constant is well formed (tested)")
}

/// Answers `subject.access_history` from the store's subject index.
pub struct AccessHistory {
    member: Member,
    store: Arc<dyn Store>,
    data_key: Arc<DataKey>,
}

impl AccessHistory {
    pub fn new(store: Arc<dyn Store>, data_key: Arc<DataKey>) -> Self {
        Self {
            member: hub_member(),
            store,
            data_key,
        }
    }

    async fn answer(&self, request: &AdapterRequest) -> Result<Value, AdapterError> {
        // The hub validated the payload against the request schema.
        let personal_id = request.payload["personal_id"].as_str().unwrap_or_default();
        let after = request.payload["after"].as_u64();
        let subject = subject_of(&self.data_key, personal_id);
        let (records, next) = self
            .store
            .subject_records(&subject, MAX_ACCESSES, after)
            .await
            .map_err(|e| AdapterError::Unavailable(e.to_string()))?;
        let records: Vec<Value> = records
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect();
        let current = request.exchange_id.to_string();
        let mut answer = json!({
            "accesses": accesses(&records, &current),
            "truncated": next.is_some(),
        });
        if let Some(next) = next {
            answer["next"] = json!(next);
        }
        Ok(answer)
    }
}

impl Adapter for AccessHistory {
    fn provider(&self) -> &Member {
        &self.member
    }

    fn services(&self) -> Vec<ServiceSpec> {
        vec![ServiceSpec::query(SERVICE, 1)]
    }

    fn handle<'a>(&'a self, request: &'a AdapterRequest) -> HandlerFuture<'a> {
        Box::pin(self.answer(request))
    }
}

/// One access per exchange, from its log records in log order; the
/// exchange `current` (the question being answered) left out.
fn accesses(records: &[Value], current: &str) -> Vec<Value> {
    let mut out: Vec<Map<String, Value>> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for record in records {
        let id = record["exchange_id"].as_str().unwrap_or_default();
        if id == current {
            continue;
        }
        let at = ids.iter().position(|x| *x == id);
        match (record["kind"].as_str(), at) {
            (Some(kind @ ("request" | "event")), None) => {
                let mut access = Map::new();
                access.insert("exchange_id".into(), json!(id));
                for key in ["time", "service", "version", "purpose", "case_ref"] {
                    if let Some(v) = record.get(key) {
                        access.insert(key.into(), v.clone());
                    }
                }
                access.insert("agency".into(), record["sender"].clone());
                if let Some(official) = record
                    .get("on_behalf_of")
                    .filter(|u| u["kind"] == "official")
                {
                    access.insert(
                        "on_behalf_of".into(),
                        json!({"official_id": official["official_id"], "full_name": official["full_name"]}),
                    );
                }
                let (kind, received_by, outcome) = if kind == "event" {
                    ("event", record["recipients"].clone(), "published")
                } else {
                    ("query", json!([]), "pending")
                };
                access.insert("kind".into(), json!(kind));
                access.insert(
                    "received_by".into(),
                    if received_by.is_array() {
                        received_by
                    } else {
                        json!([])
                    },
                );
                access.insert("outcome".into(), json!(outcome));
                ids.push(id);
                out.push(access);
            }
            (Some("response"), Some(i)) => {
                let access = &mut out[i];
                access.insert("outcome".into(), json!("answered"));
                access.insert("received_by".into(), json!([record["receiver"]]));
                if let Some(fields) = record.get("fields") {
                    access.insert("fields".into(), fields.clone());
                }
            }
            (Some("failure"), Some(i)) => {
                out[i].insert("outcome".into(), json!("failed"));
            }
            // Receipts, and anything whose request is not among the records.
            _ => {}
        }
    }
    out.into_iter().map(Value::Object).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_member_parses() {
        assert_eq!(hub_member().to_string(), HUB_MEMBER);
    }

    #[test]
    fn an_exchange_becomes_one_access_and_the_current_one_is_left_out() {
        let one_stop = json!({"agency": "000.00.29.H29", "subsystem": "one-stop"});
        let records = [
            json!({"kind": "request", "exchange_id": "a", "time": "t0", "service": "citizen.lookup",
                   "version": 1, "purpose": "public_service", "case_ref": "C1", "sender": one_stop,
                   "on_behalf_of": {"kind": "citizen", "subject": "x"}}),
            json!({"kind": "request", "exchange_id": "b", "time": "t1", "service": "citizen.lookup",
                   "version": 1, "purpose": "civil_status", "case_ref": "C2", "sender": one_stop,
                   "on_behalf_of": {"kind": "official", "official_id": "CB-1", "full_name": "Lê Văn Tâm"}}),
            json!({"kind": "response", "exchange_id": "a", "receiver": one_stop, "fields": ["/found"]}),
            json!({"kind": "failure", "exchange_id": "b"}),
            json!({"kind": "request", "exchange_id": "now", "sender": one_stop}),
        ];
        let got = accesses(&records, "now");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["outcome"], "answered");
        assert_eq!(got[0]["received_by"], json!([one_stop]));
        assert_eq!(got[0]["fields"], json!(["/found"]));
        assert!(
            got[0].get("on_behalf_of").is_none(),
            "the citizen is the subject"
        );
        assert_eq!(got[1]["outcome"], "failed");
        assert_eq!(got[1]["received_by"], json!([]));
        assert_eq!(got[1]["on_behalf_of"]["official_id"], "CB-1");
    }
}
