//! A witness run with the real binary: it cosigns the hub's checkpoints
//! only after checking consistency, and an auditor can then demand its
//! cosignature.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{admin, hub, serve, stop, text};

fn lookup(data: &Path, api: &str, id: &str) {
    let out = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.29.H29/one-stop",
            "--hub",
            api,
            "citizen.lookup",
            &format!(r#"{{"personal_id":"{id}"}}"#),
            "--purpose",
            "public_service",
            "--case",
            "HS-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// Cosign, retrying while the hub's checkpoint has not caught up yet.
fn cosign(data: &Path, api: &str, log_key: &str, min_size: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = hub(
            data,
            &[
                "witness",
                "cosign",
                "--as",
                "000.00.00.G22/social-insurance",
                "--hub",
                api,
                "--name",
                "witness.invalid/w1",
                "--key",
                data.join("w1.key").to_str().unwrap(),
                "--state",
                data.join("w1.state").to_str().unwrap(),
                "--log-key",
                log_key,
            ],
        );
        let t = text(&out);
        let not_yet = t.contains("has no checkpoint")
            || t.contains("a checkpoint signed before the rotation");
        if !out.status.success() && not_yet && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(150));
            continue;
        }
        assert!(out.status.success(), "{t}");
        let size: u64 = t
            .split("at size ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        if size >= min_size {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "the checkpoint never reached {min_size}"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn a_witness_cosigns_consistent_checkpoints_and_auditors_require_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    let api = served.api.clone();

    let keygen = hub(
        data,
        &[
            "witness",
            "keygen",
            "--name",
            "witness.invalid/w1",
            "--out",
            data.join("w1.key").to_str().unwrap(),
        ],
    );
    assert!(keygen.status.success(), "{}", text(&keygen));
    let witness_vkey = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();
    let add = admin(data, &served, &["witness", "add", &witness_vkey]);
    assert!(add.status.success(), "{}", text(&add));

    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let public = hub_client::HubClient::new(&served.public, &ca, None).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_, body) = rt
        .block_on(public.send(hub_client::Method::GET, "/v1/log/verifier", None))
        .unwrap();
    let log_key = String::from_utf8(body.to_vec()).unwrap().trim().to_owned();
    let jwks = rt.block_on(public.jwks()).unwrap();
    std::fs::write(
        data.join("pinned-jwks.json"),
        serde_json::to_string(&jwks).unwrap(),
    )
    .unwrap();

    // Entries: the witness's admin entry, then a request and an answer
    // per lookup.
    lookup(data, &api, "001085012345");
    cosign(data, &api, &log_key, 3);
    // The log grows; the witness checks consistency from what it cosigned.
    lookup(data, &api, "079192000123");
    lookup(data, &api, "048201000456");
    cosign(data, &api, &log_key, 7);

    // The hub serves its checkpoint with the cosignature.
    let (_, body) = rt
        .block_on(public.send(hub_client::Method::GET, "/v1/log/checkpoint", None))
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains("\u{2014} witness.invalid/w1 "));
    stop(served);

    // The hub's key is rotated. The witness, still pinned to the old log
    // key, follows the hand-over and cosigns the new key's checkpoints
    // (not the last one the old key signed: it waits for the next).
    let rotate = hub(data, &["rotate-hub-key"]);
    assert!(rotate.status.success(), "{}", text(&rotate));
    let served = serve(data);
    let api = served.api.clone();
    lookup(data, &api, "001085012345");
    let cosigned = cosign(data, &api, &log_key, 9);
    assert!(cosigned.contains("at size 9"), "{cosigned}");
    let public = hub_client::HubClient::new(&served.public, &ca, None).unwrap();
    let (_, body) = rt
        .block_on(public.send(hub_client::Method::GET, "/v1/log/verifier", None))
        .unwrap();
    let new_log_key = String::from_utf8(body.to_vec()).unwrap().trim().to_owned();
    assert_ne!(new_log_key, log_key);
    let (_, body) = rt
        .block_on(public.send(hub_client::Method::GET, "/v1/log/checkpoint", None))
        .unwrap();
    let checkpoint = String::from_utf8_lossy(&body).into_owned();
    assert!(
        checkpoint.contains("\u{2014} witness.invalid/w1 "),
        "{checkpoint}"
    );
    let new_key_id = new_log_key.split('+').nth(1).unwrap();
    assert!(
        checkpoint.lines().any(|l| l.starts_with("\u{2014} ") && {
            // A note signature line: the key name, then base64(key id || signature).
            let sig = l.rsplit(' ').next().unwrap();
            let raw =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sig).unwrap();
            raw[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                == new_key_id
        }),
        "{checkpoint}"
    );
    stop(served);

    let bundle = data.join("bundle");
    let export = hub(
        data,
        &["audit", "export", "--out", bundle.to_str().unwrap()],
    );
    assert!(export.status.success(), "{}", text(&export));
    let pinned = data.join("pinned-jwks.json");
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            bundle.to_str().unwrap(),
            "--jwks",
            pinned.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        hub(data, &args)
    };
    // Every entry was covered when the witness cosigned, so the latest
    // checkpoint carries its cosignature.
    let out = verify(&["--witness", &witness_vkey]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("witness_quorum"), "{}", text(&out));
    // A second witness that never cosigned: the default quorum (all) fails.
    let other = hub(
        data,
        &[
            "witness",
            "keygen",
            "--name",
            "witness.invalid/w2",
            "--out",
            data.join("w2.key").to_str().unwrap(),
        ],
    );
    let other_vkey = String::from_utf8(other.stdout).unwrap().trim().to_owned();
    let out = verify(&["--witness", &witness_vkey, "--witness", &other_vkey]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("FAILED witness_quorum"),
        "{}",
        text(&out)
    );
    // A quorum of one of the two passes.
    let out = verify(&[
        "--witness",
        &witness_vkey,
        "--witness",
        &other_vkey,
        "--quorum",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
}
