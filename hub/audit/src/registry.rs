//! The registry as exported with a bundle (`registry.json`): agencies and
//! their envelope-signing keys, services, grants. Verification reads the
//! agencies' keys from it; replay decides against it and checks that every
//! response released no more than its grant's fields.

use std::collections::BTreeMap;

use hub_core::decide::{Registry, ServiceView};
use hub_core::envelope::ServiceKind;
use hub_core::fields::FieldSet;
use hub_core::ids::{Member, PurposeCode, ServiceName};
use hub_core::jws::{Jwk, Jwks};
use serde::{Deserialize, Serialize};

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

/// The registry at export.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySnapshot {
    pub agencies: Vec<AgencyEntry>,
    pub services: Vec<ServiceEntry>,
    pub grants: Vec<GrantEntry>,
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
        }
    }
}

/// A [`RegistrySnapshot`] ready for lookups.
#[derive(Debug)]
pub struct IndexedRegistry<'a> {
    agencies: BTreeMap<&'a Member, &'a AgencyEntry>,
    services: BTreeMap<(&'a ServiceName, u32), &'a ServiceEntry>,
    grants: BTreeMap<GrantKey<'a>, &'a GrantEntry>,
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
