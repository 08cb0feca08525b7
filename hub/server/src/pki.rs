//! The dev PKI, generated on first run into `<data_dir>/pki/`: a dev CA, the
//! hub's TLS server certificate, the hub's Ed25519 log-signing key, the data
//! key that seals bodies at rest, and for
//! each demo agency a client certificate (and, for those that sign their
//! envelopes, an Ed25519 signing key). Private keys are written `0600` and
//! never leave the data directory; nothing here is for production, where the
//! CA is the national one and keys live in an HSM.
//!
//! A client certificate names its member in the subject common name as
//! `agency/subsystem` (e.g. `000.00.29.H29/one-stop`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use hub_core::handover::KeyHandover;
use hub_core::ids::Member;
use hub_core::jws::{Jwk, Jwks, SecretKeyBytes, SigningKey};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, SubjectPublicKeyInfoDer};
use time::{Duration, OffsetDateTime};

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    // `cause`, not `source`: the message names it already, and a source
    // would be printed twice in an error chain (`{:#}`).
    #[error("{path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |cause| PkiError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Where each PKI file lives.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    pub dir: PathBuf,
}

fn member_file(m: &Member) -> String {
    format!("{}_{}", m.agency, m.subsystem)
}

impl PkiPaths {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("pki"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The CA of administrators' client certificates, apart from the
    /// agencies' CA: an agency's certificate never opens the admin listener.
    pub fn admin_ca_cert(&self) -> PathBuf {
        self.dir.join("admin-ca.crt")
    }
    pub fn admin_ca_key(&self) -> PathBuf {
        self.dir.join("admin-ca.key")
    }
    /// An administrator's client certificate (CN = `name`).
    pub fn admin_cert(&self, name: &str) -> PathBuf {
        self.dir.join("admins").join(format!("{name}.crt"))
    }
    pub fn admin_key(&self, name: &str) -> PathBuf {
        self.dir.join("admins").join(format!("{name}.key"))
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("hub-server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("hub-server.key")
    }
    pub fn hub_signing_key(&self) -> PathBuf {
        self.dir.join("hub-signing.key")
    }
    /// The new signing key of a rotation under way: renamed to
    /// [`PkiPaths::hub_signing_key`] as the rotation's last step.
    pub fn hub_signing_key_next(&self) -> PathBuf {
        self.dir.join("hub-signing.key.next")
    }
    /// The hub's retired signing keys (public JWKs with `valid_until`), a
    /// JWKS: published beside the current key so that what they signed
    /// still verifies.
    pub fn hub_retired_keys(&self) -> PathBuf {
        self.dir.join("hub-retired-jwks.json")
    }
    /// The hub key's hand-overs, oldest first (a JSON array of
    /// `hub_core::handover::KeyHandover`): each rotation's new key signed
    /// by the key it retired, so that a key set pinned before a rotation
    /// still leads to the keys after it.
    pub fn hub_key_handovers(&self) -> PathBuf {
        self.dir.join("hub-key-handovers.json")
    }
    /// The data key that seals bodies at rest (32 bytes, base64).
    pub fn data_key(&self) -> PathBuf {
        self.dir.join("data.key")
    }
    /// The CA's certificate revocation list (PEM), when it publishes one:
    /// the API listener checks clients against it and reloads it when it
    /// changes. (Revocations by the hub's administrators are in the
    /// registry instead; see `crate::tls::RevokedCertificates`.)
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }
    /// The admin CA's certificate revocation list (PEM), when it publishes
    /// one: the admin listener checks administrators against it and reloads
    /// it when it changes.
    pub fn admin_crl(&self) -> PathBuf {
        self.dir.join("admin-crl.pem")
    }
    pub fn agency_cert(&self, m: &Member) -> PathBuf {
        self.dir
            .join("agencies")
            .join(format!("{}.crt", member_file(m)))
    }
    pub fn agency_key(&self, m: &Member) -> PathBuf {
        self.dir
            .join("agencies")
            .join(format!("{}.key", member_file(m)))
    }
    pub fn agency_signing_key(&self, m: &Member) -> PathBuf {
        self.dir
            .join("agencies")
            .join(format!("{}.sign.key", member_file(m)))
    }
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    fs::write(path, contents).map_err(io(path))
}

/// PEM-encode PKCS#8 bytes (label `PRIVATE KEY`, RFC 7468).
pub fn pkcs8_pem(der: &[u8]) -> String {
    const LABEL: &str = "PRIVATE KEY";
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {LABEL}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {LABEL}-----\n"));
    out
}

/// Read an Ed25519 signing key from a PKCS#8 PEM file.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    let pem = fs::read(path).map_err(io(path))?;
    let der = match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(PrivateKeyDer::Pkcs8(k)) => k.secret_pkcs8_der().to_vec(),
        _ => {
            return Err(PkiError::Invalid {
                path: path.to_owned(),
                message: "expected a PKCS#8 PEM private key".into(),
            });
        }
    };
    SigningKey::from_pkcs8(&SecretKeyBytes::new(der)).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Read an agency's public key to register: a JWK (JSON, its `kid` the
/// RFC 7638 thumbprint) or a PEM public key (`openssl pkey -pubout`).
pub fn read_public_jwk(path: &Path) -> Result<Jwk, PkiError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let invalid = |message: String| PkiError::Invalid {
        path: path.to_owned(),
        message,
    };
    if text.trim_start().starts_with('{') {
        return Jwk::parse(&text).map_err(|e| invalid(e.to_string()));
    }
    let der = SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()).map_err(|_| {
        invalid("neither a JWK nor a PEM public key (-----BEGIN PUBLIC KEY-----)".into())
    })?;
    Jwk::from_spki_der(der.as_ref()).map_err(|e| invalid(e.to_string()))
}

/// Generate an Ed25519 signing key and write it as PKCS#8 PEM.
pub fn generate_signing_key(path: &Path) -> Result<SigningKey, PkiError> {
    let rng = ring::rand::SystemRandom::new();
    let (key, secret) = SigningKey::generate(&rng).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    write_private(path, pkcs8_pem(secret.expose()).as_bytes())?;
    Ok(key)
}

/// Read the data key: a line per key (32 bytes, base64), the newest first
/// (more than one once it was rotated: [`rotate_data_key`]).
pub fn read_data_key(path: &Path) -> Result<hub_core::body::DataKey, PkiError> {
    let keys = read_data_keys(path)?;
    let (newest, older) = keys.split_first().ok_or_else(|| no_data_key(path))?;
    Ok(hub_core::body::DataKey::ring(newest, older))
}

fn no_data_key(path: &Path) -> PkiError {
    PkiError::Invalid {
        path: path.to_owned(),
        message: "no key in it".into(),
    }
}

fn read_data_keys(path: &Path) -> Result<Vec<[u8; 32]>, PkiError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(n, line)| {
            base64::engine::general_purpose::STANDARD
                .decode(line)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| PkiError::Invalid {
                    path: path.to_owned(),
                    message: format!("key {}: expected 32 bytes in base64", n + 1),
                })
        })
        .collect()
}

/// 32 random bytes for a data key to be written to `path`.
fn new_data_key(path: &Path) -> Result<[u8; 32], PkiError> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| PkiError::Invalid {
            path: path.to_owned(),
            message: "the system random generator failed".into(),
        })?;
    Ok(key)
}

fn data_key_lines(keys: &[[u8; 32]]) -> String {
    keys.iter()
        .map(|k| format!("{}\n", base64::engine::general_purpose::STANDARD.encode(k)))
        .collect()
}

/// Rotate the data key: a new key seals from the next start on; the
/// older keys stay in the file, each to open what it sealed (and the
/// oldest to key the hashes of personal IDs). The file is replaced
/// whole, by a rename, so that a crash leaves the old file or the new.
/// Returns the ids of the key retired and of the new one.
pub fn rotate_data_key(paths: &PkiPaths) -> Result<(String, String), PkiError> {
    let path = paths.data_key();
    let mut keys = read_data_keys(&path)?;
    let retired = keys
        .first()
        .map(|k| hub_core::body::DataKey::from_bytes(k).id().to_owned())
        .ok_or_else(|| no_data_key(&path))?;
    let key = new_data_key(&path)?;
    keys.insert(0, key);
    let next = path.with_extension("key.next");
    write_private(&next, data_key_lines(&keys).as_bytes())?;
    fs::rename(&next, &path).map_err(io(&path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok((
        retired,
        hub_core::body::DataKey::from_bytes(&key).id().to_owned(),
    ))
}

/// Read every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let pem = fs::read(path).map_err(io(path))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(c),
        _ => Err(PkiError::Invalid {
            path: path.to_owned(),
            message: "expected PEM certificates".into(),
        }),
    }
}

/// Read a PEM private key (any format rustls accepts).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, PkiError> {
    let pem = fs::read(path).map_err(io(path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| PkiError::Invalid {
        path: path.to_owned(),
        message: format!("expected a PEM private key: {e}"),
    })
}

/// A demo agency's member, display name, and whether it signs envelopes.
#[derive(Debug, Clone, Copy)]
pub struct DemoAgency {
    pub member: &'static str,
    pub name: &'static str,
    pub signs: bool,
}

/// The demo agencies first run creates. One-stop does not sign, so the
/// walkthrough can show a plain `curl` call.
pub const DEMO_AGENCIES: [DemoAgency; 8] = [
    DemoAgency {
        member: adapter_population::PROVIDER,
        name: "Cơ sở dữ liệu quốc gia về dân cư (synthetic)",
        signs: true,
    },
    DemoAgency {
        member: adapter_land::PROVIDER,
        name: "Cơ sở dữ liệu đất đai (synthetic)",
        signs: true,
    },
    DemoAgency {
        member: adapter_enterprise::PROVIDER,
        name: "Cơ sở dữ liệu quốc gia về đăng ký doanh nghiệp (synthetic)",
        signs: true,
    },
    DemoAgency {
        member: "000.00.29.H29/one-stop",
        name: "UBND phường Phúc Xá - Bộ phận một cửa (demo)",
        signs: false,
    },
    DemoAgency {
        member: "000.00.00.G08/tax",
        name: "Cơ quan thuế (demo)",
        signs: true,
    },
    DemoAgency {
        member: "000.00.00.G22/social-insurance",
        name: "Bảo hiểm xã hội (demo)",
        signs: true,
    },
    DemoAgency {
        member: "000.00.00.Z01/bank-ekyc",
        name: "Ngân hàng thương mại (demo)",
        signs: true,
    },
    DemoAgency {
        member: CITIZEN_PORTAL,
        name: "Cổng Dịch vụ công quốc gia (demo)",
        signs: true,
    },
];

/// The demo portal where citizens sign in and ask who saw their data.
pub const CITIZEN_PORTAL: &str = "000.00.00.G03/citizen-portal";

/// Create whatever of the dev PKI is missing. Returns whether the CA was new.
pub fn ensure_dev_pki(paths: &PkiPaths, now: OffsetDateTime) -> Result<bool, PkiError> {
    let fresh = !paths.ca_cert().exists();
    if fresh {
        create_ca(
            &paths.ca_cert(),
            &paths.ca_key(),
            "Hub Dev CA (not for production)",
            now,
        )?;
    }
    if !paths.admin_ca_cert().exists() {
        create_ca(
            &paths.admin_ca_cert(),
            &paths.admin_ca_key(),
            "Hub Dev Admin CA (not for production)",
            now,
        )?;
    }
    if !paths.admin_cert(DEV_ADMIN).exists() {
        issue_admin_cert(
            paths,
            DEV_ADMIN,
            now - Duration::hours(1),
            now + Duration::days(365),
        )?;
    }
    if !paths.server_cert().exists() {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, "hub");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(825);
        let cert = sign_with_ca(paths, &params, &key)?;
        write_private(&paths.server_key(), key.serialize_pem().as_bytes())?;
        write_public(&paths.server_cert(), cert.as_bytes())?;
    }
    if !paths.hub_signing_key().exists() {
        generate_signing_key(&paths.hub_signing_key())?;
    }
    if !paths.data_key().exists() {
        let key = new_data_key(&paths.data_key())?;
        write_private(&paths.data_key(), data_key_lines(&[key]).as_bytes())?;
    }
    for demo in DEMO_AGENCIES {
        let member: Member =
            demo.member
                .parse()
                .map_err(|e: hub_core::ids::IdError| PkiError::Invalid {
                    path: paths.dir.clone(),
                    message: e.to_string(),
                })?;
        if !paths.agency_cert(&member).exists() {
            issue_client_cert(
                paths,
                &member,
                demo.name,
                now - Duration::hours(1),
                now + Duration::days(365),
            )?;
        }
        if demo.signs && !paths.agency_signing_key(&member).exists() {
            generate_signing_key(&paths.agency_signing_key(&member))?;
        }
    }
    Ok(fresh)
}

fn sign_with_ca(
    paths: &PkiPaths,
    params: &CertificateParams,
    key: &KeyPair,
) -> Result<String, PkiError> {
    sign_with(&paths.ca_cert(), &paths.ca_key(), params, key)
}

fn sign_with(
    ca_cert: &Path,
    ca_key: &Path,
    params: &CertificateParams,
    key: &KeyPair,
) -> Result<String, PkiError> {
    let ca_key_pem = fs::read_to_string(ca_key).map_err(io(ca_key))?;
    let ca_cert_pem = fs::read_to_string(ca_cert).map_err(io(ca_cert))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key)?;
    Ok(params.signed_by(key, &issuer)?.pem())
}

/// A self-signed CA certificate and its key.
fn create_ca(
    cert: &Path,
    key_path: &Path,
    name: &str,
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.distinguished_name.push(
        DnType::OrganizationName,
        "Interoperability hub, development",
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    let cert_pem = params.self_signed(&key)?;
    write_private(key_path, key.serialize_pem().as_bytes())?;
    write_public(cert, cert_pem.pem().as_bytes())
}

/// The administrator the dev PKI makes a certificate for.
pub const DEV_ADMIN: &str = "operator";

/// Issue an administrator's client certificate (CN = `name`) from the
/// admin CA.
pub fn issue_admin_cert(
    paths: &PkiPaths,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), PkiError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(PkiError::Invalid {
            path: paths.admin_cert(name),
            message: "an administrator's name is 1 to 64 of a-z, 0-9, '-' and '.'".into(),
        });
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Hub administrators");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = sign_with(&paths.admin_ca_cert(), &paths.admin_ca_key(), &params, &key)?;
    write_private(&paths.admin_key(name), key.serialize_pem().as_bytes())?;
    write_public(&paths.admin_cert(name), cert.as_bytes())
}

/// The serial number (lowercase hex) of the first certificate in `path`,
/// as `certificate_revoke` names it.
pub fn certificate_serial(path: &Path) -> Result<String, PkiError> {
    let der = read_certs(path)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Invalid {
            path: path.to_owned(),
            message: "no certificate".into(),
        })?;
    crate::tls::serial_of(&der).ok_or_else(|| PkiError::Invalid {
        path: path.to_owned(),
        message: "not an X.509 certificate".into(),
    })
}

/// Issue a client certificate for `member` from the dev CA, valid in
/// `[not_before, not_after]`, and write it and its key.
pub fn issue_client_cert(
    paths: &PkiPaths,
    member: &Member,
    display_name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, member.to_string());
    params
        .distinguished_name
        .push(DnType::OrganizationName, display_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = sign_with_ca(paths, &params, &key)?;
    write_private(&paths.agency_key(member), key.serialize_pem().as_bytes())?;
    write_public(&paths.agency_cert(member), cert.as_bytes())
}

/// The hub's retired public keys (empty before the first rotation).
pub fn read_retired_hub_keys(paths: &PkiPaths) -> Result<Jwks, PkiError> {
    let path = paths.hub_retired_keys();
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| PkiError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Jwks { keys: vec![] }),
        Err(e) => Err(io(&path)(e)),
    }
}

/// The hub's key set: the current key (valid from the last rotation) and
/// every retired one (valid until it was retired).
pub fn hub_jwks(paths: &PkiPaths, current: &SigningKey) -> Result<Jwks, PkiError> {
    let retired = read_retired_hub_keys(paths)?;
    let mut key = current.public_jwk();
    key.valid_from = retired
        .keys
        .iter()
        .filter_map(|k| k.valid_until.clone())
        .max();
    let mut keys = vec![key];
    keys.extend(retired.keys);
    Ok(Jwks { keys })
}

fn pretty_json<T: serde::Serialize>(path: PathBuf, value: &T) -> Result<String, PkiError> {
    serde_json::to_string_pretty(value).map_err(|e| PkiError::Invalid {
        path,
        message: e.to_string(),
    })
}

/// The hub key's hand-overs, oldest first (none before the first rotation).
pub fn read_hub_key_handovers(paths: &PkiPaths) -> Result<Vec<KeyHandover>, PkiError> {
    let path = paths.hub_key_handovers();
    match fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| PkiError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Replace `path` with `contents` all at once (a file beside it, synced,
/// then renamed over it): a crash leaves the old file or the new one.
fn replace_file(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(contents).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}

/// What [`finish_interrupted_rotation`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterruptedRotation {
    /// No rotation was under way.
    None,
    /// Its hand-over was written: the new key was put in place.
    Finished { kid: String },
    /// It stopped before its hand-over: the new key was deleted and the
    /// current key stays current.
    Undone,
}

/// Finish or undo a rotation that stopped before its last step. The
/// hand-over is the rotation's commit point: once written, the new key
/// ([`PkiPaths::hub_signing_key_next`]) is put in place; before, it is
/// deleted and the current key taken out of the retired keys again.
pub fn finish_interrupted_rotation(paths: &PkiPaths) -> Result<InterruptedRotation, PkiError> {
    let next_path = paths.hub_signing_key_next();
    if !next_path.exists() {
        return Ok(InterruptedRotation::None);
    }
    let next = read_signing_key(&next_path)?;
    let handed_over = read_hub_key_handovers(paths)?
        .last()
        .is_some_and(|h| h.key.kid == next.kid());
    if handed_over {
        fs::rename(&next_path, paths.hub_signing_key()).map_err(io(&next_path))?;
        return Ok(InterruptedRotation::Finished {
            kid: next.kid().to_owned(),
        });
    }
    let current = read_signing_key(&paths.hub_signing_key())?;
    let mut retired = read_retired_hub_keys(paths)?;
    let before = retired.keys.len();
    retired.keys.retain(|k| k.kid != current.kid());
    if retired.keys.len() != before {
        let text = pretty_json(paths.hub_retired_keys(), &retired)?;
        replace_file(&paths.hub_retired_keys(), text.as_bytes())?;
    }
    fs::remove_file(&next_path).map_err(io(&next_path))?;
    Ok(InterruptedRotation::Undone)
}

/// Retire the hub's signing key at `now` and make a new one: the old key
/// signs its hand-over to the new one ([`PkiPaths::hub_key_handovers`]),
/// its public key joins [`PkiPaths::hub_retired_keys`] with `valid_until =
/// now`, and the new key replaces the old private key (nothing signs with
/// that again). Every hub process sharing the log must be restarted with
/// the new key file. Returns (retired kid, new kid).
///
/// Each step leaves the files whole; a crash between steps is finished or
/// undone by [`finish_interrupted_rotation`], which every start and the
/// next rotation run first.
pub fn rotate_hub_key(paths: &PkiPaths, now: OffsetDateTime) -> Result<(String, String), PkiError> {
    finish_interrupted_rotation(paths)?;
    let current = read_signing_key(&paths.hub_signing_key())?;
    let mut retired_set = read_retired_hub_keys(paths)?;
    let mut handovers = read_hub_key_handovers(paths)?;
    let mut retired = hub_jwks(paths, &current)?
        .keys
        .into_iter()
        .next()
        .unwrap_or_else(|| current.public_jwk());
    let at = hub_core::timefmt::rfc3339_millis(now);
    retired.valid_until = Some(at.clone());
    let old_kid = retired.kid.clone();
    retired_set.keys.push(retired);
    let rng = ring::rand::SystemRandom::new();
    let next_path = paths.hub_signing_key_next();
    let (new, secret) = SigningKey::generate(&rng).map_err(|e| PkiError::Invalid {
        path: next_path.clone(),
        message: e.to_string(),
    })?;
    handovers.push(KeyHandover::sign(&current, &new, &at));
    let retired_text = pretty_json(paths.hub_retired_keys(), &retired_set)?;
    let handovers_text = pretty_json(paths.hub_key_handovers(), &handovers)?;
    write_private(&next_path, pkcs8_pem(secret.expose()).as_bytes())?;
    replace_file(&paths.hub_retired_keys(), retired_text.as_bytes())?;
    // The commit point: from here on the rotation is finished, not undone.
    replace_file(&paths.hub_key_handovers(), handovers_text.as_bytes())?;
    fs::rename(&next_path, paths.hub_signing_key()).map_err(io(&next_path))?;
    Ok((old_kid, new.kid().to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dev_pki() -> (tempfile::TempDir, PkiPaths) {
        let dir = tempfile::tempdir().unwrap();
        let paths = PkiPaths::new(dir.path());
        ensure_dev_pki(&paths, OffsetDateTime::now_utc()).unwrap();
        (dir, paths)
    }

    fn kid(path: &Path) -> String {
        read_signing_key(path).unwrap().kid().to_owned()
    }

    #[test]
    fn a_rotation_hands_over_from_the_old_key_to_the_new_one() {
        let (_dir, paths) = dev_pki();
        let old = kid(&paths.hub_signing_key());
        let at = OffsetDateTime::now_utc();
        let (retired, new) = rotate_hub_key(&paths, at).unwrap();
        assert_eq!(
            (retired.as_str(), kid(&paths.hub_signing_key())),
            (old.as_str(), new.clone())
        );
        assert!(!paths.hub_signing_key_next().exists());
        let handovers = read_hub_key_handovers(&paths).unwrap();
        assert_eq!(handovers.len(), 1);
        let pinned = Jwks {
            keys: vec![read_retired_hub_keys(&paths).unwrap().keys[0].clone()],
        };
        let (keys, outcomes) = hub_core::handover::follow(&pinned, &handovers);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert!(keys.find(&new).is_some());
        assert_eq!(
            finish_interrupted_rotation(&paths).unwrap(),
            InterruptedRotation::None
        );
    }

    #[test]
    fn a_rotation_stopped_before_its_handover_is_undone() {
        let (_dir, paths) = dev_pki();
        let old = kid(&paths.hub_signing_key());
        // The state a crash leaves after the new key and the retired list
        // were written, before the hand-over.
        generate_signing_key(&paths.hub_signing_key_next()).unwrap();
        let current = read_signing_key(&paths.hub_signing_key()).unwrap();
        let mut retired = current.public_jwk();
        retired.valid_until = Some("2026-12-03T00:00:00.000Z".into());
        let text = serde_json::to_string(&Jwks {
            keys: vec![retired],
        })
        .unwrap();
        fs::write(paths.hub_retired_keys(), text).unwrap();

        assert_eq!(
            finish_interrupted_rotation(&paths).unwrap(),
            InterruptedRotation::Undone
        );
        assert_eq!(kid(&paths.hub_signing_key()), old);
        assert!(!paths.hub_signing_key_next().exists());
        assert!(read_retired_hub_keys(&paths).unwrap().keys.is_empty());
        assert!(read_hub_key_handovers(&paths).unwrap().is_empty());
        // The next rotation starts from a clean state.
        let (retired, _) = rotate_hub_key(&paths, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(retired, old);
        assert_eq!(read_retired_hub_keys(&paths).unwrap().keys.len(), 1);
    }

    #[test]
    fn a_rotation_stopped_after_its_handover_is_finished() {
        let (_dir, paths) = dev_pki();
        let old_key = fs::read(paths.hub_signing_key()).unwrap();
        let (_, new) = rotate_hub_key(&paths, OffsetDateTime::now_utc()).unwrap();
        // The state a crash leaves after the hand-over, before the rename.
        fs::rename(paths.hub_signing_key(), paths.hub_signing_key_next()).unwrap();
        fs::write(paths.hub_signing_key(), old_key).unwrap();

        assert_eq!(
            finish_interrupted_rotation(&paths).unwrap(),
            InterruptedRotation::Finished { kid: new.clone() }
        );
        assert_eq!(kid(&paths.hub_signing_key()), new);
        assert!(!paths.hub_signing_key_next().exists());
    }
}
