//! The README walkthrough, run with the real `hub` binary: serve on a fresh
//! data directory, send a lookup, publish an event, read both inboxes, be
//! refused, and stop cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const HUB: &str = env!("CARGO_BIN_EXE_hub");

fn hub(data: &Path, args: &[&str]) -> Output {
    Command::new(HUB)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running `hub serve`; killed if a test fails before stopping it.
struct Served {
    child: Child,
    api: String,
    public: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Start `hub serve` on free ports and wait for it to print its API address.
fn serve(data: &Path) -> Served {
    let child = Command::new(HUB)
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .env("HUB_API_LISTEN", "127.0.0.1:0")
        .env("HUB_PUBLIC_LISTEN", "127.0.0.1:0")
        .env("HUB_SYNTHETIC_RECORDS", "20")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut served = Served {
        child,
        api: String::new(),
        public: String::new(),
    };
    let stdout = served.child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.api.is_empty() || served.public.is_empty() {
        assert!(
            Instant::now() < deadline,
            "hub serve did not print its address"
        );
        let line = lines.next().expect("hub serve exited early").unwrap();
        if let Some(addr) = line.strip_prefix("public (health, keys):") {
            served.public = addr.trim().trim_end_matches("/healthz").to_owned();
        }
        if let Some(addr) = line.strip_prefix("hub API (mTLS):") {
            served.api = addr.trim().to_owned();
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    served
}

/// Stop with SIGINT, as Ctrl-C does, and expect a clean exit.
fn stop(mut served: Served) {
    let pid = served.child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = served.child.try_wait().unwrap() {
            assert!(status.success(), "hub serve exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("hub serve did not stop on SIGINT");
}

#[test]
fn the_readme_walkthrough_works_with_the_real_binary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve(data);
    let api = served.api.clone();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

    let lookup = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.29.H29/one-stop",
            "--hub",
            &api,
            "citizen.lookup",
            r#"{"personal_id":"001085012345"}"#,
            "--purpose",
            "public_service",
            "--case",
            "HS-2026-0001",
        ],
    );
    assert!(lookup.status.success(), "{}", text(&lookup));
    assert!(text(&lookup).contains("Nguyễn Văn An"), "{}", text(&lookup));
    assert!(
        text(&lookup).contains("hub signature verified"),
        "{}",
        text(&lookup)
    );

    let event_file = format!("@{root}/docs/examples/enterprise-registered.json");
    let publish = hub(
        data,
        &[
            "send",
            "--as",
            "000.00.00.G09/enterprise-registry",
            "--hub",
            &api,
            "enterprise.registered",
            &event_file,
            "--purpose",
            "registry_update",
            "--case",
            "DKKD-2026-000123",
        ],
    );
    assert!(publish.status.success(), "{}", text(&publish));
    for subscriber in ["000.00.00.G08/tax", "000.00.00.G22/social-insurance"] {
        let inbox = hub(data, &["inbox", "--as", subscriber, "--hub", &api, "--ack"]);
        assert!(inbox.status.success(), "{}", text(&inbox));
        assert!(
            text(&inbox).contains("1 message(s), every hub signature verified"),
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
    let prove = hub(
        data,
        &["audit", "prove", bundle_s, &exchange_id, "--jwks", pinned_s],
    );
    assert!(prove.status.success(), "{}", text(&prove));
    assert!(text(&prove).contains("proofs checked"), "{}", text(&prove));

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
