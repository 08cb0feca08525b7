//! The admin listener: administrators' certificates only, and every
//! registry change an entry in the exchange log, committed with the change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use hub_client::HubClient;
use hub_e2e::*;
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
    let (status, reply) = hub
        .operator()
        .post_json(
            "/admin/v1/changes",
            &json!({"op": "agency_suspend", "member": member(ONE_STOP)}),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
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
    let (status, reply) = hub
        .operator()
        .post_json("/admin/v1/changes", &grant)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{reply}");
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
