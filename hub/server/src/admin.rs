//! Registry administration: agencies, their keys and suspension, grants and
//! subscriptions, changed only through the admin listener (admin
//! certificates from the admin CA, never an agency's), and every change an
//! entry in the exchange log.
//!
//! A change is checked against the registry, then logged as an `admin`
//! entry - the hub as sender, the administrator (the admin certificate's
//! name) as the official it acted for, `{"change", "before"}` as the body
//! (the change, and what it replaced) - and
//! applied to the registry in the very transaction that appends the entry
//! ([`Effect::Registry`]): there is no change without its entry, and no
//! entry for a change that did not happen. The reply is the hub-signed
//! entry, a receipt the administrator can prove later like any other.

use hub_core::fields::{FieldError, FieldSet};
use hub_core::ids::{Member, PurposeCode, ServiceName};
use hub_core::jcs;
use hub_core::jws::Jwk;
use hub_core::log::{EntryDraft, EntryKind, LoggedEndUser};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::warn;

use crate::access_history::hub_member;
use crate::pipeline::Hub;
use crate::store::{
    AgencyRecord, Effect, Grant, RegistryChange, ServiceRecord, StoreError, Subscription,
    Withdrawal,
};
use hub_adapter_sdk::ServiceKind;

/// One change an administrator asks for (`{"op": ..., ...}` on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminChange {
    /// Register a member, or rename one (its key and suspension stay).
    AgencyAdd {
        member: Member,
        name: String,
    },
    /// Refuse every request of the member from its next one on.
    AgencySuspend {
        member: Member,
    },
    AgencyResume {
        member: Member,
    },
    /// Register a witness by its cosignature verifier key
    /// (`<name>+<hash>+<key>`, from `hub witness keygen`).
    WitnessAdd {
        vkey: String,
    },
    /// Refuse the member's client certificate with this serial (hex) from
    /// its next handshake with any hub on.
    CertificateRevoke {
        member: Member,
        serial: String,
    },
    /// Replace the member's envelope-signing key (`null`: none); the old
    /// key is retired, still verifying what it signed before now.
    AgencySetKey {
        member: Member,
        key: Option<Jwk>,
    },
    /// Take answers for `member`'s query services only from this RabbitMQ
    /// user (`null`: from the hubs' own user), on every hub.
    AgencySetBrokerUser {
        member: Member,
        user: Option<String>,
    },
    /// Let `consumer` call `service` for `purpose`, receiving only
    /// `fields` of its responses when given (replaces an existing grant's).
    GrantAdd {
        consumer: Member,
        service: ServiceName,
        purpose: PurposeCode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fields: Option<FieldSet>,
    },
    /// Remove a grant. The consumer's last grant for the service gone, it
    /// receives no more of the service's events, and those queued for it
    /// that it was never handed leave its inbox.
    GrantRevoke {
        consumer: Member,
        service: ServiceName,
        purpose: PurposeCode,
    },
    /// `subscriber` receives the events of `service` v`version` (it needs
    /// a grant for the service first).
    SubscriptionAdd {
        subscriber: Member,
        service: ServiceName,
        version: u32,
    },
    /// Deliver no more of `service` v`version`'s events to `subscriber`;
    /// those queued for it that it was never handed leave its inbox.
    SubscriptionRemove {
        subscriber: Member,
        service: ServiceName,
        version: u32,
    },
}

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Fields(#[from] FieldError),
    #[error("storage unavailable: {0}")]
    Storage(#[from] StoreError),
}

impl AdminError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::Invalid(_) | Self::Fields(_) => "invalid_change",
            Self::Storage(_) => "storage_unavailable",
        }
    }
}

/// Check `change` against the registry, log it as made by `admin` and
/// apply it in the same transaction. Returns the signed entry as a
/// `{"record", "body", "body_salt"}` message.
pub async fn apply(hub: &Hub, admin: &str, change: AdminChange) -> Result<String, AdminError> {
    let (writes, before) = registry_writes(hub, &change).await?;
    let body = jcs::canonicalize_serialize(&json!({"change": &change, "before": before}))
        .map_err(|e| AdminError::Invalid(format!("the change has no canonical form: {e}")))?;
    let draft = EntryDraft {
        on_behalf_of: Some(LoggedEndUser::Official {
            official_id: admin.to_owned(),
            full_name: admin.to_owned(),
        }),
        ..EntryDraft::new(EntryKind::Admin, hub.new_exchange_id(), hub_member())
    };
    let withdrawn = writes.iter().find_map(|w| match w {
        RegistryChange::WithdrawUnfetchedEvents {
            recipient, service, ..
        } => Some((recipient.clone(), service.clone())),
        _ => None,
    });
    let effects = writes
        .into_iter()
        .map(|w| Effect::Registry(Box::new(w)))
        .collect();
    let item = hub
        .append_admin(draft, body, effects)
        .await
        .map_err(|e| AdminError::Storage(StoreError::Unavailable(e.to_string())))?;
    let item = match withdrawn {
        // The count beside the entry, not in it: it is known only after.
        Some((recipient, service)) => match work_off_withdrawal(hub, recipient, service).await {
            Some(n) => format!("{{\"withdrawn\":{n},{}", &item[1..]),
            None => item,
        },
        None => item,
    };
    // This hub refuses it at once; the others within their next reload.
    match change {
        AdminChange::CertificateRevoke { serial, .. } => hub.revoked_certificates.insert(serial),
        AdminChange::AgencySuspend { member } => hub.suspended.insert(member),
        AdminChange::AgencyResume { member } => hub.suspended.remove(&member),
        AdminChange::AgencySetBrokerUser { member, user } => {
            if let Some(remote) = &hub.remote {
                remote.broker.answerers.set(&member, user.as_deref());
            }
        }
        _ => {}
    }
    Ok(item)
}

/// Take out the events the change withdrew before answering, in a task of
/// its own so that an administrator who hangs up does not stop it halfway:
/// how many. The change is made whatever happens here: a withdrawal that
/// fails is worked off later by any hub ([`crate::withdrawal`]), its inbox
/// closed until then.
async fn work_off_withdrawal(hub: &Hub, recipient: Member, service: ServiceName) -> Option<u64> {
    let store = hub.store.clone();
    let written_by = hub.clock.unix_millis().saturating_add(1);
    let work = tokio::spawn(async move {
        let this = |w: &Withdrawal| w.recipient == recipient && w.service == service;
        crate::withdrawal::work_off(store.as_ref(), written_by, this).await
    });
    match work.await {
        Ok(Ok(n)) => Some(n),
        Ok(Err(e)) => {
            warn!(error = %e, "withdrawing events failed; a hub retries within a minute");
            None
        }
        Err(e) => {
            warn!(error = %e, "withdrawing events stopped; a hub retries within a minute");
            None
        }
    }
}

async fn registered(hub: &Hub, member: &Member) -> Result<AgencyRecord, AdminError> {
    hub.store
        .agency(member)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("{member} is not registered")))
}

async fn versions_of(hub: &Hub, service: &ServiceName) -> Result<Vec<ServiceRecord>, AdminError> {
    let versions: Vec<ServiceRecord> = hub
        .store
        .services()
        .await?
        .into_iter()
        .filter(|s| &s.name == service)
        .collect();
    if versions.is_empty() {
        return Err(AdminError::NotFound(format!("no service {service}")));
    }
    Ok(versions)
}

/// What the registry held of an agency before a change to it.
fn agency_before(agency: Option<&AgencyRecord>) -> Value {
    let agency = agency.map(|a| {
        json!({"name": a.name, "signing_key": a.signing_key, "suspended": a.suspended,
               "broker_user": a.broker_user})
    });
    json!({ "agency": agency })
}

/// A RabbitMQ user name: what the broker can carry as a message's
/// `user_id` (an AMQP short string) and a person can read in a log line.
fn check_broker_user(user: &str) -> Result<(), AdminError> {
    if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "broker user {user:?} is not a RabbitMQ user name (1 to 255 bytes, no control characters)"
        )));
    }
    Ok(())
}

/// The grant for (consumer, service, purpose), if any.
async fn grant_of(
    hub: &Hub,
    consumer: &Member,
    service: &ServiceName,
    purpose: &PurposeCode,
) -> Result<Option<Grant>, AdminError> {
    Ok(hub
        .store
        .grants()
        .await?
        .into_iter()
        .find(|g| &g.consumer == consumer && &g.service == service && &g.purpose == purpose))
}

fn grant_before(grant: Option<&Grant>) -> Value {
    json!({ "grant": grant.map(|g| json!({ "fields": g.fields })) })
}

async fn subscribed(hub: &Hub, subscription: &Subscription) -> Result<bool, AdminError> {
    Ok(hub.store.subscriptions().await?.contains(subscription))
}

/// What `change` writes, after checking it makes sense, and what the
/// registry held before of what it changes - logged with the change, so
/// that an auditor can rebuild the registry as it was at any entry from the
/// one exported (`hub_audit::replay`): `{"agency": null | {"name",
/// "signing_key", "suspended", "broker_user"}}` for agency changes, `{"grant": null |
/// {"fields"}}` for grant changes, `{"subscribed": bool}` for subscription
/// changes, `{}` else.
async fn registry_writes(
    hub: &Hub,
    change: &AdminChange,
) -> Result<(Vec<RegistryChange>, Value), AdminError> {
    Ok(match change {
        AdminChange::AgencyAdd { member, name } => {
            if name.trim().is_empty() || name.chars().count() > 200 {
                return Err(AdminError::Invalid(
                    "an agency's name is 1 to 200 characters".into(),
                ));
            }
            let existing = hub.store.agency(member).await?;
            let before = agency_before(existing.as_ref());
            let write = RegistryChange::UpsertAgency(AgencyRecord {
                member: member.clone(),
                name: name.clone(),
                suspended: existing.as_ref().is_some_and(|a| a.suspended),
                signing_key: existing.as_ref().and_then(|a| a.signing_key.clone()),
                broker_user: existing.and_then(|a| a.broker_user),
            });
            (vec![write], before)
        }
        AdminChange::AgencySuspend { member } | AdminChange::AgencyResume { member } => {
            let mut record = registered(hub, member).await?;
            let before = agency_before(Some(&record));
            record.suspended = matches!(change, AdminChange::AgencySuspend { .. });
            (vec![RegistryChange::UpsertAgency(record)], before)
        }
        AdminChange::WitnessAdd { vkey } => {
            let verifier = hub_core::note::Verifier::parse(vkey)
                .map_err(|e| AdminError::Invalid(format!("{vkey}: {e}")))?;
            if verifier.kind != hub_core::note::KeyKind::Cosignature {
                return Err(AdminError::Invalid(format!(
                    "{vkey} is not a cosignature (0x04) key; make one with `hub witness keygen`"
                )));
            }
            let write = RegistryChange::AddWitness {
                name: verifier.name,
                vkey: vkey.clone(),
            };
            (vec![write], json!({}))
        }
        AdminChange::CertificateRevoke { member, serial } => {
            registered(hub, member).await?;
            let hex = |s: &str| {
                s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            };
            if serial.is_empty() || serial.len() > 40 || serial.len() % 2 != 0 || !hex(serial) {
                return Err(AdminError::Invalid(format!(
                    "serial {serial:?} is not a certificate serial in lowercase hex (2 to 40 digits)"
                )));
            }
            let write = RegistryChange::RevokeCertificate {
                serial: serial.clone(),
                member: member.clone(),
                at: hub_core::timefmt::rfc3339_millis(hub.clock.now()),
            };
            (vec![write], json!({}))
        }
        AdminChange::AgencySetBrokerUser { member, user } => {
            if *member == hub_member() {
                return Err(AdminError::Invalid(format!(
                    "{member} is the hub itself: it answers its own services in process"
                )));
            }
            if let Some(user) = user {
                check_broker_user(user)?;
            }
            let mut record = registered(hub, member).await?;
            let before = agency_before(Some(&record));
            record.broker_user.clone_from(user);
            (vec![RegistryChange::UpsertAgency(record)], before)
        }
        AdminChange::AgencySetKey { member, key } => {
            let record = registered(hub, member).await?;
            let before = agency_before(Some(&record));
            let writes = crate::store::key_replacement(record, key.clone(), hub.clock.now());
            (writes, before)
        }
        AdminChange::GrantAdd {
            consumer,
            service,
            purpose,
            fields,
        } => {
            registered(hub, consumer).await?;
            let versions = versions_of(hub, service).await?;
            if let Some(fields) = fields {
                for v in &versions {
                    let Some(schema) = &v.response_schema else {
                        return Err(AdminError::Invalid(format!(
                            "{} v{} is an event service: it has no response to limit to fields",
                            v.name, v.version
                        )));
                    };
                    hub.catalog.check_fields(schema, fields)?;
                }
            }
            let before = grant_before(grant_of(hub, consumer, service, purpose).await?.as_ref());
            let write = RegistryChange::AddGrant(Grant {
                consumer: consumer.clone(),
                service: service.clone(),
                purpose: purpose.clone(),
                fields: fields.clone(),
            });
            (vec![write], before)
        }
        AdminChange::GrantRevoke {
            consumer,
            service,
            purpose,
        } => {
            // The consumer's grants for the service, this purpose's first.
            let (mut this, others): (Vec<Grant>, Vec<Grant>) = hub
                .store
                .grants()
                .await?
                .into_iter()
                .filter(|g| &g.consumer == consumer && &g.service == service)
                .partition(|g| &g.purpose == purpose);
            let Some(grant) = this.pop() else {
                return Err(AdminError::NotFound(format!(
                    "{consumer} has no grant for {service} with purpose {purpose}"
                )));
            };
            let before = grant_before(Some(&grant));
            let mut writes = vec![RegistryChange::RevokeGrant(grant)];
            // Revoked, the last grant for an event service takes back the
            // events queued for the consumer that it was never handed.
            // Another grant left, or a query service, there are none, and
            // a withdrawal would close the inbox while it looks.
            let last = others.is_empty();
            let events = hub
                .store
                .services()
                .await?
                .iter()
                .any(|v| &v.name == service && v.kind == ServiceKind::Event);
            if last && events {
                writes.push(RegistryChange::WithdrawUnfetchedEvents {
                    recipient: consumer.clone(),
                    service: service.clone(),
                    at_millis: hub.clock.unix_millis(),
                });
            }
            (writes, before)
        }
        AdminChange::SubscriptionAdd {
            subscriber,
            service,
            version,
        } => {
            registered(hub, subscriber).await?;
            let versions = versions_of(hub, service).await?;
            if !versions
                .iter()
                .any(|v| v.version == *version && v.kind == ServiceKind::Event)
            {
                return Err(AdminError::NotFound(format!(
                    "no event service {service} v{version}"
                )));
            }
            let granted = hub
                .store
                .grants()
                .await?
                .iter()
                .any(|g| &g.consumer == subscriber && &g.service == service);
            if !granted {
                return Err(AdminError::Invalid(format!(
                    "{subscriber} has no grant for {service}: add one first"
                )));
            }
            let subscription = Subscription {
                subscriber: subscriber.clone(),
                service: service.clone(),
                version: *version,
            };
            let before = json!({ "subscribed": subscribed(hub, &subscription).await? });
            (vec![RegistryChange::AddSubscription(subscription)], before)
        }
        AdminChange::SubscriptionRemove {
            subscriber,
            service,
            version,
        } => {
            let subscription = Subscription {
                subscriber: subscriber.clone(),
                service: service.clone(),
                version: *version,
            };
            if !subscribed(hub, &subscription).await? {
                return Err(AdminError::NotFound(format!(
                    "{subscriber} is not subscribed to {service} v{version}"
                )));
            }
            // As with a revoked grant: the subscriber no longer wants the
            // events, and a waiting one would keep its body past retention.
            let withdraw = RegistryChange::WithdrawUnfetchedEvents {
                recipient: subscriber.clone(),
                service: service.clone(),
                at_millis: hub.clock.unix_millis(),
            };
            (
                vec![RegistryChange::RemoveSubscription(subscription), withdraw],
                json!({ "subscribed": true }),
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changes_read_from_json_and_refuse_unknown_members() {
        let change: AdminChange = serde_json::from_value(json!({
            "op": "grant_add", "consumer": {"agency": "000.00.00.G08", "subsystem": "tax"},
            "service": "citizen.lookup", "purpose": "tax_administration", "fields": ["/found"]
        }))
        .unwrap();
        assert!(matches!(
            change,
            AdminChange::GrantAdd {
                fields: Some(_),
                ..
            }
        ));
        for bad in [
            json!({"op": "grant_add"}),
            json!({"op": "agency_suspend", "member": {"agency": "000.00.00.G08", "subsystem": "tax"}, "x": 1}),
            json!({"op": "drop_everything"}),
        ] {
            assert!(
                serde_json::from_value::<AdminChange>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
