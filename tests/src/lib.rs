//! The end-to-end harness: start the real hub on port 0 over real mTLS with
//! a real SQLite file in a temporary data directory, and talk to it as the
//! demo agencies do, with their dev certificates.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod relay;
pub mod requests;
pub mod services;

use std::sync::Arc;
use std::time::Duration;

use hub_client::HubClient;
use hub_core::ids::Member;
use hub_core::jws::SigningKey;
use hub_server::clock::{Clock, Random, SystemClock, SystemRandom};
use hub_server::pki::read_signing_key;
use hub_server::{Config, RunningHub};
use serde_json::{Value, json};
use tempfile::TempDir;

pub const ONE_STOP: &str = "000.00.29.H29/one-stop";
pub const TAX: &str = "000.00.00.G08/tax";
pub const SOCIAL_INSURANCE: &str = "000.00.00.G22/social-insurance";
pub const BANK: &str = "000.00.00.Z01/bank-ekyc";
pub const ENTERPRISE_REGISTRY: &str = "000.00.00.G09/enterprise-registry";
pub const POPULATION_REGISTRY: &str = "000.00.00.G01/population-registry";
/// Every provider of the reference services: a hub on RabbitMQ declares a
/// queue for each, so a test's broker namespace must list them all to
/// delete them afterwards.
pub const REFERENCE_PROVIDERS: [&str; 3] = [
    POPULATION_REGISTRY,
    "000.00.00.G13/land-registry",
    ENTERPRISE_REGISTRY,
];

/// What a test may replace when it starts a hub.
#[derive(Default)]
pub struct Options {
    pub adapters: Option<Vec<Arc<dyn hub_adapter_sdk::Adapter>>>,
    pub clock: Option<Arc<dyn Clock>>,
    pub random: Option<Arc<dyn Random>>,
}

/// A running hub in its own temporary data directory.
pub struct TestHub {
    pub running: Option<RunningHub>,
    pub config: Config,
    pub dir: Arc<TempDir>,
}

/// Send the hubs' warnings and errors (or what `RUST_LOG` asks for) to the
/// test's captured output, so that a failing test shows the causes its
/// hub logged - a 5xx body names none.
fn show_hub_warnings_with_failures() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Only the first call in a test binary installs it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
}

/// The test configuration: port 0, a temporary data directory, small registries.
pub fn test_config(dir: &TempDir) -> Config {
    Config {
        data_dir: dir.path().to_owned(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        public_listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        synthetic_records: 20,
        ..Config::default()
    }
}

impl TestHub {
    pub async fn start() -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        Self::start_in(dir, |_| {}).await
    }

    /// Start in `dir` (a second start reuses what the first made), adjusting the config.
    pub async fn start_in(dir: Arc<TempDir>, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(dir, adjust, Options::default()).await
    }

    /// Start with other adapters, clock or randomness than the defaults.
    pub async fn start_with(
        dir: Arc<TempDir>,
        adjust: impl FnOnce(&mut Config),
        options: Options,
    ) -> Self {
        show_hub_warnings_with_failures();
        let mut config = test_config(&dir);
        adjust(&mut config);
        let adapters = options
            .adapters
            .unwrap_or_else(|| hub_server::app::reference_adapters(config.synthetic_records));
        let running = hub_server::app::start_with_adapters(
            config.clone(),
            options.clock.unwrap_or_else(|| Arc::new(SystemClock)),
            options
                .random
                .unwrap_or_else(|| Arc::new(SystemRandom::default())),
            adapters,
        )
        .await
        .expect("the hub starts");
        Self {
            running: Some(running),
            config,
            dir,
        }
    }

    pub fn running(&self) -> &RunningHub {
        self.running.as_ref().unwrap()
    }

    pub async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Stop, rotate the hub's signing key as `hub rotate-hub-key` does
    /// (while the hub is stopped, as docs/operations.md says) and start
    /// again in the same data directory, adjusting the config.
    pub async fn restart_with_rotated_key(&mut self, adjust: impl FnOnce(&mut Config)) {
        self.stop().await;
        let pki = hub_server::pki::PkiPaths::new(self.dir.path());
        hub_server::pki::rotate_hub_key(&pki, time::OffsetDateTime::now_utc()).unwrap();
        *self = Self::start_in(self.dir.clone(), adjust).await;
    }

    pub fn api_base(&self) -> String {
        format!("https://{}", self.running().api_addr)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.running().pki.ca_cert()).unwrap()
    }

    /// A client presenting `member`'s dev certificate.
    pub fn client(&self, member: &str) -> HubClient {
        let m: Member = member.parse().unwrap();
        let pki = &self.running().pki;
        HubClient::from_files(
            &self.api_base(),
            &pki.ca_cert(),
            Some((&pki.agency_cert(&m), &pki.agency_key(&m))),
        )
        .unwrap()
    }

    /// A client of the admin listener as the dev PKI's administrator.
    pub fn operator(&self) -> HubClient {
        let pki = &self.running().pki;
        let name = hub_server::pki::DEV_ADMIN;
        HubClient::from_files(
            &format!("https://{}", self.running().admin_addr),
            &pki.ca_cert(),
            Some((&pki.admin_cert(name), &pki.admin_key(name))),
        )
        .unwrap()
    }

    /// The hub's figures for Prometheus (`GET /metrics` on the admin
    /// listener, as the dev administrator), checked to be served.
    pub async fn metrics(&self) -> String {
        let (status, body) = self
            .operator()
            .send(hub_client::Method::GET, "/metrics", None)
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::OK);
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// A client of the public listener, without a client certificate.
    pub fn public_client(&self) -> HubClient {
        HubClient::new(
            &format!("https://{}", self.running().public_addr),
            &self.ca_pem(),
            None,
        )
        .unwrap()
    }

    /// `member`'s envelope-signing key from the dev PKI.
    pub fn signing_key(&self, member: &str) -> SigningKey {
        let m: Member = member.parse().unwrap();
        read_signing_key(&self.running().pki.agency_signing_key(&m)).unwrap()
    }

    /// The hub's public keys, as adapter processes read them
    /// (`<data_dir>/pki/hub-jwks.json`).
    pub fn hub_keys(&self) -> hub_core::jws::Jwks {
        let path = self.running().pki.dir.join("hub-jwks.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Every log entry's record, in order.
    pub async fn log_records(&self) -> Vec<Value> {
        let entries = self.running().hub.store.entries(0, 100_000).await.unwrap();
        entries
            .iter()
            .map(|e| serde_json::from_str(&e.record).unwrap())
            .collect()
    }

    /// The kinds of the log entries of exchange `id`, in log order.
    pub async fn kinds_logged_for(&self, id: &str) -> Vec<Value> {
        self.log_records()
            .await
            .into_iter()
            .filter(|r| r["exchange_id"] == id)
            .map(|r| r["kind"].clone())
            .collect()
    }

    /// The record at `index`.
    pub async fn record_at(&self, index: u64) -> Value {
        let e = self.running().hub.store.entries(index, 1).await.unwrap();
        assert_eq!(e.first().map(|e| e.index), Some(index), "no entry {index}");
        serde_json::from_str(&e[0].record).unwrap()
    }

    /// Send `envelope` as its sender, signed when the sender has a key.
    /// Publish the enterprise registry's `enterprise.registered` event to
    /// its subscribers; the hub's `202` answer.
    pub async fn publish_registered_event(&self) -> Value {
        let (status, ack) = self.send(registered_event()).await;
        assert_eq!(status, http::StatusCode::ACCEPTED, "{ack}");
        ack
    }

    /// Lease up to 100 messages of `who`'s inbox: their exchange ids.
    pub async fn inbox_ids(&self, who: &str) -> Vec<Value> {
        let (status, inbox) = self
            .client(who)
            .get_json("/v1/inbox?max=100")
            .await
            .unwrap();
        assert_eq!(status, http::StatusCode::OK, "{inbox}");
        inbox["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["record"]["exchange_id"].clone())
            .collect()
    }

    /// Lease and acknowledge everything in `who`'s inbox.
    pub async fn drain_inbox(&self, who: &str) {
        loop {
            let ids = self.inbox_ids(who).await;
            if ids.is_empty() {
                return;
            }
            let (status, answer) = self
                .client(who)
                .post_json("/v1/inbox/ack", &json!({ "exchange_ids": ids }))
                .await
                .unwrap();
            assert_eq!(status, http::StatusCode::OK, "{answer}");
        }
    }

    /// Remove `subscriber`'s subscription to enterprise.registered v1 and
    /// write its withdrawal as of `at_millis`, as the change does, but
    /// without working it off: what a hub that stopped right after the
    /// change leaves.
    pub async fn leave_withdrawal(&self, subscriber: &str, at_millis: u64) {
        use hub_server::store::{RegistryChange, Subscription};
        let subscriber: Member = subscriber.parse().unwrap();
        let service = hub_core::ids::ServiceName::parse("enterprise.registered").unwrap();
        self.running()
            .hub
            .store
            .apply_changes(&[
                RegistryChange::RemoveSubscription(Subscription {
                    subscriber: subscriber.clone(),
                    service: service.clone(),
                    version: 1,
                }),
                RegistryChange::WithdrawUnfetchedEvents {
                    recipient: subscriber,
                    service,
                    at_millis,
                },
            ])
            .await
            .unwrap();
    }

    /// Wait until no withdrawal is pending in the hub's store (at most
    /// [`EVENTUALLY`]); panics if one still is.
    pub async fn await_withdrawals_worked_off(&self) {
        let store = &self.running().hub.store;
        let worked_off = eventually(|| async {
            let pending = store.pending_withdrawals(u64::MAX).await.unwrap();
            pending.is_empty().then_some(())
        })
        .await;
        assert!(worked_off.is_some(), "a withdrawal is still pending");
    }

    pub async fn send(&self, envelope: Value) -> (http::StatusCode, Value) {
        let (status, _, body) = self.send_full(envelope).await;
        (status, body)
    }

    /// [`TestHub::send`], with the response's headers.
    pub async fn send_full(&self, envelope: Value) -> (http::StatusCode, http::HeaderMap, Value) {
        let sender = format!(
            "{}/{}",
            envelope["sender"]["agency"].as_str().unwrap(),
            envelope["sender"]["subsystem"].as_str().unwrap()
        );
        let m: Member = sender.parse().unwrap();
        let key_path = self.running().pki.agency_signing_key(&m);
        let mut request = json!({"envelope": envelope});
        if key_path.exists() {
            let key = read_signing_key(&key_path).unwrap();
            request["signature"] =
                json!(hub_client::sign_envelope(&request["envelope"], &key).unwrap());
        }
        let body = serde_json::to_vec(&request).unwrap();
        let (status, headers, body) = self
            .client(&sender)
            .send_full(
                hub_client::Method::POST,
                "/v1/exchanges",
                Some(("application/json", body)),
            )
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }
}

/// An envelope from `sender`.
pub fn envelope(sender: &str, service: &str, purpose: &str, payload: Value) -> Value {
    let m: Member = sender.parse().unwrap();
    json!({
        "sender": {"agency": m.agency, "subsystem": m.subsystem},
        "service": service,
        "version": 1,
        "purpose": purpose,
        "case_ref": "HS-2026-000042",
        "payload": payload,
    })
}

/// The one-stop office asks the population registry for a citizen.
pub fn citizen_lookup(personal_id: &str) -> Value {
    envelope(
        ONE_STOP,
        "citizen.lookup",
        "public_service",
        json!({"personal_id": personal_id}),
    )
}

/// The enterprise registry's `enterprise.registered` event, as it sends it.
pub fn registered_event() -> Value {
    envelope(
        ENTERPRISE_REGISTRY,
        "enterprise.registered",
        "registry_update",
        enterprise_registered(),
    )
}

/// A valid `enterprise.registered` payload.
pub fn enterprise_registered() -> Value {
    json!({"enterprise": {
        "enterprise_code": "0101112221",
        "name": "Công ty TNHH Minh Hòa",
        "type": "llc_one_member",
        "founding_date": "2026-11-20",
        "status": "active",
        "charter_capital": "2000000000",
        "head_office": {"province": "01", "district": "005", "commune": "00160", "detail": "Số 5 phố Duy Tân"},
        "legal_representatives": [{"full_name": "Trần Thị Bích Ngọc", "personal_id": "079192000123", "position": "Giám đốc"}],
        "business_lines": [{"vsic": "6201", "name": "Lập trình máy vi tính", "main": true}]
    }})
}

/// SHA-256 of the concatenated `parts`, with ring's primitive alone.
/// How long a test waits for what happens eventually (see [`eventually`]):
/// generous, because CI machines are shared and a broker or database under
/// load can take seconds.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Ask `probe` every 100 ms until it has an answer, for at most
/// [`EVENTUALLY`]; `None` if it never had one.
pub async fn eventually<T, Fut>(mut probe: impl FnMut() -> Fut) -> Option<T>
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        if let Some(answer) = probe().await {
            return Some(answer);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().try_into().unwrap()
}

/// The RFC 6962 leaf hash of a version 2 record, from the protocol's text
/// and none of the hub's code: `SHA-256(0x00 || JCS(record without
/// hub_seal))`, canonicalised by an independent RFC 8785 implementation
/// (serde_jcs).
pub fn independent_leaf_hash(record: &Value) -> [u8; 32] {
    let mut statement = record.as_object().unwrap().clone();
    statement
        .remove("hub_seal")
        .expect("a version 2 record has hub_seal");
    sha256(&[&[0], &serde_jcs::to_vec(&Value::Object(statement)).unwrap()])
}

/// Write at `crl` a CRL of the CA (`ca_cert`, `ca_key`) that revokes the
/// certificate in `revoked`, as the CA would publish it.
pub fn publish_crl(
    ca_cert: &std::path::Path,
    ca_key: &std::path::Path,
    revoked: &std::path::Path,
    crl: &std::path::Path,
) {
    let serial = hub_server::pki::certificate_serial(revoked).unwrap();
    let bytes: Vec<u8> = (0..serial.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&serial[i..i + 2], 16).unwrap())
        .collect();
    let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_key).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(ca_cert).unwrap(), key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let list = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(7),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&bytes),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    std::fs::write(crl, list.pem().unwrap()).unwrap();
}
