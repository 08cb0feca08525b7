//! TLS for the listeners, with the ring provider only.
//!
//! The API listener requires a client certificate that chains to the hub's
//! CA and is valid now: no certificate, another CA's, or an expired one
//! fails the handshake, and so does one the CA's CRL revokes (reloaded when
//! the file changes) or one an administrator revoked in the registry
//! ([`RevokedCertificates`], shared by every hub on the database). The
//! admin listener requires a certificate of the admin CA that the admin
//! CA's CRL (reloaded likewise) does not revoke; the public listener asks
//! for none.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;

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

/// The serials (lowercase hex) of the client certificates administrators
/// revoked: the registry's list, kept in memory for the handshake.
#[derive(Debug, Default)]
pub struct RevokedCertificates(RwLock<HashSet<String>>);

impl RevokedCertificates {
    /// Replace the whole list (reloaded from the registry).
    pub fn replace(&self, serials: impl IntoIterator<Item = String>) {
        let fresh: HashSet<String> = serials.into_iter().collect();
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
    }

    pub fn insert(&self, serial: String) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(serial);
    }

    pub fn contains(&self, serial: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(serial)
    }
}

/// The lowercase hex serial of a DER certificate.
pub fn serial_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(der).ok()?;
    Some(
        cert.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A client verifier that also refuses the revoked certificates.
#[derive(Debug)]
struct DenyList {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RevokedCertificates>,
}

impl ClientCertVerifier for DenyList {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match serial_of(end_entity) {
            Some(serial) if !self.revoked.contains(&serial) => Ok(verified),
            _ => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            )),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A verifier of client certificates chaining to `ca`, refusing those the
/// CRL at `crl` (PEM, when the file exists) revokes.
fn client_verifier(ca: &Path, crl: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
    if crl.exists() {
        let crls = CertificateRevocationListDer::pem_file_iter(crl)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Verifier(format!("{}: {e}", crl.display())))?;
        builder = builder.with_crls(crls);
    }
    builder
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))
}

/// The API listener's config: mutual TLS against the hub's CA, refusing
/// the certificates its CRL (`pki/crl.pem`, when present) or `revoked` lists.
pub fn api_server_config(
    pki: &PkiPaths,
    revoked: Arc<RevokedCertificates>,
) -> Result<ServerConfig, TlsError> {
    let inner = client_verifier(&pki.ca_cert(), &pki.crl())?;
    server_config(pki, Arc::new(DenyList { inner, revoked }))
}

/// A listener's TLS configuration, rebuilt when a watched file (the CRL)
/// changes: a revocation takes effect from the next handshake, without a
/// restart. A rebuild that fails keeps the previous configuration.
pub struct ServerTls {
    /// The watched file and how to rebuild the configuration from it.
    reload: Option<(PathBuf, Rebuild)>,
    loaded: Mutex<(Stamp, Arc<ServerConfig>)>,
}

/// When and how big the watched file was (`None`: absent).
type Stamp = Option<(SystemTime, u64)>;

type Rebuild = Box<dyn Fn() -> Result<ServerConfig, TlsError> + Send + Sync>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl ServerTls {
    /// A configuration that never changes.
    pub fn fixed(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            reload: None,
            loaded: Mutex::new((None, Arc::new(config))),
        })
    }

    /// The API listener's configuration, rebuilt when the CA's CRL changes.
    pub fn api(pki: &PkiPaths, revoked: Arc<RevokedCertificates>) -> Result<Arc<Self>, TlsError> {
        let pki = pki.clone();
        Self::watching(
            pki.crl(),
            Box::new(move || api_server_config(&pki, revoked.clone())),
        )
    }

    /// The admin listener's configuration, rebuilt when the admin CA's CRL
    /// changes.
    pub fn admin(pki: &PkiPaths) -> Result<Arc<Self>, TlsError> {
        let pki = pki.clone();
        Self::watching(pki.admin_crl(), Box::new(move || admin_server_config(&pki)))
    }

    fn watching(watch: PathBuf, rebuild: Rebuild) -> Result<Arc<Self>, TlsError> {
        let stamped = stamp(&watch);
        let config = rebuild()?;
        Ok(Arc::new(Self {
            reload: Some((watch, rebuild)),
            loaded: Mutex::new((stamped, Arc::new(config))),
        }))
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((path, rebuild)) = &self.reload {
            let now = stamp(path);
            if now != loaded.0 {
                match rebuild() {
                    Ok(config) => {
                        tracing::info!(file = %path.display(), "TLS configuration reloaded");
                        *loaded = (now, Arc::new(config));
                    }
                    Err(e) => {
                        tracing::error!(file = %path.display(), error = %e, "TLS reload failed; keeping the previous configuration");
                        loaded.0 = now;
                    }
                }
            }
        }
        loaded.1.clone()
    }
}

/// The admin listener's config: mutual TLS against the admin CA only,
/// refusing the certificates its CRL (`pki/admin-crl.pem`, when present)
/// revokes.
pub fn admin_server_config(pki: &PkiPaths) -> Result<ServerConfig, TlsError> {
    server_config(
        pki,
        client_verifier(&pki.admin_ca_cert(), &pki.admin_crl())?,
    )
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
