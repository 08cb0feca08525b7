//! The admin listener: administrators' certificates only, and every
//! registry change an entry in the exchange log, committed with the change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use hub_client::HubClient;
use hub_core::ids::ExchangeId;
use hub_e2e::*;
use hub_server::clock::{Clock, ManualClock, SystemClock};
use hub_server::pki::DEV_ADMIN;
use serde_json::{Value, json};

fn admin_client(hub: &TestHub, cert: &std::path::Path, key: &std::path::Path) -> HubClient {
    HubClient::from_files(
        &format!("https://{}", hub.running().admin_addr),
        &hub.running().pki.ca_cert(),
        Some((cert, key)),
    )
    .unwrap()
}

fn member(m: &str) -> Value {
    let (agency, subsystem) = m.split_once('/').unwrap();
    json!({"agency": agency, "subsystem": subsystem})
}

#[tokio::test]
async fn a_change_is_logged_signed_and_in_force_at_once() {
    let hub = TestHub::start().await;
    // The hub now holds the one-stop office's facts in memory.
    let (status, answer) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let before = hub.log_records().await.len();
    let reply = made(
        &hub,
        &json!({"op": "agency_suspend", "member": member(ONE_STOP)}),
    )
    .await;
    let jwks = hub.public_client().jwks().await.unwrap();
    hub_client::verify_reply(&reply, &jwks).unwrap();
    let record = &reply["record"];
    assert_eq!(record["kind"], "admin");
    assert_eq!(record["sender"]["subsystem"], "hub");
    assert_eq!(
        record["on_behalf_of"],
        json!({"kind": "official", "official_id": DEV_ADMIN, "full_name": DEV_ADMIN})
    );
    assert_eq!(reply["body"]["change"]["op"], "agency_suspend");
    // What it replaced is logged with it, for an auditor's replay.
    assert_eq!(reply["body"]["before"]["agency"]["suspended"], false);
    // Logged exactly once, and in force for the very next request.
    assert_eq!(hub.log_records().await.len(), before + 1);
    let (status, refused) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["code"], "member_suspended");

    // A grant limited to fields, then revoked: each change one entry.
    let grant = json!({"op": "grant_add", "consumer": member(TAX), "service": "citizen.lookup",
                       "purpose": "tax_administration", "fields": ["/found", "/citizen/full_name"]});
    made(&hub, &grant).await;
    let tax_lookup = || {
        envelope(
            TAX,
            "citizen.lookup",
            "tax_administration",
            json!({"personal_id": "001085012345"}),
        )
    };
    let (status, answer) = hub.send(tax_lookup()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["body"],
        json!({"found": true, "citizen": {"full_name": "Nguyễn Văn An"}})
    );
    let revoke = json!({"op": "grant_revoke", "consumer": member(TAX), "service": "citizen.lookup",
                        "purpose": "tax_administration"});
    let (status, _) = hub
        .operator()
        .post_json("/admin/v1/changes", &revoke)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, refused) = hub.send(tax_lookup()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert_eq!(refused["code"], "no_grant");
    let kinds: Vec<Value> = hub
        .log_records()
        .await
        .iter()
        .map(|r| r["kind"].clone())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "admin").count(), 3);
}

#[tokio::test]
async fn a_change_that_makes_no_sense_is_refused_and_not_logged() {
    let hub = TestHub::start().await;
    let before = hub.log_records().await.len();
    let cases = [
        (
            json!({"op": "agency_suspend", "member": member("000.00.00.X99/nobody")}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"op": "grant_add", "consumer": member(TAX), "service": "citizen.lookup",
                   "purpose": "tax_administration", "fields": ["/citizen/religion"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_change",
        ),
        (
            json!({"op": "grant_add", "consumer": member(TAX), "service": "enterprise.registered",
                   "purpose": "tax_administration", "fields": ["/enterprise"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_change",
        ),
        (
            json!({"op": "grant_revoke", "consumer": member(BANK), "service": "citizen.lookup",
                   "purpose": "kyc"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"op": "subscription_add", "subscriber": member(BANK),
                   "service": "enterprise.registered", "version": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_change",
        ),
        (
            json!({"op": "subscription_remove", "subscriber": member(BANK),
                   "service": "enterprise.registered", "version": 1}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"op": "agency_set_broker_user", "member": member(POPULATION_REGISTRY),
                   "user": "population\nadapter"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_change",
        ),
        (
            json!({"op": "agency_set_broker_user", "member": member("000.00.00.X99/nobody"),
                   "user": "nobody"}),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            json!({"op": "drop_the_log"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (change, status, code) in cases {
        let (got, body) = hub
            .operator()
            .post_json("/admin/v1/changes", &change)
            .await
            .unwrap();
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{change}: {body}"
        );
    }
    assert_eq!(hub.log_records().await.len(), before);
}

/// A subscriber removed from an event service gets none of its later
/// events (the others still do), and those waiting in its inbox that it
/// never fetched leave it: the remedy for a subscriber that stopped
/// fetching and holds up its publishers at `inbox_max`.
#[tokio::test]
async fn a_removed_subscription_gets_no_more_events_and_loses_what_it_never_fetched() {
    let hub = TestHub::start().await;
    let remove = json!({"op": "subscription_remove", "subscriber": member(TAX),
                        "service": "enterprise.registered", "version": 1});
    let reply = withdrawal_by(&hub, &remove, TAX, SOCIAL_INSURANCE).await;
    assert_eq!(reply["record"]["kind"], "admin");
    assert_eq!(reply["body"]["change"]["op"], "subscription_remove");
    // What it replaced, for an auditor's replay to undo it.
    assert_eq!(reply["body"]["before"], json!({"subscribed": true}));
    let later = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    assert_eq!(hub.inbox_ids(TAX).await, Vec::<Value>::new());
    // The other subscriber, whose two are leased, gets it.
    assert_eq!(hub.inbox_ids(SOCIAL_INSURANCE).await, [later]);
    // Subscribed again (then once more, which changes nothing), it gets
    // the next event.
    for was in [false, true] {
        let reply = made(
            &hub,
            &json!({"op": "subscription_add", "subscriber": member(TAX),
                        "service": "enterprise.registered", "version": 1}),
        )
        .await;
        assert_eq!(reply["body"]["before"], json!({"subscribed": was}));
    }
    let third = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    assert_eq!(hub.inbox_ids(TAX).await, [third]);
}

/// Publishes two events, `subscriber` fetching the first, then makes
/// `change`, which must take the second out of its inbox: the first is still
/// acknowledged with a receipt (the lease of it runs 30 s, so nothing is
/// fetched meanwhile), the second is unknown to it, and `other` has both,
/// unacknowledged. Returns the change's reply.
async fn withdrawal_by(hub: &TestHub, change: &Value, subscriber: &str, other: &str) -> Value {
    let handed = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    assert_eq!(
        hub.inbox_ids(subscriber).await,
        std::slice::from_ref(&handed)
    );
    let queued = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    let reply = made(hub, change).await;
    // Beside the entry: how many it took out.
    assert_eq!(reply["withdrawn"], 1, "{reply}");

    assert_eq!(hub.inbox_ids(subscriber).await, Vec::<Value>::new());
    let (status, answer) = hub
        .client(subscriber)
        .post_json(
            "/v1/inbox/ack",
            &json!({ "exchange_ids": [handed.clone(), queued.clone()] }),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["receipts"].as_array().unwrap().len(), 1, "{answer}");
    assert_eq!(answer["receipts"][0]["exchange_id"], handed, "{answer}");
    assert_eq!(answer["unknown"], json!([queued.clone()]), "{answer}");
    assert_eq!(hub.inbox_ids(other).await, [handed, queued]);
    reply
}

/// A subscriber whose grant for an event service is revoked gets none of
/// its later events, as it could make no more queries of it; granted
/// again, it receives them again.
#[tokio::test]
async fn a_revoked_grant_stops_a_subscribers_events() {
    let hub = TestHub::start().await;
    let grant = json!({"consumer": member(SOCIAL_INSURANCE), "service": "enterprise.registered",
                       "purpose": "social_insurance"});
    let change = |op: &str| {
        let mut c = grant.clone();
        c["op"] = json!(op);
        c
    };
    made(&hub, &change("grant_revoke")).await;
    let ungranted = hub.publish_registered_event().await;
    assert_eq!(
        ungranted["record"]["recipients"],
        json!([member(TAX)]),
        "{ungranted}"
    );
    made(&hub, &change("grant_add")).await;
    let granted = hub.publish_registered_event().await;
    assert_eq!(
        hub.inbox_ids(SOCIAL_INSURANCE).await,
        [granted["record"]["exchange_id"].clone()]
    );
}

/// Make `change` on the admin listener; the reply, which must be 200.
async fn made(hub: &TestHub, change: &Value) -> Value {
    let (status, reply) = hub
        .operator()
        .post_json("/admin/v1/changes", change)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply
}

/// Revoking a subscriber's last grant for an event service takes back what
/// its inbox holds of the service and it was never handed; what it was
/// handed before stays until it acknowledges it, so that its receipt is
/// logged; other subscribers keep theirs. While another grant for the
/// service is left, nothing is withdrawn and its inbox stays open.
#[tokio::test]
async fn a_revoked_grant_withdraws_the_events_its_subscriber_was_never_handed() {
    let hub = TestHub::start().await;
    let change = |op: &str, purpose: &str| {
        json!({"op": op, "consumer": member(SOCIAL_INSURANCE),
               "service": "enterprise.registered", "purpose": purpose})
    };
    made(&hub, &change("grant_add", "statistics")).await;
    let kept = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    let reply = made(&hub, &change("grant_revoke", "social_insurance")).await;
    assert_eq!(reply.get("withdrawn"), None, "{reply}");
    assert_eq!(hub.inbox_ids(SOCIAL_INSURANCE).await, [kept]);
    hub.drain_inbox(SOCIAL_INSURANCE).await;
    hub.drain_inbox(TAX).await;

    let reply = withdrawal_by(
        &hub,
        &change("grant_revoke", "statistics"),
        SOCIAL_INSURANCE,
        TAX,
    )
    .await;
    assert_eq!(reply["body"]["change"]["op"], "grant_revoke");
}

/// A withdrawal its hub did not work off (it stopped after logging the
/// change) keeps the subscriber's inbox closed, and a hub works it off once
/// it is a minute old - here the next to start, a minute later: the inbox
/// opens again without the withdrawn events.
#[tokio::test]
async fn a_withdrawal_left_over_is_worked_off_at_the_next_start() {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut hub = TestHub::start_in(dir.clone(), |_| {}).await;
    let withdrawn = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    hub.leave_withdrawal(TAX, SystemClock.unix_millis()).await;
    let store = hub.running().hub.store.clone();
    let tax: hub_core::ids::Member = TAX.parse().unwrap();
    // Closed: the event waits, but is not handed out; the operator sees
    // the pending withdrawal.
    assert_eq!(hub.inbox_ids(TAX).await, Vec::<Value>::new());
    let id: ExchangeId = withdrawn.as_str().unwrap().parse().unwrap();
    assert_eq!(store.deliveries(&tax, &[id]).await.unwrap().len(), 1);
    let pending = format!("hub_inbox_withdrawals_pending{{recipient=\"{TAX}\"}}");
    let shown = eventually(|| async { sample(&hub.metrics().await, &pending) }).await;
    assert_eq!(shown, Some(1.0), "{pending}");

    hub.stop().await;
    let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(61);
    let options = Options {
        clock: Some(std::sync::Arc::new(ManualClock::new(later))),
        ..Options::default()
    };
    let hub = TestHub::start_with(dir, |_| {}, options).await;
    let store = hub.running().hub.store.clone();
    hub.await_withdrawals_worked_off().await;
    assert_eq!(store.deliveries(&tax, &[id]).await.unwrap(), vec![]);
    let gone = eventually(|| async {
        let text = hub.metrics().await;
        (text.contains("hub_inbox_messages") && sample(&text, &pending).is_none()).then_some(())
    })
    .await;
    assert!(gone.is_some(), "{pending} still shown");
    // Open again: TAX is subscribed anew and gets the next event.
    made(
        &hub,
        &json!({"op": "subscription_add", "subscriber": member(TAX),
                    "service": "enterprise.registered", "version": 1}),
    )
    .await;
    let next = hub.publish_registered_event().await["record"]["exchange_id"].clone();
    assert_eq!(hub.inbox_ids(TAX).await, [next]);
    assert_eq!(hub.inbox_ids(SOCIAL_INSURANCE).await.len(), 2);
}

/// A suspended member is refused every request, not only exchanges: its
/// inbox, acknowledgements, answers and the log are closed to it from its
/// next request on (`403 member_suspended`); resumed, it finds its inbox as
/// it was.
#[tokio::test]
async fn a_suspended_member_can_neither_fetch_its_inbox_nor_read_the_log() {
    let hub = TestHub::start().await;
    let event = hub.publish_registered_event().await;
    let id = event["record"]["exchange_id"].clone();
    let change = |op: &str| json!({"op": op, "member": member(TAX)});
    made(&hub, &change("agency_suspend")).await;
    let tax = hub.client(TAX);
    let logged = hub.log_records().await.len();
    for path in [
        "/v1/inbox".to_owned(),
        "/v1/whoami".to_owned(),
        format!("/v1/exchanges/{}", id.as_str().unwrap()),
        "/v1/log/entries?start=0&limit=1".to_owned(),
    ] {
        let (status, body) = tax.get_json(&path).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(body["code"], "member_suspended", "{path}: {body}");
    }
    let (status, body) = tax
        .post_json("/v1/inbox/ack", &json!({"exchange_ids": [id]}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        hub.log_records().await.len(),
        logged,
        "nothing logged, no receipt"
    );
    // Others are served; the public routes stay open to everyone.
    let (status, _) = hub
        .client(SOCIAL_INSURANCE)
        .get_json("/v1/inbox")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = tax.get_json("/v1/schemas").await.unwrap();
    assert_eq!(status, StatusCode::OK);

    made(&hub, &change("agency_resume")).await;
    let (status, inbox) = tax.get_json("/v1/inbox").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{inbox}");
    assert_eq!(inbox["messages"][0]["record"]["exchange_id"], id, "{inbox}");
}

/// An administrator who leaves is shut out by the admin CA's CRL
/// (`pki/admin-crl.pem`), from the next handshake - and the next request
/// of a connection already open - without a restart; the other
/// administrators keep their access.
#[tokio::test]
async fn the_admin_cas_crl_shuts_an_administrator_out_without_a_restart() {
    let hub = TestHub::start().await;
    let pki = &hub.running().pki;
    let now = time::OffsetDateTime::now_utc();
    let one_day = time::Duration::days(1);
    hub_server::pki::issue_admin_cert(pki, "departed", now - one_day, now + one_day).unwrap();
    let departed = || {
        admin_client(
            &hub,
            &pki.admin_cert("departed"),
            &pki.admin_key("departed"),
        )
    };
    let change = json!({"op": "agency_resume", "member": member(ONE_STOP)});
    let (status, _) = departed()
        .post_json("/admin/v1/changes", &change)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let mut open = departed()
        .connect(hub_client::HttpVersion::Http1)
        .await
        .unwrap();
    let body = serde_json::to_vec(&change).unwrap();
    let (status, _) = open
        .send(
            http::Method::POST,
            "/admin/v1/changes",
            Some(("application/json", body.clone())),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    hub_e2e::publish_crl(
        &pki.admin_ca_cert(),
        &pki.admin_ca_key(),
        &pki.admin_cert("departed"),
        &pki.admin_crl(),
    );
    assert!(
        departed()
            .post_json("/admin/v1/changes", &change)
            .await
            .is_err()
    );
    let (status, refused) = open
        .send(
            http::Method::POST,
            "/admin/v1/changes",
            Some(("application/json", body)),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refused: Value = serde_json::from_slice(&refused).unwrap();
    assert_eq!(refused["code"], "certificate_revoked");
    let (status, _) = hub
        .operator()
        .post_json("/admin/v1/changes", &change)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn only_administrators_certificates_open_the_admin_listener() {
    let hub = TestHub::start().await;
    let pki = &hub.running().pki;
    let change = json!({"op": "agency_resume", "member": member(ONE_STOP)});
    // An agency's certificate (the agencies' CA) fails the handshake.
    let one_stop: hub_core::ids::Member = ONE_STOP.parse().unwrap();
    let agency = admin_client(
        &hub,
        &pki.agency_cert(&one_stop),
        &pki.agency_key(&one_stop),
    );
    assert!(
        agency
            .post_json("/admin/v1/changes", &change)
            .await
            .is_err()
    );
    // So does no certificate at all.
    let anonymous = HubClient::new(
        &format!("https://{}", hub.running().admin_addr),
        &hub.ca_pem(),
        None,
    )
    .unwrap();
    assert!(
        anonymous
            .post_json("/admin/v1/changes", &change)
            .await
            .is_err()
    );
    // And an administrator's certificate opens nothing on the agencies' API.
    let misplaced = HubClient::from_files(
        &hub.api_base(),
        &pki.ca_cert(),
        Some((&pki.admin_cert(DEV_ADMIN), &pki.admin_key(DEV_ADMIN))),
    )
    .unwrap();
    assert!(misplaced.get_json("/v1/whoami").await.is_err());
    // The administrator's does.
    let (status, _) = hub
        .operator()
        .post_json("/admin/v1/changes", &change)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// The value of `series` (name and labels exactly) in a Prometheus
/// exposition, if it is there.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// The admin listener serves the hub's figures to Prometheus: requests by
/// listener, route and status with their durations, log entries by kind,
/// the log and the inboxes - to administrators only.
#[tokio::test]
async fn an_administrator_scrapes_the_hubs_figures() {
    let hub = TestHub::start().await;
    let (status, answer) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, refused) = hub.send(citizen_lookup("12")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    hub.publish_registered_event().await;
    let (status, _) = hub
        .client(TAX)
        .get_json("/v1/exchanges/0190b3a2-7c1e-7000-8000-000000000000")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let inbox =
        |text: &str, m: &str| sample(text, &format!("hub_inbox_messages{{recipient=\"{m}\"}}"));
    // The inbox gauges are the hub's last count (about a second old): both
    // subscribers have the event waiting.
    let scrapes = std::cell::Cell::new(0);
    let scrape_until = async |wanted: &dyn Fn(&str) -> bool| {
        eventually(|| async {
            scrapes.set(scrapes.get() + 1);
            let text = hub.metrics().await;
            wanted(&text).then_some(text)
        })
        .await
        .expect("the inboxes are counted")
    };
    let text = scrape_until(&|text| {
        inbox(text, TAX) == Some(1.0) && inbox(text, SOCIAL_INSURANCE) == Some(1.0)
    })
    .await;
    let value =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    let api = r#"listener="api",route="/v1/exchanges""#;
    assert_eq!(
        value(&format!("hub_http_requests_total{{{api},status=\"200\"}}")),
        1.0
    );
    assert_eq!(
        value(&format!("hub_http_requests_total{{{api},status=\"422\"}}")),
        1.0
    );
    assert_eq!(
        value(&format!("hub_http_requests_total{{{api},status=\"202\"}}")),
        1.0
    );
    // The route is the pattern, not the path: one series for every id.
    assert_eq!(
        value(r#"hub_http_requests_total{listener="api",route="/v1/exchanges/{id}",status="404"}"#),
        1.0
    );
    assert_eq!(
        value(&format!("hub_http_request_duration_seconds_count{{{api}}}")),
        3.0
    );
    assert_eq!(
        value(&format!(
            "hub_http_request_duration_seconds_bucket{{{api},le=\"+Inf\"}}"
        )),
        3.0
    );
    assert_eq!(value("hub_database_up"), 1.0);
    assert!(
        !text.contains("hub_broker_up"),
        "embedded: no broker\n{text}"
    );
    // Entries by kind, as the log holds them (this hub wrote them all).
    let records = hub.log_records().await;
    for kind in ["request", "response", "refusal", "event"] {
        let logged = records.iter().filter(|r| r["kind"] == kind).count();
        assert!(logged > 0, "no {kind} entry");
        #[allow(clippy::cast_precision_loss)]
        let logged = logged as f64;
        assert_eq!(
            value(&format!(
                "hub_log_entries_appended_total{{kind=\"{kind}\"}}"
            )),
            logged,
            "{kind}"
        );
    }
    #[allow(clippy::cast_precision_loss)]
    let size = records.len() as f64;
    assert_eq!(value("hub_log_size"), size);
    // Once one subscriber has it, its inbox is empty and the other's is not.
    let tax = hub.client(TAX);
    let (status, leased) = tax.get_json("/v1/inbox?max=10").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{leased}");
    let ids: Vec<Value> = leased["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["record"]["exchange_id"].clone())
        .collect();
    assert_eq!(ids.len(), 1, "{leased}");
    let (status, acked) = tax
        .post_json("/v1/inbox/ack", &json!({"exchange_ids": ids}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{acked}");
    let text = scrape_until(&|text| inbox(text, TAX).is_none()).await;
    assert_eq!(inbox(&text, SOCIAL_INSURANCE), Some(1.0), "{text}");
    // The scrapes themselves are counted, on the admin listener (each but
    // the one that answers).
    assert!(
        text.contains(&format!(
            r#"hub_http_requests_total{{listener="admin",route="/metrics",status="200"}} {}"#,
            scrapes.get() - 1
        )),
        "{text}"
    );

    // Not for agencies: the API listener has no such route, and an agency's
    // certificate does not open the admin listener.
    let (status, _) = tax.get_json("/metrics").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let pki = &hub.running().pki;
    let tax_member: hub_core::ids::Member = TAX.parse().unwrap();
    let agency_at_admin = admin_client(
        &hub,
        &pki.agency_cert(&tax_member),
        &pki.agency_key(&tax_member),
    );
    let answer = agency_at_admin
        .send(hub_client::Method::GET, "/metrics", None)
        .await;
    assert!(!matches!(answer, Ok((StatusCode::OK, _))), "{answer:?}");
}
