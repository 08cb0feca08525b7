//! Agency signatures in, hub signatures out, and the log's chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use hub_e2e::*;
use serde_json::{Value, json};

/// Verify the hub's seal on a record the way a client in another language
/// would, from docs/protocol.md and RFC 9162 / 7515 / 7797 / 8037
/// directly: an independent RFC 8785 implementation (serde_jcs), the
/// inclusion path walked here, the key from the published JWKS, and the
/// Ed25519 primitive - none of the hub's own JCS, Merkle or JWS code.
fn verify_independently(record: &Value, jwks: &Value) {
    let seal = &record["hub_seal"];
    let (first, size) = (
        seal["first"].as_u64().unwrap(),
        seal["size"].as_u64().unwrap(),
    );
    let index = record["index"].as_u64().unwrap();
    assert!(
        first <= index && index < first + size,
        "the entry is in its batch"
    );
    // RFC 9162 2.1.3.2, from the leaf at `index - first` to the batch root.
    let (mut fnode, mut snode) = (index - first, size - 1);
    let mut root = independent_leaf_hash(record);
    for hash in seal["path"].as_array().unwrap() {
        let p = URL_SAFE_NO_PAD.decode(hash.as_str().unwrap()).unwrap();
        assert!(snode > 0, "the path is too long");
        if fnode & 1 == 1 || fnode == snode {
            root = sha256(&[&[1], &p, &root]);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            root = sha256(&[&[1], &root, &p]);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    assert_eq!(snode, 0, "the path is too short");
    let payload = serde_jcs::to_vec(&json!({
        "first": first,
        "root": URL_SAFE_NO_PAD.encode(root),
        "size": size,
        "v": 2,
    }))
    .unwrap();
    let jws = seal["signature"].as_str().unwrap();
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[1], "", "detached: the payload part is empty");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(header["b64"], false);
    assert_eq!(header["crit"], json!(["b64"]));
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the kid is published");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    let public = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let mut input = parts[0].as_bytes().to_vec();
    input.push(b'.');
    input.extend_from_slice(&payload);
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
        .verify(&input, &signature)
        .expect("the hub's seal verifies independently");
}

#[tokio::test]
async fn the_hubs_jws_verifies_by_an_independent_path() {
    let hub = TestHub::start().await;
    let (_, reply) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    let (status, jwks) = hub
        .public_client()
        .get_json("/.well-known/jwks.json")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    verify_independently(&reply["record"], &jwks);
    // The body the record commits to, with the salt the reply carries.
    let mut salted = URL_SAFE_NO_PAD
        .decode(reply["body_salt"].as_str().unwrap())
        .unwrap();
    salted.extend_from_slice(&serde_jcs::to_vec(&reply["body"]).unwrap());
    let body_hash = ring::digest::digest(&ring::digest::SHA256, &salted);
    assert_eq!(
        reply["record"]["body_hash"],
        URL_SAFE_NO_PAD.encode(body_hash.as_ref())
    );
    // A changed record no longer verifies.
    let mut tampered = reply["record"].clone();
    tampered["receiver"]["subsystem"] = json!("tax");
    let result = std::panic::catch_unwind(|| verify_independently(&tampered, &jwks));
    assert!(result.is_err());
}

/// Entries written in one group commit carry one signature: every record
/// still verifies alone, each batch's seals name exactly the entries it
/// holds, and batches follow one another without gaps.
#[tokio::test]
async fn a_group_commit_is_sealed_with_one_signature() {
    let hub = TestHub::start().await;
    let (_, jwks) = hub
        .public_client()
        .get_json("/.well-known/jwks.json")
        .await
        .unwrap();
    let lookup = || {
        hub.send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
    };
    // Concurrent requests queue at the writer while it commits, and go
    // into the next commit together; try again in the unlikely case that
    // every commit took one.
    let mut shared = 0;
    for _ in 0..5 {
        for (status, _) in futures_util::future::join_all((0..32).map(|_| lookup())).await {
            assert_eq!(status, StatusCode::OK);
        }
        let entries = hub.running().hub.store.entries(0, 10_000).await.unwrap();
        let records: Vec<Value> = entries
            .iter()
            .map(|e| serde_json::from_str(&e.record).unwrap())
            .collect();
        let mut next = 0;
        shared = 0;
        while next < records.len() {
            let seal = &records[next]["hub_seal"];
            assert_eq!(
                seal["first"], next as u64,
                "a batch starts where the last ended"
            );
            let size = usize::try_from(seal["size"].as_u64().unwrap()).unwrap();
            let batch = &records[next..next + size];
            for r in batch {
                verify_independently(r, &jwks);
                assert_eq!(r["hub_seal"]["first"], seal["first"]);
                assert_eq!(r["hub_seal"]["size"], seal["size"]);
                assert_eq!(r["hub_seal"]["signature"], seal["signature"]);
            }
            if size > 1 {
                shared += size;
            }
            next += size;
        }
        if shared > 0 {
            break;
        }
    }
    assert!(shared > 0, "no commit held more than one entry");
}

#[tokio::test]
async fn agency_signatures_are_required_and_checked() {
    let hub = TestHub::start().await;
    let env = envelope(
        TAX,
        "enterprise.lookup",
        "tax_administration",
        json!({"enterprise_code": "0103456789"}),
    );
    let tax = hub.client(TAX);

    // Tax registered a key: unsigned is refused.
    let (status, err) = tax
        .post_json("/v1/exchanges", &json!({"envelope": env}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["code"], "signature_required");

    // Signed by another agency's key: refused and logged.
    let other = hub.signing_key(SOCIAL_INSURANCE);
    let forged = hub_client::sign_envelope(&env, &other).unwrap();
    let (status, err) = tax
        .post_json(
            "/v1/exchanges",
            &json!({"envelope": env, "signature": forged}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["code"], "signature_invalid");
    let refusal = hub.record_at(err["log_index"].as_u64().unwrap()).await;
    assert_eq!(refusal["error"]["code"], "signature_invalid");
    assert_eq!(
        refusal["sender_signature"],
        json!(forged),
        "the rejected signature is kept as evidence"
    );

    // A valid signature moved onto another payload: refused.
    let key = hub.signing_key(TAX);
    let genuine = hub_client::sign_envelope(&env, &key).unwrap();
    let mut moved = env.clone();
    moved["payload"]["enterprise_code"] = json!("0304567898");
    let (status, err) = tax
        .post_json(
            "/v1/exchanges",
            &json!({"envelope": moved, "signature": genuine}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["code"], "signature_invalid");

    // The genuine signature on its own envelope passes, and the log keeps it.
    let (status, reply) = tax
        .post_json(
            "/v1/exchanges",
            &json!({"envelope": env, "signature": genuine}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    let request = hub
        .record_at(reply["record"]["refers_to"].as_u64().unwrap())
        .await;
    assert_eq!(request["sender_signature"], json!(genuine));

    // An agency without a key may not send a signature the hub cannot check.
    let one_stop_env = envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": "001085012345"}),
    );
    let sig = hub_client::sign_envelope(&one_stop_env, &key).unwrap();
    let (status, err) = hub
        .client(ONE_STOP)
        .post_json(
            "/v1/exchanges",
            &json!({"envelope": one_stop_env, "signature": sig}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
    assert_eq!(err["code"], "signature_unexpected");
}

#[tokio::test]
async fn every_entry_is_chained_signed_and_hashed_as_rfc6962_leaves() {
    let hub = TestHub::start().await;
    hub.send(envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": "001085012345"}),
    ))
    .await;
    hub.send(envelope(
        BANK,
        "citizen.lookup",
        "kyc",
        json!({"personal_id": "001085012345"}),
    ))
    .await;
    hub.send(envelope(
        ENTERPRISE_REGISTRY,
        "enterprise.registered",
        "registry_update",
        enterprise_registered(),
    ))
    .await;
    let (_, jwks) = hub
        .public_client()
        .get_json("/.well-known/jwks.json")
        .await
        .unwrap();
    let entries = hub.running().hub.store.entries(0, 1000).await.unwrap();
    let data_key = hub_server::pki::read_data_key(&hub.running().pki.data_key()).unwrap();
    assert_eq!(entries.len(), 4);
    let mut prev = [0u8; 32];
    for e in &entries {
        let record: Value = serde_json::from_str(&e.record).unwrap();
        assert_eq!(
            record["prev"],
            URL_SAFE_NO_PAD.encode(prev),
            "entry {} chains to the previous",
            e.index
        );
        // Stored canonical: re-canonicalizing changes nothing.
        assert_eq!(serde_jcs::to_string(&record).unwrap(), e.record);
        assert_eq!(
            independent_leaf_hash(&record),
            e.leaf_hash,
            "leaf = SHA-256(0x00 || the entry without its seal)"
        );
        verify_independently(&record, &jwks);
        // The stored body is sealed, and opens to what body_hash commits to.
        let sealed = e.body.as_ref().unwrap();
        assert!(
            !sealed.ciphertext.windows(12).any(|w| w == b"001085012345"),
            "personal data is encrypted at rest"
        );
        let commitment = record["body_hash"].as_str().unwrap();
        let (salt, body) = data_key
            .open(sealed, commitment)
            .expect("the data key opens the body");
        let mut salted = salt.clone();
        salted.extend_from_slice(&body);
        let hash = ring::digest::digest(&ring::digest::SHA256, &salted);
        assert_eq!(commitment, URL_SAFE_NO_PAD.encode(hash.as_ref()));
        prev = e.leaf_hash;
    }
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| {
            if e.record.contains("\"kind\":\"refusal\"") {
                "refusal"
            } else {
                "other"
            }
        })
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "refusal").count(), 1);
}

#[tokio::test]
async fn purging_bodies_past_retention_keeps_the_log_verifiable() {
    let hub = TestHub::start().await;
    let (_, reply) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    let id = reply["record"]["exchange_id"].as_str().unwrap().to_owned();
    let store = &hub.running().hub.store;
    // Nothing is older than a cutoff in the past.
    assert_eq!(
        store.purge("2000-01-01T00:00:00.000Z", 0).await.unwrap(),
        (0, 0)
    );
    // Everything is older than a cutoff in the future.
    let (bodies, replies) = store
        .purge("2999-01-01T00:00:00.000Z", u64::MAX / 2)
        .await
        .unwrap();
    assert_eq!((bodies, replies), (2, 1));
    let entries = store.entries(0, 100).await.unwrap();
    assert!(entries.iter().all(|e| e.body.is_none()), "bodies are gone");
    // The records, their signatures and their chain are untouched.
    let (_, jwks) = hub
        .public_client()
        .get_json("/.well-known/jwks.json")
        .await
        .unwrap();
    let mut prev = [0u8; 32];
    for e in &entries {
        let record: Value = serde_json::from_str(&e.record).unwrap();
        verify_independently(&record, &jwks);
        assert_eq!(record["prev"], URL_SAFE_NO_PAD.encode(prev));
        prev = e.leaf_hash;
    }
    // The cached reply went with them.
    let (status, _) = hub
        .client(ONE_STOP)
        .get_json(&format!("/v1/exchanges/{id}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_reply_cache_and_the_queue_are_sealed_at_rest() {
    let hub = TestHub::start().await;
    let (status, _) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, published) = hub
        .send(envelope(
            ENTERPRISE_REGISTRY,
            "enterprise.registered",
            "registry_update",
            enterprise_registered(),
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Read the database file as anyone with the disk could.
    let url = format!("sqlite:{}", hub.dir.path().join("hub.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    // The reply cache holds no copy of a reply, only the entry it is.
    let (copies, pointers): (i64, i64) =
        sqlx::query_as("SELECT count(reply), count(reply_idx) FROM exchanges WHERE state = 'done'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((copies, pointers), (0, 2));
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for q in [
        "SELECT message FROM deliveries",
        "SELECT ciphertext FROM log_bodies",
    ] {
        let rows: Vec<(Vec<u8>,)> = sqlx::query_as(q).fetch_all(&pool).await.unwrap();
        assert!(!rows.is_empty(), "{q}");
        blobs.extend(rows.into_iter().map(|r| r.0));
    }
    for needle in [&b"001085012345"[..], b"079192000123", "Nguyễn".as_bytes()] {
        assert!(
            !blobs
                .iter()
                .any(|b| b.windows(needle.len()).any(|w| w == needle)),
            "found {:?} in clear",
            String::from_utf8_lossy(needle)
        );
    }
    // And the hub still answers from them: the cached reply, put together
    // from the entry and its sealed body, and the inbox.
    let id = published["record"]["exchange_id"].as_str().unwrap();
    let (status, fetched) = hub
        .client(ENTERPRISE_REGISTRY)
        .get_json(&format!("/v1/exchanges/{id}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, published);
    let (_, inbox) = hub.client(TAX).get_json("/v1/inbox").await.unwrap();
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1);
}
