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
/// [`PgDatabase::drop_now`] (a test that panics leaves it behind for
/// `.ci/run` to sweep: every name starts with `hubtest_`).
pub struct PgDatabase {
    pub url: String,
    name: String,
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
        })
    }

    /// Drop the database (connections to it are ended).
    pub async fn drop_now(self) {
        if let Ok(mut conn) = PgConnection::connect(&postgres_url()).await {
            let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .execute(&mut conn)
            .await;
            let _ = conn.close().await;
        }
    }
}

/// A fresh namespace (exchange and queue prefix) on the RabbitMQ broker
/// for one test; [`AmqpNamespace::delete_now`] removes what the test made.
pub struct AmqpNamespace {
    pub url: String,
    pub prefix: String,
}

impl AmqpNamespace {
    /// `None` (skipped) if there is no broker and `CI` is not set.
    pub async fn create() -> Option<Self> {
        let url = amqp_url();
        match lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await {
            Ok(conn) => {
                let _ = conn.close(200, "probe".into()).await;
            }
            Err(e) => return unavailable("RabbitMQ", e),
        }
        Some(Self {
            url,
            prefix: format!("hubtest-{}", uuid::Uuid::now_v7().simple()),
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

    /// Delete the exchanges and the queues of `providers` and of the hub
    /// `instances` under this prefix.
    pub async fn delete_now(self, providers: &[&str], instances: &[&str]) {
        let topology = hub_adapter_sdk::amqp::Topology::new(self.prefix.clone());
        let Ok(conn) =
            lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default()).await
        else {
            return;
        };
        if let Ok(ch) = conn.create_channel().await {
            let mut queues: Vec<String> = providers
                .iter()
                .map(|p| topology.provider_queue(&p.parse().unwrap()))
                .collect();
            queues.extend(instances.iter().map(|i| topology.reply_queue(i)));
            queues.push(topology.dead_letter_queue());
            for q in queues {
                let _ = ch
                    .queue_delete(q.into(), lapin::options::QueueDeleteOptions::default())
                    .await;
            }
            for x in [topology.exchange(), topology.dead_letter_exchange()] {
                let _ = ch
                    .exchange_delete(x.into(), lapin::options::ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
    }
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
