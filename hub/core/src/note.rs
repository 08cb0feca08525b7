//! Signed checkpoints: the C2SP `tlog-checkpoint` body inside a C2SP
//! `signed-note`, with Ed25519 keys identified as the spec says.
//!
//! ```text
//! <origin>
//! <tree size>
//! <base64 root hash>
//!
//! — <key name> <base64(key id || signature)>
//! ```
//!
//! The key id is the first 4 bytes of `SHA-256(name || "\n" || 0x01 || public key)`;
//! the signature is Ed25519 over the note body, its final newline included.
//!
//! Witnesses add C2SP `tlog-cosignature` lines: key id with 0x04, and the
//! signature is `timestamp (u64, big-endian) || Ed25519 signature` over
//! `"cosignature/v1\ntime <timestamp>\n" || body`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, UnparsedPublicKey};

use crate::hash::{Hash, sha256};
use crate::jws::SigningKey;

/// Why a note or checkpoint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(&'static str),
    #[error("malformed verifier key: {0}")]
    BadVerifierKey(&'static str),
    #[error("no signature by a known key")]
    NoKnownSignature,
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
}

/// A tree head: the log's origin, its size, and its root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint's note body (three lines, each ending in a newline).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parse a note body; extension lines after the root are ignored.
    pub fn parse_body(body: &str) -> Result<Self, NoteError> {
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(NoteError::MalformedCheckpoint("no origin"))?;
        let size = lines
            .next()
            .ok_or(NoteError::MalformedCheckpoint("no size"))?;
        if size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(NoteError::MalformedCheckpoint(
                "the size is not a decimal number",
            ));
        }
        let size = size
            .parse()
            .map_err(|_| NoteError::MalformedCheckpoint("the size is too large"))?;
        let root = lines
            .next()
            .and_then(|r| STANDARD.decode(r).ok())
            .and_then(|r| Hash::try_from(r).ok())
            .ok_or(NoteError::MalformedCheckpoint(
                "the root is not a base64 SHA-256 hash",
            ))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(char::is_whitespace) && !name.contains('+')
}

/// What a key signs: notes (0x01) or witness cosignatures (0x04).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Note,
    Cosignature,
}

impl KeyKind {
    fn byte(self) -> u8 {
        match self {
            Self::Note => 0x01,
            Self::Cosignature => 0x04,
        }
    }
}

/// An Ed25519 verifier: a key name, its kind, key id and public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub name: String,
    pub kind: KeyKind,
    pub key_id: [u8; 4],
    pub public_key: [u8; 32],
}

/// The 4-byte id of an Ed25519 key of `kind`.
pub fn key_id(name: &str, kind: KeyKind, public_key: &[u8; 32]) -> [u8; 4] {
    let mut buf = Vec::with_capacity(name.len() + 34);
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'\n');
    buf.push(kind.byte());
    buf.extend_from_slice(public_key);
    let h = sha256(&buf);
    [h[0], h[1], h[2], h[3]]
}

impl Verifier {
    /// A note-signing key (a log's checkpoint key).
    pub fn new(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        Self::of_kind(name, KeyKind::Note, public_key)
    }

    /// A witness's cosigning key.
    pub fn cosigner(name: &str, public_key: [u8; 32]) -> Result<Self, NoteError> {
        Self::of_kind(name, KeyKind::Cosignature, public_key)
    }

    fn of_kind(name: &str, kind: KeyKind, public_key: [u8; 32]) -> Result<Self, NoteError> {
        if !valid_name(name) {
            return Err(NoteError::BadVerifierKey(
                "the name is empty or has a space or '+'",
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            kind,
            key_id: key_id(name, kind, &public_key),
            public_key,
        })
    }

    /// Parse `<name>+<hex key id>+<base64(0x01 || public key)>`.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::BadVerifierKey("expected name+id+key"));
        };
        let key = STANDARD
            .decode(key)
            .map_err(|_| NoteError::BadVerifierKey("the key is not base64"))?;
        let (alg, public) = key
            .split_first()
            .ok_or(NoteError::BadVerifierKey("empty key"))?;
        let kind = match alg {
            0x01 => KeyKind::Note,
            0x04 => KeyKind::Cosignature,
            _ => {
                return Err(NoteError::BadVerifierKey(
                    "only Ed25519 note (0x01) and cosignature (0x04) keys",
                ));
            }
        };
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))?;
        let v = Self::of_kind(name, kind, public)?;
        let hex: String = v.key_id.iter().map(|b| format!("{b:02x}")).collect();
        if hex != id {
            return Err(NoteError::BadVerifierKey(
                "the key id does not match the key",
            ));
        }
        Ok(v)
    }

    /// The verifier key string.
    pub fn to_vkey(&self) -> String {
        let hex: String = self.key_id.iter().map(|b| format!("{b:02x}")).collect();
        let mut key = vec![self.kind.byte()];
        key.extend_from_slice(&self.public_key);
        format!("{}+{hex}+{}", self.name, STANDARD.encode(key))
    }
}

/// The verifier for notes `key` signs under `name`.
pub fn verifier_for(name: &str, key: &SigningKey) -> Result<Verifier, NoteError> {
    let public: [u8; 32] = key
        .public_key_bytes()
        .try_into()
        .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))?;
    Verifier::new(name, public)
}

/// Sign `body` (which must end in a newline) under `name`.
pub fn sign(body: &str, name: &str, key: &SigningKey) -> Result<String, NoteError> {
    if !body.ends_with('\n') || body.contains("\n\n") {
        return Err(NoteError::Malformed(
            "a body is non-empty lines, each ending in a newline",
        ));
    }
    let v = verifier_for(name, key)?;
    let mut sig = v.key_id.to_vec();
    sig.extend_from_slice(&key.sign_raw(body.as_bytes()));
    Ok(format!(
        "{body}\n\u{2014} {name} {}\n",
        STANDARD.encode(sig)
    ))
}

/// The verifier of the cosignatures `key` makes under `name`.
pub fn cosigner_for(name: &str, key: &SigningKey) -> Result<Verifier, NoteError> {
    let public: [u8; 32] = key
        .public_key_bytes()
        .try_into()
        .map_err(|_| NoteError::BadVerifierKey("an Ed25519 key is 32 bytes"))?;
    Verifier::cosigner(name, public)
}

fn cosigned_message(body: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{body}")
}

/// A witness's cosignature line over a checkpoint `body`, at `timestamp`
/// (seconds since the epoch).
pub fn cosign(
    body: &str,
    name: &str,
    key: &SigningKey,
    timestamp: u64,
) -> Result<String, NoteError> {
    let v = cosigner_for(name, key)?;
    let mut sig = v.key_id.to_vec();
    sig.extend_from_slice(&timestamp.to_be_bytes());
    sig.extend_from_slice(&key.sign_raw(cosigned_message(body, timestamp).as_bytes()));
    Ok(format!("\u{2014} {name} {}\n", STANDARD.encode(sig)))
}

/// A note whose signatures were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub body: String,
    /// Names and key ids of the known note keys whose signatures verified.
    pub signed_by: Vec<(String, [u8; 4])>,
    /// Names and timestamps of the known witnesses whose cosignatures verified.
    pub cosigned_by: Vec<(String, u64)>,
}

/// Check a note against `known` verifiers: every signature by a known key
/// must verify, and at least one must be present. Signatures by unknown
/// keys are ignored, as the spec says.
pub fn open(note: &str, known: &[Verifier]) -> Result<Opened, NoteError> {
    if note.len() > 1 << 20 {
        return Err(NoteError::Malformed("longer than 1 MiB"));
    }
    let split = note
        .rfind("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let (body, sigs) = (&note[..=split], &note[split + 2..]);
    if !sigs.ends_with('\n') || sigs.len() < 2 {
        return Err(NoteError::Malformed("no signature lines"));
    }
    let mut signed_by = Vec::new();
    let mut cosigned_by = Vec::new();
    for line in sigs[..sigs.len() - 1].split('\n') {
        let rest = line.strip_prefix("\u{2014} ").ok_or(NoteError::Malformed(
            "a signature line starts with an em dash",
        ))?;
        let (name, sig) = rest.split_once(' ').ok_or(NoteError::Malformed(
            "a signature line is '— name signature'",
        ))?;
        let sig = STANDARD
            .decode(sig)
            .map_err(|_| NoteError::Malformed("a signature is not base64"))?;
        if sig.len() < 5 {
            return Err(NoteError::Malformed("a signature is too short"));
        }
        let (id, sig) = sig.split_at(4);
        let Some(v) = known.iter().find(|v| v.name == name && v.key_id == id) else {
            continue;
        };
        let bad = || NoteError::BadSignature(name.to_owned());
        match v.kind {
            KeyKind::Note => {
                UnparsedPublicKey::new(&ED25519, v.public_key)
                    .verify(body.as_bytes(), sig)
                    .map_err(|_| bad())?;
                signed_by.push((name.to_owned(), v.key_id));
            }
            KeyKind::Cosignature => {
                let (ts, sig) = sig.split_at_checked(8).ok_or_else(bad)?;
                let ts = u64::from_be_bytes(ts.try_into().map_err(|_| bad())?);
                UnparsedPublicKey::new(&ED25519, v.public_key)
                    .verify(cosigned_message(body, ts).as_bytes(), sig)
                    .map_err(|_| bad())?;
                cosigned_by.push((name.to_owned(), ts));
            }
        }
    }
    if signed_by.is_empty() && cosigned_by.is_empty() {
        return Err(NoteError::NoKnownSignature);
    }
    Ok(Opened {
        body: body.to_owned(),
        signed_by,
        cosigned_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_open_and_tamper() {
        let rng = ring::rand::SystemRandom::new();
        let (key, _) = SigningKey::generate(&rng).unwrap();
        let cp = Checkpoint {
            origin: "example.invalid/log".into(),
            size: 42,
            root: [7; 32],
        };
        let note = sign(&cp.body(), "example.invalid/log", &key).unwrap();
        let v = verifier_for("example.invalid/log", &key).unwrap();
        assert_eq!(Verifier::parse(&v.to_vkey()).unwrap(), v);
        let opened = open(&note, std::slice::from_ref(&v)).unwrap();
        assert_eq!(Checkpoint::parse_body(&opened.body).unwrap(), cp);
        let forged = note.replace("\n42\n", "\n43\n");
        assert_eq!(
            open(&forged, std::slice::from_ref(&v)),
            Err(NoteError::BadSignature("example.invalid/log".into()))
        );
        let (other, _) = SigningKey::generate(&rng).unwrap();
        let stranger = verifier_for("example.invalid/log", &other).unwrap();
        assert_eq!(open(&note, &[stranger]), Err(NoteError::NoKnownSignature));
    }

    /// The key id of the Go sumdb note package's published example key
    /// "PeterNeumann" (golang.org/x/mod/sumdb/note, example_test.go).
    #[test]
    fn key_ids_follow_the_spec() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let v = Verifier::parse(vkey).unwrap();
        assert_eq!(v.to_vkey(), vkey);
    }

    /// The signed example note of the Go sumdb note package, verified here.
    #[test]
    fn the_go_example_note_verifies() {
        let v =
            Verifier::parse("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
                .unwrap();
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        let opened = open(note, &[v]).unwrap();
        assert_eq!(
            opened.signed_by,
            [("PeterNeumann".to_owned(), [0xc7, 0x4f, 0x20, 0xa3])]
        );
    }

    #[test]
    fn witness_cosignatures_verify_and_bind_the_checkpoint() {
        let rng = ring::rand::SystemRandom::new();
        let (log_key, _) = SigningKey::generate(&rng).unwrap();
        let (witness_key, _) = SigningKey::generate(&rng).unwrap();
        let cp = Checkpoint {
            origin: "example.invalid/log".into(),
            size: 9,
            root: [3; 32],
        };
        let note = sign(&cp.body(), "example.invalid/log", &log_key).unwrap();
        let line = cosign(
            &cp.body(),
            "witness.invalid/w1",
            &witness_key,
            1_700_000_000,
        )
        .unwrap();
        let cosigned = format!("{note}{line}");
        let log = verifier_for("example.invalid/log", &log_key).unwrap();
        let witness = cosigner_for("witness.invalid/w1", &witness_key).unwrap();
        assert_eq!(Verifier::parse(&witness.to_vkey()).unwrap(), witness);
        let opened = open(&cosigned, &[log.clone(), witness.clone()]).unwrap();
        assert_eq!(
            opened.signed_by,
            [("example.invalid/log".to_owned(), log.key_id)]
        );
        assert_eq!(
            opened.cosigned_by,
            [("witness.invalid/w1".to_owned(), 1_700_000_000)]
        );
        // Moved onto another checkpoint, the cosignature fails.
        let other = Checkpoint { size: 10, ..cp };
        let moved = format!(
            "{}{line}",
            sign(&other.body(), "example.invalid/log", &log_key).unwrap()
        );
        assert!(open(&moved, &[log, witness]).is_err());
    }

    #[test]
    fn checkpoint_bodies_are_strict() {
        assert!(Checkpoint::parse_body("o\n01\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("o\n-1\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("\n1\nAAAA\n").is_err());
        assert!(Checkpoint::parse_body("o\n1\nAAAA\n").is_err());
    }
}
