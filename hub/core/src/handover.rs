//! The hub key's hand-overs: when the hub's signing key is rotated, the
//! retiring key signs its successor.
//!
//! An auditor or witness pins the hub's keys once. Without hand-overs a
//! rotation forces them to fetch the new key set again, over a channel
//! they trust, before anything the new key signed verifies. With them, the
//! chain of hand-overs - shipped in every audit bundle and served by the
//! hub - leads from any pinned key to every later one, and each hand-over
//! also fixes the moment its retiring key stopped signing: a pinned key set
//! taken before the rotation (with no `valid_until`) is bounded by it.
//! The same idea as TUF's root rotation: each new root signed by the old.
//!
//! A hand-over proves what the retiring key's holder said. A key that was
//! stolen can hand over to its thief too; after a compromise, pin the new
//! key set out of band, as before.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::jcs;
use crate::jws::{DetachedJws, Jwk, Jwks, JwsError, SigningKey};
use crate::timefmt::parse_rfc3339;

/// What a hand-over's payload says it is, so that its signature can never
/// be taken for any other statement the hub signs.
pub const HANDOVER_TYPE: &str = "hub-key-handover/1";

/// One rotation: `retires` hands over to `key` (whose `valid_from` is the
/// moment of the rotation), signed by the key it retires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHandover {
    /// The key taking over, with `valid_from` set.
    pub key: Jwk,
    /// The id of the key retiring.
    pub retires: String,
    /// The retiring key's detached JWS over [`KeyHandover::payload`].
    pub signature: String,
}

/// Why a hand-over was not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandoverError {
    #[error("the new key {0:?} has no readable valid_from")]
    NoValidFrom(String),
    #[error("the new key's kid {0:?} is not its RFC 7638 thumbprint")]
    KidNotThumbprint(String),
    #[error("the retiring key {0:?} is neither pinned nor handed over to before")]
    UnknownRetiringKey(String),
    #[error("the retiring key {kid:?} was not valid at {at}")]
    NotValidAt { kid: String, at: String },
    #[error("the key {kid:?} was handed over to {to:?} already")]
    HandedOverBefore { kid: String, to: String },
    #[error("signed by {signed_by:?}, not by the key it retires {retires:?}")]
    WrongSigner { signed_by: String, retires: String },
    #[error("the hand-over to {kid:?} retires the key {retires:?}: {source}")]
    Signature {
        kid: String,
        retires: String,
        source: JwsError,
    },
}

impl KeyHandover {
    /// `retiring` hands over to `successor` as of `valid_from` (RFC 3339).
    pub fn sign(retiring: &SigningKey, successor: &SigningKey, valid_from: &str) -> Self {
        let mut key = successor.public_jwk();
        key.valid_from = Some(valid_from.to_owned());
        let retires = retiring.kid().to_owned();
        let signature = retiring.sign_detached(&Self::payload_of(&key, &retires));
        Self {
            key,
            retires,
            signature,
        }
    }

    /// The signed bytes: the RFC 8785 form of
    /// `{"key": <the new JWK>, "retires": "<kid>", "type": "hub-key-handover/1"}`.
    pub fn payload(&self) -> Vec<u8> {
        Self::payload_of(&self.key, &self.retires)
    }

    fn payload_of(key: &Jwk, retires: &str) -> Vec<u8> {
        // Strings and a JWK of strings always have a canonical form.
        jcs::canonicalize(&json!({"key": key, "retires": retires, "type": HANDOVER_TYPE}))
            .unwrap_or_default()
    }
}

/// The keys `pinned` vouches for through `handovers`, taken in order, and
/// each hand-over's outcome. A hand-over is followed when the key it
/// retires is in the set so far, was valid at the new key's `valid_from`,
/// and signed it; the retiring key's `valid_until` then becomes that moment
/// (or stays earlier) and the new key joins the set. One that is not
/// followed adds nothing, so whatever only its key signed stays unverified.
pub fn follow(pinned: &Jwks, handovers: &[KeyHandover]) -> (Jwks, Vec<Result<(), HandoverError>>) {
    let mut keys = pinned.clone();
    // A key hands over once: a second successor would fork the chain.
    let mut successors: BTreeMap<String, String> = BTreeMap::new();
    let outcomes = handovers
        .iter()
        .map(|h| {
            if let Some(to) = successors.get(&h.retires)
                && *to != h.key.kid
            {
                return Err(HandoverError::HandedOverBefore {
                    kid: h.retires.clone(),
                    to: to.clone(),
                });
            }
            follow_one(&mut keys, h)?;
            successors.insert(h.retires.clone(), h.key.kid.clone());
            Ok(())
        })
        .collect();
    (keys, outcomes)
}

/// The key at the end of the chain that `pinned` starts: the one no
/// hand-over it reaches has retired (`pinned` itself if none has).
pub fn latest(pinned: &Jwk, handovers: &[KeyHandover]) -> Jwk {
    let mut start = pinned.clone();
    start.valid_until = None;
    let (keys, _) = follow(&Jwks { keys: vec![start] }, handovers);
    keys.keys
        .into_iter()
        .rev()
        .find(|k| k.valid_until.is_none())
        .unwrap_or_else(|| pinned.clone())
}

fn follow_one(keys: &mut Jwks, handover: &KeyHandover) -> Result<(), HandoverError> {
    let new = &handover.key;
    let from_text = new
        .valid_from
        .clone()
        .ok_or_else(|| HandoverError::NoValidFrom(new.kid.clone()))?;
    let from =
        parse_rfc3339(&from_text).ok_or_else(|| HandoverError::NoValidFrom(new.kid.clone()))?;
    if new.thumbprint().ok().as_deref() != Some(new.kid.as_str()) {
        return Err(HandoverError::KidNotThumbprint(new.kid.clone()));
    }
    let retiring = keys
        .find(&handover.retires)
        .ok_or_else(|| HandoverError::UnknownRetiringKey(handover.retires.clone()))?;
    let bound = |b: &Option<String>| b.as_deref().and_then(parse_rfc3339);
    if bound(&retiring.valid_until).is_some_and(|until| from > until)
        || bound(&retiring.valid_from).is_some_and(|since| from < since)
    {
        return Err(HandoverError::NotValidAt {
            kid: handover.retires.clone(),
            at: from_text,
        });
    }
    let jws =
        DetachedJws::parse(&handover.signature).map_err(|source| HandoverError::Signature {
            kid: new.kid.clone(),
            retires: handover.retires.clone(),
            source,
        })?;
    if jws.kid != handover.retires {
        return Err(HandoverError::WrongSigner {
            signed_by: jws.kid.clone(),
            retires: handover.retires.clone(),
        });
    }
    jws.verify(&handover.payload(), keys)
        .map_err(|source| HandoverError::Signature {
            kid: new.kid.clone(),
            retires: handover.retires.clone(),
            source,
        })?;
    for k in &mut keys.keys {
        if k.kid == handover.retires && bound(&k.valid_until).is_none_or(|until| until > from) {
            k.valid_until = Some(from_text.clone());
        }
    }
    if keys.find(&new.kid).is_none() {
        keys.keys.push(new.clone());
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        // An Ed25519 key from a fixed seed: tests stay exact.
        let seed = [seed; 32];
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        use ring::signature::KeyPair;
        SigningKey::from_seed_and_public(&seed, pair.public_key().as_ref()).unwrap()
    }

    fn pinned(k: &SigningKey) -> Jwks {
        Jwks {
            keys: vec![k.public_jwk()],
        }
    }

    const T1: &str = "2026-06-01T00:00:00.000Z";
    const T2: &str = "2026-09-01T00:00:00.000Z";

    #[test]
    fn a_chain_of_handovers_leads_from_the_pinned_key_to_the_latest_and_bounds_each_retired_one() {
        let (a, b, c) = (key(1), key(2), key(3));
        let chain = [KeyHandover::sign(&a, &b, T1), KeyHandover::sign(&b, &c, T2)];
        let (keys, outcomes) = follow(&pinned(&a), &chain);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        let kids: Vec<_> = keys.keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, [a.kid(), b.kid(), c.kid()]);
        let (ka, kb, kc) = (&keys.keys[0], &keys.keys[1], &keys.keys[2]);
        assert_eq!(
            (ka.valid_from.as_deref(), ka.valid_until.as_deref()),
            (None, Some(T1))
        );
        assert_eq!(
            (kb.valid_from.as_deref(), kb.valid_until.as_deref()),
            (Some(T1), Some(T2))
        );
        assert_eq!(
            (kc.valid_from.as_deref(), kc.valid_until.as_deref()),
            (Some(T2), None)
        );
        // Pinning the latest set (every key already there) changes nothing.
        let (again, outcomes) = follow(&keys, &chain);
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(again, keys);
    }

    #[test]
    fn a_handover_not_signed_by_the_key_it_retires_adds_nothing() {
        let (a, b, thief) = (key(1), key(2), key(9));
        // Signed by a key nobody pinned.
        let forged = KeyHandover::sign(&thief, &b, T1);
        let (keys, outcomes) = follow(&pinned(&a), std::slice::from_ref(&forged));
        assert!(matches!(
            outcomes[0],
            Err(HandoverError::UnknownRetiringKey(_))
        ));
        assert_eq!(keys, pinned(&a));
        // Claiming to retire the pinned key, signed by another.
        let claimed = KeyHandover {
            retires: a.kid().to_owned(),
            ..forged.clone()
        };
        let (_, outcomes) = follow(&pinned(&a), &[claimed]);
        assert!(
            matches!(outcomes[0], Err(HandoverError::WrongSigner { .. })),
            "{outcomes:?}"
        );
        // The pinned key's signature, over another key than the one named.
        let mut swapped = KeyHandover::sign(&a, &b, T1);
        swapped.key = KeyHandover::sign(&a, &thief, T1).key;
        let (keys, outcomes) = follow(&pinned(&a), &[swapped]);
        assert!(
            matches!(
                &outcomes[0],
                Err(HandoverError::Signature {
                    source: JwsError::BadSignature,
                    ..
                })
            ),
            "{outcomes:?}"
        );
        assert_eq!(keys, pinned(&a));
        // A later valid_from than the one signed.
        let mut moved = KeyHandover::sign(&a, &b, T1);
        moved.key.valid_from = Some(T2.to_owned());
        assert!(follow(&pinned(&a), &[moved]).1[0].is_err());
    }

    #[test]
    fn the_latest_key_is_the_end_of_the_chain_and_a_key_hands_over_once() {
        let (a, b, c, d) = (key(1), key(2), key(3), key(4));
        let chain = [KeyHandover::sign(&a, &b, T1), KeyHandover::sign(&b, &c, T2)];
        assert_eq!(latest(&a.public_jwk(), &chain).kid, c.kid());
        assert_eq!(latest(&b.public_jwk(), &chain).kid, c.kid());
        assert_eq!(latest(&c.public_jwk(), &chain).kid, c.kid());
        assert_eq!(latest(&a.public_jwk(), &[]).kid, a.kid());
        // A second successor of a, even at the same moment, is refused.
        let forked = [KeyHandover::sign(&a, &b, T1), KeyHandover::sign(&a, &d, T1)];
        let (keys, outcomes) = follow(&pinned(&a), &forked);
        assert!(
            matches!(outcomes[1], Err(HandoverError::HandedOverBefore { .. })),
            "{outcomes:?}"
        );
        assert!(keys.find(d.kid()).is_none());
        assert_eq!(latest(&a.public_jwk(), &forked).kid, b.kid());
    }

    #[test]
    fn a_retired_key_cannot_hand_over_after_its_retirement_nor_a_key_without_a_start() {
        let (a, b, c) = (key(1), key(2), key(3));
        // a, pinned as retired at T1: a hand-over by a dated T2 is refused.
        let mut retired = pinned(&a);
        retired.keys[0].valid_until = Some(T1.to_owned());
        let (keys, outcomes) = follow(&retired, &[KeyHandover::sign(&a, &c, T2)]);
        assert!(
            matches!(outcomes[0], Err(HandoverError::NotValidAt { .. })),
            "{outcomes:?}"
        );
        assert!(keys.find(c.kid()).is_none());
        // Nor can b hand over before it started.
        let mut early = pinned(&b);
        early.keys[0].valid_from = Some(T2.to_owned());
        let (_, outcomes) = follow(&early, &[KeyHandover::sign(&b, &c, T1)]);
        assert!(
            matches!(outcomes[0], Err(HandoverError::NotValidAt { .. })),
            "{outcomes:?}"
        );
        let mut undated = KeyHandover::sign(&a, &b, T1);
        undated.key.valid_from = None;
        assert!(matches!(
            follow(&pinned(&a), &[undated]).1[0],
            Err(HandoverError::NoValidFrom(_))
        ));
    }
}
