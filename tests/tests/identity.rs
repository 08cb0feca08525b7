//! mTLS: who may connect, and who a connection is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use hub_client::HubClient;
use hub_core::ids::Member;
use hub_e2e::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use serde_json::json;
use time::{Duration, OffsetDateTime};

#[tokio::test]
async fn a_client_certificate_from_another_ca_fails_the_handshake() {
    let hub = TestHub::start().await;
    // A CA the hub never heard of issues a certificate with a demo member's name.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Rogue CA");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, ONE_STOP);
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let client = HubClient::new(
        &hub.api_base(),
        &hub.ca_pem(),
        Some((cert.pem().as_bytes(), key.serialize_pem().as_bytes())),
    )
    .unwrap();
    let result = client.get_json("/v1/whoami").await;
    assert!(
        result.is_err(),
        "a rogue certificate got an answer: {result:?}"
    );
    // The genuine certificate works.
    let (status, who) = hub.client(ONE_STOP).get_json("/v1/whoami").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(who["subsystem"], "one-stop");
}

#[tokio::test]
async fn an_expired_certificate_and_no_certificate_fail_the_handshake() {
    let hub = TestHub::start().await;
    let pki = &hub.running().pki;
    let member: Member = "000.00.00.H99/expired".parse().unwrap();
    let now = OffsetDateTime::now_utc();
    hub_server::pki::issue_client_cert(
        pki,
        &member,
        "Expired",
        now - Duration::days(30),
        now - Duration::days(1),
    )
    .unwrap();
    let expired = HubClient::from_files(
        &hub.api_base(),
        &pki.ca_cert(),
        Some((&pki.agency_cert(&member), &pki.agency_key(&member))),
    )
    .unwrap();
    assert!(expired.get_json("/v1/whoami").await.is_err());

    let anonymous = HubClient::new(&hub.api_base(), &hub.ca_pem(), None).unwrap();
    assert!(anonymous.get_json("/v1/whoami").await.is_err());

    // Health and keys are public on the other listener.
    let (status, health) = hub.public_client().get_json("/healthz").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["database"], "ok");
    let (status, _) = hub.public_client().get_json("/v1/inbox").await.unwrap();
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "no data route on the public listener"
    );
}

#[tokio::test]
async fn a_certified_but_unregistered_member_is_refused() {
    let hub = TestHub::start().await;
    let pki = &hub.running().pki;
    let member: Member = "000.00.00.H98/stranger".parse().unwrap();
    let now = OffsetDateTime::now_utc();
    hub_server::pki::issue_client_cert(
        pki,
        &member,
        "Stranger",
        now - Duration::hours(1),
        now + Duration::days(1),
    )
    .unwrap();
    let client = HubClient::from_files(
        &hub.api_base(),
        &pki.ca_cert(),
        Some((&pki.agency_cert(&member), &pki.agency_key(&member))),
    )
    .unwrap();
    let env = envelope(
        "000.00.00.H98/stranger",
        "citizen.lookup",
        "public_service",
        serde_json::json!({"personal_id": "001085012345"}),
    );
    let (status, err) = client
        .post_json("/v1/exchanges", &serde_json::json!({"envelope": env}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["code"], "unknown_member");
}

#[tokio::test]
async fn a_second_start_reuses_the_pki_keys_and_log() {
    let mut hub = TestHub::start().await;
    let (_, first) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            serde_json::json!({"personal_id": "001085012345"}),
        ))
        .await;
    let jwks_before = hub.public_client().jwks().await.unwrap();
    let ca_before = hub.ca_pem();
    hub.stop().await;

    let hub = TestHub::start_in(hub.dir.clone(), |_| {}).await;
    assert_eq!(hub.ca_pem(), ca_before, "the dev CA is reused");
    assert_eq!(
        hub.public_client().jwks().await.unwrap(),
        jwks_before,
        "the hub signing key is reused"
    );
    let (status, second) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            serde_json::json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(
        second["record"]["refers_to"].as_u64().unwrap(),
        first["record"]["index"].as_u64().unwrap() + 1,
        "the log continues where it stopped"
    );
}

#[tokio::test]
async fn an_administrators_revocation_fails_the_next_handshake_without_a_restart() {
    let hub = TestHub::start().await;
    let one_stop: Member = hub_e2e::ONE_STOP.parse().unwrap();
    let served = |member: &'static str| {
        let client = hub.client(member);
        async move { client.get_json("/v1/whoami").await.map(|(s, _)| s) }
    };
    assert_eq!(served(hub_e2e::ONE_STOP).await.unwrap(), StatusCode::OK);
    // A connection opened before the revocation, kept alive.
    let mut open = hub
        .client(hub_e2e::ONE_STOP)
        .connect(hub_client::HttpVersion::Http1)
        .await
        .unwrap();
    let (status, _) = open
        .send(http::Method::GET, "/v1/whoami", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let serial =
        hub_server::pki::certificate_serial(&hub.running().pki.agency_cert(&one_stop)).unwrap();
    // Revoking twice changes nothing more; other agencies are unaffected.
    for _ in 0..2 {
        let change = json!({"op": "certificate_revoke",
                            "member": {"agency": one_stop.agency, "subsystem": one_stop.subsystem},
                            "serial": serial});
        let (status, entry) = hub
            .operator()
            .post_json("/admin/v1/changes", &change)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{entry}");
        assert_eq!(entry["record"]["kind"], "admin");
        let refused = served(hub_e2e::ONE_STOP).await;
        assert!(
            refused.is_err(),
            "a revoked certificate was served: {refused:?}"
        );
        assert_eq!(served(hub_e2e::TAX).await.unwrap(), StatusCode::OK);
        // The open connection's next request is refused too.
        let (status, body) = open
            .send(http::Method::GET, "/v1/whoami", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], "certificate_revoked");
    }
}

#[tokio::test]
async fn a_revocation_made_through_another_hub_holds_here_within_a_second_or_two() {
    let hub = TestHub::start().await;
    let tax: Member = hub_e2e::TAX.parse().unwrap();
    let pki = &hub.running().pki;
    let serial = hub_server::pki::certificate_serial(&pki.agency_cert(&tax)).unwrap();
    // Another hub on the same database wrote the revocation.
    hub.running()
        .hub
        .store
        .apply_changes(&[hub_server::store::RegistryChange::RevokeCertificate {
            serial,
            member: tax,
            at: "2026-12-01T00:00:00.000Z".into(),
        }])
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + EVENTUALLY;
    loop {
        if hub
            .client(hub_e2e::TAX)
            .get_json("/v1/whoami")
            .await
            .is_err()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revocation was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, _) = hub
        .client(hub_e2e::ONE_STOP)
        .get_json("/v1/whoami")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_cas_crl_is_reloaded_without_a_restart() {
    let hub = TestHub::start().await;
    let pki = &hub.running().pki;
    let one_stop: Member = hub_e2e::ONE_STOP.parse().unwrap();
    // A connection opened before the CRL, kept alive.
    let mut open = hub
        .client(hub_e2e::ONE_STOP)
        .connect(hub_client::HttpVersion::Http2)
        .await
        .unwrap();
    let whoami = async |open: &mut hub_client::Connection| {
        let (status, body) = open
            .send(http::Method::GET, "/v1/whoami", None)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
        )
    };
    assert_eq!(whoami(&mut open).await.0, StatusCode::OK);

    // A CRL that the CA did not sign (the admin CA's, naming one-stop's
    // certificate) is refused: nothing is revoked.
    hub_e2e::publish_crl(
        &pki.admin_ca_cert(),
        &pki.admin_ca_key(),
        &pki.agency_cert(&one_stop),
        &pki.crl(),
    );
    assert!(
        hub.client(hub_e2e::ONE_STOP)
            .get_json("/v1/whoami")
            .await
            .is_ok()
    );
    assert_eq!(whoami(&mut open).await.0, StatusCode::OK);

    // The CA publishes a CRL naming one-stop's certificate: the open
    // connection is refused within a second, with no handshake to make the
    // hub read the file; new connections fail the handshake.
    hub_e2e::publish_crl(
        &pki.ca_cert(),
        &pki.ca_key(),
        &pki.agency_cert(&one_stop),
        &pki.crl(),
    );
    let deadline = std::time::Instant::now() + EVENTUALLY;
    loop {
        let (status, body) = whoami(&mut open).await;
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(body["code"], "certificate_revoked");
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the open connection is still served"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        hub.client(hub_e2e::ONE_STOP)
            .get_json("/v1/whoami")
            .await
            .is_err()
    );
    assert!(
        hub.client(hub_e2e::TAX)
            .get_json("/v1/whoami")
            .await
            .is_ok()
    );
}
