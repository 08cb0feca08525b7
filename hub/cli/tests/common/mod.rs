//! Running the real `hub` binary from tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const HUB: &str = env!("CARGO_BIN_EXE_hub");

pub fn hub(data: &Path, args: &[&str]) -> Output {
    Command::new(HUB)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A running `hub serve`; killed if a test fails before stopping it.
pub struct Served {
    pub child: Child,
    pub api: String,
    pub public: String,
    /// The admin listener, for registry changes (`--admin-hub`).
    pub admin: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// Another process of the hub's (an adapter); killed when dropped, so that
/// a failing test leaves nothing running.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        kill(&mut self.0);
    }
}

fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Start `hub serve` on free ports and wait for it to print its API address.
pub fn serve(data: &Path) -> Served {
    serve_with(data, &[])
}

/// [`serve`] with more environment (`HUB_*` settings).
pub fn serve_with(data: &Path, env: &[(&str, &str)]) -> Served {
    let child = Command::new(HUB)
        .arg("--data-dir")
        .arg(data)
        .arg("serve")
        .envs(env.iter().copied())
        .env("HUB_API_LISTEN", "127.0.0.1:0")
        .env("HUB_PUBLIC_LISTEN", "127.0.0.1:0")
        .env("HUB_ADMIN_LISTEN", "127.0.0.1:0")
        .env("HUB_SYNTHETIC_RECORDS", "20")
        .env("HUB_CHECKPOINT_INTERVAL_MS", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut served = Served {
        child,
        api: String::new(),
        public: String::new(),
        admin: String::new(),
    };
    let stdout = served.child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while served.api.is_empty() || served.public.is_empty() || served.admin.is_empty() {
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
        if let Some(addr) = line.strip_prefix("admin (registry):") {
            served.admin = addr.trim().to_owned();
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    served
}

/// Stop with SIGINT, as Ctrl-C does, and expect a clean exit.
pub fn stop(mut served: Served) {
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

/// Run a registry change (`hub agency|grant|subscription ...`) against the
/// served hub's admin listener, as the dev PKI's administrator.
pub fn admin(data: &Path, served: &Served, args: &[&str]) -> Output {
    let mut all = vec!["--admin-hub", served.admin.as_str()];
    all.extend_from_slice(args);
    hub(data, &all)
}

/// Publish the walkthrough's `enterprise.registered` event as the
/// enterprise registry (tax and social insurance subscribe to it).
pub fn publish_registration(data: &Path, api: &str) -> Output {
    let event_file = concat!(
        "@",
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/enterprise-registered.json"
    );
    hub(
        data,
        &[
            "send",
            "--as",
            "000.00.00.G09/enterprise-registry",
            "--hub",
            api,
            "enterprise.registered",
            event_file,
            "--purpose",
            "registry_update",
            "--case",
            "DKKD-2026-000123",
        ],
    )
}

/// `hub audit export` of the whole log into `<data>/<name>`; its path.
pub fn export(data: &Path, name: &str) -> std::path::PathBuf {
    let bundle = data.join(name);
    let out = hub(
        data,
        &["audit", "export", "--out", bundle.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    bundle
}

/// `hub audit verify` of `bundle` against the pinned keys `jwks`, and with
/// `data_key`, the bodies too.
pub fn audit_verify(data: &Path, bundle: &Path, jwks: &Path, data_key: Option<&Path>) -> Output {
    let mut args = vec![
        "audit",
        "verify",
        bundle.to_str().unwrap(),
        "--jwks",
        jwks.to_str().unwrap(),
    ];
    if let Some(key) = data_key {
        args.extend(["--data-key", key.to_str().unwrap()]);
    }
    hub(data, &args)
}

/// `hub audit replay` of `bundle` with the data directory's data key.
pub fn replay(data: &Path, bundle: &Path) -> Output {
    hub(
        data,
        &[
            "audit",
            "replay",
            bundle.to_str().unwrap(),
            "--data-key",
            data.join("pki/data.key").to_str().unwrap(),
        ],
    )
}
