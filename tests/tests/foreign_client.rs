//! A client written in another language from docs/protocol.md alone
//! (`docs/examples/python_client.py`) against the real hub over mTLS: it
//! signs an envelope with a key the dev PKI wrote, and checks every seal
//! and commitment the hub returns with a standard Ed25519 library. Needs
//! `python3` with the `cryptography` package (`.ci/python` installs Debian's);
//! without them the test says it was skipped, and fails under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use hub_e2e::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_written_from_the_protocol_doc_exchanges_and_verifies() {
    let Some(python) = hub_e2e::services::python_with(&["cryptography"]) else {
        return;
    };
    let hub = TestHub::start_in(Arc::new(tempfile::tempdir().unwrap()), |c| {
        c.checkpoint_interval_ms = 50;
    })
    .await;
    // A log with a checkpoint already, for the client to prove that the
    // log only grew from it.
    let (status, reply) = hub.send(citizen_lookup("001085012345")).await;
    assert_eq!(status, http::StatusCode::OK, "{reply}");
    let signed = eventually(|| async {
        let (status, _) = hub
            .public_client()
            .send(http::Method::GET, "/v1/log/checkpoint", None)
            .await
            .ok()?;
        (status == http::StatusCode::OK).then_some(())
    })
    .await;
    assert!(signed.is_some(), "a first checkpoint");
    let running = hub.running();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/python_client.py");
    let pki = running.pki.dir.clone();
    let mut client = Command::new(python);
    client
        .arg(&script)
        .arg("--pki")
        .arg(&pki)
        .args(["--api", &running.api_addr.to_string()])
        .args(["--public", &running.public_addr.to_string()]);
    // The hub runs on this test's runtime: the client waits on another thread.
    let out = tokio::task::spawn_blocking(move || client.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");

    assert!(
        stdout.contains("both inclusion proofs verified; grew from size"),
        "{stdout}"
    );
    // What it says it did is in the log: the query answered, the event
    // logged once (the retry too), and the tax office's receipt of it.
    // The exchange id of the line "<what> <id>: ..." the client printed.
    let id_of = |what: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(what)?.strip_prefix(' '))
            .and_then(|l| l.split(':').next())
            .unwrap_or_else(|| panic!("the client names its {what}: {stdout}"))
            .to_owned()
    };
    let event_id = id_of("event");
    assert_eq!(
        hub.kinds_logged_for(&event_id).await,
        vec!["event", "receipt"],
        "{stdout}"
    );
    let records = hub.log_records().await;
    let receipt = records
        .iter()
        .find(|r| r["exchange_id"] == event_id.as_str() && r["kind"] == "receipt")
        .unwrap();
    assert_eq!(receipt["sender"]["subsystem"], "tax");
    let query_id = id_of("query");
    assert_eq!(
        hub.kinds_logged_for(&query_id).await,
        vec!["request", "response"]
    );
}
