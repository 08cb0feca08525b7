//! The README walkthrough, run with the real `hub` binary: serve on a fresh
//! data directory, send a lookup, publish an event, read both inboxes, be
//! refused, audit offline, and stop cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{admin, export, hub, publish_registration, replay, serve, stop, text};

const SOCIAL_INSURANCE: &str = "000.00.00.G22/social-insurance";

/// The README's first command: the one-stop office looks a citizen up.
fn one_stop_lookup(data: &std::path::Path, api: &str) -> std::process::Output {
    hub(
        data,
        &[
            "send",
            "--as",
            "000.00.29.H29/one-stop",
            "--hub",
            api,
            "citizen.lookup",
            r#"{"personal_id":"001085012345"}"#,
            "--purpose",
            "public_service",
            "--case",
            "HS-2026-0001",
        ],
    )
}

#[test]
fn the_readme_walkthrough_works_with_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    let api = served.api.clone();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

    let lookup = one_stop_lookup(data, &api);
    assert!(lookup.status.success(), "{}", text(&lookup));
    assert!(text(&lookup).contains("Nguyễn Văn An"), "{}", text(&lookup));
    assert!(
        text(&lookup).contains("hub signature verified"),
        "{}",
        text(&lookup)
    );

    let publish = publish_registration(data, &api);
    assert!(publish.status.success(), "{}", text(&publish));
    for subscriber in ["000.00.00.G08/tax", "000.00.00.G22/social-insurance"] {
        let inbox = hub(data, &["inbox", "--as", subscriber, "--hub", &api, "--ack"]);
        assert!(inbox.status.success(), "{}", text(&inbox));
        assert!(
            text(&inbox).contains("1 message(s), every hub seal verified"),
            "{}",
            text(&inbox)
        );
        assert!(
            text(&inbox).contains("\"kind\": \"receipt\""),
            "{}",
            text(&inbox)
        );
    }

    let refused = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.00.Z01/bank-ekyc",
            "--hub",
            &api,
            "citizen.lookup",
            r#"{"personal_id":"001085012345"}"#,
            "--purpose",
            "kyc",
            "--case",
            "KYC-0001",
        ],
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("no_grant"), "{}", text(&refused));

    // The curl request of the walkthrough is a valid request body.
    let example =
        std::fs::read_to_string(format!("{root}/docs/examples/citizen-verify-request.json"))
            .unwrap();
    let example: serde_json::Value = serde_json::from_str(&example).unwrap();
    let verify = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.29.H29/one-stop",
            "--hub",
            &api,
            "citizen.verify",
            &example["envelope"]["payload"].to_string(),
            "--purpose",
            "public_service",
            "--case",
            "HS-2026-0002",
        ],
    );
    assert!(
        text(&verify).contains("\"match\": true"),
        "{}",
        text(&verify)
    );

    // README step 6: an administrator grants the tax office two fields.
    let grant = admin(
        data,
        &served,
        &[
            "grant",
            "add",
            "000.00.00.G08/tax",
            "citizen.lookup",
            "tax_administration",
            "--fields",
            "/found,/citizen/full_name",
        ],
    );
    assert!(grant.status.success(), "{}", text(&grant));
    let tax_lookup = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.00.G08/tax",
            "--hub",
            &served.api,
            "citizen.lookup",
            r#"{"personal_id":"001085012345"}"#,
            "--purpose",
            "tax_administration",
            "--case",
            "TAX-2026-0001",
        ],
    );
    assert!(tax_lookup.status.success(), "{}", text(&tax_lookup));
    let reply: serde_json::Value = serde_json::from_slice(&tax_lookup.stdout).unwrap();
    assert_eq!(
        reply["body"],
        serde_json::json!({"found": true, "citizen": {"full_name": "Nguyễn Văn An"}})
    );

    // The auditor pins the hub's keys from the public listener.
    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let public = hub_client::HubClient::new(&served.public, &ca, None).unwrap();
    let jwks = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(public.jwks())
        .unwrap();
    let pinned = data.join("pinned-jwks.json");
    std::fs::write(&pinned, serde_json::to_string(&jwks).unwrap()).unwrap();
    let exchange_id = serde_json::from_slice::<serde_json::Value>(&lookup.stdout).unwrap()["record"]["exchange_id"]
        .as_str()
        .unwrap()
        .to_owned();

    for listing in [
        &["services"][..],
        &["grant", "list"],
        &["agency", "list"],
        &["subscription", "list"],
    ] {
        let out = hub(data, listing);
        assert!(out.status.success(), "{listing:?}: {}", text(&out));
    }
    // Social insurance stops receiving the enterprise registry's events
    // (a logged change, which the audit below replays); a second removal
    // says why it cannot be made.
    let subscribed = |data| {
        let list = hub(data, &["subscription", "list"]);
        text(&list)
            .lines()
            .any(|l| l.starts_with(SOCIAL_INSURANCE) && l.contains("enterprise.registered v1"))
    };
    assert!(subscribed(data));
    // Without its grant it is still subscribed, and the list says it
    // receives nothing.
    let revoke = [
        "grant",
        "revoke",
        SOCIAL_INSURANCE,
        "enterprise.registered",
        "social_insurance",
    ];
    let revoked = admin(data, &served, &revoke);
    assert!(revoked.status.success(), "{}", text(&revoked));
    // Its last grant for the event service: what it never fetched would be
    // withdrawn, and it fetched and acknowledged the one event.
    assert!(
        text(&revoked).contains("0 events waiting in the inbox, never fetched, were withdrawn"),
        "{}",
        text(&revoked)
    );
    let list = text(&hub(data, &["subscription", "list"]));
    assert!(
        list.lines().any(|l| l.starts_with(SOCIAL_INSURANCE)
            && l.contains("enterprise.registered v1")
            && l.ends_with("(no grant for it: receives nothing)")),
        "{list}"
    );
    let remove = [
        "subscription",
        "remove",
        SOCIAL_INSURANCE,
        "enterprise.registered",
    ];
    let removed = admin(data, &served, &remove);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(!subscribed(data));
    let again = admin(data, &served, &remove);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("is not subscribed"),
        "{}",
        text(&again)
    );
    stop(served);

    // Stopping signed a last checkpoint; export, verify and prove offline.
    let bundle = data.join("bundle");
    let bundle_s = bundle.to_str().unwrap();
    let pinned_s = pinned.to_str().unwrap();
    let export = hub(data, &["audit", "export", "--out", bundle_s]);
    assert!(export.status.success(), "{}", text(&export));
    let verify = hub(data, &["audit", "verify", bundle_s, "--jwks", pinned_s]);
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("OK:"), "{}", text(&verify));
    // Every answer and receipt of the walkthrough (its query, the event's
    // two receipts) names an entry it may: the table's `reference` row.
    let reference: Vec<String> = text(&verify)
        .lines()
        .find(|l| l.starts_with("reference "))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    assert!(
        matches!(&reference[..], [_, passed, failed] if passed != "0" && failed == "0"),
        "{}",
        text(&verify)
    );
    assert!(
        text(&verify).contains("the bodies are sealed"),
        "{}",
        text(&verify)
    );
    let verify = hub(
        data,
        &[
            "audit",
            "verify",
            bundle_s,
            "--jwks",
            pinned_s,
            "--data-key",
            data.join("pki/data.key").to_str().unwrap(),
        ],
    );
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("body_hash"), "{}", text(&verify));
    let prove = hub(
        data,
        &["audit", "prove", bundle_s, &exchange_id, "--jwks", pinned_s],
    );
    assert!(prove.status.success(), "{}", text(&prove));
    assert!(text(&prove).contains("proofs checked"), "{}", text(&prove));

    // A prefix of the log verifies on its own.
    let prefix = data.join("prefix");
    let export = hub(
        data,
        &[
            "audit",
            "export",
            "--out",
            prefix.to_str().unwrap(),
            "--up-to",
            "4",
        ],
    );
    assert!(export.status.success(), "{}", text(&export));
    let verify = hub(
        data,
        &[
            "audit",
            "verify",
            prefix.to_str().unwrap(),
            "--jwks",
            pinned_s,
        ],
    );
    assert!(verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains("OK: 4 entries"), "{}", text(&verify));

    // Replaying every decision against the exported registry gives the logged outcomes.
    let data_key = data.join("pki/data.key");
    let data_key_s = data_key.to_str().unwrap();
    let replay = hub(
        data,
        &["audit", "replay", bundle_s, "--data-key", data_key_s],
    );
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        text(&replay).contains("different outcome"),
        "{}",
        text(&replay)
    );
    // Had the one-stop office had no grant, its lookup would have been refused: replay says where.
    let registry_path = bundle.join("registry.json");
    let mut registry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry_path).unwrap()).unwrap();
    // Replay against `registry` written over the exported one: it fails, saying why.
    let replay_against = |registry: &serde_json::Value| {
        std::fs::write(&registry_path, registry.to_string()).unwrap();
        let replay = hub(
            data,
            &["audit", "replay", bundle_s, "--data-key", data_key_s],
        );
        assert!(!replay.status.success(), "{}", text(&replay));
        text(&replay)
    };
    registry["grants"].as_array_mut().unwrap().retain(|g| {
        !(g["consumer"]["subsystem"] == "one-stop" && g["service"] == "citizen.lookup")
    });
    let replayed = replay_against(&registry);
    assert!(
        replayed.contains("DIFFERS entry 0 (request): recorded accepted, replayed no_grant"),
        "{replayed}"
    );
    // Had the tax office not been subscribed, the hub would have sent it
    // the enterprise registry's event all the same: replay says so.
    registry["subscriptions"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["subscriber"]["subsystem"] != "tax");
    let replayed = replay_against(&registry);
    assert!(
        replayed.contains("(event): recorded accepted, replayed accepted_other_recipients"),
        "{replayed}"
    );
    assert!(
        replayed.contains(&format!("delivered to [000.00.00.G08/tax, {SOCIAL_INSURANCE}]; the subscribers granted enterprise.registered then were [{SOCIAL_INSURANCE}]")),
        "{replayed}"
    );

    // A changed byte makes verify fail and name the entry.
    let entries = bundle.join("entries.jsonl");
    let tampered = std::fs::read_to_string(&entries)
        .unwrap()
        .replacen("one-stop", "one-stoq", 1);
    std::fs::write(&entries, tampered).unwrap();
    let verify = hub(data, &["audit", "verify", bundle_s, "--jwks", pinned_s]);
    assert!(!verify.status.success());
    assert!(
        text(&verify).contains("FAILED entry 0: hub_signature"),
        "{}",
        text(&verify)
    );

    // A second start reuses the PKI and continues the log.
    let served = serve(data);
    let api = served.api.clone();
    let again = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.29.H29/one-stop",
            "--hub",
            &api,
            "citizen.lookup",
            r#"{"personal_id":"079192000123"}"#,
            "--purpose",
            "public_service",
            "--case",
            "HS-2026-0003",
        ],
    );
    assert!(again.status.success(), "{}", text(&again));
    stop(served);
}

#[test]
fn a_suspended_agency_is_refused_from_its_next_request_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    let lookup = || one_stop_lookup(data, &served.api);
    assert!(lookup().status.success());

    let suspend = admin(
        data,
        &served,
        &["agency", "suspend", "000.00.29.H29/one-stop"],
    );
    assert!(suspend.status.success(), "{}", text(&suspend));
    let refused = lookup();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("member_suspended"),
        "{}",
        text(&refused)
    );

    let resume = admin(
        data,
        &served,
        &["agency", "resume", "000.00.29.H29/one-stop"],
    );
    assert!(resume.status.success(), "{}", text(&resume));
    assert!(lookup().status.success());

    // Revoking its certificate shuts it out at the handshake.
    let revoke = admin(
        data,
        &served,
        &["agency", "revoke-cert", "000.00.29.H29/one-stop"],
    );
    assert!(revoke.status.success(), "{}", text(&revoke));
    assert!(!lookup().status.success());
    stop(served);

    // The auditor's replay judges each request by the registry of its time:
    // the refusal while suspended and the lookups around it all match,
    // though the agency is not suspended at export.
    let replayed = replay(data, &export(data, "bundle"));
    assert!(replayed.status.success(), "{}", text(&replayed));
    assert!(
        text(&replayed).contains("registry changes                  3"),
        "{}",
        text(&replayed)
    );
}

#[test]
fn field_grants_are_checked_against_the_schema_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    let grant = |fields: &str| {
        admin(
            data,
            &served,
            &[
                "grant",
                "add",
                "000.00.29.H29/one-stop",
                "citizen.lookup",
                "public_service",
                "--fields",
                fields,
            ],
        )
    };
    // A field the response schema does not have is refused, by name.
    let refused = grant("/found,/citizen/religion");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("\"/citizen/religion\" is not in the response schema"),
        "{}",
        text(&refused)
    );
    let refused = grant("citizen");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("not a JSON pointer"),
        "{}",
        text(&refused)
    );

    let narrowed = grant("/found,/citizen/full_name");
    assert!(narrowed.status.success(), "{}", text(&narrowed));
    assert!(
        text(&narrowed).contains("logged as admin entry"),
        "{}",
        text(&narrowed)
    );
    let list = hub(data, &["grant", "list"]);
    assert!(
        text(&list).contains("public_service           /citizen/full_name,/found"),
        "{}",
        text(&list)
    );
    let lookup = one_stop_lookup(data, &served.api);
    assert!(lookup.status.success(), "{}", text(&lookup));
    let reply: serde_json::Value = serde_json::from_slice(&lookup.stdout).unwrap();
    assert_eq!(
        reply["body"],
        serde_json::json!({"found": true, "citizen": {"full_name": "Nguyễn Văn An"}})
    );

    // Another purpose's grant, untouched by any administrator.
    let lookup = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.29.H29/one-stop",
            "--hub",
            &served.api,
            "citizen.lookup",
            r#"{"personal_id":"001085012345"}"#,
            "--purpose",
            "residence_registration",
            "--case",
            "HS-2026-0002",
        ],
    );
    assert!(lookup.status.success(), "{}", text(&lookup));

    // Widened since: the auditor's replay still judges the first lookup by
    // the grant of its time (the logged registry changes are undone).
    let widened = grant("/found,/citizen/full_name,/citizen/sex");
    assert!(widened.status.success(), "{}", text(&widened));
    let bundle = export(data, "bundle");
    let replayed = replay(data, &bundle);
    assert!(replayed.status.success(), "{}", text(&replayed));

    // A registry that released less than what was logged is caught: the
    // residence grant narrowed in the exported registry.
    let registry_path = bundle.join("registry.json");
    let mut registry: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&registry_path).unwrap()).unwrap();
    for g in registry["grants"].as_array_mut().unwrap() {
        if g["consumer"]["subsystem"] == "one-stop" && g["purpose"] == "residence_registration" {
            g["fields"] = serde_json::json!(["/found"]);
        }
    }
    std::fs::write(&registry_path, registry.to_string()).unwrap();
    let replayed = replay(data, &bundle);
    assert!(!replayed.status.success());
    assert!(
        text(&replayed).contains("replayed accepted_other_fields"),
        "{}",
        text(&replayed)
    );
    assert!(
        text(&replayed).contains("replayed over_released"),
        "{}",
        text(&replayed)
    );
    stop(served);
}

#[test]
fn the_citizen_portal_asks_who_saw_a_citizens_data_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    assert!(one_stop_lookup(data, &served.api).status.success());
    let history = |extra: &[&str]| {
        let mut args = vec![
            "access-history",
            "--as",
            "000.00.00.G03/citizen-portal",
            "--hub",
            &served.api,
            "001085012345",
            "--case",
            "DSR-2026-0001",
        ];
        args.extend_from_slice(extra);
        hub(data, &args)
    };
    let table = history(&[]);
    assert!(table.status.success(), "{}", text(&table));
    let out = String::from_utf8_lossy(&table.stdout).into_owned();
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{out}");
    for expected in [
        "000.00.29.H29/one-stop",
        "citizen.lookup",
        "public_service",
        "HS-2026-0001",
        "answered",
        "/citizen/full_name",
    ] {
        assert!(rows[0].contains(expected), "{expected} in {out}");
    }
    assert!(
        text(&table).contains("hub signature verified"),
        "{}",
        text(&table)
    );
    // The signed reply, for a portal to pass on; the first question now shows.
    let json = history(&["--json"]);
    assert!(json.status.success(), "{}", text(&json));
    let reply: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let accesses = reply["body"]["accesses"].as_array().unwrap();
    assert_eq!(accesses.len(), 2);
    assert_eq!(accesses[1]["agency"]["subsystem"], "citizen-portal");
    assert_eq!(accesses[1]["case_ref"], "DSR-2026-0001");

    // Any other agency is refused.
    let refused = hub(
        data,
        &[
            "access-history",
            "--as",
            "000.00.00.G08/tax",
            "--hub",
            &served.api,
            "001085012345",
            "--case",
            "X-1",
        ],
    );
    assert!(!refused.status.success());
    assert!(text(&refused).contains("no_grant"), "{}", text(&refused));
    stop(served);
}
