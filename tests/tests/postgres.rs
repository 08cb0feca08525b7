//! The real hub on PostgreSQL: the whole exchange path, a restart that
//! continues the same log, two hubs sharing the registry and taking one
//! exchange id at once, a withdrawal one hub left that another finishes,
//! and a database that goes away and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use hub_e2e::relay::Relay;
use hub_e2e::services::PgDatabase;
use hub_e2e::*;
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

fn lookup() -> serde_json::Value {
    citizen_lookup("001085012345")
}

#[tokio::test]
async fn queries_events_and_a_restart_on_postgres() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = db.url.clone();
    let hub = TestHub::start_in(dir.clone(), |c| c.database_url = url).await;

    let (status, reply) = hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"]["citizen"]["full_name"], "Nguyễn Văn An");
    let jwks = hub.public_client().jwks().await.unwrap();
    hub_client::verify_reply(&reply, &jwks).unwrap();

    let ack = hub.publish_registered_event().await;
    let exchange_id = ack["record"]["exchange_id"].clone();
    let (_, inbox) = hub.client(TAX).get_json("/v1/inbox").await.unwrap();
    assert_eq!(inbox["messages"][0]["record"]["exchange_id"], exchange_id);
    let (status, answer) = hub
        .client(TAX)
        .post_json("/v1/inbox/ack", &json!({"exchange_ids": [exchange_id]}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Concurrent senders share group commits; the retry of an answered id
    // gets the same answer.
    let mut tasks = tokio::task::JoinSet::new();
    let hub = Arc::new(hub);
    for _ in 0..40 {
        let hub = hub.clone();
        tasks.spawn(async move { hub.send(lookup()).await.0 });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
    let mut hub = Arc::into_inner(hub).unwrap();
    let records = hub.log_records().await;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i as u64);
    }
    let size = records.len() as u64;
    hub.stop().await;

    // Restart: the writer continues the same tree from PostgreSQL.
    let url = db.url.clone();
    let mut hub = TestHub::start_in(dir, |c| c.database_url = url).await;
    let (status, reply) = hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["record"]["index"], size + 1);
    let (status, health) = hub.public_client().get_json("/healthz").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["database"], "ok");
    hub.stop().await;
    db.drop_now().await;
}

/// An inbox row is inserted, leased and deleted within seconds; the hub
/// vacuums the queue tables itself rather than leave the dead rows to an
/// autovacuum that comes once a minute, or never. A vacuum that an older
/// snapshot kept from reclaiming them is tried again once it is gone,
/// though nothing is logged meanwhile.
#[tokio::test]
async fn the_queues_rows_are_reclaimed_once_delivered() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let url = db.url.clone();
    let mut hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.database_url = url;
    })
    .await;
    hub.publish_registered_event().await;
    let (_, inbox) = hub.client(TAX).get_json("/v1/inbox").await.unwrap();
    let ids: Vec<_> = inbox["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["record"]["exchange_id"].clone())
        .collect();
    assert!(!ids.is_empty(), "{inbox}");
    let mut older = PgConnection::connect(&db.url).await.unwrap();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM deliveries")
        .execute(&mut older)
        .await
        .unwrap();
    let (status, _) = hub
        .client(TAX)
        .post_json("/v1/inbox/ack", &json!({ "exchange_ids": ids }))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let deliveries_stats = async || -> (i64, i64) {
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        let stats = sqlx::query_as(
            "SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables WHERE relname = 'deliveries'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        stats
    };
    let (_, vacuums) = deliveries_stats().await;
    let kept = eventually(|| async {
        let (dead, now) = deliveries_stats().await;
        (now > vacuums && dead > 0).then_some(dead)
    })
    .await;
    assert!(
        kept.is_some(),
        "no vacuum after the acknowledgement left the rows an older snapshot still sees"
    );
    sqlx::raw_sql("COMMIT").execute(&mut older).await.unwrap();
    let _ = older.close().await;

    let last_seen = std::sync::Mutex::new(Vec::new());
    let reclaimed = eventually(|| async {
        let mut conn = PgConnection::connect(&db.url).await.unwrap();
        let rows: Vec<(String, i64, bool)> = sqlx::query_as(
            "SELECT relname::text, n_dead_tup, last_vacuum IS NOT NULL
             FROM pg_stat_user_tables WHERE relname IN ('deliveries', 'outbox')",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let _ = conn.close().await;
        *last_seen.lock().unwrap() = rows.clone();
        (rows.len() == 2
            && rows
                .iter()
                .all(|(_, dead, vacuumed)| *dead == 0 && *vacuumed))
        .then_some(rows)
    })
    .await;
    assert!(
        reclaimed.is_some(),
        "deliveries and outbox were never vacuumed: (table, dead rows, vacuumed) {:?}",
        last_seen.lock().unwrap()
    );
    hub.stop().await;
    db.drop_now().await;
}

/// Two hubs sharing `db` and one data directory (so one PKI and data key),
/// as an installation runs them behind a load balancer.
async fn two_hubs_on(db: &PgDatabase) -> [TestHub; 2] {
    two_hubs_adjusted(db, |_| {}).await
}

/// Two hubs on `db`, each with its configuration adjusted by `adjust`.
async fn two_hubs_adjusted(db: &PgDatabase, adjust: fn(&mut hub_server::Config)) -> [TestHub; 2] {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let url = db.url.clone();
    let first = TestHub::start_in(dir.clone(), |c| {
        c.database_url = url;
        adjust(c);
    })
    .await;
    let url = db.url.clone();
    let second = TestHub::start_in(dir, |c| {
        c.database_url = url;
        adjust(c);
    })
    .await;
    [first, second]
}

/// The inbox cap counts what every hub queued: events published through
/// one hub fill a subscriber's inbox and the other hub turns the next one
/// away; a subscriber that fetches through the first makes room on both.
#[tokio::test]
async fn an_inbox_filled_through_one_hub_is_full_on_the_other() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let [first, second] = two_hubs_adjusted(&db, |c| c.inbox_max = 2).await;
    first.publish_registered_event().await;
    first.publish_registered_event().await;
    // The second hub counts every second: what it takes before is queued too.
    let refusal = eventually(|| async {
        let (status, body) = second.send(registered_event()).await;
        (status != StatusCode::ACCEPTED).then_some((status, body))
    })
    .await
    .expect("the second hub turns events away");
    assert_eq!(refusal.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refusal.1);
    assert_eq!(refusal.1["code"], "inbox_full", "{}", refusal.1);

    for who in [TAX, SOCIAL_INSURANCE] {
        first.drain_inbox(who).await;
    }
    eventually(|| async {
        let (status, _) = second.send(registered_event()).await;
        (status == StatusCode::ACCEPTED).then_some(())
    })
    .await
    .expect("the second hub takes events again once the inboxes are drained");
    stop_both([first, second], db).await;
}

/// Stop both hubs, then drop their database.
async fn stop_both(hubs: [TestHub; 2], db: PgDatabase) {
    for mut hub in hubs {
        hub.stop().await;
    }
    db.drop_now().await;
}

/// How many receipts `records` hold for exchange `id`.
fn receipts_for(records: &[serde_json::Value], id: &serde_json::Value) -> usize {
    records
        .iter()
        .filter(|r| r["kind"] == "receipt" && r["exchange_id"] == *id)
        .count()
}

/// Hubs decide on registry facts they keep in memory: a change made
/// through one hub is in force on another from its very next request, and
/// each decision lands after the change it was made on. A suspension also
/// closes the member's inbox on the other hub, within a second.
#[tokio::test]
async fn a_registry_change_through_one_hub_is_in_force_on_another_at_once() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let [first, second] = two_hubs_on(&db).await;
    let (status, reply) = second.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");

    let (agency, subsystem) = ONE_STOP.split_once('/').unwrap();
    let change = |op: &str| json!({"op": op, "member": {"agency": agency, "subsystem": subsystem}});
    let (status, suspended) = first
        .operator()
        .post_json("/admin/v1/changes", &change("agency_suspend"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{suspended}");
    let (status, refused) = second.send(lookup()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["code"], "member_suspended");
    assert!(refused["log_index"].as_u64() > suspended["record"]["index"].as_u64());
    // Its other requests, which no log entry decides, within a second.
    eventually(|| async {
        let (status, _) = second.client(ONE_STOP).get_json("/v1/inbox").await.unwrap();
        (status == StatusCode::FORBIDDEN).then_some(())
    })
    .await
    .expect("the other hub refuses the suspended member's inbox");

    let (status, resumed) = first
        .operator()
        .post_json("/admin/v1/changes", &change("agency_resume"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{resumed}");
    let (status, reply) = second.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(reply["record"]["index"].as_u64() > resumed["record"]["index"].as_u64());
    eventually(|| async {
        let (status, _) = second.client(ONE_STOP).get_json("/v1/inbox").await.unwrap();
        (status == StatusCode::OK).then_some(())
    })
    .await
    .expect("and serves it again once resumed");
    stop_both([first, second], db).await;
}

/// A sender that retries through the other hub before the first answered:
/// each exchange id is logged once, and both attempts get its outcome.
#[tokio::test]
async fn an_exchange_sent_through_two_hubs_at_once_is_logged_once() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let hubs = Arc::new(two_hubs_on(&db).await);
    let mut ids = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..16u32 {
        let id = hubs[0].running().hub.new_exchange_id().to_string();
        let mut event = envelope(
            ENTERPRISE_REGISTRY,
            "enterprise.registered",
            "registry_update",
            enterprise_registered(),
        );
        event["id"] = json!(id);
        event["case_ref"] = json!(format!("HS-2026-{n:06}"));
        for h in 0..2 {
            let (hubs, event) = (hubs.clone(), event.clone());
            tasks.spawn(async move { (h, hubs[h].send(event).await) });
        }
        ids.push(id);
    }
    let mut receipts: std::collections::BTreeMap<String, Vec<serde_json::Value>> =
        std::collections::BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (h, (status, receipt)) = joined.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "hub {h}: {receipt}");
        let id = receipt["record"]["exchange_id"]
            .as_str()
            .unwrap()
            .to_owned();
        receipts.entry(id).or_default().push(receipt);
    }
    for id in &ids {
        let got = &receipts[id];
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0], got[1],
            "both attempts at {id} get the first receipt"
        );
    }
    let logged: Vec<String> = hubs[0]
        .log_records()
        .await
        .iter()
        .filter(|r| r["kind"] == "event")
        .map(|r| r["exchange_id"].as_str().unwrap().to_owned())
        .collect();
    let mut once = logged.clone();
    once.sort();
    once.dedup();
    assert_eq!(
        (logged.len(), once.len()),
        (ids.len(), ids.len()),
        "{logged:?}"
    );

    // A query the same way: one request reaches the provider; the other
    // attempt gets the answer, or is told the exchange is in progress.
    let id = hubs[0].running().hub.new_exchange_id().to_string();
    let mut query = lookup();
    query["id"] = json!(id);
    let (a, b) = tokio::join!(hubs[0].send(query.clone()), hubs[1].send(query));
    let mut answers = [a, b];
    answers.sort_by_key(|(status, _)| *status);
    assert_eq!(answers[0].0, StatusCode::OK, "{}", answers[0].1);
    match answers[1].0 {
        StatusCode::OK => assert_eq!(answers[0].1, answers[1].1),
        StatusCode::CONFLICT => assert_eq!(answers[1].1["code"], "exchange_in_progress"),
        other => panic!("{other}: {}", answers[1].1),
    }
    let kinds = hubs[0].kinds_logged_for(&id).await;
    assert_eq!(kinds, [json!("request"), json!("response")]);
    stop_both(Arc::into_inner(hubs).unwrap(), db).await;
}

#[tokio::test]
async fn a_database_outage_answers_503_at_once_and_the_hub_recovers_by_itself() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let target = db.url.split('@').nth(1).unwrap().split('/').next().unwrap();
    let relay = Relay::start(target.parse().unwrap()).await;
    let through_relay = db.url.replace(target, &relay.addr.to_string());
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut hub = TestHub::start_in(dir, |c| {
        c.database_url = through_relay;
        c.database_acquire_timeout_ms = 500;
    })
    .await;
    let (status, reply) = hub.send(lookup()).await;
    assert_eq!(status, StatusCode::OK, "{reply}");

    relay.cut();
    let started = Instant::now();
    for _ in 0..3 {
        let (status, reply) = hub.send(lookup()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{reply}");
        assert_eq!(reply["code"], "storage_unavailable", "{reply}");
        // The cause stays in the hub's log; the client learns only that it is temporary.
        assert!(!reply.to_string().contains("127.0.0.1"), "{reply}");
    }
    let (status, health) = hub.public_client().get_json("/healthz").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["database"], "unavailable");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "answers came without hanging"
    );

    relay.restore();
    let served = eventually(|| async {
        let (status, reply) = hub.send(lookup()).await;
        (status == StatusCode::OK).then_some(reply)
    })
    .await;
    let reply = served.expect("the hub serves again once the database is back");
    // The log has no hole and no duplicate where the outage was.
    let records = hub.log_records().await;
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i as u64);
    }
    assert_eq!(records.last().unwrap()["index"], reply["record"]["index"]);
    hub.stop().await;
    db.drop_now().await;
}

/// A message leased through one hub and acknowledged through the other:
/// the first hub, which remembers what it leased, gives no second receipt
/// when the subscriber acknowledges it there too.
#[tokio::test]
async fn a_message_leased_here_and_acknowledged_elsewhere_is_not_acknowledged_again() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let [first, second] = two_hubs_on(&db).await;
    let ack = first.publish_registered_event().await;
    let id = ack["record"]["exchange_id"].clone();
    let (status, inbox) = first.client(TAX).get_json("/v1/inbox").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{inbox}");
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1, "{inbox}");
    let body = json!({"exchange_ids": [id]});
    let acknowledge = async |hub: &TestHub| {
        let (status, answer) = hub
            .client(TAX)
            .post_json("/v1/inbox/ack", &body)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    };
    let there = acknowledge(&second).await;
    assert_eq!(there["receipts"].as_array().unwrap().len(), 1, "{there}");
    let here = acknowledge(&first).await;
    assert_eq!(here["receipts"], json!([]), "{here}");
    assert_eq!(here["unknown"], json!([id]), "{here}");
    let records = first.log_records().await;
    assert_eq!(receipts_for(&records, &id), 1, "one receipt in the log");
    stop_both([first, second], db).await;
}

/// A subscriber that acknowledges its messages through both hubs at once
/// (a retry through the load balancer while the first is in flight): one
/// receipt per message, whichever hub logged it.
#[tokio::test]
async fn a_message_acknowledged_through_two_hubs_at_once_gets_one_receipt() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let hubs = Arc::new(two_hubs_on(&db).await);
    let mut ids = Vec::new();
    for _ in 0..12 {
        let ack = hubs[0].publish_registered_event().await;
        ids.push(ack["record"]["exchange_id"].clone());
    }
    let (status, inbox) = hubs[1].client(TAX).get_json("/v1/inbox").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{inbox}");
    assert_eq!(inbox["messages"].as_array().unwrap().len(), ids.len());
    let mut tasks = tokio::task::JoinSet::new();
    for id in &ids {
        for h in [0, 1, 0, 1] {
            let (hubs, body) = (hubs.clone(), json!({"exchange_ids": [id]}));
            tasks.spawn(async move {
                hubs[h]
                    .client(TAX)
                    .post_json("/v1/inbox/ack", &body)
                    .await
                    .unwrap()
            });
        }
    }
    let mut given = 0;
    while let Some(joined) = tasks.join_next().await {
        let (status, answer) = joined.unwrap();
        assert_eq!(status, StatusCode::OK, "{answer}");
        given += answer["receipts"].as_array().unwrap().len();
    }
    assert_eq!(
        given,
        ids.len(),
        "one acknowledgement of each got its receipt"
    );
    let records = hubs[0].log_records().await;
    for id in &ids {
        assert_eq!(
            receipts_for(&records, id),
            1,
            "{id}: one receipt in the log"
        );
    }
    stop_both(Arc::into_inner(hubs).unwrap(), db).await;
}

/// A withdrawal left over by a hub that stopped before working it off
/// (written here as that hub's change would, a minute ago) is worked off by
/// another hub on the same database, within its next look (every 10 s):
/// the event leaves the subscriber's inbox, which opens again.
#[tokio::test]
async fn a_withdrawal_a_stopped_hub_left_is_worked_off_by_another() {
    use hub_core::ids::{ExchangeId, Member};
    use hub_server::clock::{Clock, SystemClock};

    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let [mut first, second] = two_hubs_adjusted(&db, |_| {}).await;
    let event = first.publish_registered_event().await["record"]["exchange_id"].clone();
    let id: ExchangeId = event.as_str().unwrap().parse().unwrap();
    let tax: Member = TAX.parse().unwrap();
    first
        .leave_withdrawal(TAX, SystemClock.unix_millis() - 61_000)
        .await;
    first.stop().await;

    let store = second.running().hub.store.clone();
    second.await_withdrawals_worked_off().await;
    assert_eq!(store.deliveries(&tax, &[id]).await.unwrap(), vec![]);
    assert_eq!(second.inbox_ids(SOCIAL_INSURANCE).await, [event]);
    stop_both([first, second], db).await;
}
