//! TLS for the two listeners, with the ring provider only.
//!
//! The API listener requires a client certificate that chains to the hub's
//! CA and is valid now: no certificate, another CA's, or an expired one
//! fails the handshake. The public listener asks for none.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;

use crate::pki::{PkiError, PkiPaths, read_certs, read_private_key};

/// The process's one crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Make ring the process default, for libraries that ask for the default.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The API listener's config: mutual TLS against the hub's CA.
pub fn api_server_config(pki: &PkiPaths) -> Result<ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&pki.ca_cert())?), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    server_config(pki, verifier)
}

/// The public listener's config: server authentication only.
pub fn public_server_config(pki: &PkiPaths) -> Result<ServerConfig, TlsError> {
    server_config(pki, WebPkiClientVerifier::no_client_auth())
}

fn server_config(
    pki: &PkiPaths,
    clients: Arc<dyn rustls::server::danger::ClientCertVerifier>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(clients)
        .with_single_cert(
            read_certs(&pki.server_cert())?,
            read_private_key(&pki.server_key())?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
