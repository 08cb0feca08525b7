//! The calling agency's identity, read once from its TLS client certificate
//! and carried into handlers as a typed value.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use hub_core::ids::Member;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::http::ApiError;

/// The authenticated member behind a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub Member);

/// The serial (lowercase hex) of a connection's client certificate: a
/// revocation made while the connection is open refuses its next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSerial(pub String);

/// The subject common name of a connection's verified client certificate:
/// on the admin listener, whose CA issues only administrators'
/// certificates, the administrator's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertName(pub String);

/// Why a verified certificate does not name a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed")]
    Unparseable,
    #[error("the client certificate has no subject common name")]
    NoCommonName,
    #[error("the subject common name {0:?} is not agency/subsystem")]
    NotAMember(String),
}

/// A client certificate's subject CN.
pub fn common_name(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or(IdentityError::NoCommonName)
}

/// The member named by a client certificate's subject CN (`agency/subsystem`).
pub fn member_from_certificate(der: &[u8]) -> Result<Member, IdentityError> {
    let cn = common_name(der)?;
    cn.parse().map_err(|_| IdentityError::NotAMember(cn))
}

/// The middleware that refuses the requests of a connection whose client
/// certificate was revoked after it connected, by the registry or by the
/// listener's CA's CRL (new connections with it already fail the handshake).
pub async fn refuse_revoked(
    State(tls): State<Arc<crate::tls::ServerTls>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match request.extensions().get::<CertSerial>() {
        Some(CertSerial(serial)) if tls.revokes(serial) => Err(ApiError::CertificateRevoked),
        _ => Ok(next.run(request).await),
    }
}

/// What the registry refuses that the hub checks on every handshake or
/// request (revoked certificate serials, suspended members): reloaded from
/// the registry every second, and changed at once by an administrator's
/// change made through this hub.
#[derive(Debug)]
pub struct RefusedSet<T>(RwLock<HashSet<T>>);

impl<T> Default for RefusedSet<T> {
    fn default() -> Self {
        Self(RwLock::new(HashSet::new()))
    }
}

impl<T: Eq + Hash> RefusedSet<T> {
    /// Replace the whole set (reloaded from the registry).
    pub fn replace(&self, refused: impl IntoIterator<Item = T>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = refused.into_iter().collect();
    }

    pub fn insert(&self, refused: T) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(refused);
    }

    pub fn remove<Q: Eq + Hash + ?Sized>(&self, lifted: &Q)
    where
        T: Borrow<Q>,
    {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(lifted);
    }

    pub fn contains<Q: Eq + Hash + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(value)
    }
}

/// The members an administrator suspended, for the routes that do not go
/// through the pipeline (which decides on the registry itself).
pub type SuspendedMembers = RefusedSet<Member>;
