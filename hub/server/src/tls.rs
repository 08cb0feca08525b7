//! TLS for the listeners, with the ring provider only.
//!
//! The API listener requires a client certificate that chains to the hub's
//! CA and is valid now: no certificate, another CA's, or an expired one
//! fails the handshake, and so does one the CA's CRL revokes (reloaded when
//! the file changes) or one an administrator revoked in the registry
//! ([`RevokedCertificates`], shared by every hub on the database). The
//! admin listener requires a certificate of the admin CA that the admin
//! CA's CRL (reloaded likewise) does not revoke; the public listener asks
//! for none. A connection whose certificate is revoked after its handshake
//! is refused at its next request ([`ServerTls::revokes`], asked by
//! `identity::refuse_revoked`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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
/// revoked: the registry's list, kept in memory for the handshake and
/// each request.
pub type RevokedCertificates = crate::identity::RefusedSet<String>;

/// The lowercase hex serial of a DER certificate.
pub fn serial_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::prelude::X509Certificate::from_der(der).ok()?;
    Some(hex(cert.raw_serial()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

/// A listener's TLS configuration and the revocations it enforces, rebuilt
/// when its CA's CRL changes: a revocation takes effect from the next
/// handshake and, on connections already open, from their next request
/// ([`ServerTls::revokes`]), without a restart. A rebuild that fails keeps
/// the previous configuration.
pub struct ServerTls {
    crl: Option<WatchedCrl>,
    /// The registry's revoked certificates (the API listener's).
    registry: Option<Arc<RevokedCertificates>>,
    loaded: Mutex<Loaded>,
    /// When a request last looked at the CRL's file (milliseconds since
    /// `born`): a request looks at most once a second, a handshake always.
    looked_ms: AtomicU64,
    born: Instant,
}

/// How stale the CRL may be for a request on a connection already open.
const REQUEST_LOOKS_EVERY: Duration = Duration::from_secs(1);

/// A CA's CRL and how to rebuild the listener's configuration from it.
struct WatchedCrl {
    ca: PathBuf,
    path: PathBuf,
    rebuild: Rebuild,
}

struct Loaded {
    stamp: Stamp,
    config: Arc<ServerConfig>,
    /// What the CRL revokes, as [`significant`] serials.
    crl_serials: HashSet<String>,
}

/// When and how big the watched file was (`None`: absent).
type Stamp = Option<(SystemTime, u64)>;

type Rebuild = Box<dyn Fn() -> Result<ServerConfig, TlsError> + Send + Sync>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl ServerTls {
    /// A configuration that never changes and revokes nothing itself.
    pub fn fixed(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            crl: None,
            registry: None,
            loaded: Mutex::new(Loaded {
                stamp: None,
                config: Arc::new(config),
                crl_serials: HashSet::new(),
            }),
            looked_ms: AtomicU64::new(0),
            born: Instant::now(),
        })
    }

    /// The API listener's: the hub's CA, its CRL (`pki/crl.pem`) and the
    /// registry's revoked certificates.
    pub fn api(pki: &PkiPaths, revoked: Arc<RevokedCertificates>) -> Result<Arc<Self>, TlsError> {
        let rebuild = {
            let pki = pki.clone();
            let revoked = revoked.clone();
            Box::new(move || api_server_config(&pki, revoked.clone()))
        };
        Self::watching(pki.ca_cert(), pki.crl(), rebuild, Some(revoked))
    }

    /// The admin listener's: the admin CA and its CRL (`pki/admin-crl.pem`).
    pub fn admin(pki: &PkiPaths) -> Result<Arc<Self>, TlsError> {
        let rebuild = {
            let pki = pki.clone();
            Box::new(move || admin_server_config(&pki))
        };
        Self::watching(pki.admin_ca_cert(), pki.admin_crl(), rebuild, None)
    }

    fn watching(
        ca: PathBuf,
        path: PathBuf,
        rebuild: Rebuild,
        registry: Option<Arc<RevokedCertificates>>,
    ) -> Result<Arc<Self>, TlsError> {
        let stamp = stamp(&path);
        let loaded = Loaded {
            stamp,
            config: Arc::new(rebuild()?),
            crl_serials: crl_serials(&ca, &path)?,
        };
        Ok(Arc::new(Self {
            crl: Some(WatchedCrl { ca, path, rebuild }),
            registry,
            loaded: Mutex::new(loaded),
            looked_ms: AtomicU64::new(0),
            born: Instant::now(),
        }))
    }

    /// What is loaded, rebuilt first if the CRL changed since.
    fn refreshed(&self) -> std::sync::MutexGuard<'_, Loaded> {
        let now = self.crl.as_ref().map(|crl| stamp(&crl.path));
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(crl), Some(now)) = (&self.crl, now)
            && now != loaded.stamp
        {
            let file = crl.path.display();
            match (crl.rebuild)().and_then(|config| Ok((config, crl_serials(&crl.ca, &crl.path)?)))
            {
                Ok((config, crl_serials)) => {
                    tracing::info!(%file, "TLS configuration reloaded");
                    *loaded = Loaded {
                        stamp: now,
                        config: Arc::new(config),
                        crl_serials,
                    };
                }
                Err(e) => {
                    tracing::error!(%file, error = %e, "TLS reload failed; keeping the previous configuration");
                    loaded.stamp = now;
                }
            }
        }
        loaded
    }

    /// The configuration for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.refreshed().config.clone()
    }

    /// Whether the certificate with this serial (as [`serial_of`] gives it)
    /// is revoked now, by the CA's CRL or the registry: a connection's
    /// certificate passed the handshake, but may have been revoked since.
    /// A CRL file changed less than a second ago may not be read yet
    /// (unless a handshake read it), to spare each request a `stat`.
    pub fn revokes(&self, serial: &str) -> bool {
        if self
            .registry
            .as_ref()
            .is_some_and(|registry| registry.contains(serial))
        {
            return true;
        }
        let loaded = if self.time_to_look() {
            self.refreshed()
        } else {
            self.loaded
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        loaded.crl_serials.contains(significant(serial))
    }

    /// Whether this request is the one to look at the CRL's file again.
    fn time_to_look(&self) -> bool {
        let every = u64::try_from(REQUEST_LOOKS_EVERY.as_millis()).unwrap_or(u64::MAX);
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.looked_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every
            && self
                .looked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A serial without its leading zero bytes, so that serials compare as the
/// numbers they are (DER puts a zero byte before one whose first bit is
/// set; an encoder that got that wrong would otherwise go unrevoked).
fn significant(serial: &str) -> &str {
    let mut rest = serial;
    while rest.len() > 2 && rest.starts_with("00") {
        rest = &rest[2..];
    }
    rest
}

/// The serials the CRL at `crl` (PEM; none when the file is absent)
/// revokes, each CRL in it checked against the certificates of `ca`: one
/// that no CA certificate signed is refused, not read.
fn crl_serials(ca: &Path, crl: &Path) -> Result<HashSet<String>, TlsError> {
    use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};
    let mut serials = HashSet::new();
    if !crl.exists() {
        return Ok(serials);
    }
    let invalid = |message: String| TlsError::Verifier(format!("{}: {message}", crl.display()));
    let issuers = read_certs(ca)?;
    let issuers = issuers
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, cert)| cert))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Verifier(format!("{}: {e}", ca.display())))?;
    let lists = CertificateRevocationListDer::pem_file_iter(crl)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(e.to_string()))?;
    for der in &lists {
        let (_, list) =
            CertificateRevocationList::from_der(der).map_err(|e| invalid(e.to_string()))?;
        if !issuers
            .iter()
            .any(|ca| list.verify_signature(ca.public_key()).is_ok())
        {
            return Err(invalid(format!(
                "a CRL not signed by the CA in {}",
                ca.display()
            )));
        }
        for revoked in list.iter_revoked_certificates() {
            serials.insert(significant(&hex(revoked.raw_serial())).to_owned());
        }
    }
    Ok(serials)
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
