//! The external services some tests need - PostgreSQL and RabbitMQ - and
//! what a test does when one is missing: on a developer's machine it says
//! plainly that it was skipped; with `CI=true` it fails.
//!
//! Addresses come from the environment, with the local defaults:
//! `HUB_TEST_POSTGRES_URL` (`postgres://postgres@127.0.0.1:5432/postgres`,
//! an account that may create databases) and `HUB_TEST_AMQP_URL`
//! (`amqp://guest:guest@127.0.0.1:5672/%2f`).

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// Whether a missing service fails the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The PostgreSQL server's administrative URL.
pub fn postgres_url() -> String {
    std::env::var("HUB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The RabbitMQ broker's URL.
pub fn amqp_url() -> String {
    std::env::var("HUB_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Report a missing service: a panic under `CI=true`, otherwise a line on
/// stderr (shown by `cargo test`) and `None`.
pub fn unavailable<T>(service: &str, why: impl std::fmt::Display) -> Option<T> {
    if required() {
        panic!("{service} is unreachable and CI=true requires it: {why}");
    }
    eprintln!("SKIPPED: {service} is unreachable ({why}); set CI=true to make this a failure");
    None
}

/// A fresh, empty PostgreSQL database for one test; dropped by
/// [`PgDatabase::drop_now`], or when the value is dropped without it (a
/// test that panics), so that a failing test leaves nothing behind.
pub struct PgDatabase {
    pub url: String,
    name: String,
    dropped: bool,
}

impl PgDatabase {
    /// Create a database with a unique name, or `None` (skipped) if there
    /// is no PostgreSQL and `CI` is not set.
    pub async fn create() -> Option<Self> {
        let admin = postgres_url();
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) => return unavailable("PostgreSQL", e),
        };
        let name = format!("hubtest_{}", uuid::Uuid::now_v7().simple());
        // The name is ours: a fixed prefix and a UUID.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Some(Self {
            url: format!("{base}/{name}"),
            name,
            dropped: false,
        })
    }

    /// Drop the database (connections to it are ended).
    pub async fn drop_now(mut self) {
        drop_database(self.name.clone()).await;
        self.dropped = true;
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if !self.dropped {
            let name = self.name.clone();
            on_a_runtime_of_its_own(async move { drop_database(name).await });
        }
    }
}

async fn drop_database(name: String) {
    if let Ok(mut conn) = PgConnection::connect(&postgres_url()).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

/// Run `work` to the end from a `Drop`: on a thread and a runtime of its
/// own, since a test's runtime may be unwinding a panic or may be a
/// current-thread runtime that this very drop is blocking.
fn on_a_runtime_of_its_own(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(work);
        }
    })
    .join();
}

/// A fresh namespace (exchange and queue prefix) on the RabbitMQ broker
/// for one test. [`AmqpNamespace::delete_now`] removes what the test made
/// (its exchanges, the dead-letter queue and the queues of the providers
/// and hub instances named at creation), as does dropping it without that
/// (a test that panics): quorum queues left behind keep their data on disk.
pub struct AmqpNamespace {
    pub url: String,
    pub prefix: String,
    queues: Vec<String>,
    exchanges: Vec<String>,
    deleted: bool,
}

impl AmqpNamespace {
    /// A namespace whose queues will be those of `providers` and of the hub
    /// `instances`; `None` (skipped) if there is no broker and `CI` is not set.
    pub async fn create(providers: &[&str], instances: &[&str]) -> Option<Self> {
        let url = amqp_url();
        match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
            Ok(conn) => {
                let _ = conn.close(200, "probe".into()).await;
            }
            Err(e) => return unavailable("RabbitMQ", e),
        }
        let prefix = format!("hubtest-{}", uuid::Uuid::now_v7().simple());
        let topology = hub_adapter_sdk::amqp::Topology::new(prefix.clone());
        let mut queues: Vec<String> = providers
            .iter()
            .map(|p| topology.provider_queue(&p.parse().expect("a provider's member id")))
            .collect();
        queues.extend(instances.iter().map(|i| topology.reply_queue(i)));
        queues.push(topology.dead_letter_queue());
        Some(Self {
            url,
            exchanges: vec![topology.exchange(), topology.dead_letter_exchange()],
            prefix,
            queues,
            deleted: false,
        })
    }

    /// A confirming channel of a broker client that is not the hub, with
    /// the common topology declared.
    pub async fn client_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let topology = hub_adapter_sdk::amqp::Topology::new(self.prefix.clone());
        let conn = lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        topology.declare_common(&ch).await.unwrap();
        (conn, ch)
    }

    /// Delete the namespace's queues and exchanges.
    pub async fn delete_now(mut self) {
        delete_namespace(
            self.url.clone(),
            std::mem::take(&mut self.queues),
            std::mem::take(&mut self.exchanges),
        )
        .await;
        self.deleted = true;
    }
}

impl Drop for AmqpNamespace {
    fn drop(&mut self) {
        if !self.deleted {
            let work = delete_namespace(
                self.url.clone(),
                std::mem::take(&mut self.queues),
                std::mem::take(&mut self.exchanges),
            );
            on_a_runtime_of_its_own(work);
        }
    }
}

async fn delete_namespace(url: String, queues: Vec<String>, exchanges: Vec<String>) {
    let Ok(conn) = lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await
    else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in queues {
            let _ = ch
                .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                .await;
        }
        for x in exchanges {
            let _ = ch
                .exchange_delete(x.into(), lapin::options::ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Publish `body` (mandatory) on a confirming channel until the broker
/// takes it, as every publisher of the hub's does: RabbitMQ may refuse
/// (nack) a publish to a quorum queue that another connection is declaring
/// at that moment.
pub async fn publish_taken(
    ch: &lapin::Channel,
    (exchange, routing_key): (&str, &str),
    body: &[u8],
    properties: lapin::BasicProperties,
) {
    let publish = || async {
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                lapin::options::BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.clone(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let acked = confirm.is_ack();
        let returned = confirm.take_message().map(|m| (m.reply_code, m.reply_text));
        assert_eq!(returned, None, "unroutable");
        acked.then_some(())
    };
    let taken = crate::eventually(publish).await;
    assert!(taken.is_some(), "the broker kept refusing the message");
}

/// A Python interpreter for the examples in `docs/examples/`: the first
/// of `python3` on PATH and Debian's `/usr/bin/python3` that imports every
/// one of `modules` (`.ci/python` installs Debian's packages of them).
/// Missing, it is reported as a missing service ([`unavailable`]).
pub fn python_with(modules: &[&str]) -> Option<&'static str> {
    let import = format!("import {}", modules.join(", "));
    let mut why = Vec::new();
    for python in ["python3", "/usr/bin/python3"] {
        match std::process::Command::new(python)
            .args(["-c", &import])
            .output()
        {
            Ok(out) if out.status.success() => return Some(python),
            Ok(out) => why.push(format!(
                "{python}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => why.push(format!("{python}: {e}")),
        }
    }
    unavailable(
        &format!("python3 with {}", modules.join(" and ")),
        why.join("; "),
    )
}

/// Point a test hub's configuration at `db` and the broker namespace
/// `ns`, as hub instance `instance`.
pub fn run_on(
    config: &mut hub_server::config::Config,
    db: &PgDatabase,
    ns: &AmqpNamespace,
    instance: &str,
) {
    config.database_url = db.url.clone();
    config.amqp_url = ns.url.clone();
    config.amqp_prefix = ns.prefix.clone();
    config.instance = instance.to_owned();
}

/// A RabbitMQ user of its own for one test, on the vhost of
/// [`amqp_url`]; deleted when dropped. Made with `rabbitmqctl`,
/// so the broker must run on this machine (AMQP cannot make users);
/// without it, reported as a missing service ([`unavailable`]).
pub struct BrokerUser {
    pub name: String,
    /// [`amqp_url`] logged in as this user.
    pub url: String,
}

impl BrokerUser {
    /// The user `name`, made by other means, logging in with `password`:
    /// deleted when dropped.
    pub fn made(name: String, password: &str) -> Self {
        Self {
            url: user_url(&name, password),
            name,
        }
    }

    /// A user allowed everything on the vhost.
    pub fn create() -> Option<Self> {
        Self::create_with([".*", ".*", ".*"].map(String::from))
    }

    /// A user with RabbitMQ's `configure`, `write` and `read` patterns.
    pub fn create_with(permissions: [String; 3]) -> Option<Self> {
        let name = format!("hubtest-{}", uuid::Uuid::now_v7().simple());
        let password = uuid::Uuid::now_v7().simple().to_string();
        let base = amqp_url();
        let uri: lapin::uri::AMQPUri = match base.parse() {
            Ok(uri) => uri,
            Err(e) => panic!("HUB_TEST_AMQP_URL: {e}"),
        };
        let made = rabbitmqctl(&["add_user", &name, &password]).and_then(|()| {
            let [configure, write, read] = &permissions;
            rabbitmqctl(&[
                "set_permissions",
                "-p",
                &uri.vhost,
                &name,
                configure,
                write,
                read,
            ])
        });
        let user = Self::made(name, &password);
        match made {
            Ok(()) => Some(user),
            Err(why) => unavailable("rabbitmqctl (to make a broker user)", why),
        }
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["delete_user", &self.name]);
    }
}

/// [`amqp_url`] logged in as `name`.
fn user_url(name: &str, password: &str) -> String {
    let base = amqp_url();
    let rest = base.split_once('@').map_or("", |(_, rest)| rest);
    format!("amqp://{name}:{password}@{rest}")
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
