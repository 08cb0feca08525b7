//! The `hub` command when its standard output cannot be written: a full
//! disk (`/dev/full`) or a reader that went away (`| head`). It fails
//! without a panic, and `hub inbox --ack` acknowledges nothing it could not
//! write out - the messages come back to be fetched again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{HUB, publish_registration, serve_with, stop, text};

const TAX: &str = "000.00.00.G08/tax";

/// `hub <args>` with standard output going to `stdout`.
fn hub_into(data: &Path, args: &[&str], stdout: Stdio) -> Output {
    Command::new(HUB)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// A pipe whose reader is already gone, as after `| head` has its lines.
fn closed_pipe() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

fn dev_full() -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    )
}

/// `hub inbox --as tax --ack` into `stdout`, once the tax office's message
/// is visible again (it was leased by the previous attempt).
fn fetch_and_ack(data: &Path, api: &str, stdout: impl Fn() -> Stdio) -> Output {
    for _ in 0..20 {
        let out = hub_into(
            data,
            &["inbox", "--as", TAX, "--hub", api, "--ack"],
            stdout(),
        );
        if !text(&out).contains("0 message(s)") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("the tax office's message never came back to its inbox");
}

fn assert_failed_without_panic(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(!text(out).contains("panicked"), "{}", text(out));
}

#[test]
fn an_inbox_that_cannot_be_written_out_is_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let served = serve_with(data, &[("HUB_INBOX_VISIBILITY_SECS", "1")]);
    let api = served.api.clone();
    let publish = publish_registration(data, &api);
    assert!(publish.status.success(), "{}", text(&publish));

    let full = fetch_and_ack(data, &api, dev_full);
    assert_failed_without_panic(&full, 1);
    assert!(
        text(&full).contains("1 message(s), every hub seal verified"),
        "{}",
        text(&full)
    );
    assert!(
        text(&full).contains("nothing acknowledged"),
        "{}",
        text(&full)
    );
    assert!(
        text(&full).contains("writing to standard output: No space left on device"),
        "{}",
        text(&full)
    );

    // `| head` that stopped reading: the status a shell gives SIGPIPE.
    let closed = fetch_and_ack(data, &api, closed_pipe);
    assert_failed_without_panic(&closed, 141);
    assert!(
        text(&closed).contains("nothing acknowledged"),
        "{}",
        text(&closed)
    );

    // Both attempts left the message in the inbox: it is still there.
    let fetched = fetch_and_ack(data, &api, Stdio::piped);
    assert!(fetched.status.success(), "{}", text(&fetched));
    assert!(
        text(&fetched).contains("1 message(s), every hub seal verified")
            && text(&fetched).contains("\"kind\": \"receipt\""),
        "{}",
        text(&fetched)
    );

    // Any command: no error to show when the reader went away.
    let listed = hub_into(data, &["services"], closed_pipe());
    assert_failed_without_panic(&listed, 141);
    assert_eq!(String::from_utf8_lossy(&listed.stderr), "");
    stop(served);
}

#[test]
fn a_hub_whose_standard_output_is_closed_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(HUB)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("serve")
        .env("HUB_API_LISTEN", "127.0.0.1:0")
        .env("HUB_PUBLIC_LISTEN", "127.0.0.1:0")
        .env("HUB_ADMIN_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(lines.send(l)))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while !seen.contains("hub listening") {
        let line = log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("hub serve never listened:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    // The banner is written (and fails) just after; the hub goes on.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "hub serve exited:\n{seen}"
    );
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = child.wait().unwrap();
    seen.extend(log.try_iter().map(|l| l + "\n"));
    assert!(status.success(), "hub serve exited with {status}:\n{seen}");
    assert!(seen.contains("listener stopped"), "{seen}");
    assert!(!seen.contains("panicked"), "{seen}");
}
