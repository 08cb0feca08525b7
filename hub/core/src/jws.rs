//! Detached JWS with an unencoded payload: RFC 7515 Appendix F plus RFC 7797.
//!
//! The compact form is `BASE64URL(header) + ".." + BASE64URL(signature)`; the
//! header always carries `"b64":false` and `"crit":["b64"]`, so the signing
//! input is `BASE64URL(header) || "." || payload` with the payload bytes as
//! they are (for the hub: the RFC 8785 canonical JSON of the signed object).
//!
//! Signing is Ed25519 (`EdDSA`, RFC 8037). Verification accepts `EdDSA` and
//! `ES256` (ECDSA P-256, raw r||s as RFC 7518 3.4 says). Key ids are RFC 7638
//! thumbprints, so the same key always has the same id.

use std::fmt;

use ring::rand::SecureRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::hash::{b64url, from_b64url, sha256};
use crate::jcs;

/// Why a signature was not made or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("malformed JWS: {0}")]
    Malformed(&'static str),
    #[error("unsupported JWS algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("the JWS header must carry \"b64\":false and \"crit\":[\"b64\"]")]
    NotUnencoded,
    #[error("no known key has the id {0:?}")]
    UnknownKey(String),
    #[error("the key {kid:?} is not valid at {at}")]
    KeyNotValidAt { kid: String, at: String },
    #[error("the signature does not verify")]
    BadSignature,
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
}

/// A public key as a JWK (RFC 7517), with the validity period the hub
/// publishes so signatures stay verifiable after rotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    pub kid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// RFC 3339; the key signs nothing dated before this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_from: Option<String>,
    /// RFC 3339; the key signs nothing dated after this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

impl Jwk {
    /// The RFC 7638 thumbprint of the key's required members, base64url.
    pub fn thumbprint(&self) -> Result<String, JwsError> {
        let members = match (self.kty.as_str(), &self.y) {
            ("OKP", None) => json!({"crv": self.crv, "kty": self.kty, "x": self.x}),
            ("EC", Some(y)) => json!({"crv": self.crv, "kty": self.kty, "x": self.x, "y": y}),
            _ => return Err(JwsError::InvalidKey("unsupported key type")),
        };
        let bytes = jcs::canonicalize(&members).map_err(|_| JwsError::InvalidKey("thumbprint"))?;
        Ok(b64url(&sha256(&bytes)))
    }

    /// The JWK of an Ed25519 public key, its thumbprint as `kid`, with no
    /// validity period.
    pub fn ed25519(public_key: &[u8]) -> Self {
        let mut jwk = Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: b64url(public_key),
            y: None,
            kid: String::new(),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
            valid_from: None,
            valid_until: None,
        };
        // The thumbprint of an OKP key with base64url members cannot fail.
        jwk.kid = jwk.thumbprint().unwrap_or_default();
        jwk
    }

    /// The JWK of a DER SubjectPublicKeyInfo (what `openssl pkey -pubout`
    /// writes, PEM-decoded): an Ed25519 key or an uncompressed P-256 point,
    /// its thumbprint as `kid`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwsError> {
        // Both are fixed DER: the algorithm identifier, then the key.
        const ED25519: &[u8] = &[
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        const P256: &[u8] = &[
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
        ];
        if let Some(key) = der.strip_prefix(ED25519).filter(|k| k.len() == 32) {
            return Ok(Self::ed25519(key));
        }
        let Some(point) = der.strip_prefix(P256).filter(|p| p.len() == 64) else {
            return Err(JwsError::InvalidKey(
                "not an Ed25519 or uncompressed P-256 public key (SubjectPublicKeyInfo)",
            ));
        };
        let mut jwk = Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64url(&point[..32]),
            y: Some(b64url(&point[32..])),
            kid: String::new(),
            alg: Some("ES256".into()),
            use_: Some("sig".into()),
            valid_from: None,
            valid_until: None,
        };
        jwk.kid = jwk.thumbprint()?;
        Ok(jwk)
    }

    /// Parse a JWK from JSON text and check that its `kid` is its thumbprint.
    pub fn parse(text: &str) -> Result<Self, JwsError> {
        let jwk: Jwk = serde_json::from_str(text).map_err(|_| JwsError::InvalidKey("not a JWK"))?;
        jwk.public_key_bytes()?;
        if jwk.thumbprint()? != jwk.kid {
            return Err(JwsError::InvalidKey("kid is not the RFC 7638 thumbprint"));
        }
        Ok(jwk)
    }

    fn public_key_bytes(&self) -> Result<(Algorithm, Vec<u8>), JwsError> {
        let x = from_b64url(&self.x).ok_or(JwsError::InvalidKey("x is not base64url"))?;
        match (self.kty.as_str(), self.crv.as_str(), &self.y) {
            ("OKP", "Ed25519", None) if x.len() == 32 => Ok((Algorithm::EdDsa, x)),
            ("EC", "P-256", Some(y)) => {
                let y = from_b64url(y).ok_or(JwsError::InvalidKey("y is not base64url"))?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwsError::InvalidKey("P-256 coordinates are 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok((Algorithm::Es256, point))
            }
            _ => Err(JwsError::InvalidKey(
                "only Ed25519 (OKP) and P-256 (EC) keys",
            )),
        }
    }
}

/// A JWK Set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

impl Jwks {
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    EdDsa,
    Es256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::EdDsa => "EdDSA",
            Algorithm::Es256 => "ES256",
        }
    }
}

/// PKCS#8 private key bytes that cannot be printed by accident.
#[derive(Clone)]
pub struct SecretKeyBytes(Vec<u8>);

impl SecretKeyBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
    /// The bytes, for writing to a key file.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKeyBytes(<redacted>)")
    }
}

/// The DER an Ed25519 PKCS#8 document begins with, up to the seed: in
/// the RFC 8410 form (version 1, no public key) and in the version 2 form
/// ring makes (the public key after the seed, `[1] IMPLICIT BIT STRING`).
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The RFC 8410 (version 1) form of ring's version 2 Ed25519 document.
fn pkcs8_v1_of(v2: &[u8]) -> Result<Vec<u8>, JwsError> {
    let seed = v2
        .strip_prefix(&ED25519_PKCS8_V2_PREFIX[..])
        .and_then(|rest| rest.get(..32))
        .ok_or(JwsError::InvalidKey(
            "an unexpected PKCS#8 document from ring",
        ))?;
    Ok([&ED25519_PKCS8_V1_PREFIX[..], seed].concat())
}

/// An Ed25519 signing key with its key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    jwk: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.jwk.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new Ed25519 key from `rng`; returns the key and its PKCS#8 bytes
    /// in the RFC 8410 form (version 1, the seed alone). ring makes a
    /// version 2 document (with the public key), which OpenSSL 3.0 and
    /// Python's `cryptography` refuse: a key the hub writes must open in
    /// the integrator's tools too.
    pub fn generate(rng: &dyn SecureRandom) -> Result<(Self, SecretKeyBytes), JwsError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| JwsError::InvalidKey("generate"))?;
        let secret = SecretKeyBytes(pkcs8_v1_of(doc.as_ref())?);
        let key = Self::from_pkcs8(&secret)?;
        let made = Ed25519KeyPair::from_pkcs8(doc.as_ref())
            .map_err(|_| JwsError::InvalidKey("generate"))?;
        if key.public_key_bytes() != made.public_key().as_ref() {
            return Err(JwsError::InvalidKey("generate"));
        }
        Ok((key, secret))
    }

    /// Load an Ed25519 key from PKCS#8 (v1 or v2).
    pub fn from_pkcs8(secret: &SecretKeyBytes) -> Result<Self, JwsError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&secret.0)
            .map_err(|_| JwsError::InvalidKey("not an Ed25519 PKCS#8 key"))?;
        Ok(Self::from_pair(pair))
    }

    /// Load an Ed25519 key from its 32-byte seed and public key (RFC 8037 test vectors).
    pub fn from_seed_and_public(seed: &[u8], public: &[u8]) -> Result<Self, JwsError> {
        let pair = Ed25519KeyPair::from_seed_and_public_key(seed, public)
            .map_err(|_| JwsError::InvalidKey("seed and public key do not match"))?;
        Ok(Self::from_pair(pair))
    }

    fn from_pair(pair: Ed25519KeyPair) -> Self {
        let jwk = Jwk::ed25519(pair.public_key().as_ref());
        Self { pair, jwk }
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        self.jwk.clone()
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// A raw Ed25519 signature over `message`.
    pub fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    /// A detached, unencoded-payload JWS over `payload`.
    pub fn sign_detached(&self, payload: &[u8]) -> String {
        let header = protected_header_b64(Algorithm::EdDsa, &self.jwk.kid);
        let sig = self.sign_raw(&signing_input(&header, payload));
        format!("{header}..{}", b64url(&sig))
    }
}

fn protected_header_b64(alg: Algorithm, kid: &str) -> String {
    let header = json!({"alg": alg.name(), "b64": false, "crit": ["b64"], "kid": kid});
    // A header of strings and booleans always has a canonical form.
    b64url(&jcs::canonicalize(&header).unwrap_or_default())
}

/// The JWS signing input for an unencoded payload (RFC 7797 section 3):
/// `ASCII(BASE64URL(header)) || '.' || payload`.
pub fn signing_input(header_b64: &str, payload: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(header_b64.len() + 1 + payload.len());
    input.extend_from_slice(header_b64.as_bytes());
    input.push(b'.');
    input.extend_from_slice(payload);
    input
}

/// The parts of a detached JWS, before any key is consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedJws {
    pub header_b64: String,
    pub alg: String,
    pub kid: String,
    pub signature: Vec<u8>,
}

impl DetachedJws {
    /// Parse the compact detached form and check the header's rules.
    pub fn parse(jws: &str) -> Result<Self, JwsError> {
        if jws.len() > 4096 {
            return Err(JwsError::Malformed("longer than 4096 characters"));
        }
        let mut parts = jws.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed("expected three dot-separated parts"));
        };
        if !p.is_empty() {
            return Err(JwsError::Malformed(
                "the payload part must be empty (detached)",
            ));
        }
        let header_bytes = from_b64url(h).ok_or(JwsError::Malformed("header is not base64url"))?;
        let header: Value = serde_json::from_slice(&header_bytes)
            .map_err(|_| JwsError::Malformed("header is not JSON"))?;
        let obj = header
            .as_object()
            .ok_or(JwsError::Malformed("header is not an object"))?;
        if obj.get("b64") != Some(&Value::Bool(false)) || obj.get("crit") != Some(&json!(["b64"])) {
            return Err(JwsError::NotUnencoded);
        }
        let alg = obj
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwsError::Malformed("no alg"))?;
        if alg != "EdDSA" && alg != "ES256" {
            return Err(JwsError::UnsupportedAlgorithm(alg.to_owned()));
        }
        let kid = obj
            .get("kid")
            .and_then(Value::as_str)
            .ok_or(JwsError::Malformed("no kid"))?;
        let signature = from_b64url(s).ok_or(JwsError::Malformed("signature is not base64url"))?;
        Ok(Self {
            header_b64: h.to_owned(),
            alg: alg.to_owned(),
            kid: kid.to_owned(),
            signature,
        })
    }

    /// Verify against `payload` with the key of this JWS's `kid` from `keys`.
    pub fn verify(&self, payload: &[u8], keys: &Jwks) -> Result<&str, JwsError> {
        let jwk = keys
            .find(&self.kid)
            .ok_or_else(|| JwsError::UnknownKey(self.kid.clone()))?;
        let (alg, public) = jwk.public_key_bytes()?;
        if alg.name() != self.alg {
            return Err(JwsError::UnsupportedAlgorithm(self.alg.clone()));
        }
        let verifier: &dyn signature::VerificationAlgorithm = match alg {
            Algorithm::EdDsa => &signature::ED25519,
            Algorithm::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        UnparsedPublicKey::new(verifier, public)
            .verify(&signing_input(&self.header_b64, payload), &self.signature)
            .map_err(|_| JwsError::BadSignature)?;
        Ok(&self.kid)
    }
}

/// Parse and verify a detached JWS over `payload`; returns the key id used.
pub fn verify_detached(jws: &str, payload: &[u8], keys: &Jwks) -> Result<String, JwsError> {
    let parsed = DetachedJws::parse(jws)?;
    parsed.verify(payload, keys)?;
    Ok(parsed.kid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn d(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// RFC 8037 Appendix A.1-A.4: the Ed25519 key, its thumbprint and the
    /// signature over "Example of Ed25519 signing" with header {"alg":"EdDSA"}.
    #[test]
    fn rfc8037_appendix_a() {
        let seed = d("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
        let x = d("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let key = SigningKey::from_seed_and_public(&seed, &x).unwrap();
        // A.3: the thumbprint.
        assert_eq!(key.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        // A.4: the signature (deterministic for Ed25519).
        let input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = key.sign_raw(input);
        assert_eq!(
            b64url(&sig),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
        // A.5: verification with the public key alone.
        UnparsedPublicKey::new(&signature::ED25519, &x)
            .verify(input, &sig)
            .unwrap();
    }

    /// RFC 7797 section 4.2: the unencoded-payload signing input for the
    /// payload "$.02", checked with the RFC's HS256 key and expected MAC.
    #[test]
    fn rfc7797_section_4_signing_input() {
        let header_b64 = "eyJhbGciOiJIUzI1NiIsImI2NCI6ZmFsc2UsImNyaXQiOlsiYjY0Il19";
        let header = String::from_utf8(d(header_b64)).unwrap();
        assert_eq!(header, r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#);
        let input = signing_input(header_b64, b"$.02");
        assert_eq!(input, format!("{header_b64}.$.02").into_bytes());
        let key_bytes = d(
            "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key_bytes);
        let mac = ring::hmac::sign(&key, &input);
        assert_eq!(
            b64url(mac.as_ref()),
            "A5dxf2s96_n5FLueVuW1Z_vh161FwXZC4YLPff6dmDY"
        );
    }

    /// RFC 8410 section 10.3's example private key: the form OpenSSL
    /// writes and reads.
    const RFC8410_EXAMPLE: &str =
        "MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC";

    #[test]
    fn generated_keys_are_written_in_the_rfc_8410_form() {
        use base64::Engine as _;
        let example = base64::engine::general_purpose::STANDARD
            .decode(RFC8410_EXAMPLE)
            .unwrap();
        let rng = ring::rand::SystemRandom::new();
        let (key, secret) = SigningKey::generate(&rng).unwrap();
        let der = secret.expose();
        assert_eq!(der.len(), example.len(), "the seed alone, no public key");
        assert_eq!(
            der[..16],
            example[..16],
            "version 1, Ed25519, a 32-byte seed"
        );
        let again = SigningKey::from_pkcs8(&secret).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.sign_detached(b"x"), key.sign_detached(b"x"));
    }

    #[test]
    fn keys_in_either_pkcs8_form_load() {
        use base64::Engine as _;
        let example = base64::engine::general_purpose::STANDARD
            .decode(RFC8410_EXAMPLE)
            .unwrap();
        let key = SigningKey::from_pkcs8(&SecretKeyBytes::new(example)).unwrap();
        // RFC 8410 10.3 names the example's public key.
        assert_eq!(
            hex(&key.public_key_bytes()),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
        // A key file written before: ring's version 2 document.
        let rng = ring::rand::SystemRandom::new();
        let v2 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let made = Ed25519KeyPair::from_pkcs8(v2.as_ref()).unwrap();
        let loaded = SigningKey::from_pkcs8(&SecretKeyBytes::new(v2.as_ref().to_vec())).unwrap();
        assert_eq!(loaded.public_key_bytes(), made.public_key().as_ref());
        assert_eq!(
            pkcs8_v1_of(v2.as_ref()).unwrap()[..16],
            ED25519_PKCS8_V1_PREFIX
        );
    }

    /// Public keys OpenSSL wrote (`openssl pkey -pubout`), with the JWK
    /// and RFC 7638 thumbprint Python's `cryptography` computed of each.
    #[test]
    fn public_keys_openssl_wrote_read_as_their_jwks() {
        use base64::Engine as _;
        let der = |b64: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        let ed = Jwk::from_spki_der(&der(
            "MCowBQYDK2VwAyEATaFRzU1ONss7znRwsUKj6xZJ+suu3T1VW6vb+2wnn/Y=",
        ))
        .unwrap();
        assert_eq!(
            (
                ed.kty.as_str(),
                ed.crv.as_str(),
                ed.x.as_str(),
                ed.y.as_deref()
            ),
            (
                "OKP",
                "Ed25519",
                "TaFRzU1ONss7znRwsUKj6xZJ-suu3T1VW6vb-2wnn_Y",
                None
            )
        );
        assert_eq!(ed.kid, "8ybb0truoVark4xjU2zBoPGN40K772uS2tuorSy0BUE");
        let ec = Jwk::from_spki_der(&der(
            "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEdhwEfw3cmjCPZt7Ex96XfRSau+sOEBKOY12fWB8cOlpf1zYxL/zQC0ks5EStxmY0QcgMZm9dI63z9AXFgfjkug==",
        ))
        .unwrap();
        assert_eq!(
            (ec.kty.as_str(), ec.crv.as_str(), ec.x.as_str()),
            ("EC", "P-256", "dhwEfw3cmjCPZt7Ex96XfRSau-sOEBKOY12fWB8cOlo")
        );
        assert_eq!(
            ec.y.as_deref(),
            Some("X9c2MS_80AtJLORErcZmNEHIDGZvXSOt8_QFxYH45Lo")
        );
        assert_eq!(ec.kid, "V_CyAAiID16hxbk_Nr2k8AWTjdV92yPhy1WKBvEpnNY");
        // Both survive the registry's own check of a JWK.
        for jwk in [&ed, &ec] {
            assert_eq!(
                &Jwk::parse(&serde_json::to_string(jwk).unwrap()).unwrap(),
                jwk
            );
        }
        // A private key, or a key of another kind, is not taken for one.
        let private = der(RFC8410_EXAMPLE);
        assert!(Jwk::from_spki_der(&private).is_err());
        let mut short = der("MCowBQYDK2VwAyEATaFRzU1ONss7znRwsUKj6xZJ+suu3T1VW6vb+2wnn/Y=");
        short.pop();
        assert!(Jwk::from_spki_der(&short).is_err());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn detached_round_trip_and_tamper() {
        let rng = ring::rand::SystemRandom::new();
        let (key, _) = SigningKey::generate(&rng).unwrap();
        let keys = Jwks {
            keys: vec![key.public_jwk()],
        };
        let jws = key.sign_detached(b"{\"a\":1}");
        assert!(jws.contains(".."));
        assert_eq!(
            verify_detached(&jws, b"{\"a\":1}", &keys).unwrap(),
            key.kid()
        );
        assert_eq!(
            verify_detached(&jws, b"{\"a\":2}", &keys),
            Err(JwsError::BadSignature)
        );
        let (other, _) = SigningKey::generate(&rng).unwrap();
        let others = Jwks {
            keys: vec![other.public_jwk()],
        };
        assert!(matches!(
            verify_detached(&jws, b"{\"a\":1}", &others),
            Err(JwsError::UnknownKey(_))
        ));
    }

    #[test]
    fn header_without_b64_false_is_refused() {
        let header = b64url(br#"{"alg":"EdDSA","kid":"x"}"#);
        let jws = format!("{header}..AAAA");
        assert_eq!(DetachedJws::parse(&jws), Err(JwsError::NotUnencoded));
        assert!(matches!(
            DetachedJws::parse("a.b.c"),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn es256_signatures_verify() {
        let rng = ring::rand::SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
        let doc = signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = signature::EcdsaKeyPair::from_pkcs8(alg, doc.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let mut jwk = Jwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: b64url(&point[1..33]),
            y: Some(b64url(&point[33..])),
            kid: String::new(),
            alg: Some("ES256".into()),
            use_: None,
            valid_from: None,
            valid_until: None,
        };
        jwk.kid = jwk.thumbprint().unwrap();
        let header = protected_header_b64(Algorithm::Es256, &jwk.kid);
        let sig = pair
            .sign(&rng, &signing_input(&header, b"payload"))
            .unwrap();
        let jws = format!("{header}..{}", b64url(sig.as_ref()));
        let keys = Jwks { keys: vec![jwk] };
        assert!(verify_detached(&jws, b"payload", &keys).is_ok());
        assert_eq!(
            verify_detached(&jws, b"payloaD", &keys),
            Err(JwsError::BadSignature)
        );
    }
}
