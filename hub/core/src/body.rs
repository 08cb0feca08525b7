//! Bodies at rest: salted commitments and AES-256-GCM encryption.
//!
//! A log entry commits to its body with `body_hash = SHA-256(salt || body)`,
//! a fresh 16-byte salt per entry: a hash of a low-entropy personal value
//! (a personal ID, a birth date) cannot be guessed without the salt. The
//! salt travels to whoever receives the body (`body_salt` in replies) and is
//! kept only inside the encrypted body at rest: `salt || body`, sealed with
//! AES-256-GCM under the hub's data key, the commitment as associated data.
//! Without the key an auditor still verifies the whole log; with it, every
//! body too. Purging a body (or destroying its key) leaves a commitment
//! nobody can open, and a log that still verifies.

use std::fmt;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;

use crate::hash::{b64url, sha256, sha256_parts};

/// Salt length.
pub const SALT_LEN: usize = 16;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;

/// `b64url(SHA-256(salt || body))`.
pub fn commitment(salt: &[u8], body: &[u8]) -> String {
    b64url(&sha256_parts(&[salt, body]))
}

/// The hub's data key: encrypts bodies at rest and keys the hashes the hub
/// keeps of personal IDs. It cannot be printed.
///
/// After a rotation it is a ring ([`DataKey::ring`]): the newest key seals,
/// every key still opens what it sealed (a stored body cannot be sealed
/// again: the log commits to its sealed bytes), and the keyed hashes stay
/// under the oldest key, since the log holds some of them and they must
/// keep matching.
pub struct DataKey {
    newest: Sealer,
    /// The keys it replaced, the newest of them first.
    older: Vec<Sealer>,
    mac: hmac::Key,
}

struct Sealer {
    id: String,
    aead: LessSafeKey,
}

impl Sealer {
    fn new(bytes: &[u8; 32]) -> Self {
        let mut id_input = b"hub-data-key/v1".to_vec();
        id_input.extend_from_slice(bytes);
        let id = b64url(&sha256(&id_input))[..16].to_owned();
        // A 32-byte key is always a valid AES-256 key.
        let aead = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!()),
        );
        Self { id, aead }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.ids().collect();
        f.debug_struct("DataKey")
            .field("ids", &ids)
            .finish_non_exhaustive()
    }
}

/// A body as stored: which key, the nonce, and `AES-256-GCM(salt || body)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBody {
    pub key_id: String,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl SealedBody {
    /// base64url SHA-256 of `nonce || ciphertext`: what a log entry commits
    /// to about the stored bytes.
    pub fn hash(&self) -> String {
        b64url(&sha256_parts(&[&self.nonce, &self.ciphertext]))
    }
}

impl DataKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self::ring(bytes, &[])
    }

    /// A rotated data key: `newest` seals, each of `older` (the newest of
    /// them first) opens what it sealed, the oldest of all keys the hashes.
    pub fn ring(newest: &[u8; 32], older: &[[u8; 32]]) -> Self {
        let oldest = older.last().unwrap_or(newest);
        Self {
            newest: Sealer::new(newest),
            older: older.iter().map(Sealer::new).collect(),
            mac: hmac::Key::new(hmac::HMAC_SHA256, oldest),
        }
    }

    fn sealers(&self) -> impl Iterator<Item = &Sealer> {
        std::iter::once(&self.newest).chain(&self.older)
    }

    /// The id of the key that seals, recorded with every body it seals.
    pub fn id(&self) -> &str {
        &self.newest.id
    }

    /// The ids of every key, the newest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.sealers().map(|s| s.id.as_str())
    }

    /// Seal `salt || body` under the newest key; `commitment` is bound as associated data.
    pub fn seal(
        &self,
        salt: &[u8],
        body: &[u8],
        commitment: &str,
        nonce: [u8; NONCE_LEN],
    ) -> SealedBody {
        let mut data = Vec::with_capacity(salt.len() + body.len() + 16);
        data.extend_from_slice(salt);
        data.extend_from_slice(body);
        let key = &self.newest;
        // Sealing in place only fails for inputs beyond GCM's size limit (64 GiB).
        let _ = key.aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(commitment.as_bytes()),
            &mut data,
        );
        SealedBody {
            key_id: key.id.clone(),
            nonce,
            ciphertext: data,
        }
    }

    /// Open a sealed body: `(salt, body)`, or `None` if none of these keys
    /// sealed it or it does not authenticate with `commitment`.
    pub fn open(&self, sealed: &SealedBody, commitment: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let key = self.sealers().find(|s| s.id == sealed.key_id)?;
        let mut data = sealed.ciphertext.clone();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(commitment.as_bytes()),
                &mut data,
            )
            .ok()?;
        if plain.len() < SALT_LEN {
            return None;
        }
        let (salt, body) = plain.split_at(SALT_LEN);
        Some((salt.to_vec(), body.to_vec()))
    }

    /// Seal an operational blob (a cached reply, a queued message):
    /// `nonce || AES-256-GCM(plaintext)`, with `aad` bound.
    pub fn seal_blob(&self, aad: &[u8], plaintext: &[u8], nonce: [u8; NONCE_LEN]) -> Vec<u8> {
        let key = &self.newest.aead;
        let tag_len = key.algorithm().tag_len();
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + tag_len);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        // Sealing in place only fails beyond GCM's size limit (64 GiB).
        if let Ok(tag) = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        ) {
            out.extend_from_slice(tag.as_ref());
        }
        out
    }

    /// Open what [`DataKey::seal_blob`] sealed with the same `aad`, under
    /// any of the keys (a blob names none: the newest is tried first).
    pub fn open_blob(&self, aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ciphertext) = blob.split_at_checked(NONCE_LEN)?;
        let nonce: [u8; NONCE_LEN] = nonce.try_into().ok()?;
        self.sealers().find_map(|key| {
            let mut data = ciphertext.to_vec();
            let plain = key
                .aead
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut data,
                )
                .ok()?;
            Some(plain.to_vec())
        })
    }

    /// HMAC-SHA-256 under the oldest data key, base64url: a hash of
    /// personal data that nobody without the key can test guesses against.
    pub fn keyed_hash(&self, data: &[u8]) -> String {
        b64url(hmac::sign(&self.mac, data).as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotated_key_seals_anew_opens_the_old_and_keeps_its_hashes() {
        let (first, second) = ([7; 32], [8; 32]);
        let before = DataKey::from_bytes(&first);
        let after = DataKey::ring(&second, &[first]);
        let body = br#"{"personal_id":"001085012345"}"#;
        let salt = [1u8; SALT_LEN];
        let c = commitment(&salt, body);
        let old = before.seal(&salt, body, &c, [2; NONCE_LEN]);
        let new = after.seal(&salt, body, &c, [2; NONCE_LEN]);
        assert_eq!(new.key_id, DataKey::from_bytes(&second).id());
        assert_ne!(new.key_id, old.key_id);
        for sealed in [&old, &new] {
            assert_eq!(after.open(sealed, &c), Some((salt.to_vec(), body.to_vec())));
        }
        assert_eq!(
            before.open(&new, &c),
            None,
            "the old key alone cannot open the new"
        );
        let blob = before.seal_blob(b"exchange-1", body, [3; NONCE_LEN]);
        assert_eq!(after.open_blob(b"exchange-1", &blob), Some(body.to_vec()));
        assert_eq!(after.keyed_hash(body), before.keyed_hash(body));
        // A second rotation still hashes under the first key.
        let third = DataKey::ring(&[9; 32], &[second, first]);
        assert_eq!(third.keyed_hash(body), before.keyed_hash(body));
        assert_eq!(third.open(&old, &c), Some((salt.to_vec(), body.to_vec())));
        assert_eq!(third.ids().count(), 3);
    }

    #[test]
    fn seal_open_and_bind() {
        let key = DataKey::from_bytes(&[7; 32]);
        let body = br#"{"personal_id":"001085012345"}"#;
        let salt = [1u8; SALT_LEN];
        let c = commitment(&salt, body);
        let sealed = key.seal(&salt, body, &c, [2; NONCE_LEN]);
        assert!(
            !sealed.ciphertext.windows(12).any(|w| w == b"001085012345"),
            "encrypted at rest"
        );
        assert_eq!(key.open(&sealed, &c), Some((salt.to_vec(), body.to_vec())));
        // Bound to its commitment, and to its key.
        assert_eq!(key.open(&sealed, &commitment(&[9; SALT_LEN], body)), None);
        assert_eq!(DataKey::from_bytes(&[8; 32]).open(&sealed, &c), None);
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(key.open(&tampered, &c), None);
        // The commitment depends on the salt: no dictionary over bare IDs.
        assert_ne!(c, commitment(&[0; SALT_LEN], body));
        assert_ne!(key.keyed_hash(body), b64url(&sha256(body)));
        let blob = key.seal_blob(b"exchange-1", body, [3; NONCE_LEN]);
        assert_eq!(key.open_blob(b"exchange-1", &blob), Some(body.to_vec()));
        assert_eq!(
            key.open_blob(b"exchange-2", &blob),
            None,
            "bound to its row"
        );
    }
}
