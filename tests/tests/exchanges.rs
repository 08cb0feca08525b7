//! Queries, events, refusals and idempotency against the real hub.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use hub_e2e::*;
use std::sync::Arc;

use hub_server::clock::{CountingRandom, ManualClock};
use serde_json::{Value, json};

#[tokio::test]
async fn a_lookup_is_answered_countersigned_and_logged() {
    let hub = TestHub::start().await;
    let (status, reply) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"]["found"], true);
    assert_eq!(reply["body"]["citizen"]["full_name"], "Nguyễn Văn An");
    // Converted from the registry's native yyyymmdd form.
    assert_eq!(reply["body"]["citizen"]["birth_date"], "1985-03-12");

    let jwks = hub.public_client().jwks().await.unwrap();
    hub_client::verify_reply(&reply, &jwks).expect("the hub's signature and body hash check out");

    let record = &reply["record"];
    assert_eq!(record["kind"], "response");
    assert_eq!(record["sender"]["subsystem"], "population-registry");
    assert_eq!(record["receiver"]["subsystem"], "one-stop");
    // The request it answers is in the log, accepted, with the sender's details.
    let request = hub.record_at(record["refers_to"].as_u64().unwrap()).await;
    assert_eq!(request["kind"], "request");
    assert_eq!(request["exchange_id"], record["exchange_id"]);
    assert_eq!(request["purpose"], "public_service");
    assert_eq!(request["case_ref"], "HS-2026-000042");
    // The stored log record is exactly what the sender received.
    assert_eq!(
        hub.record_at(record["index"].as_u64().unwrap()).await,
        *record
    );
}

#[tokio::test]
async fn every_reference_service_answers_through_the_hub() {
    let hub = TestHub::start().await;
    let cases = [
        (
            "citizen.verify",
            "public_service",
            json!({"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"}),
            json!({"match": true}),
        ),
        (
            "citizen.verify",
            "public_service",
            json!({"personal_id": "001085012345", "full_name": "Nguyễn Văn Bình", "birth_date": "1985-03-12"}),
            json!({"match": false}),
        ),
        (
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085999999"}),
            json!({"found": false}),
        ),
    ];
    for (service, purpose, payload, want) in cases {
        let (status, reply) = hub
            .send(envelope(ONE_STOP, service, purpose, payload))
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["body"], want, "{service}");
    }
    let (status, reply) = hub
        .send(envelope(
            ONE_STOP,
            "parcel.lookup",
            "land_administration",
            json!({"commune_code": "00004", "map_sheet": 12, "parcel_number": 345}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"]["parcel"]["area_m2"], "120.5");
    assert_eq!(reply["body"]["parcel"]["uses"][0]["term"], "long_term");
    let (status, reply) = hub
        .send(envelope(
            ONE_STOP,
            "parcels.by_holder",
            "land_administration",
            json!({"enterprise_code": "0304567898"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"]["parcels"].as_array().unwrap().len(), 1);
    let (status, reply) = hub
        .send(envelope(
            TAX,
            "enterprise.lookup",
            "tax_administration",
            json!({"enterprise_code": "0103456789"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"]["enterprise"]["founding_date"], "2015-06-15");
    assert_eq!(reply["body"]["enterprise"]["type"], "llc_one_member");
}

#[tokio::test]
async fn an_event_reaches_every_subscriber_and_receipts_are_logged() {
    // A manual clock: the visibility timeout passes when the test says so.
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let options = Options {
        clock: Some(clock.clone()),
        ..Options::default()
    };
    let hub = TestHub::start_with(Arc::new(tempfile::tempdir().unwrap()), |_| {}, options).await;
    let ack = hub.publish_registered_event().await;
    let event_index = ack["record"]["index"].as_u64().unwrap();
    let exchange_id = ack["record"]["exchange_id"].clone();
    let recipients: Vec<&str> = ack["record"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["subsystem"].as_str().unwrap())
        .collect();
    assert_eq!(recipients, ["tax", "social-insurance"]);

    let jwks = hub.public_client().jwks().await.unwrap();
    for subscriber in [TAX, SOCIAL_INSURANCE] {
        let (status, inbox) = hub.client(subscriber).get_json("/v1/inbox").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let messages = inbox["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 1, "{subscriber}: {inbox}");
        assert_eq!(messages[0]["record"]["exchange_id"], exchange_id);
        assert_eq!(messages[0]["body"]["payload"], enterprise_registered());
        hub_client::verify_reply(&messages[0], &jwks).unwrap();
    }

    // Tax acknowledges: a signed receipt is logged and the message leaves its inbox.
    let (status, answer) = hub
        .client(TAX)
        .post_json("/v1/inbox/ack", &json!({"exchange_ids": [exchange_id]}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{answer}");
    let receipt = &answer["receipts"][0];
    assert_eq!(receipt["kind"], "receipt");
    assert_eq!(receipt["sender"]["subsystem"], "tax");
    assert_eq!(receipt["refers_to"], event_index);
    assert_eq!(receipt["service"], ack["record"]["service"]);
    assert_eq!(receipt["version"], ack["record"]["version"]);
    assert!(receipt["service"].is_string(), "{receipt}");
    hub_core::log::verify_record_signature(receipt, &jwks).unwrap();
    let logged = hub.record_at(receipt["index"].as_u64().unwrap()).await;
    assert_eq!(*receipt, logged, "the receipt as logged");
    let again = hub
        .client(TAX)
        .post_json("/v1/inbox/ack", &json!({"exchange_ids": [exchange_id]}))
        .await
        .unwrap()
        .1;
    assert_eq!(again["unknown"], json!([exchange_id]));

    // Social insurance did not acknowledge: hidden for the visibility timeout, then back.
    let (_, inbox) = hub
        .client(SOCIAL_INSURANCE)
        .get_json("/v1/inbox")
        .await
        .unwrap();
    assert_eq!(inbox["messages"], json!([]), "leased messages are hidden");
    clock.advance(time::Duration::seconds(31));
    let (_, inbox) = hub
        .client(SOCIAL_INSURANCE)
        .get_json("/v1/inbox")
        .await
        .unwrap();
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1, "{inbox}");
    let (_, inbox) = hub.client(TAX).get_json("/v1/inbox").await.unwrap();
    assert_eq!(inbox["messages"], json!([]));
}

#[tokio::test]
async fn only_the_provider_may_publish_an_event() {
    let hub = TestHub::start().await;
    let (status, err) = hub
        .send(envelope(
            TAX,
            "enterprise.registered",
            "tax_administration",
            enterprise_registered(),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["code"], "not_provider");
}

async fn assert_logged_refusal(hub: &TestHub, err: &Value, code: &str) {
    let index = err["log_index"]
        .as_u64()
        .unwrap_or_else(|| panic!("refusal not logged: {err}"));
    let record = hub.record_at(index).await;
    assert_eq!(record["kind"], "refusal");
    assert_eq!(record["error"]["code"], code);
    assert_eq!(record["exchange_id"], err["exchange_id"]);
}

#[tokio::test]
async fn an_invalid_payload_is_refused_with_pointers_and_logged() {
    let hub = TestHub::start().await;
    let (status, err) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "12", "religion": "none"}),
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["code"], "invalid_payload");
    let violations = err["violations"].as_array().unwrap();
    let has = |pointer: &str, keyword: &str| {
        violations
            .iter()
            .any(|v| v["pointer"] == pointer && v["keyword"] == keyword)
    };
    assert!(has("/personal_id", "pattern"), "{err}");
    assert!(has("", "additionalProperties"), "{err}");
    assert_logged_refusal(&hub, &err, "invalid_payload").await;
    // Nothing was accepted: no request entry in the log.
    assert!(
        hub.log_records()
            .await
            .iter()
            .all(|r| r["kind"] == "refusal")
    );
}

#[tokio::test]
async fn an_invalid_envelope_names_the_missing_fields() {
    let hub = TestHub::start().await;
    let mut env = envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": "001085012345"}),
    );
    env.as_object_mut().unwrap().remove("case_ref");
    env["purpose"] = json!("curiosity");
    let (status, err) = hub.send(env).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["code"], "invalid_envelope");
    let text = err["violations"].to_string();
    assert!(text.contains("case_ref"), "{err}");
    assert!(
        err["violations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["pointer"] == "/purpose" && v["keyword"] == "enum"),
        "{err}"
    );
    assert_logged_refusal(&hub, &err, "invalid_envelope").await;
}

#[tokio::test]
async fn without_a_grant_the_hub_refuses_and_logs_it() {
    let hub = TestHub::start().await;
    // The bank may only verify, for KYC.
    let (status, err) = hub
        .send(envelope(
            BANK,
            "citizen.lookup",
            "kyc",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["code"], "no_grant");
    assert_logged_refusal(&hub, &err, "no_grant").await;
    // A granted service for a purpose not granted is refused too.
    let payload = json!({"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1985-03-12"});
    let (status, err) = hub
        .send(envelope(
            BANK,
            "citizen.verify",
            "statistics",
            payload.clone(),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    // And the granted purpose works.
    let (status, reply) = hub
        .send(envelope(BANK, "citizen.verify", "kyc", payload))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"], json!({"match": true}));
}

#[tokio::test]
async fn unknown_services_and_impersonation_are_refused_and_logged() {
    let hub = TestHub::start().await;
    let (status, err) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.teleport",
            "public_service",
            json!({}),
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{err}");
    assert_eq!(err["code"], "unknown_service");
    assert_logged_refusal(&hub, &err, "unknown_service").await;

    // One-stop's certificate cannot speak for tax.
    let env = envelope(
        TAX,
        "enterprise.lookup",
        "tax_administration",
        json!({"enterprise_code": "0103456789"}),
    );
    let (status, err) = hub
        .client(ONE_STOP)
        .post_json("/v1/exchanges", &json!({"envelope": env}))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{err}");
    assert_eq!(err["code"], "sender_mismatch");
    let record = hub.record_at(err["log_index"].as_u64().unwrap()).await;
    assert_eq!(
        record["sender"]["subsystem"], "one-stop",
        "the log names the authenticated member"
    );
}

#[tokio::test]
async fn semantic_validators_refuse_a_bad_check_digit_and_an_id_contradicting_the_birth_year() {
    let hub = TestHub::start().await;
    let (status, err) = hub
        .send(envelope(
            TAX,
            "enterprise.lookup",
            "tax_administration",
            json!({"enterprise_code": "0103456788"}),
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    let v = &err["violations"][0];
    assert_eq!(v["pointer"], "/enterprise_code");
    assert_eq!(v["keyword"], "x-hub-check:tax-code-check-digit", "{err}");
    assert_logged_refusal(&hub, &err, "invalid_payload").await;

    // 001085012345: digit 4 (0) says born 1900-1999, digits 5-6 say 1985.
    let (status, err) = hub
        .send(envelope(ONE_STOP, "citizen.verify", "public_service",
            json!({"personal_id": "001085012345", "full_name": "Nguyễn Văn An", "birth_date": "1990-03-12"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(
        err["violations"][0]["keyword"], "x-hub-check:personal-id-consistency",
        "{err}"
    );
    assert!(
        err["violations"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1985"),
        "{err}"
    );

    // A province code no birth is registered under.
    let (status, err) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "003085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(
        err["violations"][0]["keyword"], "x-hub-check:personal-id-province",
        "{err}"
    );
}

#[tokio::test]
async fn a_repeated_exchange_id_is_answered_once() {
    let hub = TestHub::start().await;
    let id = hub.running().hub.new_exchange_id().to_string();
    let mut env = envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": "079192000123"}),
    );
    env["id"] = json!(id);
    let (s1, first) = hub.send(env.clone()).await;
    let (s2, second) = hub.send(env.clone()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(first, second, "the retry gets the first result");
    assert_eq!(first["record"]["exchange_id"], id.as_str());
    let kinds = hub.kinds_logged_for(&id).await;
    assert_eq!(
        kinds,
        [json!("request"), json!("response")],
        "delivered and answered once"
    );

    // The same id with another payload is a conflict.
    env["payload"] = json!({"personal_id": "001085012345"});
    let (status, err) = hub.send(env).await;
    assert_eq!(status, StatusCode::CONFLICT, "{err}");
    assert_eq!(err["code"], "exchange_id_conflict");

    // The sender can fetch the result later; nobody else can.
    let (status, fetched) = hub
        .client(ONE_STOP)
        .get_json(&format!("/v1/exchanges/{id}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, first);
    let (status, _) = hub
        .client(TAX)
        .get_json(&format!("/v1/exchanges/{id}"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_stored_answer_that_no_longer_opens_is_an_internal_error_not_a_retry() {
    let hub = TestHub::start().await;
    let (status, reply) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let path = format!(
        "/v1/exchanges/{}",
        reply["record"]["exchange_id"].as_str().unwrap()
    );
    let get = || async {
        let (status, headers, body) = hub
            .client(ONE_STOP)
            .send_full(hub_client::Method::GET, &path, None)
            .await
            .unwrap();
        (
            status,
            headers,
            serde_json::from_slice::<Value>(&body).unwrap(),
        )
    };
    let (status, _, again) = get().await;
    assert_eq!(status, StatusCode::OK, "{again}");

    // The database is changed behind the hub's back: the answer's sealed
    // body no longer opens with the data key. Retrying cannot mend that, so
    // the hub says so (500) instead of asking for a retry (503).
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&hub.config.database_url())
        .await
        .unwrap();
    let index = reply["record"]["index"].as_i64().unwrap();
    sqlx::query("UPDATE log_bodies SET ciphertext = zeroblob(length(ciphertext)) WHERE idx = ?")
        .bind(index)
        .execute(&mut db)
        .await
        .unwrap();
    let (status, headers, error) = get().await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{error}");
    assert_eq!(error["code"], "internal_error");
    assert!(headers.get("retry-after").is_none(), "{headers:?}");
    // The cause (which body, which key) is for the log, not the client.
    let message = error["message"].as_str().unwrap();
    assert!(
        !message.contains("data key") && !message.contains(&path[14..]),
        "{message}"
    );
}

#[tokio::test]
async fn concurrent_exchanges_share_group_commits_and_the_log_stays_contiguous() {
    let hub = TestHub::start().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40u32 {
        let env = envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        );
        let client = hub.client(ONE_STOP);
        tasks.spawn(async move {
            let _ = i;
            client
                .post_json("/v1/exchanges", &json!({"envelope": env}))
                .await
                .unwrap()
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (status, reply) = r.unwrap();
        assert_eq!(status, StatusCode::OK, "{reply}");
    }
    let records = hub.log_records().await;
    assert_eq!(records.len(), 80);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["index"], i as u64);
    }
}

#[tokio::test]
async fn size_and_media_type_limits_answer_in_json() {
    let hub = TestHub::start_in(std::sync::Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.max_body_bytes = 2048
    })
    .await;
    let big = "x".repeat(4096);
    let body = json!({"envelope": envelope(ONE_STOP, "citizen.lookup", "public_service", json!({"personal_id": big}))});
    let (status, err) = hub
        .client(ONE_STOP)
        .post_json("/v1/exchanges", &body)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
    assert_eq!(err["code"], "payload_too_large");
    let (status, raw) = hub
        .client(ONE_STOP)
        .send(
            http::Method::POST,
            "/v1/exchanges",
            Some(("text/plain", b"{}".to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(String::from_utf8_lossy(&raw).contains("unsupported_media_type"));
    let (status, raw) = hub
        .client(ONE_STOP)
        .send(
            http::Method::POST,
            "/v1/exchanges",
            Some(("application/json", b"{\"envelope\": [".to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&raw).contains("malformed_json"));
}

#[tokio::test]
async fn the_schema_catalog_is_served_read_only() {
    let hub = TestHub::start().await;
    let (status, list) = hub.public_client().get_json("/v1/schemas").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        list["schemas"]
            .as_array()
            .unwrap()
            .contains(&json!("services/citizen.lookup/v1/request"))
    );
    let (status, doc) = hub
        .public_client()
        .get_json("/v1/schemas/common/v1")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["$id"], "https://schemas.hub.invalid/common/v1.json");
    let (status, _) = hub
        .public_client()
        .get_json("/v1/schemas/nope/v9")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = hub
        .public_client()
        .send(
            http::Method::POST,
            "/v1/schemas",
            Some(("application/json", b"{}".to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn time_and_randomness_are_parameters() {
    let t = time::macros::datetime!(2026-11-22 08:30:00.250 UTC);
    let options = Options {
        clock: Some(Arc::new(ManualClock::new(t))),
        random: Some(Arc::new(CountingRandom::default())),
        ..Options::default()
    };
    let hub = TestHub::start_with(Arc::new(tempfile::tempdir().unwrap()), |_| {}, options).await;
    let (status, reply) = hub
        .send(envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["record"]["time"], "2026-11-22T08:30:00.250Z");
    // The first id the hub makes: the clock's milliseconds, then counter bytes 0.
    let expected = hub_core::ids::ExchangeId::from_parts(
        u64::try_from((t - time::OffsetDateTime::UNIX_EPOCH).whole_milliseconds()).unwrap(),
        [0; 10],
    );
    assert_eq!(reply["record"]["exchange_id"], expected.to_string());
}

#[tokio::test]
async fn duplicate_member_names_are_refused_and_logged() {
    let hub = TestHub::start().await;
    // Two parsers could read this envelope differently: which personal_id?
    let raw = br#"{"envelope":{"sender":{"agency":"000.00.29.H29","subsystem":"one-stop"},"service":"citizen.lookup","version":1,"purpose":"public_service","case_ref":"HS-1","payload":{"personal_id":"001085012345","personal_id":"079192000123"}}}"#;
    let (status, body) = hub
        .client(ONE_STOP)
        .send(
            http::Method::POST,
            "/v1/exchanges",
            Some(("application/json", raw.to_vec())),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "malformed_json");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("duplicate member name"),
        "{err}"
    );
    assert_logged_refusal(&hub, &err, "malformed_json").await;
}

#[tokio::test]
async fn the_citizen_on_whose_behalf_an_agency_acts_is_logged_without_their_id() {
    let hub = TestHub::start().await;
    let mut subjects = Vec::new();
    for case in ["HS-1", "HS-2"] {
        let mut env = envelope(
            ONE_STOP,
            "citizen.lookup",
            "public_service",
            json!({"personal_id": "079192000123"}),
        );
        env["case_ref"] = json!(case);
        env["on_behalf_of"] = json!({"kind": "citizen", "personal_id": "079192000123"});
        let (status, reply) = hub.send(env).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        let request = hub
            .record_at(reply["record"]["refers_to"].as_u64().unwrap())
            .await;
        assert_eq!(request["on_behalf_of"]["kind"], "citizen");
        assert!(!request.to_string().contains("079192000123"), "{request}");
        subjects.push(request["on_behalf_of"]["subject"].clone());
    }
    // The same citizen, the same keyed subject: the hub can find their exchanges.
    assert_eq!(subjects[0], subjects[1]);
    assert!(subjects[0].as_str().unwrap().len() >= 43);
}

#[tokio::test]
async fn a_message_acknowledged_by_several_requests_at_once_gets_one_receipt() {
    let hub = TestHub::start().await;
    let ack = hub.publish_registered_event().await;
    let exchange_id = ack["record"]["exchange_id"].clone();
    let (_, inbox) = hub.client(TAX).get_json("/v1/inbox").await.unwrap();
    assert_eq!(inbox["messages"].as_array().unwrap().len(), 1, "{inbox}");
    // A client retrying its acknowledgement while the first is in flight.
    let acks = (0..8).map(|_| {
        let client = hub.client(TAX);
        let body = json!({"exchange_ids": [exchange_id]});
        async move { client.post_json("/v1/inbox/ack", &body).await.unwrap() }
    });
    let answers = futures_util::future::join_all(acks).await;
    let mut receipts = 0;
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::OK, "{answer}");
        let given = answer["receipts"].as_array().unwrap().len();
        let unknown = answer["unknown"].as_array().unwrap().len();
        assert_eq!(given + unknown, 1, "{answer}");
        receipts += given;
    }
    assert_eq!(
        receipts, 1,
        "one acknowledgement got the receipt: {answers:?}"
    );
    let logged: Vec<Value> = hub.kinds_logged_for(exchange_id.as_str().unwrap()).await;
    assert_eq!(logged, ["event", "receipt"], "one receipt in the log");
}
