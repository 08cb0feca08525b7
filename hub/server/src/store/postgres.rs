//! The PostgreSQL backend, for production and for several hubs sharing one
//! database. A group commit is one transaction of a few array-bound
//! statements (`UNNEST`), not one insert per row; leasing from the queue
//! uses `FOR UPDATE SKIP LOCKED` so that hubs never hand out one message
//! twice at the same time.

use std::str::FromStr;

use async_trait::async_trait;
use hub_core::hash::Hash;
use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_core::jws::Jwk;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions};
use sqlx::{Arguments as _, PgPool, Row};

use super::rows;
use super::{
    AgencyRecord, AppendItem, Batch, Claims, CosignedCheckpoint, Delivery, ExchangeRow, Facts,
    Grant, InboxPosition, Leadership, OutboxRow, PoolSettings, RegistryChange, Role, SealAfter,
    ServiceRecord, Store, StoreError, StoredCheckpoint, StoredEntry, Subscription, Tail,
    Withdrawal, json_text, page_of_exchanges,
};
use super::{
    Backlog, BodyChunk, Effect, INBOX_BY_RECIPIENT, OUTBOX_BY_INSTANCE, PURGE_CHUNK, Presumed,
    Presumption, WITHDRAWALS_BY_RECIPIENT, corrupt, counts, expired_in, registry_changes, to_i64,
    to_u64,
};

/// The PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(ref d)
            // Connection-level SQLSTATEs: admin shutdown, cannot connect now.
            if d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// The transaction-level advisory lock every hub's log writer takes for a
/// group commit ("hub-log!").
pub const LOG_WRITER_LOCK: i64 = 0x6875_622d_6c6f_6721;

/// Whether a presumed append failed because another writer's entries took
/// its indexes (committed after its snapshot, while it waited for the
/// writers' lock): then the log has moved, nothing is written.
fn moved(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505")
        && matches!(d.constraint(), Some("log_entries_pkey" | "log_bodies_pkey")))
        || taken(e)
}

/// Whether a batch's statement found something it claims taken: an
/// exchange it answers no longer pending, or a message it acknowledges no
/// longer queued ([`PgStore::insert_rows`] divides by zero then, so that
/// the whole statement is undone).
fn taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("22012"))
}

/// A role held by a session-level advisory lock on its own connection.
struct Session(sqlx::PgConnection);

#[async_trait]
impl Leadership for Session {
    async fn still_leading(&mut self) -> bool {
        use sqlx::Connection;
        self.0.ping().await.is_ok()
    }
}

impl PgStore {
    /// The checkpoint of tree size `size`, or the latest.
    async fn checkpoint_at(
        &self,
        size: Option<u64>,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        sqlx::query(
            "SELECT size, root, note FROM checkpoints
             WHERE size = COALESCE($1, (SELECT max(size) FROM checkpoints))",
        )
        .bind(size.map(to_i64))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(rows::checkpoint)
        .transpose()
    }

    /// The purge's chunk of bodies from index `from` ([`expired_in`]):
    /// each one's index and whether its entry was written before `before`.
    async fn body_chunk(&self, before: &str, from: i64) -> Result<BodyChunk, StoreError> {
        // ARRAY(): the chunk in the primary key's order, whatever the
        // generic plan guesses of `idx >= $2`.
        let rows: BodyChunk = sqlx::query_as(
            "SELECT b.idx, (e.record::json ->> 'time') < $1
             FROM log_bodies b JOIN log_entries e ON e.idx = b.idx
             WHERE b.idx = ANY(ARRAY(SELECT idx FROM log_bodies WHERE idx >= $2
                                     ORDER BY idx LIMIT $3))
             ORDER BY b.idx",
        )
        .bind(before)
        .bind(from)
        .bind(i64::from(PURGE_CHUNK))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows)
    }

    /// Delete the `expired` bodies whose exchange has no message queued.
    async fn delete_bodies(&self, expired: Vec<i64>) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM log_bodies b USING log_entries e
             WHERE b.idx = ANY($1) AND e.idx = b.idx
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.exchange_id = e.exchange_id)",
        )
        .bind(expired)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    /// Insert a batch's rows - entries, bodies, opened exchanges, queued
    /// and outbox messages - and close the exchanges it answers (none
    /// opened in the batch: see [`Batch::of`]), in one statement, if the
    /// log still ends where `at` presumes and none of the exchanges
    /// `unopened` exists; returns whether it did (if not, nothing is
    /// written). The statement takes the writers' lock itself, so that one
    /// round trip can be a whole group commit; its check reads the snapshot
    /// taken before the lock, and an entry committed by another writer
    /// while it waited shows instead as a unique violation on the entries'
    /// index (see [`moved`]). With `claims`, every exchange it answers
    /// must be pending and every message it acknowledges queued: the
    /// statement counts what its update and delete found, and fails if that
    /// falls short (see [`taken`]), undoing all of it - cheaper than looking
    /// them up first.
    async fn insert_rows(
        conn: &mut sqlx::PgConnection,
        b: &Batch,
        at: Presumed,
        unopened: &[String],
        claims: bool,
    ) -> Result<bool, sqlx::Error> {
        // Every insert in one statement, one round trip: under load each
        // round trip waits for both processes to be scheduled, and a group
        // commit's time is mostly round trips. No two of these touch the
        // same row (they would not see each other's changes): a message a
        // batch both queues and removes is never inserted (`Batch::of`);
        // the deletes of `apply_changes` may, so they stay apart. Prepared
        // once per connection, on one generic plan (see `open`).
        let mut arguments = PgArguments::default();
        arguments.reserve(34, b.size_hint());
        let holds: bool = sqlx::query_scalar_with(
            "WITH presumed AS (
                SELECT (SELECT COALESCE(max(idx) + 1, 0) FROM log_entries) = $24
                   AND (SELECT version FROM registry_version FOR SHARE) = $25
                   AND NOT EXISTS (SELECT 1 FROM exchanges WHERE exchange_id = ANY($27::text[]))
                   AS holds
                FROM (SELECT pg_advisory_xact_lock($26)) AS writers),
             entries AS (
                INSERT INTO log_entries (idx, exchange_id, kind, record, leaf_hash, subjects)
                SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
                WHERE (SELECT holds FROM presumed)),
             bodies AS (
                INSERT INTO log_bodies (idx, key_id, nonce, ciphertext)
                SELECT * FROM UNNEST($1::bigint[], $7::text[], $8::bytea[], $9::bytea[])
                WHERE (SELECT holds FROM presumed)),
             opened AS (
                INSERT INTO exchanges (exchange_id, sender, request_hash, state, reply_idx, created_at)
                SELECT * FROM UNNEST($10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[], $15::bigint[])
                WHERE (SELECT holds FROM presumed)
                ON CONFLICT (exchange_id) DO NOTHING),
             queued AS (
                INSERT INTO deliveries (recipient, exchange_id, message, visible_at)
                SELECT * FROM UNNEST($16::text[], $17::text[], $18::bytea[], $19::bigint[])
                WHERE (SELECT holds FROM presumed)
                ON CONFLICT DO NOTHING),
             dispatched AS (
                INSERT INTO outbox (instance, recipient, exchange_id, message)
                SELECT * FROM UNNEST($20::text[], $21::text[], $22::text[], $23::bytea[])
                WHERE (SELECT holds FROM presumed)
                ON CONFLICT DO NOTHING),
             closed AS (
                UPDATE exchanges SET state = 'done',
                    reply_idx = ($29::bigint[])[array_position($28::text[], exchange_id)]
                WHERE exchange_id = ANY($28::text[]) AND state = 'pending'
                  AND (SELECT holds FROM presumed)
                RETURNING 1),
             dequeued AS (
                DELETE FROM deliveries d USING UNNEST($30::text[], $31::text[]) AS u(recipient, id)
                WHERE d.recipient = u.recipient AND d.exchange_id = u.id
                  AND (SELECT holds FROM presumed)
                RETURNING d.recipient, d.exchange_id)
             SELECT CASE WHEN $34 AND holds AND (
                    (SELECT count(*) FROM closed) <> cardinality($28::text[])
                    OR (SELECT count(*) FROM dequeued q
                        JOIN UNNEST($32::text[], $33::text[]) AS a(recipient, id)
                        ON q.recipient = a.recipient AND q.exchange_id = a.id)
                       <> cardinality($32::text[]))
                 THEN 1 / (random() * 0)::int = 0
                 ELSE holds END
             FROM presumed",
            arguments,
        )
        .bind(&b.idx)
        .bind(&b.exchange_id)
        .bind(&b.kind)
        .bind(&b.record)
        .bind(&b.leaf_hash)
        .bind(&b.subjects)
        .bind(&b.key_id)
        .bind(&b.nonce)
        .bind(&b.ciphertext)
        .bind(&b.open.id)
        .bind(&b.open.sender)
        .bind(&b.open.request_hash)
        .bind(&b.open.state)
        .bind(&b.open.reply_idx)
        .bind(&b.open.at)
        .bind(&b.enqueue.0)
        .bind(&b.enqueue.1)
        .bind(&b.enqueue.2)
        .bind(&b.enqueue.3)
        .bind(&b.dispatch.0)
        .bind(&b.dispatch.1)
        .bind(&b.dispatch.2)
        .bind(&b.dispatch.3)
        .bind(to_i64(at.size))
        .bind(to_i64(at.registry_version))
        .bind(LOG_WRITER_LOCK)
        .bind(unopened)
        .bind(&b.close.0)
        .bind(&b.close.1)
        .bind(&b.dequeue.0)
        .bind(&b.dequeue.1)
        .bind(&b.acknowledge.0)
        .bind(&b.acknowledge.1)
        .bind(claims)
        .fetch_one(conn)
        .await?;
        Ok(holds)
    }

    /// The rest of a batch's effects, in the open transaction after its
    /// rows: abandoned exchanges, registry changes.
    async fn apply_changes(
        tx: &mut sqlx::PgConnection,
        b: &Batch,
        items: &[AppendItem],
    ) -> Result<(), StoreError> {
        if !b.abandon.is_empty() {
            sqlx::query("DELETE FROM exchanges WHERE exchange_id = ANY($1) AND state = 'pending'")
                .bind(&b.abandon)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        for change in registry_changes(items) {
            change_query(change)?.execute(&mut *tx).await.map_err(db)?;
        }
        Ok(())
    }

    /// Connect and migrate.
    pub async fn open(url: &str, settings: PoolSettings) -> Result<Self, StoreError> {
        // No parallel workers and no JIT for any of the hub's statements:
        // they read and write a few rows each, and until a table is first
        // analysed the planner can take a range on it (the log writer's
        // `idx >= $1`) to match a third of the rows. As the log grew it
        // then chose two parallel workers for the writer's tail read, whose
        // start took 12-28 ms of every commit (measured with auto_explain;
        // the read itself took 0.2 ms); a larger misestimate would cross
        // `jit_above_cost` the same way. Sent with the connection's start-up
        // message: no round trip.
        //
        // Every statement is prepared once per connection and runs on one
        // generic plan: planning the group commit afresh took ~17 % of
        // PostgreSQL's time per query under load (docs/performance.md). A
        // generic plan is made at a statement's first run, perhaps on empty
        // tables, where reading a whole table costs least, and is kept as
        // the tables grow; with sequential scans priced out the planner
        // takes the indexes that stay right as they do (range and `= ANY`
        // lookups, nested loops over the batch's arrays) -
        // `postgres_commits_do_not_scan_the_log_as_it_grows` and
        // `postgres_a_lease_reads_what_it_hands_out_not_the_backlog` count
        // the rows read. A table with no fitting index is still scanned.
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", redact(url))))?
            .options([
                ("max_parallel_workers_per_gather", "0"),
                ("jit", "off"),
                ("enable_seqscan", "off"),
                ("plan_cache_mode", "force_generic_plan"),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            // No ping before each use: under load a round trip costs as
            // much as the statement. A connection that died shows as an
            // error on use, which callers already answer (503, retry).
            .test_before_acquire(false)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration: {e}")))?;
        Ok(Self { pool })
    }

    /// The pool, for what only PostgreSQL offers (advisory locks).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn vacuum_queues(&self) -> Result<bool, StoreError> {
        // SKIP_LOCKED: another hub on this database vacuuming them is as good.
        sqlx::raw_sql("VACUUM (SKIP_LOCKED) deliveries, outbox")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        // VACUUM records what it had to leave as the tables' dead rows.
        let left: i64 = sqlx::query_scalar(
            "SELECT COALESCE(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables
             WHERE relname IN ('deliveries', 'outbox') AND schemaname = current_schema()",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(left > 0)
    }

    async fn apply_changes(&self, changes: &[RegistryChange]) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut rows = 0;
        for change in changes {
            rows += change_query(change)?
                .execute(&mut *tx)
                .await
                .map_err(db)?
                .rows_affected();
        }
        tx.commit().await.map_err(db)?;
        Ok(rows)
    }

    async fn revoked_certificates(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT serial FROM revoked_certificates")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.try_get("serial").map_err(db))
            .collect()
    }

    async fn retired_agency_keys(&self) -> Result<Vec<(Member, Jwk)>, StoreError> {
        sqlx::query("SELECT * FROM retired_agency_keys ORDER BY agency, subsystem, kid")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(rows::retired_key)
            .collect()
    }

    async fn agency(&self, m: &Member) -> Result<Option<AgencyRecord>, StoreError> {
        sqlx::query("SELECT * FROM agencies WHERE agency = $1 AND subsystem = $2")
            .bind(m.agency.as_str())
            .bind(m.subsystem.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(rows::agency)
            .transpose()
    }

    async fn agencies(&self) -> Result<Vec<AgencyRecord>, StoreError> {
        sqlx::query("SELECT * FROM agencies ORDER BY agency, subsystem")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(rows::agency)
            .collect()
    }

    async fn upsert_service(&self, s: &ServiceRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO services (name, version, kind, provider_agency, provider_subsystem, request_schema, response_schema)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (name, version) DO UPDATE SET kind = excluded.kind,
               provider_agency = excluded.provider_agency, provider_subsystem = excluded.provider_subsystem,
               request_schema = excluded.request_schema, response_schema = excluded.response_schema",
        )
        .bind(s.name.as_str())
        .bind(i64::from(s.version))
        .bind(s.kind.as_str())
        .bind(s.provider.agency.as_str())
        .bind(s.provider.subsystem.as_str())
        .bind(&s.request_schema)
        .bind(&s.response_schema)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn service(
        &self,
        name: &ServiceName,
        version: u32,
    ) -> Result<Option<ServiceRecord>, StoreError> {
        sqlx::query("SELECT * FROM services WHERE name = $1 AND version = $2")
            .bind(name.as_str())
            .bind(i64::from(version))
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(rows::service)
            .transpose()
    }

    async fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        sqlx::query("SELECT * FROM services ORDER BY name, version")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(rows::service)
            .collect()
    }

    async fn facts(
        &self,
        who: &Member,
        service: &ServiceName,
        version: u32,
        purpose: &PurposeCode,
    ) -> Result<Facts, StoreError> {
        // One round trip for the three facts every request needs.
        let row = sqlx::query(
            "SELECT a.agency AS a_agency, a.name AS a_name, a.signing_jwk AS a_jwk, a.suspended AS a_suspended, a.broker_user AS a_broker_user,
                    s.name AS s_name, s.version AS s_version, s.kind AS s_kind,
                    s.provider_agency AS s_provider_agency, s.provider_subsystem AS s_provider_subsystem,
                    s.request_schema AS s_request_schema, s.response_schema AS s_response_schema,
                    g.purpose AS g_purpose, g.fields AS g_fields
             FROM (SELECT 1 AS one) o
             LEFT JOIN agencies a ON a.agency = $1 AND a.subsystem = $2
             LEFT JOIN services s ON s.name = $3 AND s.version = $4
             LEFT JOIN grants g ON g.consumer_agency = $1 AND g.consumer_subsystem = $2
                               AND g.service = $3 AND g.purpose = $5",
        )
        .bind(who.agency.as_str())
        .bind(who.subsystem.as_str())
        .bind(service.as_str())
        .bind(i64::from(version))
        .bind(purpose.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        rows::facts(&row, who, service, version)
    }

    async fn grants(&self) -> Result<Vec<Grant>, StoreError> {
        sqlx::query(
            "SELECT * FROM grants ORDER BY consumer_agency, consumer_subsystem, service, purpose",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::grant)
        .collect()
    }

    async fn subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        sqlx::query("SELECT * FROM subscriptions ORDER BY service, version, agency, subsystem")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(rows::subscription)
            .collect()
    }

    async fn subscribers(
        &self,
        service: &ServiceName,
        version: u32,
    ) -> Result<Vec<Member>, StoreError> {
        sqlx::query(
            "SELECT agency, subsystem FROM subscriptions s WHERE service = $1 AND version = $2
                 AND EXISTS (SELECT 1 FROM grants g WHERE g.consumer_agency = s.agency
                     AND g.consumer_subsystem = s.subsystem AND g.service = s.service)
                 ORDER BY agency, subsystem",
        )
        .bind(service.as_str())
        .bind(i64::from(version))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| rows::member_in(r, "agency", "subsystem"))
        .collect()
    }

    async fn registry_version(&self) -> Result<u64, StoreError> {
        let version: i64 = sqlx::query_scalar("SELECT version FROM registry_version")
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(to_u64(version))
    }

    async fn append_at_tail(
        &self,
        known: u64,
        claims: &Claims,
        seal: SealAfter<'_>,
    ) -> Result<Tail, StoreError> {
        // Writers of every hub queue here; the lock ends with the
        // transaction, and is taken in the same round trip as it begins.
        let mut tx = self
            .pool
            .begin_with(sqlx::AssertSqlSafe(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({LOG_WRITER_LOCK})"
            )))
            .await
            .map_err(db)?;
        // The tail, the registry version, the exchanges `claims` opens
        // that exist already, the messages it acknowledges that are still
        // queued and the exchanges it answers that are still pending: one
        // round trip.
        let opening: Vec<String> = claims.opening.iter().map(ToString::to_string).collect();
        let answering: Vec<String> = claims.answering.iter().map(ToString::to_string).collect();
        let (to, of): (Vec<String>, Vec<String>) = claims
            .acknowledging
            .iter()
            .map(|(to, of)| (to.to_string(), of.to_string()))
            .unzip();
        let rows = sqlx::query(
            "SELECT idx, leaf_hash, NULL::bigint AS version, NULL::text AS opened,
                    NULL::text AS queued_to, NULL::text AS queued_id, NULL::text AS pending
                 FROM log_entries WHERE idx >= $1
             UNION ALL SELECT NULL, NULL, version, NULL, NULL, NULL, NULL FROM registry_version
             UNION ALL SELECT NULL, NULL, NULL, exchange_id, NULL, NULL, NULL FROM exchanges
                 WHERE exchange_id = ANY($2)
             UNION ALL SELECT NULL, NULL, NULL, NULL, d.recipient, d.exchange_id, NULL
                 FROM deliveries d JOIN UNNEST($3::text[], $4::text[]) AS u(recipient, id)
                 ON d.recipient = u.recipient AND d.exchange_id = u.id
             UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, exchange_id FROM exchanges
                 WHERE exchange_id = ANY($5) AND state = 'pending'
             ORDER BY idx NULLS LAST",
        )
        .bind(to_i64(known))
        .bind(&opening)
        .bind(&to)
        .bind(&of)
        .bind(&answering)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let (adopted, written, at) = super::seal_at_tail(known, &rows, claims, db, seal)?;
        if !written.is_empty() {
            let b = Batch::of(&written)?;
            // Under the lock, the tail just read is still the tail; which
            // exchanges were open or settled and which messages gone,
            // `seal` was told.
            if !Self::insert_rows(&mut tx, &b, at, &[], false)
                .await
                .map_err(db)?
            {
                return Err(corrupt("the log's tail moved under the writers' lock"));
            }
            Self::apply_changes(&mut tx, &b, &written).await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(Tail { adopted, written })
    }

    async fn append_presumed(
        &self,
        at: Presumed,
        items: Vec<AppendItem>,
    ) -> Result<Presumption, StoreError> {
        // Rows to insert and exchanges to close: one statement, in its
        // own transaction, is the whole commit. The rarer abandoned
        // exchanges and registry changes take the transaction.
        let needs_transaction = items
            .iter()
            .flat_map(|i| &i.effects)
            .any(|e| matches!(e, Effect::AbandonExchange | Effect::Registry(_)));
        if needs_transaction || items.is_empty() {
            return super::append_presumed_at_tail(self, at, items).await;
        }
        let b = Batch::of(&items)?;
        let mut conn = self.pool.acquire().await.map_err(db)?;
        match Self::insert_rows(&mut conn, &b, at, &b.open.id, true).await {
            Ok(true) => Ok(Presumption::Written(items)),
            Ok(false) => Ok(Presumption::Moved(items)),
            Err(e) if moved(&e) => Ok(Presumption::Moved(items)),
            Err(e) => Err(db(e)),
        }
    }

    async fn lead(&self, role: Role) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        // A session-level lock on a connection of its own: held while that
        // session lives, released by PostgreSQL if the process dies.
        let mut conn = self.pool.acquire().await.map_err(db)?.detach();
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(role.lock_key())
            .fetch_one(&mut conn)
            .await
            .map_err(db)?;
        if got {
            Ok(Some(Box::new(Session(conn))))
        } else {
            let _ = sqlx::Connection::close(conn).await;
            Ok(None)
        }
    }

    async fn entries(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, StoreError> {
        sqlx::query(
            // The range first, then its bodies, looked up by their indexes:
            // a join before the LIMIT can make the planner scan every body,
            // and a merge join after it read the bodies from the first.
            "WITH e AS (SELECT idx, record, leaf_hash FROM log_entries
                        WHERE idx >= $1 ORDER BY idx LIMIT $2)
             SELECT e.idx, e.record, e.leaf_hash, b.key_id, b.nonce, b.ciphertext
             FROM e LEFT JOIN log_bodies b ON b.idx = e.idx AND b.idx = ANY(ARRAY(SELECT idx FROM e))
             ORDER BY e.idx",
        )
        .bind(to_i64(from))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::entry)
        .collect()
    }

    async fn leaf_hashes(&self, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        let rows = sqlx::query(
            "SELECT idx, leaf_hash FROM log_entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        super::leaves(from, &rows, db)
    }

    async fn block_roots(&self, first: u64, limit: u64) -> Result<Vec<Hash>, StoreError> {
        let rows = sqlx::query(
            "SELECT block, root FROM log_blocks WHERE block >= $1 AND block < $2 ORDER BY block",
        )
        .bind(to_i64(first))
        .bind(to_i64(first.saturating_add(limit)))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        super::block_run(first, &rows, db)
    }

    async fn keep_block_roots(&self, first: u64, roots: &[Hash]) -> Result<(), StoreError> {
        for (n, chunk) in roots.chunks(super::BLOCK_ROOTS_PER_STATEMENT).enumerate() {
            let from = first + (n * super::BLOCK_ROOTS_PER_STATEMENT) as u64;
            let blocks: Vec<i64> = (from..).take(chunk.len()).map(to_i64).collect();
            let hashes: Vec<&[u8]> = chunk.iter().map(|h| &h[..]).collect();
            sqlx::query(
                "INSERT INTO log_blocks (block, root) SELECT * FROM UNNEST($1::bigint[], $2::bytea[]) ON CONFLICT (block) DO NOTHING",
            )
            .bind(blocks)
            .bind(hashes)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        }
        Ok(())
    }

    async fn request_of(&self, id: ExchangeId) -> Result<Option<String>, StoreError> {
        // The first by index, picked here: with `ORDER BY idx LIMIT 1` the
        // generic plan walked the primary key from the log's start and
        // filtered, a scan as long as the log is old.
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT idx, record FROM log_entries WHERE exchange_id = $1 AND kind = 'request'",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .into_iter()
            .min_by_key(|(idx, _)| *idx)
            .map(|(_, record)| record))
    }

    async fn index_subjects(&self, limit: u32) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // One indexer at a time; another hub's waits and then finds less to do.
        let from: i64 =
            sqlx::query_scalar("SELECT indexed_up_to FROM subject_index_state FOR UPDATE")
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        let to: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(idx) + 1, $1) FROM log_entries WHERE idx >= $1 AND idx < $1 + $2",
        )
        .bind(from)
        .bind(i64::from(limit))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if to > from {
            // No row of these entries is indexed yet (the range starts at
            // the mark this transaction holds locked and moves), so plain
            // inserts: `ON CONFLICT DO NOTHING` made each row ~40 % dearer.
            // DISTINCT keeps a subject listed twice in one entry from
            // stopping the index for good. `MIN(f.idx + 0)`: see
            // `subject_records`.
            sqlx::query(
                "INSERT INTO subjects (subject, exchange_first, idx)
                 SELECT DISTINCT j, (SELECT MIN(f.idx + 0) FROM log_entries f WHERE f.exchange_id = e.exchange_id), e.idx
                 FROM log_entries e, jsonb_array_elements_text(e.subjects::jsonb) j
                 WHERE e.idx >= $1 AND e.idx < $2 AND e.subjects IS NOT NULL",
            )
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            sqlx::query("UPDATE subject_index_state SET indexed_up_to = $1")
                .bind(to)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(to_u64(to - from))
    }

    async fn subject_records(
        &self,
        subject: &str,
        limit: u32,
        after: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), StoreError> {
        // One more exchange than asked for says whether there are more.
        // The index is read in the order the exchanges began, from
        // `after`, and only as far as the page goes; the unindexed tail
        // (bounded on both sides, which the planner takes for a short
        // range) adds its exchanges. Written for the generic plan (see
        // `open`), which cannot know the values: each later step hands
        // the next an array (`= ANY(ARRAY(...))`), looked up by index.
        // `MIN(f.idx + 0)`: over `idx` itself the plan walks the whole
        // log in key order for the first row of the exchange.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "WITH firsts AS (
                (SELECT DISTINCT s.exchange_first AS first FROM subjects s
                 WHERE s.subject = $1 AND s.exchange_first > $3
                 ORDER BY s.exchange_first LIMIT $2)
                UNION
                SELECT (SELECT MIN(f.idx + 0) FROM log_entries f WHERE f.exchange_id = t.exchange_id)
                FROM log_entries t, jsonb_array_elements_text(t.subjects::jsonb) j
                WHERE t.idx BETWEEN (SELECT indexed_up_to FROM subject_index_state)
                                AND (SELECT max(idx) FROM log_entries)
                  AND t.subjects IS NOT NULL AND j = $1),
             page AS (SELECT first FROM firsts WHERE first > $3 ORDER BY first LIMIT $2),
             touched AS (
                SELECT e.exchange_id, e.idx AS first FROM log_entries e
                WHERE e.idx = ANY(ARRAY(SELECT first FROM page)))
             SELECT e.record, t.first FROM log_entries e JOIN touched t ON t.exchange_id = e.exchange_id
             WHERE e.exchange_id = ANY(ARRAY(SELECT exchange_id FROM touched))
             ORDER BY e.idx",
        )
        .bind(subject)
        .bind(i64::from(limit.max(1)) + 1)
        .bind(after.map_or(-1, to_i64))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(page_of_exchanges(rows, limit.max(1)))
    }

    async fn indexes_of_exchange(&self, id: ExchangeId) -> Result<Vec<u64>, StoreError> {
        sqlx::query("SELECT idx FROM log_entries WHERE exchange_id = $1 ORDER BY idx")
            .bind(id.to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| Ok(to_u64(r.try_get("idx").map_err(db)?)))
            .collect()
    }

    async fn purge(&self, before: &str, before_millis: u64) -> Result<(u64, u64), StoreError> {
        let mut bodies = 0;
        let mut from = 0;
        while let Some((expired, next)) = expired_in(&self.body_chunk(before, from).await?) {
            bodies += self.delete_bodies(expired).await?;
            from = next;
        }
        // A reply stays while its exchange still has messages queued: an
        // event's reply is also its inbox messages.
        let replies = sqlx::query(
            "DELETE FROM exchanges WHERE state = 'done' AND created_at < $1
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.exchange_id = exchanges.exchange_id)",
        )
            .bind(to_i64(before_millis))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok((bodies, replies.rows_affected()))
    }

    async fn add_checkpoint(&self, c: &StoredCheckpoint) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO checkpoints (size, root, note) VALUES ($1, $2, $3)")
            .bind(to_i64(c.size))
            .bind(c.root.to_vec())
            .bind(&c.note)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn checkpoints_from(
        &self,
        size: u64,
        limit: u32,
    ) -> Result<Vec<CosignedCheckpoint>, StoreError> {
        let checkpoints = sqlx::query(
            "SELECT size, root, note FROM checkpoints WHERE size >= $1 ORDER BY size LIMIT $2",
        )
        .bind(to_i64(size))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::checkpoint)
        .collect::<Result<Vec<_>, _>>()?;
        let (Some(first), Some(last)) = (checkpoints.first(), checkpoints.last()) else {
            return Ok(Vec::new());
        };
        let lines: Vec<(i64, String)> = sqlx::query_as(
            "SELECT size, line FROM cosignatures WHERE size >= $1 AND size <= $2 ORDER BY size, witness",
        )
        .bind(to_i64(first.size))
        .bind(to_i64(last.size))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(super::cosigned(checkpoints, lines))
    }

    async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.checkpoint_at(None).await
    }

    async fn checkpoint_of_size(&self, size: u64) -> Result<Option<StoredCheckpoint>, StoreError> {
        self.checkpoint_at(Some(size)).await
    }

    async fn witnesses(&self) -> Result<Vec<(String, String)>, StoreError> {
        sqlx::query("SELECT name, vkey FROM witnesses ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(rows::witness)
            .collect()
    }

    async fn add_cosignature(
        &self,
        size: u64,
        witness: &str,
        line: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cosignatures (size, witness, line) VALUES ($1, $2, $3)
             ON CONFLICT (size, witness) DO UPDATE SET line = excluded.line",
        )
        .bind(to_i64(size))
        .bind(witness)
        .bind(line)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn cosignatures(&self, size: u64) -> Result<Vec<String>, StoreError> {
        sqlx::query("SELECT line FROM cosignatures WHERE size = $1 ORDER BY witness")
            .bind(to_i64(size))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.try_get("line").map_err(db))
            .collect()
    }

    async fn exchange(&self, id: ExchangeId) -> Result<Option<ExchangeRow>, StoreError> {
        let row = sqlx::query(
            "SELECT x.sender, x.request_hash, x.state, x.reply AS message,
                    e.record, b.key_id, b.nonce, b.ciphertext
             FROM exchanges x
             LEFT JOIN log_entries e ON e.idx = x.reply_idx
             LEFT JOIN log_bodies b ON b.idx = x.reply_idx
             WHERE x.exchange_id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| rows::exchange(&r, id)).transpose()
    }

    async fn lease(
        &self,
        recipient: &Member,
        max: u32,
        now_millis: u64,
        visibility_millis: u64,
    ) -> Result<Vec<Delivery>, StoreError> {
        // The ready index yields `visible_at, seq` in order, so the scan
        // stops at the limit instead of sorting the backlog. ARRAY() runs
        // it exactly once, first: as `IN (...)` a generic plan (one that
        // does not know the limit is small) joined it to a scan of the
        // whole table, and some plans ran it again, leasing over `max`.
        let rows = sqlx::query(
            "WITH leased AS (
                UPDATE deliveries SET visible_at = $1, attempts = attempts + 1
                WHERE seq = ANY(ARRAY(SELECT seq FROM deliveries WHERE recipient = $2 AND visible_at <= $3
                                        AND NOT EXISTS (SELECT 1 FROM withdrawals WHERE recipient = $2)
                                      ORDER BY visible_at, seq LIMIT $4 FOR UPDATE SKIP LOCKED))
                RETURNING exchange_id, attempts, seq, message)
             SELECT d.exchange_id, d.attempts::bigint AS attempts, d.seq, COALESCE(d.message, x.reply) AS message,
                    e.record, b.key_id, b.nonce, b.ciphertext
             FROM leased d
             LEFT JOIN exchanges x ON d.message IS NULL AND x.exchange_id = d.exchange_id
             LEFT JOIN log_entries e ON e.idx = x.reply_idx
             LEFT JOIN log_bodies b ON b.idx = x.reply_idx",
        )
        .bind(to_i64(now_millis.saturating_add(visibility_millis)))
        .bind(recipient.to_string())
        .bind(to_i64(now_millis))
        .bind(i64::from(max))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut leased = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>("seq").map_err(db)?, rows::delivery(r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        leased.sort_by_key(|(seq, _)| *seq);
        Ok(leased.into_iter().map(|(_, d)| d).collect())
    }

    async fn pending_withdrawals(
        &self,
        created_before_millis: u64,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        sqlx::query(
            "SELECT id, recipient, service FROM withdrawals WHERE created_at < $1 ORDER BY id",
        )
        .bind(to_i64(created_before_millis))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::withdrawal)
        .collect()
    }

    async fn withdraw_batch(
        &self,
        withdrawal: &Withdrawal,
        after: InboxPosition,
        limit: u32,
    ) -> Result<Option<(InboxPosition, u64)>, StoreError> {
        let examined = sqlx::query(
            "SELECT visible_at, seq FROM deliveries
             WHERE recipient = $1 AND (visible_at, seq) > ($2, $3)
             ORDER BY visible_at, seq LIMIT $4",
        )
        .bind(withdrawal.recipient.to_string())
        .bind(after.visible_at)
        .bind(after.seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::inbox_position)
        .collect::<Result<Vec<_>, _>>()?;
        let Some(last) = examined.last().copied() else {
            return Ok(None);
        };
        let seqs: Vec<i64> = examined.iter().map(|p| p.seq).collect();
        let removed = sqlx::query(
            "DELETE FROM deliveries d WHERE d.seq = ANY($1) AND d.attempts = 0
                 AND EXISTS (SELECT 1 FROM log_entries e WHERE e.exchange_id = d.exchange_id
                     AND e.kind = 'event' AND e.record::json ->> 'service' = $2
                     AND NOT (EXISTS (SELECT 1 FROM grants g WHERE g.consumer_agency = $3
                                  AND g.consumer_subsystem = $4 AND g.service = $2)
                              AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.agency = $3
                                  AND s.subsystem = $4 AND s.service = $2
                                  AND s.version = (e.record::json ->> 'version')::bigint)))",
        )
        .bind(&seqs)
        .bind(withdrawal.service.as_str())
        .bind(withdrawal.recipient.agency.as_str())
        .bind(withdrawal.recipient.subsystem.as_str())
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(Some((last, removed)))
    }

    async fn finish_withdrawal(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM withdrawals WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn deliveries(
        &self,
        recipient: &Member,
        ids: &[ExchangeId],
    ) -> Result<Vec<Delivery>, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        sqlx::query(
            // A receipt needs the record, not the body: its columns stay NULL.
            "SELECT d.exchange_id, COALESCE(d.message, x.reply) AS message, d.attempts::bigint AS attempts,
                    e.record, NULL::text AS key_id, NULL::bytea AS nonce, NULL::bytea AS ciphertext
             FROM deliveries d
             LEFT JOIN exchanges x ON d.message IS NULL AND x.exchange_id = d.exchange_id
             LEFT JOIN log_entries e ON e.idx = x.reply_idx
             WHERE d.recipient = $1 AND d.exchange_id = ANY($2)",
        )
        .bind(recipient.to_string())
        .bind(&ids)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::delivery)
        .collect()
    }

    async fn remove_delivery(
        &self,
        recipient: &Member,
        id: ExchangeId,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("DELETE FROM deliveries WHERE recipient = $1 AND exchange_id = $2")
            .bind(recipient.to_string())
            .bind(id.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(r.rows_affected() > 0)
    }

    async fn backlog(&self) -> Result<Backlog, StoreError> {
        let outbox = sqlx::query_as(OUTBOX_BY_INSTANCE)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let inboxes = sqlx::query_as(INBOX_BY_RECIPIENT)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let withdrawals = sqlx::query_as(WITHDRAWALS_BY_RECIPIENT)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(Backlog {
            outbox: counts(outbox),
            inboxes: counts(inboxes),
            withdrawals: counts(withdrawals),
        })
    }

    async fn outbox(&self, instance: &str, max: u32) -> Result<Vec<OutboxRow>, StoreError> {
        sqlx::query(
            "SELECT seq, recipient, exchange_id, message FROM outbox WHERE instance = $1 ORDER BY seq LIMIT $2",
        )
        .bind(instance)
        .bind(i64::from(max))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(rows::outbox)
            .collect()
    }

    async fn remove_outbox(&self, seqs: &[i64]) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE seq = ANY($1)")
            .bind(seqs)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}

/// The statement of one registry change, for the store's own methods and
/// for [`Effect::Registry`] inside the log's transaction alike.
fn change_query(change: &RegistryChange) -> Result<Query<'_>, StoreError> {
    Ok(match change {
        RegistryChange::UpsertAgency(a) => sqlx::query(
            "INSERT INTO agencies (agency, subsystem, name, signing_jwk, suspended, broker_user)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (agency, subsystem) DO UPDATE SET name = excluded.name,
                     signing_jwk = excluded.signing_jwk, suspended = excluded.suspended,
                     broker_user = excluded.broker_user",
        )
        .bind(a.member.agency.as_str())
        .bind(a.member.subsystem.as_str())
        .bind(a.name.as_str())
        .bind(a.signing_key.as_ref().map(json_text).transpose()?)
        .bind(a.suspended)
        .bind(a.broker_user.as_deref()),
        RegistryChange::RetireAgencyKey { member, key } => sqlx::query(
            "INSERT INTO retired_agency_keys (agency, subsystem, kid, jwk) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
        )
        .bind(member.agency.as_str())
        .bind(member.subsystem.as_str())
        .bind(key.kid.as_str())
        .bind(json_text(key)?),
        RegistryChange::AddGrant(g) => sqlx::query(
            "INSERT INTO grants (consumer_agency, consumer_subsystem, service, purpose, fields) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (consumer_agency, consumer_subsystem, service, purpose) DO UPDATE SET fields = excluded.fields",
        )
        .bind(g.consumer.agency.as_str())
        .bind(g.consumer.subsystem.as_str())
        .bind(g.service.as_str())
        .bind(g.purpose.as_str())
        .bind(g.fields_column()),
        RegistryChange::RevokeGrant(g) => sqlx::query(
            "DELETE FROM grants WHERE consumer_agency = $1 AND consumer_subsystem = $2 AND service = $3 AND purpose = $4",
        )
        .bind(g.consumer.agency.as_str())
        .bind(g.consumer.subsystem.as_str())
        .bind(g.service.as_str())
        .bind(g.purpose.as_str()),
        RegistryChange::WithdrawUnfetchedEvents {
            recipient,
            service,
            at_millis,
        } => sqlx::query(
            "INSERT INTO withdrawals (recipient, service, created_at) VALUES ($1, $2, $3)",
        )
        .bind(recipient.to_string())
        .bind(service.as_str())
        .bind(to_i64(*at_millis)),
        RegistryChange::AddSubscription(s) => sqlx::query(
            "INSERT INTO subscriptions (agency, subsystem, service, version) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
        )
        .bind(s.subscriber.agency.as_str())
        .bind(s.subscriber.subsystem.as_str())
        .bind(s.service.as_str())
        .bind(i64::from(s.version)),
        RegistryChange::RemoveSubscription(s) => sqlx::query(
            "DELETE FROM subscriptions WHERE agency = $1 AND subsystem = $2 AND service = $3 AND version = $4",
        )
        .bind(s.subscriber.agency.as_str())
        .bind(s.subscriber.subsystem.as_str())
        .bind(s.service.as_str())
        .bind(i64::from(s.version)),
        RegistryChange::AddWitness { name, vkey } => sqlx::query(
            "INSERT INTO witnesses (name, vkey) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET vkey = excluded.vkey",
        )
        .bind(name.as_str())
        .bind(vkey.as_str()),
        RegistryChange::RevokeCertificate { serial, member, at } => sqlx::query(
            "INSERT INTO revoked_certificates (serial, agency, subsystem, revoked_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT DO NOTHING",
        )
        .bind(serial.as_str())
        .bind(member.agency.as_str())
        .bind(member.subsystem.as_str())
        .bind(at.as_str()),
    })
}

type Query<'a> =
    sqlx::query::Query<'a, sqlx::Postgres, <sqlx::Postgres as sqlx::Database>::Arguments>;

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://hub:s3cret@db.example:5432/hub"),
            "postgres://hub:***@db.example:5432/hub"
        );
        assert_eq!(
            redact("postgres://127.0.0.1/hub"),
            "postgres://127.0.0.1/hub"
        );
    }
}
