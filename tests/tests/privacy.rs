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

    // A bank may only verify a citizen, never look one up.
    let (status, reply) = hub
        .send(envelope(
            BANK,
            "citizen.lookup",
            "kyc",
            json!({"personal_id": "001085012345"}),
        ))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["code"], "no_grant");
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
