//! The registry as exported with a bundle (`registry.json`): agencies and
//! their envelope-signing keys, services, grants, subscriptions.
//! Verification reads the agencies' keys from it; replay decides against
//! it, checks that every response released no more than its grant's
//! fields and that every event went to exactly its service's subscribers.

use std::collections::{BTreeMap, BTreeSet};

use hub_core::decide::{Registry, ServiceView};
use hub_core::envelope::ServiceKind;
use hub_core::fields::FieldSet;
use hub_core::ids::{Member, PurposeCode, ServiceName};
use hub_core::jws::{Jwk, Jwks};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One agency subsystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgencyEntry {
    pub member: Member,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<Jwk>,
    /// Keys it signed with before, each with its `valid_until`: signatures
    /// they made until then still verify.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired_keys: Vec<Jwk>,
    /// Suspended when the bundle was exported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspended: bool,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub name: ServiceName,
    pub version: u32,
    pub kind: ServiceKind,
    pub provider: Member,
    pub request_schema: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_schema: Option<String>,
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantEntry {
    pub consumer: Member,
    pub service: ServiceName,
    pub purpose: PurposeCode,
    /// The response fields it releases; absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldSet>,
}

/// One subscription to an event service's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEntry {
    pub subscriber: Member,
    pub service: ServiceName,
    pub version: u32,
}

/// The registry at export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    pub agencies: Vec<AgencyEntry>,
    pub services: Vec<ServiceEntry>,
    pub grants: Vec<GrantEntry>,
    /// Absent from bundles exported before subscriptions were: then an
    /// event's recipients cannot be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<Vec<SubscriptionEntry>>,
}

impl RegistrySnapshot {
    /// Each member's envelope-signing keys, current and retired, as a key
    /// set (members that never had a key are absent).
    pub fn agency_keys(&self) -> BTreeMap<String, Jwks> {
        self.agencies
            .iter()
            .filter_map(|a| {
                let keys: Vec<Jwk> = a
                    .signing_key
                    .iter()
                    .chain(&a.retired_keys)
                    .cloned()
                    .collect();
                (!keys.is_empty()).then(|| (a.member.to_string(), Jwks { keys }))
            })
            .collect()
    }

    /// The snapshot indexed for the pipeline's decisions.
    pub fn index(&self) -> IndexedRegistry<'_> {
        IndexedRegistry {
            agencies: self.agencies.iter().map(|a| (&a.member, a)).collect(),
            services: self
                .services
                .iter()
                .map(|s| ((&s.name, s.version), s))
                .collect(),
            grants: self
                .grants
                .iter()
                .map(|g| ((&g.consumer, &g.service, &g.purpose), g))
                .collect(),
            granted_services: self
                .grants
                .iter()
                .map(|g| (&g.consumer, &g.service))
                .collect(),
            subscriptions: self.subscriptions.as_deref(),
        }
    }
}

/// A [`RegistrySnapshot`] ready for lookups.
#[derive(Debug)]
pub struct IndexedRegistry<'a> {
    agencies: BTreeMap<&'a Member, &'a AgencyEntry>,
    services: BTreeMap<(&'a ServiceName, u32), &'a ServiceEntry>,
    grants: BTreeMap<GrantKey<'a>, &'a GrantEntry>,
    /// (consumer, service) of every grant, whatever its purpose.
    granted_services: BTreeSet<(&'a Member, &'a ServiceName)>,
    subscriptions: Option<&'a [SubscriptionEntry]>,
}

type GrantKey<'a> = (&'a Member, &'a ServiceName, &'a PurposeCode);

impl IndexedRegistry<'_> {
    /// The grant for (consumer, service, purpose), if any.
    pub fn grant(
        &self,
        consumer: &Member,
        service: &ServiceName,
        purpose: &PurposeCode,
    ) -> Option<&GrantEntry> {
        self.grants.get(&(consumer, service, purpose)).copied()
    }

    /// Whom an event of `service` v`version` goes to, as the hub decides
    /// it: its subscribers holding a grant for the service (any purpose),
    /// ordered by member; `None` if the bundle exported no subscriptions.
    pub fn recipients(&self, service: &ServiceName, version: u32) -> Option<Vec<&Member>> {
        let mut recipients: Vec<&Member> = self
            .subscriptions?
            .iter()
            .filter(|s| &s.service == service && s.version == version)
            .map(|s| &s.subscriber)
            .filter(|m| self.granted_services.contains(&(*m, service)))
            .collect();
        recipients.sort();
        recipients.dedup();
        Some(recipients)
    }
}

impl Registry for IndexedRegistry<'_> {
    fn agency(&self, member: &Member) -> Option<Option<&Jwk>> {
        self.agencies.get(member).map(|a| a.signing_key.as_ref())
    }

    fn suspended(&self, member: &Member) -> bool {
        self.agencies.get(member).is_some_and(|a| a.suspended)
    }

    fn service(&self, name: &ServiceName, version: u32) -> Option<ServiceView> {
        self.services.get(&(name, version)).map(|s| ServiceView {
            name: s.name.clone(),
            version: s.version,
            kind: s.kind,
            provider: s.provider.clone(),
            request_schema: s.request_schema.clone(),
        })
    }

    fn granted(&self, consumer: &Member, service: &ServiceName, purpose: &PurposeCode) -> bool {
        self.grant(consumer, service, purpose).is_some()
    }
}

impl RegistrySnapshot {
    fn agency_mut(&mut self, member: &Member) -> Option<&mut AgencyEntry> {
        self.agencies.iter_mut().find(|a| &a.member == member)
    }

    fn set_grant(
        &mut self,
        consumer: Member,
        service: ServiceName,
        purpose: PurposeCode,
        fields: Option<Option<FieldSet>>,
    ) {
        self.grants
            .retain(|g| !(g.consumer == consumer && g.service == service && g.purpose == purpose));
        if let Some(fields) = fields {
            self.grants.push(GrantEntry {
                consumer,
                service,
                purpose,
                fields,
            });
        }
    }

    /// Make an administrator's change (an `admin` entry's `change`).
    /// Changes the decisions do not depend on are ignored; so is anything
    /// unreadable (the bundle's verification judges the entry itself).
    pub fn apply_change(&mut self, change: &Value) {
        let member = || serde_json::from_value::<Member>(change["member"].clone()).ok();
        match change["op"].as_str() {
            Some("agency_add") => {
                if let Some(m) = member()
                    && self.agency_mut(&m).is_none()
                {
                    self.agencies.push(AgencyEntry {
                        member: m,
                        signing_key: None,
                        retired_keys: vec![],
                        suspended: false,
                    });
                }
            }
            Some(op @ ("agency_suspend" | "agency_resume")) => {
                if let Some(m) = member()
                    && let Some(a) = self.agency_mut(&m)
                {
                    a.suspended = op == "agency_suspend";
                }
            }
            Some("agency_set_key") => {
                if let Some(m) = member()
                    && let Some(a) = self.agency_mut(&m)
                {
                    a.signing_key = serde_json::from_value(change["key"].clone()).ok().flatten();
                }
            }
            Some(op @ ("grant_add" | "grant_revoke")) => {
                if let Some((consumer, service, purpose)) = grant_key(change) {
                    let fields = (op == "grant_add").then(|| {
                        serde_json::from_value(change["fields"].clone())
                            .ok()
                            .flatten()
                    });
                    self.set_grant(consumer, service, purpose, fields);
                }
            }
            Some(op @ ("subscription_add" | "subscription_remove")) => {
                if let Some(sub) = subscription_of(change) {
                    self.set_subscription(sub, op == "subscription_add");
                }
            }
            _ => {}
        }
    }

    /// Subscribe or unsubscribe (nothing to do if the bundle exported no
    /// subscriptions).
    fn set_subscription(&mut self, sub: SubscriptionEntry, subscribed: bool) {
        let Some(subscriptions) = &mut self.subscriptions else {
            return;
        };
        subscriptions.retain(|s| s != &sub);
        if subscribed {
            subscriptions.push(sub);
        }
    }

    /// Undo an administrator's change, given what it replaced (the entry's
    /// `before`).
    pub fn undo_change(&mut self, change: &Value, before: &Value) {
        match change["op"].as_str() {
            Some("agency_add" | "agency_suspend" | "agency_resume" | "agency_set_key") => {
                let Ok(m) = serde_json::from_value::<Member>(change["member"].clone()) else {
                    return;
                };
                match before.get("agency").filter(|a| !a.is_null()) {
                    None => self.agencies.retain(|a| a.member != m),
                    Some(was) => {
                        if self.agency_mut(&m).is_none() {
                            self.apply_change(&serde_json::json!({"op": "agency_add", "member": change["member"]}));
                        }
                        if let Some(a) = self.agency_mut(&m) {
                            a.suspended = was["suspended"].as_bool().unwrap_or(false);
                            a.signing_key = serde_json::from_value(was["signing_key"].clone())
                                .ok()
                                .flatten();
                        }
                    }
                }
            }
            Some("grant_add" | "grant_revoke") => {
                if let Some((consumer, service, purpose)) = grant_key(change) {
                    let was = before
                        .get("grant")
                        .filter(|g| !g.is_null())
                        .map(|g| serde_json::from_value(g["fields"].clone()).ok().flatten());
                    self.set_grant(consumer, service, purpose, was);
                }
            }
            // A removal's subscription existed (the hub refuses to remove
            // one that does not); an addition's only if `before` says so.
            Some(op @ ("subscription_add" | "subscription_remove")) => {
                if let Some(sub) = subscription_of(change) {
                    let was = op == "subscription_remove" || before["subscribed"] == true;
                    self.set_subscription(sub, was);
                }
            }
            _ => {}
        }
    }
}

fn subscription_of(change: &Value) -> Option<SubscriptionEntry> {
    Some(SubscriptionEntry {
        subscriber: serde_json::from_value(change["subscriber"].clone()).ok()?,
        service: serde_json::from_value(change["service"].clone()).ok()?,
        version: serde_json::from_value(change["version"].clone()).ok()?,
    })
}

fn grant_key(change: &Value) -> Option<(Member, ServiceName, PurposeCode)> {
    Some((
        serde_json::from_value(change["consumer"].clone()).ok()?,
        serde_json::from_value(change["service"].clone()).ok()?,
        serde_json::from_value(change["purpose"].clone()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    const TAX: &str = "000.00.00.G08/tax";
    const INSURANCE: &str = "000.00.00.G22/social-insurance";

    fn member(s: &str) -> Member {
        s.parse().unwrap()
    }

    fn registry() -> RegistrySnapshot {
        let service = ServiceName::parse("enterprise.registered").unwrap();
        RegistrySnapshot {
            grants: [TAX, INSURANCE]
                .into_iter()
                .map(|m| GrantEntry {
                    consumer: member(m),
                    service: service.clone(),
                    purpose: PurposeCode::parse("tax_administration").unwrap(),
                    fields: None,
                })
                .collect(),
            subscriptions: Some(vec![SubscriptionEntry {
                subscriber: member(INSURANCE),
                service,
                version: 1,
            }]),
            ..RegistrySnapshot::default()
        }
    }

    fn recipients(r: &RegistrySnapshot) -> Option<Vec<String>> {
        let service = ServiceName::parse("enterprise.registered").unwrap();
        r.index()
            .recipients(&service, 1)
            .map(|m| m.iter().map(ToString::to_string).collect())
    }

    fn change(op: &str, who: &str) -> Value {
        let (agency, subsystem) = who.split_once('/').unwrap();
        json!({"op": op, "subscriber": {"agency": agency, "subsystem": subsystem},
               "service": "enterprise.registered", "version": 1})
    }

    #[test]
    fn subscription_changes_are_made_and_undone_as_logged() {
        let mut r = registry();
        assert_eq!(recipients(&r), Some(vec![INSURANCE.to_owned()]));
        let add = change("subscription_add", TAX);
        r.apply_change(&add);
        assert_eq!(
            recipients(&r),
            Some(vec![TAX.to_owned(), INSURANCE.to_owned()])
        );
        // Undone: gone again, unless it was there before the change.
        let mut undone = r.clone();
        undone.undo_change(&add, &json!({"subscribed": false}));
        assert_eq!(recipients(&undone), Some(vec![INSURANCE.to_owned()]));
        r.undo_change(&add, &json!({"subscribed": true}));
        assert_eq!(
            recipients(&r),
            Some(vec![TAX.to_owned(), INSURANCE.to_owned()])
        );
        let remove = change("subscription_remove", INSURANCE);
        r.apply_change(&remove);
        assert_eq!(recipients(&r), Some(vec![TAX.to_owned()]));
        r.undo_change(&remove, &json!({"subscribed": true}));
        assert_eq!(
            recipients(&r),
            Some(vec![TAX.to_owned(), INSURANCE.to_owned()])
        );
    }

    #[test]
    fn only_subscribers_granted_the_service_receive_its_events() {
        let mut r = registry();
        r.apply_change(&change("subscription_add", TAX));
        r.apply_change(&json!({"op": "grant_revoke",
            "consumer": {"agency": "000.00.00.G08", "subsystem": "tax"},
            "service": "enterprise.registered", "purpose": "tax_administration"}));
        assert_eq!(recipients(&r), Some(vec![INSURANCE.to_owned()]));
        // A bundle exported before subscriptions were: nothing to check
        // against, whatever the changes.
        let mut old = RegistrySnapshot {
            subscriptions: None,
            ..registry()
        };
        old.apply_change(&change("subscription_add", TAX));
        assert_eq!(recipients(&old), None);
    }
}
