//! Checkpoints and proofs: what a sender or an auditor checks, trusting only
//! the hub's published key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http::StatusCode;
use hub_core::merkle::{verify_consistency, verify_inclusion};
use hub_core::note::{self, Checkpoint, Verifier};
use hub_e2e::*;
use serde_json::{Value, json};

async fn start() -> TestHub {
    start_in(Arc::new(tempfile::tempdir().unwrap())).await
}

/// A hub on `dir` (a fresh one, or a stopped hub's to restart it) that
/// signs a checkpoint every 50 ms.
async fn start_in(dir: Arc<tempfile::TempDir>) -> TestHub {
    TestHub::start_with(dir, |c| c.checkpoint_interval_ms = 50, Options::default()).await
}

/// `n` lookups of `personal_id` by the one-stop office, one after another.
async fn lookups(hub: &TestHub, n: usize, personal_id: &str) {
    for _ in 0..n {
        hub.send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": personal_id}),
        ))
        .await;
    }
}

/// The checkpoint verifier an auditor derives from the pinned JWKS alone.
async fn pinned_verifier(hub: &TestHub) -> Verifier {
    let jwks = hub.public_client().jwks().await.unwrap();
    let x: [u8; 32] = URL_SAFE_NO_PAD
        .decode(&jwks.keys[0].x)
        .unwrap()
        .try_into()
        .unwrap();
    Verifier::new(&hub.config.log_origin, x).unwrap()
}

/// Wait for a checkpoint covering at least `size` entries; open and parse it.
async fn checkpoint_covering(hub: &TestHub, size: u64) -> Checkpoint {
    let verifier = pinned_verifier(hub).await;
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let (status, body) = hub
            .public_client()
            .send(http::Method::GET, "/v1/log/checkpoint", None)
            .await
            .unwrap();
        if status == StatusCode::OK {
            let opened = note::open(
                std::str::from_utf8(&body).unwrap(),
                std::slice::from_ref(&verifier),
            )
            .unwrap();
            let cp = Checkpoint::parse_body(&opened.body).unwrap();
            if cp.size >= size {
                return cp;
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {size}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The hub's consistency proof from `old` to `new` verifies against both
/// signed roots.
async fn assert_consistent(hub: &TestHub, old: &Checkpoint, new: &Checkpoint) {
    let (status, proof) = hub
        .client(TAX)
        .get_json(&format!(
            "/v1/log/proof/consistency?from={}&to={}",
            old.size, new.size
        ))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{proof}");
    verify_consistency(
        old.size,
        new.size,
        &old.root,
        &new.root,
        &hashes(&proof["proof"]),
    )
    .unwrap();
}

fn hashes(v: &Value) -> Vec<Vec<u8>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| STANDARD.decode(h.as_str().unwrap()).unwrap())
        .collect()
}

#[tokio::test]
async fn a_sender_proves_its_answer_is_in_the_signed_log() {
    let hub = start().await;
    let (status, reply) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let index = reply["record"]["index"].as_u64().unwrap();
    let cp = checkpoint_covering(&hub, index + 1).await;
    assert_eq!(cp.origin, hub.config.log_origin);

    let path = format!("/v1/log/proof/inclusion?index={index}&size={}", cp.size);
    let (status, proof) = hub.client(ONE_STOP).get_json(&path).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{proof}");
    let leaf = independent_leaf_hash(&reply["record"]);
    assert_eq!(STANDARD.encode(leaf), proof["leaf_hash"]);
    verify_inclusion(index, cp.size, &leaf, &hashes(&proof["proof"]), &cp.root).unwrap();

    // By exchange id: both the request and the response entry.
    let id = reply["record"]["exchange_id"].as_str().unwrap();
    let (status, proofs) = hub
        .client(ONE_STOP)
        .get_json(&format!("/v1/log/proof/exchange/{id}?size={}", cp.size))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{proofs}");
    let proofs = proofs["proofs"].as_array().unwrap();
    assert_eq!(proofs.len(), 2);
    for p in proofs {
        let leaf = STANDARD.decode(p["leaf_hash"].as_str().unwrap()).unwrap();
        verify_inclusion(
            p["index"].as_u64().unwrap(),
            cp.size,
            &leaf,
            &hashes(&p["proof"]),
            &cp.root,
        )
        .unwrap();
    }

    // A changed record is not in the log.
    let mut forged = reply["record"].clone();
    forged["receiver"]["subsystem"] = json!("tax");
    assert!(
        verify_inclusion(
            index,
            cp.size,
            &independent_leaf_hash(&forged),
            &hashes(&proof["proof"]),
            &cp.root
        )
        .is_err()
    );
}

#[tokio::test]
async fn successive_checkpoints_are_consistent_across_a_restart() {
    let mut hub = start().await;
    lookups(&hub, 3, "079192000123").await;
    let first = checkpoint_covering(&hub, 6).await;
    hub.stop().await;

    let hub = start_in(hub.dir.clone()).await;
    for _ in 0..5 {
        hub.send(envelope(BANK, "citizen.verify", "kyc",
            json!({"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"}))).await;
    }
    let second = checkpoint_covering(&hub, first.size + 10).await;
    assert_consistent(&hub, &first, &second).await;

    // The entries an auditor downloads reproduce the signed root.
    let (_, entries) = hub
        .client(TAX)
        .get_json(&format!("/v1/log/entries?start=0&limit={}", second.size))
        .await
        .unwrap();
    let leaves: Vec<[u8; 32]> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(independent_leaf_hash)
        .collect();
    assert_eq!(leaves.len() as u64, second.size);
    assert_eq!(hub_core::merkle::root(&leaves), second.root);
}

#[tokio::test]
async fn the_published_verifier_key_is_the_pinned_one_and_bad_questions_get_400() {
    let hub = start().await;
    let (status, body) = hub
        .public_client()
        .send(http::Method::GET, "/v1/log/verifier", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let published = Verifier::parse(std::str::from_utf8(&body).unwrap()).unwrap();
    assert_eq!(published, pinned_verifier(&hub).await);

    // Before any entry there is no checkpoint.
    let (status, _) = hub
        .public_client()
        .send(http::Method::GET, "/v1/log/checkpoint", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    hub.send(envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": "001085012345"}),
    ))
    .await;
    let cp = checkpoint_covering(&hub, 2).await;
    for path in [
        format!("/v1/log/proof/inclusion?index={}&size={}", cp.size, cp.size),
        format!("/v1/log/proof/inclusion?index=0&size={}", cp.size + 100),
        "/v1/log/proof/inclusion?size=1".to_owned(),
        format!("/v1/log/proof/consistency?from=0&to={}", cp.size),
        format!("/v1/log/proof/consistency?from={}&to=1", cp.size),
    ] {
        let (status, err) = hub.client(TAX).get_json(&path).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {err}");
        assert_eq!(err["code"], "bad_request");
    }
}

/// Tamper with the stored log the way someone with the database file could.
async fn tamper(dir: &std::path::Path, sql: &str) {
    let url = format!("sqlite:{}", dir.join("hub.db").display());
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    for trigger in [
        "log_entries_append_only_update",
        "log_entries_append_only_delete",
        "log_blocks_append_only_update",
        "checkpoints_append_only_delete",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER IF EXISTS {trigger}"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("PRAGMA foreign_keys = OFF")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_truncated_or_rewritten_log_is_refused_at_start() {
    for (sql, expected) in [
        (
            "DELETE FROM log_entries WHERE idx = (SELECT MAX(idx) FROM log_entries)",
            "truncated",
        ),
        (
            "UPDATE log_entries SET leaf_hash = zeroblob(32) WHERE idx = 0",
            "rewritten",
        ),
    ] {
        let mut hub = start().await;
        for _ in 0..2 {
            hub.send(envelope(
                ONE_STOP,
                "citizen.lookup",
                "public_service",
                json!({"personal_id": "001085012345"}),
            ))
            .await;
        }
        checkpoint_covering(&hub, 4).await;
        hub.stop().await;
        tamper(hub.dir.path(), sql).await;
        let config = test_config(&hub.dir);
        let err = hub_server::start(
            config,
            Arc::new(hub_server::clock::SystemClock),
            Arc::new(hub_server::clock::SystemRandom::default()),
        )
        .await
        .expect_err("a tampered log must not start");
        assert!(format!("{err:#}").contains(expected), "{err:#}");
    }
}

/// A hub that crashed, or one of several, starts on a log that goes on
/// past the last checkpoint; the stored tree must still reproduce that
/// checkpoint, whether it comes from the leaves or from the kept roots of
/// 256-leaf blocks.
#[tokio::test]
async fn a_rewrite_before_the_last_checkpoint_is_refused_with_entries_after_it() {
    for case in ["a leaf after the last kept block", "a kept block's root"] {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut hub = start_in(dir.clone()).await;
        lookups(&hub, 130, "001085012345").await;
        let size = checkpoint_covering(&hub, 260).await.size;
        hub.stop().await;
        // Entries after the checkpoint, whose own checkpoints are then
        // taken away, as if the hub had stopped before signing them.
        let mut hub = start_in(dir.clone()).await;
        lookups(&hub, 2, "001085012345").await;
        hub.stop().await;
        tamper(
            dir.path(),
            &format!("DELETE FROM checkpoints WHERE size > {size}"),
        )
        .await;
        let rewrite = match case {
            "a leaf after the last kept block" => format!(
                "UPDATE log_entries SET leaf_hash = zeroblob(32) WHERE idx = {}",
                size - 1
            ),
            _ => "UPDATE log_blocks SET root = zeroblob(32) WHERE block = 0".into(),
        };
        tamper(dir.path(), &rewrite).await;
        let err = hub_server::start(
            test_config(&dir),
            Arc::new(hub_server::clock::SystemClock),
            Arc::new(hub_server::clock::SystemRandom::default()),
        )
        .await
        .expect_err("a rewritten log must not start");
        assert!(format!("{err:#}").contains("rewritten"), "{case}: {err:#}");
    }
}

#[tokio::test]
async fn the_hub_keeps_only_valid_cosignatures_of_registered_witnesses() {
    let hub = start().await;
    hub.send(envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": "001085012345"}),
    ))
    .await;
    let cp = checkpoint_covering(&hub, 2).await;
    let rng = ring::rand::SystemRandom::new();
    let (witness_key, _) = hub_core::jws::SigningKey::generate(&rng).unwrap();
    let (rogue_key, _) = hub_core::jws::SigningKey::generate(&rng).unwrap();
    let name = "witness.invalid/w1";
    let line = note::cosign(&cp.body(), name, &witness_key, 1_800_000_000).unwrap();
    let post = |size: u64, line: String| {
        let client = hub.client(SOCIAL_INSURANCE);
        async move {
            client
                .post_json(
                    "/v1/log/cosignatures",
                    &json!({"size": size, "cosignature": line}),
                )
                .await
                .unwrap()
        }
    };
    // Not registered yet.
    let (status, err) = post(cp.size, line.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    let vkey = note::cosigner_for(name, &witness_key).unwrap().to_vkey();
    hub.running()
        .hub
        .store
        .add_witness(name, &vkey)
        .await
        .unwrap();
    // Signed by another key under the witness's name.
    let (status, _) = post(
        cp.size,
        note::cosign(&cp.body(), name, &rogue_key, 1_800_000_000).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A cosignature of another size.
    let other = Checkpoint {
        size: cp.size + 1,
        ..cp.clone()
    };
    let (status, _) = post(
        cp.size,
        note::cosign(&other.body(), name, &witness_key, 1_800_000_000).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // The genuine one is kept and served with the checkpoint.
    let (status, ok) = post(cp.size, line.clone()).await;
    assert_eq!(status, StatusCode::OK, "{ok}");
    let (_, body) = hub
        .public_client()
        .send(http::Method::GET, "/v1/log/checkpoint", None)
        .await
        .unwrap();
    let witness = note::Verifier::parse(&vkey).unwrap();
    let opened = note::open(
        std::str::from_utf8(&body).unwrap(),
        &[pinned_verifier(&hub).await, witness],
    )
    .unwrap();
    if Checkpoint::parse_body(&opened.body).unwrap().size == cp.size {
        assert_eq!(opened.cosigned_by, [(name.to_owned(), 1_800_000_000)]);
    }
}

#[tokio::test]
async fn the_log_is_served_as_tlog_tiles() {
    let hub = start().await;
    for id in ["001085012345", "079192000123", "048201000456"] {
        hub.send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": id}),
        ))
        .await;
    }
    let cp = checkpoint_covering(&hub, 6).await;
    let size = cp.size as usize;
    let client = hub.client(TAX);

    let (status, tile) = client
        .send(
            http::Method::GET,
            &format!("/tlog/tile/0/000.p/{size}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tile.len(), 32 * size);
    let (status, bundle) = client
        .send(
            http::Method::GET,
            &format!("/tlog/tile/entries/000.p/{size}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    // Every entry in the bundle hashes to its leaf in the tile, and the
    // leaves give the checkpoint's root.
    let mut rest = &bundle[..];
    let mut leaves = Vec::new();
    while !rest.is_empty() {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let record: Value = serde_json::from_slice(&rest[2..2 + len]).unwrap();
        leaves.push(independent_leaf_hash(&record));
        rest = &rest[2 + len..];
    }
    assert_eq!(leaves.concat(), tile.to_vec());
    assert_eq!(hub_core::merkle::root(&leaves), cp.root);

    // A full tile does not exist yet; a malformed path is not a tile.
    for path in ["/tlog/tile/0/000", "/tlog/tile/1/000", "/tlog/tile/0/5"] {
        let (status, _) = client.send(http::Method::GET, path, None).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (_, a) = hub
        .public_client()
        .send(http::Method::GET, "/tlog/checkpoint", None)
        .await
        .unwrap();
    let (_, b) = hub
        .public_client()
        .send(http::Method::GET, "/v1/log/checkpoint", None)
        .await
        .unwrap();
    assert_eq!(a, b);
}

/// Proofs in the tree of `cp` for entries on both sides of the first
/// 256-leaf subtree, and from a size inside it: each verifies against the
/// signed roots.
async fn proofs_across_the_first_subtree_verify(
    hub: &TestHub,
    early: &Checkpoint,
    cp: &Checkpoint,
) {
    let leaves = hub
        .running()
        .hub
        .store
        .leaf_hashes(0, cp.size)
        .await
        .unwrap();
    for index in [0, 100, 255, 256, cp.size - 1] {
        let (status, proof) = hub
            .client(TAX)
            .get_json(&format!(
                "/v1/log/proof/inclusion?index={index}&size={}",
                cp.size
            ))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{proof}");
        let leaf = &leaves[usize::try_from(index).unwrap()];
        assert_eq!(proof["leaf_hash"], STANDARD.encode(leaf));
        verify_inclusion(index, cp.size, leaf, &hashes(&proof["proof"]), &cp.root).unwrap();
    }
    assert_consistent(hub, early, cp).await;
}

#[tokio::test]
async fn a_level_one_tile_holds_the_root_of_each_256_leaves() {
    let mut hub = start().await;
    lookups(&hub, 20, "001085012345").await;
    let early = checkpoint_covering(&hub, 40).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..140 {
        let client = hub.client(ONE_STOP);
        let env = envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        );
        tasks.spawn(async move {
            client
                .post_json("/v1/exchanges", &json!({"envelope": env}))
                .await
                .unwrap()
                .0
        });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    checkpoint_covering(&hub, 300).await;
    let (status, tile) = hub
        .client(TAX)
        .send(http::Method::GET, "/tlog/tile/1/000.p/1", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let leaves = hub.running().hub.store.leaf_hashes(0, 256).await.unwrap();
    assert_eq!(tile.to_vec(), hub_core::merkle::root(&leaves).to_vec());
    let (status, _) = hub
        .client(TAX)
        .send(http::Method::GET, "/tlog/tile/1/000.p/2", None)
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "only one complete subtree of 256 so far"
    );

    // Proofs come from the subtree roots the log writer keeps; a restarted
    // hub keeps them again from the stored leaves.
    let cp = checkpoint_covering(&hub, 300).await;
    proofs_across_the_first_subtree_verify(&hub, &early, &cp).await;
    hub.stop().await;
    let hub = start_in(hub.dir.clone()).await;
    proofs_across_the_first_subtree_verify(&hub, &early, &cp).await;
}
