//! Personal data protection against the real hub: field-level grants
//! (minimisation) and the data subject's access history.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::StatusCode;
use hub_core::fields::FieldSet;
use hub_core::ids::{PurposeCode, ServiceName};
use hub_e2e::*;
use hub_server::store::Grant;
use serde_json::{Value, json};

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_commune_office_receives_only_the_fields_its_grant_names() {
    let hub = TestHub::start().await;
    let jwks = hub.public_client().jwks().await.unwrap();

    let (status, reply) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    // The countersignature and the body commitment cover the minimised body.
    hub_client::verify_reply(&reply, &jwks).unwrap();
    assert_eq!(keys(&reply["body"]), ["citizen", "found"]);
    assert_eq!(
        keys(&reply["body"]["citizen"]),
        [
            "birth_date",
            "current_residence",
            "full_name",
            "permanent_residence",
            "personal_id"
        ]
    );
    // The log says what the grant allowed and what was released.
    let record = &reply["record"];
    let released = strings(&record["fields"]);
    assert!(released.contains(&"/citizen/full_name"), "{released:?}");
    assert!(!released.iter().any(|f| f.contains("ethnicity")));
    let request = hub.record_at(record["refers_to"].as_u64().unwrap()).await;
    let granted = FieldSet::parse_list(hub_server::app::COMMUNE_CITIZEN_FIELDS).unwrap();
    let granted: Vec<&str> = granted.iter().map(|f| f.as_str()).collect();
    assert_eq!(strings(&request["fields"]), granted);
    // Released fields are the granted ones the answer held: this citizen's
    // full date of birth is known, so no precision was there to release.
    assert!(!released.contains(&"/citizen/birth_date_precision"));
    assert!(released.iter().all(|f| granted.contains(f)));

    // Another purpose, another grant: civil status also gets sex and
    // nationality - still not ethnicity.
    let mut civil = citizen_lookup("001085012345");
    civil["purpose"] = json!("civil_status");
    let (status, reply) = hub.send(civil).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let citizen = keys(&reply["body"]["citizen"]);
    assert!(citizen.contains(&"sex") && citizen.contains(&"nationality"));
    assert!(!citizen.contains(&"ethnicity"), "{citizen:?}");

    // A grant without fields releases the whole answer, and says nothing.
    let (status, reply) = hub
        .send(envelope(
            SOCIAL_INSURANCE,
            "citizen.lookup",
            "social_insurance",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert!(reply["body"]["citizen"]["ethnicity"].is_string(), "{reply}");
    assert!(reply["record"].get("fields").is_none());
    // (That a bank may only verify a citizen, never look one up, is
    // `exchanges.rs::without_a_grant_the_hub_refuses_and_logs_it`.)
}

#[tokio::test]
async fn changing_a_grants_fields_takes_effect_on_the_next_request() {
    let hub = TestHub::start().await;
    let store = &hub.running().hub.store;
    store
        .add_grant(&Grant {
            consumer: ONE_STOP.parse().unwrap(),
            service: ServiceName::parse("citizen.lookup").unwrap(),
            purpose: PurposeCode::parse("public_service").unwrap(),
            fields: Some(FieldSet::parse_list("/found").unwrap()),
        })
        .await
        .unwrap();
    let (status, reply) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["body"], json!({"found": true}));
    assert_eq!(reply["record"]["fields"], json!(["/found"]));
    // The log keeps only what was released: the stored body opens to the
    // minimised answer.
    let index = reply["record"]["index"].as_u64().unwrap();
    let stored = store.entries(index, 1).await.unwrap().remove(0);
    let (_, plain) = hub
        .running()
        .hub
        .data_key
        .open(
            stored.body.as_ref().unwrap(),
            reply["record"]["body_hash"].as_str().unwrap(),
        )
        .unwrap();
    assert_eq!(plain, br#"{"found":true}"#);
}

/// The citizen portal asks who saw a person's data.
async fn access_history(hub: &TestHub, personal_id: &str) -> (StatusCode, Value) {
    hub.send(envelope(
        hub_server::pki::CITIZEN_PORTAL,
        "subject.access_history",
        "data_subject_request",
        json!({"personal_id": personal_id}),
    ))
    .await
}

#[tokio::test]
async fn a_citizen_learns_who_saw_their_data_and_the_question_is_logged() {
    let hub = TestHub::start().await;
    let an = "001085012345";
    // Three agencies touch An's data in three ways; another citizen's lookup does not count.
    let (status, first_lookup) = hub.send(citizen_lookup(an)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = hub
        .send(envelope(
            SOCIAL_INSURANCE,
            "citizen.lookup",
            "social_insurance",
            json!({"personal_id": an}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut for_an = envelope(
        TAX,
        "citizen.verify",
        "tax_administration",
        json!({"personal_id": "079192000123", "full_name": "Trần Thị Bích Ngọc", "birth_date": "1992-05-20"}),
    );
    // Acting for An (the citizen is a subject too), about someone else.
    for_an["on_behalf_of"] = json!({"kind": "citizen", "personal_id": an});
    let (status, reply) = hub.send(for_an).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, _) = hub.send(citizen_lookup("079192000123")).await;
    assert_eq!(status, StatusCode::OK);
    // A refused request released nothing and is not an access.
    let (status, _) = hub
        .send(envelope(
            BANK,
            "citizen.lookup",
            "kyc",
            json!({"personal_id": an}),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, reply) = access_history(&hub, an).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let jwks = hub.public_client().jwks().await.unwrap();
    hub_client::verify_reply(&reply, &jwks).unwrap();
    let accesses = reply["body"]["accesses"].as_array().unwrap();
    let who: Vec<(&str, &str, &str)> = accesses
        .iter()
        .map(|a| {
            (
                a["agency"]["subsystem"].as_str().unwrap(),
                a["service"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            ("one-stop", "citizen.lookup", "answered"),
            ("social-insurance", "citizen.lookup", "answered"),
            ("tax", "citizen.verify", "answered"),
        ]
    );
    assert_eq!(reply["body"]["truncated"], false);
    let first = &accesses[0];
    assert_eq!(first["purpose"], "public_service");
    assert_eq!(first["case_ref"], "HS-2026-000042");
    assert_eq!(first["received_by"][0]["subsystem"], "one-stop");
    assert!(
        first["fields"]
            .as_array()
            .unwrap()
            .contains(&json!("/citizen/full_name"))
    );
    assert!(
        accesses[1].get("fields").is_none(),
        "social insurance got the whole record"
    );
    // The answer never carries anyone's ID in clear, nor the log entries.
    let text = reply.to_string();
    assert!(!text.contains("079192000123"));
    let records = hub.log_records().await;
    assert!(!serde_json::to_string(&records).unwrap().contains(an));

    // The question is itself logged, as an exchange about An: the next
    // answer shows the portal asked.
    let question = hub
        .record_at(reply["record"]["refers_to"].as_u64().unwrap())
        .await;
    assert_eq!(question["kind"], "request");
    assert_eq!(question["purpose"], "data_subject_request");
    assert_eq!(question["sender"]["subsystem"], "citizen-portal");
    let (_, again) = access_history(&hub, an).await;
    let again = again["body"]["accesses"].as_array().unwrap();
    assert_eq!(again.len(), 4);
    assert_eq!(again[3]["service"], "subject.access_history");
    assert_eq!(again[3]["agency"]["subsystem"], "citizen-portal");

    // From a given point on: `after` the first exchange's first entry (its
    // request, which its answer refers to), the first access is left out.
    let (status, later) = hub
        .send(envelope(
            hub_server::pki::CITIZEN_PORTAL,
            "subject.access_history",
            "data_subject_request",
            json!({"personal_id": an, "after": first_lookup["record"]["refers_to"]}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{later}");
    let later = later["body"]["accesses"].as_array().unwrap();
    assert_eq!(
        later.len(),
        4,
        "the second lookup and on, the two questions"
    );
    assert_eq!(later[0]["agency"]["subsystem"], "social-insurance");

    // Someone nobody asked about has an empty history.
    let (_, empty) = access_history(&hub, "001199000001").await;
    assert_eq!(empty["body"]["accesses"], json!([]));
}

#[tokio::test]
async fn only_a_granted_agency_may_ask_who_saw_someones_data() {
    let hub = TestHub::start().await;
    let (status, reply) = hub
        .send(envelope(
            ONE_STOP,
            "subject.access_history",
            "data_subject_request",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["code"], "no_grant");
    // Even the portal only for the data subject's request.
    let (status, reply) = hub
        .send(envelope(
            hub_server::pki::CITIZEN_PORTAL,
            "subject.access_history",
            "statistics",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    // The refusal is logged like any other.
    let last = hub.log_records().await.pop().unwrap();
    assert_eq!(last["kind"], "refusal");
    assert_eq!(last["service"], "subject.access_history");
}
