//! The processes a report runs - hubs, adapters, the direct endpoint,
//! nginx, `hub audit verify` - each with its output in a log file, stopped
//! (SIGTERM, then SIGKILL) when dropped, and its memory read from `/proc`;
//! and the CPU time spent by each process an exchange goes through.

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

/// CPU time so far, in clock ticks, of the processes an exchange goes
/// through on this machine, and of the machine idle: read before and after
/// a measurement, the difference says where its CPU went.
#[derive(Debug, Clone, Copy)]
pub struct CpuTicks {
    hub: u64,
    adapter: u64,
    /// Every `postgres` process (the server and its backends).
    postgres: u64,
    /// RabbitMQ's Erlang VM (`beam.smp`).
    rabbitmq: u64,
    /// This process: the load comes from it.
    load_generator: u64,
    /// Idle and waiting for I/O, summed over the machine's CPUs.
    idle: u64,
    at: Instant,
}

/// Where the machine's CPU went during one measurement: microseconds of
/// CPU per exchange by process, and how idle the machine was. PostgreSQL
/// and RabbitMQ count only when they run on this machine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerExchange {
    pub hub_us: f64,
    pub adapter_us: f64,
    pub postgres_us: f64,
    pub rabbitmq_us: f64,
    pub load_generator_us: f64,
    /// Idle, in % of all the machine's CPUs over the measurement.
    pub idle_percent: f64,
}

impl CpuTicks {
    pub fn now(hub: u32, adapter: u32) -> Self {
        let (mut postgres, mut rabbitmq) = (0, 0);
        for (pid, comm) in processes() {
            match comm.as_str() {
                "postgres" => postgres += ticks_of(&pid.to_string()),
                "beam.smp" => rabbitmq += ticks_of(&pid.to_string()),
                _ => {}
            }
        }
        let idle = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|stat| {
                let cpu = stat.lines().next()?.split_whitespace().collect::<Vec<_>>();
                // cpu user nice system idle iowait ...
                Some(cpu.get(4)?.parse::<u64>().ok()? + cpu.get(5)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        Self {
            hub: ticks_of(&hub.to_string()),
            adapter: ticks_of(&adapter.to_string()),
            postgres,
            rabbitmq,
            load_generator: ticks_of("self"),
            idle,
            at: Instant::now(),
        }
    }

    /// The CPU per exchange from `self` to `later`, over `exchanges`.
    pub fn per_exchange(&self, later: &Self, exchanges: u64) -> CpuPerExchange {
        let tick_us = 1e6 / clock_ticks_per_second();
        let n = exchanges.max(1) as f64;
        let us = |a: u64, b: u64| b.saturating_sub(a) as f64 * tick_us / n;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let elapsed_us = later.at.duration_since(self.at).as_secs_f64() * 1e6;
        CpuPerExchange {
            hub_us: us(self.hub, later.hub),
            adapter_us: us(self.adapter, later.adapter),
            postgres_us: us(self.postgres, later.postgres),
            rabbitmq_us: us(self.rabbitmq, later.rabbitmq),
            load_generator_us: us(self.load_generator, later.load_generator),
            idle_percent: (later.idle.saturating_sub(self.idle) as f64 * tick_us
                / (elapsed_us * cpus)
                * 100.0)
                .min(100.0),
        }
    }
}

/// Every process's id and command name.
fn processes() -> Vec<(u32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        Some((pid, comm.trim().to_owned()))
    })
    .collect()
}

/// User and system CPU time of a process (`self` or a pid), in clock ticks.
fn ticks_of(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name, in parentheses, may hold spaces: count fields from
    // after it. utime and stime are the 14th and 15th fields.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// The kernel's clock ticks per second for `/proc` times (`USER_HZ`).
fn clock_ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
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
