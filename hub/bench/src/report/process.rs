//! The processes a report runs - hubs, adapters, the direct endpoint,
//! nginx, `hub audit verify` - each with its output in a log file, stopped
//! (SIGTERM, then SIGKILL) when dropped, and its memory read from `/proc`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

/// A child process the report started.
pub struct Process {
    pub name: String,
    child: Child,
    log: PathBuf,
}

/// Resident memory of a process, in kB, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    /// Resident now (`VmRSS`).
    pub rss_kb: u64,
    /// The most it has been resident (`VmHWM`).
    pub peak_kb: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        };
        Some(Self {
            rss_kb: field("VmRSS:")?,
            peak_kb: field("VmHWM:")?,
        })
    }
}

impl Process {
    /// Start `command` with stdout and stderr going to `<logs>/<name>.log`,
    /// and wait (up to `within`) for a stdout line containing `ready`;
    /// returns the process and that line.
    pub fn start(
        name: &str,
        mut command: Command,
        logs: &Path,
        ready: &str,
        within: Duration,
    ) -> anyhow::Result<(Self, String)> {
        std::fs::create_dir_all(logs)?;
        let log = logs.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(file.try_clone()?)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        let wanted = ready.to_owned();
        // Copies every line to the log, handing the first `ready` line over.
        std::thread::spawn(move || {
            let mut file = file;
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if line.contains(&wanted)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(line);
                }
            }
        });
        let mut process = Self {
            name: name.to_owned(),
            child,
            log,
        };
        let deadline = Instant::now() + within;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => return Ok((process, line)),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Some(status) = process.child.try_wait()? {
                        bail!("{name} exited ({status}); see {}", process.log.display());
                    }
                }
                Err(_) => bail!(
                    "{name} did not say {ready:?} within {within:?}; see {}",
                    process.log.display()
                ),
            }
        }
    }

    /// Start `command` with its output going to `<logs>/<name>.log`.
    pub fn start_detached(name: &str, mut command: Command, logs: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(logs)?;
        let log = logs.join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = command
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// Start `command` and wait until `addr` accepts TCP connections.
    pub fn start_listening(
        name: &str,
        command: Command,
        logs: &Path,
        addr: std::net::SocketAddr,
        within: Duration,
    ) -> anyhow::Result<Self> {
        let mut process = Self::start_detached(name, command, logs)?;
        let deadline = Instant::now() + within;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = process.child.try_wait()? {
                bail!("{name} exited ({status}); see {}", process.log.display());
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} is not listening on {addr}; see {}",
                    process.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(process)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> Option<Memory> {
        Memory::of(self.pid())
    }

    /// Wait for the process to end by itself, sampling its peak memory
    /// (the last sample before it exits) every 50 ms.
    pub fn wait_sampling(mut self) -> anyhow::Result<(ExitStatus, Memory)> {
        let mut memory = Memory::default();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, memory));
            }
            if let Some(m) = self.memory() {
                memory = m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// SIGTERM, then SIGKILL if it has not stopped within ten seconds.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A loopback address no one listens on now (the port is released for the
/// caller to bind).
pub fn free_local_addr() -> anyhow::Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}
