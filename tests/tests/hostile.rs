//! The hostile-input suite: malformed, oversized, ambiguous and forged
//! requests sent to the real server over mTLS, each with the exact status
//! and error code it must get. Afterwards the server still serves, and no
//! request of the suite left an accepted entry in the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use hub_client::Method;
use hub_e2e::{BANK, ENTERPRISE_REGISTRY, ONE_STOP, TAX, TestHub, citizen_lookup, envelope};
use serde_json::{Value, json};

/// One hostile request and what it must get.
struct Case {
    name: String,
    who: &'static str,
    method: Method,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

const JSON: &str = "application/json";

fn post(name: impl Into<String>, body: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case {
        name: name.into(),
        who: ONE_STOP,
        method: Method::POST,
        path: "/v1/exchanges".into(),
        content_type: JSON,
        body,
        status,
        code,
    }
}

fn wrapped(envelope: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "envelope": envelope })).unwrap()
}

/// An envelope-level case for the one-stop office's `citizen.lookup`.
fn lookup_with(
    name: &str,
    change: impl FnOnce(&mut Value),
    status: u16,
    code: &'static str,
) -> Case {
    let mut e = citizen_lookup("001085012345");
    change(&mut e);
    post(name, wrapped(&e), status, code)
}

fn valid_body() -> Vec<u8> {
    wrapped(&citizen_lookup("001085012345"))
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

/// The payload replaced by raw JSON text (numbers and strings serde would
/// not write).
fn with_raw_payload(raw: &str) -> Vec<u8> {
    let text = String::from_utf8(valid_body()).unwrap();
    let payload = r#"{"personal_id":"001085012345"}"#;
    assert!(text.contains(payload));
    text.replace(payload, raw).into_bytes()
}

/// The valid body with one literal fragment replaced.
fn with_replaced(from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(valid_body()).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

fn signed(hub: &TestHub, signer: &str, envelope: &Value) -> String {
    hub_client::sign_envelope(envelope, &hub.signing_key(signer)).unwrap()
}

fn cases(hub: &TestHub) -> Vec<Case> {
    let mut cases = Vec::new();
    let valid = valid_body();

    // Broken and truncated JSON.
    for i in 1..=40 {
        let cut = valid.len() * i / 41;
        cases.push(post(
            format!("truncated at byte {cut}"),
            valid[..cut].to_vec(),
            400,
            "malformed_json",
        ));
    }
    for (name, body) in [
        ("empty body", ""),
        ("only whitespace", "   \n"),
        ("an open brace", "{"),
        ("a close brace", "}"),
        ("a missing value", r#"{"envelope":}"#),
        ("a trailing comma", r#"{"envelope":{},}"#),
        ("single quotes", "{'envelope':{}}"),
        ("a comment", r#"{/* hi */"envelope":{}}"#),
        ("NaN", r#"{"envelope":NaN}"#),
        ("Infinity", r#"{"envelope":Infinity}"#),
        ("an unquoted key", r#"{envelope:{}}"#),
        ("a bare word", "envelope"),
        ("a byte-order mark", "\u{feff}{\"envelope\":{}}"),
        ("an unterminated string", r#"{"envelope":"abc}"#),
        (
            "a control character in a string",
            "{\"envelope\":\"a\u{1}b\"}",
        ),
        ("a bad escape", r#"{"envelope":"\q"}"#),
        ("a short unicode escape", r#"{"envelope":"\u12"}"#),
    ] {
        cases.push(post(name, body.as_bytes().to_vec(), 400, "malformed_json"));
    }
    let mut trailing = valid.clone();
    trailing.extend_from_slice(b"x");
    cases.push(post("trailing garbage", trailing, 400, "malformed_json"));
    let mut twice = valid.clone();
    twice.extend_from_slice(&valid);
    cases.push(post("two documents", twice, 400, "malformed_json"));

    // Valid JSON, not the request shape.
    for (name, body) in [
        ("null", "null"),
        ("an array", "[]"),
        ("a number", "42"),
        ("a string", r#""envelope""#),
        ("an empty object", "{}"),
        ("no envelope", r#"{"signature":"x"}"#),
        (
            "a member beside the envelope",
            r#"{"envelope":{},"extra":1}"#,
        ),
        ("a numeric signature", r#"{"envelope":{},"signature":7}"#),
    ] {
        cases.push(post(
            name,
            body.as_bytes().to_vec(),
            400,
            "malformed_request",
        ));
    }

    // Duplicate member names (RFC 8785 / I-JSON forbid them).
    let body = String::from_utf8(valid.clone()).unwrap();
    for (name, from, to) in [
        (
            "a duplicated envelope",
            r#"{"envelope":"#,
            r#"{"envelope":{},"envelope":"#,
        ),
        (
            "a duplicated service",
            r#""service":"#,
            r#""service":"x","service":"#,
        ),
        (
            "a duplicated payload member",
            r#""personal_id":"#,
            r#""personal_id":"1","personal_id":"#,
        ),
        (
            "a duplicated sender agency",
            r#""agency":"#,
            r#""agency":"x","agency":"#,
        ),
        (
            "a duplicate spelled with an escape",
            r#""service":"#,
            r#""servic\u0065":"x","service":"#,
        ),
    ] {
        assert!(body.contains(from));
        cases.push(post(
            name,
            body.replacen(from, to, 1).into_bytes(),
            400,
            "malformed_json",
        ));
    }

    // Numbers: beyond 2^53, exponent forms, out of range.
    for (name, version, status, code) in [
        (
            "a version beyond 2^53",
            "9007199254740993",
            422,
            "invalid_envelope",
        ),
        (
            "a version of 2^64",
            "18446744073709551616",
            422,
            "invalid_envelope",
        ),
        ("a version 1e400", "1e400", 400, "malformed_json"),
        (
            "a version 402E16 (an integer past 2^53 in exponent form)",
            "402E16",
            422,
            "invalid_envelope",
        ),
        ("a fractional version", "1.5", 422, "invalid_envelope"),
        ("a negative version", "-1", 422, "invalid_envelope"),
        ("a zero version", "0", 422, "invalid_envelope"),
        ("a version of 1000", "1000", 422, "invalid_envelope"),
        ("a version as a string", "\"1\"", 422, "invalid_envelope"),
        ("a version with a leading zero", "01", 400, "malformed_json"),
        ("a version with a plus sign", "+1", 400, "malformed_json"),
    ] {
        cases.push(post(
            name,
            with_replaced(r#""version":1"#, &format!(r#""version":{version}"#)),
            status,
            code,
        ));
    }
    for (name, raw, status, code) in [
        (
            "a personal id as a number",
            r#"{"personal_id":1085012345}"#,
            422,
            "invalid_payload",
        ),
        (
            "a personal id in exponent form",
            r#"{"personal_id":1.085012345e9}"#,
            422,
            "invalid_payload",
        ),
        (
            "a payload number beyond 2^53",
            r#"{"personal_id":"001085012345","n":9007199254740993}"#,
            422,
            "invalid_envelope",
        ),
        (
            "a payload number 1e400",
            r#"{"personal_id":1e400}"#,
            400,
            "malformed_json",
        ),
        (
            "a payload that is an array",
            r#"["001085012345"]"#,
            422,
            "invalid_envelope",
        ),
        (
            "a payload that is a string",
            r#""001085012345""#,
            422,
            "invalid_envelope",
        ),
        ("a payload that is null", "null", 422, "invalid_envelope"),
    ] {
        cases.push(post(name, with_raw_payload(raw), status, code));
    }

    // Depth and size.
    cases.push(post(
        "a payload nested 40 levels",
        with_raw_payload(&format!(
            r#"{{"personal_id":"001085012345","x":{}}}"#,
            nested(40)
        )),
        400,
        "json_limit_exceeded",
    ));
    cases.push(post(
        "a payload nested 500 levels",
        with_raw_payload(&format!(r#"{{"x":{}}}"#, nested(500))),
        400,
        "malformed_json",
    ));
    cases.push(post(
        "100,000 open brackets",
        "[".repeat(100_000).into_bytes(),
        400,
        "malformed_json",
    ));
    cases.push(post(
        "a 70 kB string",
        with_raw_payload(&format!(r#"{{"personal_id":"{}"}}"#, "1".repeat(70_000))),
        400,
        "json_limit_exceeded",
    ));
    cases.push(post(
        "a 70 kB member name",
        with_raw_payload(&format!(r#"{{"{}":1}}"#, "k".repeat(70_000))),
        400,
        "json_limit_exceeded",
    ));
    cases.push(post(
        "a 2 MB body",
        with_raw_payload(&format!(r#"{{"personal_id":"{}"}}"#, "1".repeat(2_000_000))),
        413,
        "payload_too_large",
    ));
    cases.push(post(
        "a 50,000-element array",
        with_raw_payload(&format!(
            r#"{{"personal_id":"001085012345","x":[{}1]}}"#,
            "1,".repeat(50_000)
        )),
        422,
        "invalid_payload",
    ));

    // Invalid UTF-8 and lone surrogates.
    for (name, bytes) in [
        ("a 0xFF byte", vec![0xff]),
        ("an overlong slash", vec![0xc0, 0xaf]),
        ("a truncated sequence", vec![0xe1, 0xbb]),
        ("an encoded surrogate", vec![0xed, 0xa0, 0x80]),
    ] {
        let mut body = with_raw_payload(r#"{"personal_id":"00108501234X"}"#);
        let at = body.iter().position(|&b| b == b'X').unwrap();
        body.splice(at..=at, bytes);
        cases.push(post(
            format!("invalid UTF-8: {name}"),
            body,
            400,
            "malformed_json",
        ));
    }
    for (name, escape) in [
        ("a lone high surrogate", r"\ud800"),
        ("a lone low surrogate", r"\udc00"),
        ("reversed surrogates", r"\udc00\ud800"),
    ] {
        cases.push(post(
            name,
            with_raw_payload(&format!(r#"{{"personal_id":"{escape}"}}"#)),
            400,
            "malformed_json",
        ));
    }

    // Content types.
    for ct in [
        "text/plain",
        "application/xml",
        "application/jsonx",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/json-seq",
        "json",
        "application/javascript",
    ] {
        let mut c = post(
            format!("content type {ct}"),
            valid.clone(),
            415,
            "unsupported_media_type",
        );
        c.content_type = ct;
        cases.push(c);
    }

    // Every envelope field missing in turn, null, or of the wrong type.
    for field in [
        "sender", "service", "version", "purpose", "case_ref", "payload",
    ] {
        cases.push(lookup_with(
            &format!("no {field}"),
            |e| {
                e.as_object_mut().unwrap().remove(field);
            },
            422,
            "invalid_envelope",
        ));
        cases.push(lookup_with(
            &format!("{field} null"),
            |e| e[field] = Value::Null,
            422,
            "invalid_envelope",
        ));
        cases.push(lookup_with(
            &format!("{field} an array"),
            |e| e[field] = json!([]),
            422,
            "invalid_envelope",
        ));
    }
    for field in ["agency", "subsystem"] {
        cases.push(lookup_with(
            &format!("no sender {field}"),
            |e| {
                e["sender"].as_object_mut().unwrap().remove(field);
            },
            422,
            "invalid_envelope",
        ));
    }
    cases.push(post(
        "no envelope at all",
        br#"{}"#.to_vec(),
        400,
        "malformed_request",
    ));

    // Unknown members where the schemas close them.
    for (name, change, code) in [
        (
            "an unknown envelope member",
            Box::new(|e: &mut Value| e["priority"] = json!("high")) as Box<dyn FnOnce(&mut Value)>,
            "invalid_envelope",
        ),
        (
            "an unknown sender member",
            Box::new(|e: &mut Value| e["sender"]["role"] = json!("admin")),
            "invalid_envelope",
        ),
        (
            "an unknown payload member",
            Box::new(|e: &mut Value| e["payload"]["all_fields"] = json!(true)),
            "invalid_payload",
        ),
        (
            "an unknown on_behalf_of member",
            Box::new(|e: &mut Value| {
                e["on_behalf_of"] =
                    json!({"kind": "citizen", "personal_id": "001085012345", "role": "x"})
            }),
            "invalid_envelope",
        ),
        (
            "an unknown on_behalf_of kind",
            Box::new(|e: &mut Value| {
                e["on_behalf_of"] = json!({"kind": "robot", "personal_id": "001085012345"})
            }),
            "invalid_envelope",
        ),
    ] {
        cases.push(lookup_with(name, change, 422, code));
    }

    // Services and versions.
    for (name, service, version, status, code) in [
        (
            "a version the service does not have",
            "citizen.lookup",
            2,
            404,
            "unknown_service",
        ),
        (
            "an unknown service",
            "citizen.lookupx",
            1,
            404,
            "unknown_service",
        ),
        (
            "a service in capitals",
            "Citizen.Lookup",
            1,
            422,
            "invalid_envelope",
        ),
        (
            "a service with a slash",
            "citizen/lookup",
            1,
            422,
            "invalid_envelope",
        ),
        (
            "a service with a path",
            "../admin.grants",
            1,
            422,
            "invalid_envelope",
        ),
        (
            "a service without a dot",
            "citizen",
            1,
            422,
            "invalid_envelope",
        ),
        (
            "a service of 100 characters",
            "a.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
            1,
            422,
            "invalid_envelope",
        ),
        (
            "a service with a trailing newline",
            "citizen.lookup\n",
            1,
            422,
            "invalid_envelope",
        ),
    ] {
        cases.push(lookup_with(
            name,
            |e| {
                e["service"] = json!(service);
                e["version"] = json!(version);
            },
            status,
            code,
        ));
    }

    // Header and path tricks in identifiers.
    for (name, field, value) in [
        (
            "an exchange id with a path",
            "id",
            json!("../../etc/passwd"),
        ),
        (
            "an exchange id UUIDv4",
            "id",
            json!("9b2e7c56-3f5e-4c1a-9a57-0e4b2f8d1c3a"),
        ),
        (
            "an exchange id in capitals",
            "id",
            json!("0190F3A8-7C1D-7ABC-8DEF-0123456789AB"),
        ),
        (
            "an exchange id with CRLF",
            "id",
            json!("0190f3a8-7c1d-7abc-8def-0123456789ab\r\nX-Evil: 1"),
        ),
        ("an exchange id as a number", "id", json!(42)),
        (
            "a case reference with CRLF",
            "case_ref",
            json!("HS-2026-1\r\nX-Evil: 1"),
        ),
        (
            "a case reference with a NUL",
            "case_ref",
            json!("HS-2026-1\u{0}"),
        ),
        (
            "a case reference of 500 characters",
            "case_ref",
            json!("H".repeat(500)),
        ),
        (
            "a purpose outside the code list",
            "purpose",
            json!("curiosity"),
        ),
        ("a purpose in capitals", "purpose", json!("PUBLIC_SERVICE")),
        (
            "a created_at that is not a time",
            "created_at",
            json!("yesterday"),
        ),
    ] {
        cases.push(lookup_with(
            name,
            |e| e[field] = value,
            422,
            "invalid_envelope",
        ));
    }
    for (name, agency, subsystem) in [
        ("a sender agency with a path", "../../000", "one-stop"),
        (
            "a sender subsystem with a slash",
            "000.00.29.H29",
            "one/stop",
        ),
        (
            "a sender subsystem with CRLF",
            "000.00.29.H29",
            "one-stop\r\nX: 1",
        ),
        (
            "a sender agency with a NUL",
            "000.00.29.H29\u{0}",
            "one-stop",
        ),
        ("an empty sender subsystem", "000.00.29.H29", ""),
    ] {
        cases.push(lookup_with(
            name,
            |e| e["sender"] = json!({"agency": agency, "subsystem": subsystem}),
            422,
            "invalid_envelope",
        ));
    }
    for (name, payload) in [
        (
            "a personal id with a NUL",
            json!({"personal_id": "00108501234\u{0}"}),
        ),
        (
            "a personal id of 11 digits",
            json!({"personal_id": "00108501234"}),
        ),
        (
            "a personal id with letters",
            json!({"personal_id": "00108501234a"}),
        ),
        (
            "a personal id with an SQL quote",
            json!({"personal_id": "0' OR '1'='1"}),
        ),
        (
            "a personal id in full-width digits",
            json!({"personal_id": "００１０８５０１２３４５"}),
        ),
    ] {
        cases.push(lookup_with(
            name,
            |e| e["payload"] = payload,
            422,
            "invalid_payload",
        ));
    }

    // Who is speaking: another member's name, another provider.
    cases.push(lookup_with(
        "a sender that is not the certificate's member",
        |e| e["sender"] = json!({"agency": "000.00.00.G08", "subsystem": "tax"}),
        403,
        "sender_mismatch",
    ));
    cases.push(lookup_with(
        "a receiver that is not the provider",
        |e| e["receiver"] = json!({"agency": "000.00.00.G08", "subsystem": "tax"}),
        422,
        "receiver_mismatch",
    ));
    cases.push(lookup_with(
        "a purpose the grant does not allow",
        |e| e["purpose"] = json!("statistics"),
        403,
        "no_grant",
    ));
    // NFD vs NFC: the registries hold names in NFC only.
    let nfd: String = unicode_normalization::UnicodeNormalization::nfd("Nguyễn Văn An").collect();
    let mut verify = envelope(
        BANK,
        "citizen.verify",
        "kyc",
        json!({"personal_id": "001085012345", "full_name": nfd, "birth_date": "1985-03-15"}),
    );
    let as_bank = |name: &str, envelope: &Value, status, code| {
        let signature = signed(hub, BANK, envelope);
        let mut c = post(
            name,
            serde_json::to_vec(&json!({"envelope": envelope, "signature": signature})).unwrap(),
            status,
            code,
        );
        c.who = BANK;
        c
    };
    cases.push(as_bank("a name in NFD", &verify, 422, "invalid_payload"));
    // The bank may only verify.
    verify["service"] = json!("citizen.lookup");
    verify["payload"] = json!({"personal_id": "001085012345"});
    cases.push(as_bank(
        "a service the agency has no grant for",
        &verify,
        403,
        "no_grant",
    ));

    // Signatures: the enterprise registry signs what it publishes.
    let event = envelope(
        ENTERPRISE_REGISTRY,
        "enterprise.registered",
        "registry_update",
        hub_e2e::enterprise_registered(),
    );
    let own = signed(hub, ENTERPRISE_REGISTRY, &event);
    let mut other_payload = event.clone();
    other_payload["payload"]["enterprise"]["name"] = json!("CÔNG TY KHÁC");
    let mut other_case = event.clone();
    other_case["case_ref"] = json!("HS-2026-999999");
    let header = own.split('.').next().unwrap().to_owned();
    for (name, envelope, signature, code) in [
        (
            "an event without its signature",
            event.clone(),
            None,
            "signature_required",
        ),
        (
            "a signature moved onto another payload",
            other_payload,
            Some(own.clone()),
            "signature_invalid",
        ),
        (
            "a signature moved onto another case",
            other_case,
            Some(own.clone()),
            "signature_invalid",
        ),
        (
            "a signature by another agency's key",
            event.clone(),
            Some(signed(hub, TAX, &event)),
            "signature_invalid",
        ),
        (
            "a signature that is not a JWS",
            event.clone(),
            Some("not-a-jws".into()),
            "signature_invalid",
        ),
        (
            "an attached JWS",
            event.clone(),
            Some(own.replacen("..", ".e30.", 1)),
            "signature_invalid",
        ),
        (
            "a signature with alg none",
            event.clone(),
            Some(format!(
                "eyJhbGciOiJub25lIn0..{}",
                own.rsplit('.').next().unwrap()
            )),
            "signature_invalid",
        ),
        (
            "a signature with its bytes cut",
            event.clone(),
            Some(own[..own.len() - 4].to_owned()),
            "signature_invalid",
        ),
        (
            "a header from another key id",
            event.clone(),
            Some(format!("{header}x..{}", own.rsplit('.').next().unwrap())),
            "signature_invalid",
        ),
        (
            "an empty signature",
            event.clone(),
            Some(String::new()),
            "signature_invalid",
        ),
    ] {
        let mut request = json!({"envelope": envelope});
        if let Some(sig) = signature {
            request["signature"] = json!(sig);
        }
        let mut c = post(name, serde_json::to_vec(&request).unwrap(), 401, code);
        c.who = ENTERPRISE_REGISTRY;
        cases.push(c);
    }
    let lookup = citizen_lookup("001085012345");
    cases.push(post(
        "a signature from a member with no key",
        serde_json::to_vec(&json!({"envelope": lookup, "signature": own})).unwrap(),
        401,
        "signature_unexpected",
    ));
    let mut c = post(
        "an event from a member that is not its provider",
        serde_json::to_vec(&json!({
            "envelope": {
                "sender": {"agency": "000.00.00.G08", "subsystem": "tax"},
                "service": "enterprise.registered", "version": 1, "purpose": "registry_update",
                "case_ref": "HS-2026-000042", "payload": event["payload"].clone(),
            }
        }))
        .unwrap(),
        403,
        "not_provider",
    );
    c.who = TAX;
    c.body = {
        let envelope: Value = serde_json::from_slice::<Value>(&c.body).unwrap()["envelope"].clone();
        serde_json::to_vec(&json!({"envelope": envelope, "signature": signed(hub, TAX, &envelope)}))
            .unwrap()
    };
    cases.push(c);

    // Path tricks on the read side (nothing is logged for these).
    for (name, path, status, code) in [
        (
            "an exchange path with dot segments",
            "/v1/exchanges/..%2F..%2Fetc%2Fpasswd",
            400,
            "bad_request",
        ),
        (
            "an exchange path with a NUL",
            "/v1/exchanges/%00",
            400,
            "bad_request",
        ),
        (
            "an exchange path of 4,000 characters",
            &format!("/v1/exchanges/{}", "a".repeat(4000)),
            400,
            "bad_request",
        ),
        (
            "an exchange that does not exist",
            "/v1/exchanges/0190f3a8-7c1d-7abc-8def-0123456789ac",
            404,
            "not_found",
        ),
        (
            "a route that does not exist",
            "/v1/admin/grants",
            404,
            "not_found",
        ),
        (
            "a route reached by dot segments",
            "/v1/log/../../v1/whoami",
            404,
            "not_found",
        ),
        (
            "an inclusion proof with a negative index",
            "/v1/log/proof/inclusion?index=-1&size=1",
            400,
            "bad_request",
        ),
        (
            "an inclusion proof past the log",
            "/v1/log/proof/inclusion?index=999999&size=1000000",
            400,
            "bad_request",
        ),
        (
            "log entries with a huge limit",
            "/v1/log/entries?start=0&limit=99999999999",
            400,
            "bad_request",
        ),
    ] {
        cases.push(Case {
            name: name.into(),
            who: ONE_STOP,
            method: Method::GET,
            path: path.to_owned(),
            content_type: JSON,
            body: vec![],
            status,
            code,
        });
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_request_gets_its_exact_refusal_and_nothing_is_accepted() {
    let hub = TestHub::start().await;

    // An exchange id reused with a different payload: the first is accepted
    // before the suite's log window opens, the second must be refused.
    let id = "0190f3a8-7c1d-7abc-8def-0123456789ab";
    let mut first = citizen_lookup("001085012345");
    first["id"] = json!(id);
    let (status, body) = hub.send(first.clone()).await;
    assert_eq!(status, 200, "{body}");
    let start = hub.log_records().await.len();

    let mut cases = cases(&hub);
    let mut reused = first;
    reused["payload"]["personal_id"] = json!("079192000123");
    cases.push(post(
        "an exchange id reused with a different payload",
        wrapped(&reused),
        409,
        "exchange_id_conflict",
    ));
    assert!(cases.len() >= 150, "only {} cases", cases.len());

    let mut wrong = Vec::new();
    for case in &cases {
        let mut conn = hub
            .client(case.who)
            .connect(hub_client::HttpVersion::Http1)
            .await
            .unwrap();
        let body = (case.method == Method::POST).then(|| (case.content_type, case.body.clone()));
        let (status, _, bytes) = conn
            .send_full(case.method.clone(), &case.path, body)
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.as_u16() != case.status || reply["code"] != case.code {
            wrong.push(format!(
                "{}: expected {} {}, got {} {}",
                case.name, case.status, case.code, status, reply
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );

    // Still serving, and nothing of the suite was accepted.
    let (status, body) = hub.send(citizen_lookup("079192000123")).await;
    assert_eq!(status, 200, "{body}");
    let records = hub.log_records().await;
    let suite = &records[start..records.len() - 2];
    for r in suite {
        assert_eq!(
            r["kind"], "refusal",
            "an entry of the suite was accepted: {r}"
        );
    }
    assert_eq!(records[records.len() - 2]["kind"], "request");
}

/// A body too large is answered `413` even when it is several times the
/// limit: the hub reads it to its end (up to 8 MiB past the limit) before
/// answering, so the client's write does not fail before it reads the
/// answer, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_several_times_too_large_still_gets_its_413() {
    let hub = TestHub::start().await;
    let mut conn = hub
        .client(ONE_STOP)
        .connect(hub_client::HttpVersion::Http1)
        .await
        .unwrap();
    for size in [2_000_000, 6_000_000] {
        let body = with_raw_payload(&format!(r#"{{"personal_id":"{}"}}"#, "1".repeat(size)));
        let (status, _, bytes) = conn
            .send_full(Method::POST, "/v1/exchanges", Some((JSON, body)))
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status.as_u16(), 413, "{size}: {reply}");
        assert_eq!(reply["code"], "payload_too_large");
    }
    let (status, _, _) = conn
        .send_full(Method::POST, "/v1/exchanges", Some((JSON, valid_body())))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200, "the same connection still serves");
}
