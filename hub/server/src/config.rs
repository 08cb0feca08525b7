//! Layered configuration: built-in defaults, then an optional TOML file,
//! then `HUB_*` environment variables (`HUB_API_LISTEN=0.0.0.0:8443`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything the hub reads at start-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Where the database, the dev PKI and keys live.
    pub data_dir: PathBuf,
    /// The mTLS API (client certificate required).
    pub api_listen: SocketAddr,
    /// Health, JWKS and schema catalog over TLS without a client certificate.
    pub public_listen: SocketAddr,
    /// Registry administration, for administrators' certificates (the
    /// admin CA) only; every change is logged.
    pub admin_listen: SocketAddr,
    /// `sqlite:<path>` or `postgres://user@host/db`; empty means
    /// `sqlite:<data_dir>/hub.db`.
    pub database_url: String,
    /// Most connections the hub opens to PostgreSQL.
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before 503.
    pub database_acquire_timeout_ms: u64,
    /// `amqp://user:password@host:5672/vhost`: providers are adapter
    /// processes reached through RabbitMQ. Empty: in-process adapters fed
    /// from the embedded queue.
    pub amqp_url: String,
    /// Prefix of every exchange and queue the hub declares.
    pub amqp_prefix: String,
    /// This hub process's name among several: names its reply queue, so it
    /// must be stable across restarts and unique among running hubs.
    pub instance: String,
    /// Publishes awaiting their broker confirm at once.
    pub amqp_confirm_window: usize,
    /// Largest request body accepted, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// How long a query waits for its provider before 504.
    pub query_timeout_ms: u64,
    /// Most queries a hub waits on per provider at once (more: 503).
    pub provider_queue_max: usize,
    /// A client silent this long while the hub waits for a request's
    /// headers is disconnected (HTTP/2: an unanswered ping this long).
    pub idle_timeout_ms: u64,
    /// How long a request body may take to arrive (longer: 408).
    pub body_timeout_ms: u64,
    /// Requests per second each agency may send, sustained (over: 429).
    pub agency_rate_per_second: f64,
    /// Requests an agency may send at once after a quiet spell.
    pub agency_burst: u32,
    /// Requests of one agency being handled at the same time (over: 429).
    pub agency_max_in_flight: u32,
    /// How long a fetched inbox message stays invisible before it comes back.
    pub inbox_visibility_secs: u64,
    /// Most messages a recipient's inbox holds; an event to a subscriber
    /// whose inbox is full gets 503 before anything is logged.
    pub inbox_max: u64,
    /// Most entries written in one group commit.
    pub log_batch_max: usize,
    /// The log's origin line in checkpoints (and the checkpoint key's name).
    pub log_origin: String,
    /// How often a new checkpoint is signed when the log has grown.
    pub checkpoint_interval_ms: u64,
    /// Bodies and cached replies older than this many days are purged (0: kept).
    pub body_retention_days: u32,
    /// Seed demo agencies, services, grants and subscriptions on first run.
    pub seed_demo: bool,
    /// Generated records per synthetic registry, besides the fixtures.
    pub synthetic_records: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("hub-data"),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            public_listen: SocketAddr::from(([127, 0, 0, 1], 8444)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8445)),
            database_url: String::new(),
            database_max_connections: 16,
            database_acquire_timeout_ms: 2000,
            amqp_url: String::new(),
            amqp_prefix: "hub".into(),
            instance: "hub-1".into(),
            amqp_confirm_window: 512,
            max_body_bytes: 1024 * 1024,
            query_timeout_ms: 10_000,
            provider_queue_max: 10_000,
            idle_timeout_ms: 60_000,
            body_timeout_ms: 30_000,
            // Generous: a cap against runaway clients, not a tariff; the
            // benchmark's single agency must not hit it.
            agency_rate_per_second: 20_000.0,
            agency_burst: 40_000,
            agency_max_in_flight: 1024,
            inbox_visibility_secs: 30,
            inbox_max: 1_000_000,
            log_batch_max: 512,
            log_origin: "hub.invalid/exchange-log".into(),
            checkpoint_interval_ms: 1000,
            body_retention_days: 0,
            seed_demo: true,
            synthetic_records: 1000,
        }
    }
}

impl Config {
    /// Defaults, then `file` if given, then `HUB_*` variables. A setting
    /// the file names that does not exist stops the load: a misspelt one
    /// would otherwise leave its default in force unnoticed. `HUB_*`
    /// variables that name no setting are ignored (other tools read some).
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            refuse_unknown_settings(file)?;
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::prefixed("HUB_"))
            .extract()
            .map_err(Box::new)
    }

    /// The database pool's settings.
    pub fn pool_settings(&self) -> crate::store::PoolSettings {
        crate::store::PoolSettings {
            max_connections: self.database_max_connections,
            acquire_timeout: std::time::Duration::from_millis(self.database_acquire_timeout_ms),
        }
    }

    /// The listeners' connection timeouts.
    pub fn timeouts(&self) -> crate::serve::Timeouts {
        crate::serve::Timeouts {
            idle: std::time::Duration::from_millis(self.idle_timeout_ms),
        }
    }

    /// What each agency may send.
    pub fn agency_quota(&self) -> hub_core::limits::Quota {
        hub_core::limits::Quota {
            per_second: self.agency_rate_per_second,
            burst: self.agency_burst,
            in_flight: self.agency_max_in_flight,
        }
    }

    /// The database URL, defaulted from the data directory.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite:{}", self.data_dir.join("hub.db").display())
        } else {
            self.database_url.clone()
        }
    }
}

/// Fails, naming them, if `file` holds settings that do not exist.
fn refuse_unknown_settings(file: &Path) -> Result<(), Box<figment::Error>> {
    let named: BTreeMap<String, figment::value::Value> = Figment::from(Toml::file_exact(file))
        .extract()
        .map_err(Box::new)?;
    let known = serde_json::to_value(Config::default())
        .map_err(|e| Box::new(figment::Error::from(e.to_string())))?;
    let unknown: Vec<&str> = named
        .keys()
        .map(String::as_str)
        .filter(|k| known.get(k).is_none())
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(Box::new(figment::Error::from(format!(
        "{}: no such setting: {} (docs/configuration.md lists them)",
        file.display(),
        unknown.join(", ")
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)]
    fn file_then_environment_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hub.toml", "max_body_bytes = 2048\nlog_batch_max = 7")?;
            jail.set_env("HUB_LOG_BATCH_MAX", "9");
            let c = Config::load(Some(Path::new("hub.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.max_body_bytes, 2048);
            assert_eq!(c.log_batch_max, 9);
            assert_eq!(c.query_timeout_ms, 10_000);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_files_docs_configuration_shows_load() {
        let doc = include_str!("../../../docs/configuration.md");
        let files: Vec<&str> = doc
            .split("```toml\n")
            .skip(1)
            .filter_map(|block| block.split("```").next())
            .collect();
        assert_eq!(files.len(), 2, "the examples of docs/configuration.md");
        figment::Jail::expect_with(|jail| {
            for file in &files {
                jail.create_file("hub.toml", file)?;
                Config::load(Some(Path::new("hub.toml"))).map_err(|e| format!("{file}: {e}"))?;
            }
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_setting_the_file_misspells_stops_the_load_and_is_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "hub.toml",
                "databse_url = \"postgres://db/hub\"\nlog_batch_max = 7",
            )?;
            // Other tools' variables share the prefix: not refused.
            jail.set_env("HUB_JWKS_FILE", "keys.json");
            let refused = Config::load(Some(Path::new("hub.toml")))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                refused.contains("hub.toml: no such setting: databse_url"),
                "{refused}"
            );
            jail.create_file("hub.toml", "database_url = \"postgres://db/hub\"")?;
            let c = Config::load(Some(Path::new("hub.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.database_url, "postgres://db/hub");
            Ok(())
        });
    }
}
