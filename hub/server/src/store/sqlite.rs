//! The embedded SQLite backend: one file under the data directory, WAL
//! journal, `synchronous=FULL` so a commit is on disk before the hub
//! acknowledges anything.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use hub_core::hash::Hash;
use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_core::jws::Jwk;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::rows;
use super::{
    AgencyRecord, AppendItem, Batch, Claims, CosignedCheckpoint, Delivery, ExchangeRow, Facts,
    Grant, InboxPosition, Leadership, OutboxRow, RegistryChange, Role, SealAfter, ServiceRecord,
    Store, StoreError, StoredCheckpoint, StoredEntry, Subscription, Tail, Withdrawal, json_text,
    page_of_exchanges,
};
use super::{
    Backlog, BodyChunk, INBOX_BY_RECIPIENT, OUTBOX_BY_INSTANCE, PURGE_CHUNK,
    WITHDRAWALS_BY_RECIPIENT, counts, expired_in, to_i64, to_u64,
};

/// Inbox rows with their messages, `WHERE` the given clause: the sealed
/// copy a row holds, else (an event's) the record and sealed body of the
/// entry that is its exchange's reply.
macro_rules! deliveries_where {
    ($clause:literal) => {
        concat!(
            "SELECT d.exchange_id, d.attempts, COALESCE(d.message, x.reply) AS message,
                    e.record, b.key_id, b.nonce, b.ciphertext
             FROM deliveries d
             LEFT JOIN exchanges x ON d.message IS NULL AND x.exchange_id = d.exchange_id
             LEFT JOIN log_entries e ON e.idx = x.reply_idx
             LEFT JOIN log_bodies b ON b.idx = x.reply_idx
             WHERE ",
            $clause
        )
    };
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(other.to_string()),
    }
}

/// The SQLite store always leads (one process per file).
struct Always;

#[async_trait]
impl Leadership for Always {
    async fn still_leading(&mut self) -> bool {
        true
    }
}

impl SqliteStore {
    /// The checkpoint of tree size `size`, or the latest.
    async fn checkpoint_at(
        &self,
        size: Option<u64>,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        sqlx::query(
            "SELECT size, root, note FROM checkpoints
             WHERE size = COALESCE(?, (SELECT max(size) FROM checkpoints))",
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
        let rows: BodyChunk = sqlx::query_as(
            "SELECT b.idx, json_extract(e.record, '$.time') < ?1
             FROM log_bodies b JOIN log_entries e ON e.idx = b.idx
             WHERE b.idx >= ?2 ORDER BY b.idx LIMIT ?3",
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
            "DELETE FROM log_bodies WHERE idx IN (SELECT value FROM json_each(?1))
             AND NOT EXISTS (SELECT 1 FROM log_entries e, deliveries d
                             WHERE e.idx = log_bodies.idx AND d.exchange_id = e.exchange_id)",
        )
        .bind(json_text(&expired)?)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    /// Insert entries, bodies and effects in the open transaction.
    async fn insert(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        items: &[AppendItem],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let b = Batch::of(items)?;
        let n = b.idx.len();
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO log_entries (idx, exchange_id, kind, record, leaf_hash, subjects) ",
        );
        q.push_values(0..n, |mut row, i| {
            row.push_bind(b.idx[i])
                .push_bind(&b.exchange_id[i])
                .push_bind(&b.kind[i])
                .push_bind(&b.record[i])
                .push_bind(&b.leaf_hash[i])
                .push_bind(&b.subjects[i]);
        });
        q.build().execute(&mut **tx).await.map_err(db)?;
        let mut q =
            QueryBuilder::<Sqlite>::new("INSERT INTO log_bodies (idx, key_id, nonce, ciphertext) ");
        q.push_values(0..n, |mut row, i| {
            row.push_bind(b.idx[i])
                .push_bind(&b.key_id[i])
                .push_bind(&b.nonce[i])
                .push_bind(&b.ciphertext[i]);
        });
        q.build().execute(&mut **tx).await.map_err(db)?;
        if !b.open.id.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO exchanges (exchange_id, sender, request_hash, state, reply_idx, created_at) ",
            );
            q.push_values(0..b.open.id.len(), |mut row, i| {
                row.push_bind(&b.open.id[i])
                    .push_bind(&b.open.sender[i])
                    .push_bind(&b.open.request_hash[i])
                    .push_bind(b.open.state[i])
                    .push_bind(b.open.reply_idx[i])
                    .push_bind(b.open.at[i]);
            });
            q.push(" ON CONFLICT (exchange_id) DO NOTHING");
            q.build().execute(&mut **tx).await.map_err(db)?;
        }
        if !b.close.0.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new("WITH v(id, reply_idx) AS (");
            q.push_values(b.close.0.iter().zip(&b.close.1), |mut row, (id, idx)| {
                row.push_bind(id).push_bind(*idx);
            });
            q.push(
                ") UPDATE exchanges SET state = 'done',
                   reply_idx = (SELECT reply_idx FROM v WHERE v.id = exchanges.exchange_id)
                 WHERE state = 'pending' AND exchange_id IN (SELECT id FROM v)",
            );
            q.build().execute(&mut **tx).await.map_err(db)?;
        }
        if !b.dequeue.0.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "DELETE FROM deliveries WHERE (recipient, exchange_id) IN (",
            );
            q.push_values(b.dequeue.0.iter().zip(&b.dequeue.1), |mut row, (r, id)| {
                row.push_bind(r).push_bind(id);
            });
            q.push(")");
            q.build().execute(&mut **tx).await.map_err(db)?;
        }
        if !b.abandon.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "DELETE FROM exchanges WHERE state = 'pending' AND exchange_id IN (",
            );
            let mut ids = q.separated(", ");
            for id in &b.abandon {
                ids.push_bind(id);
            }
            q.push(")");
            q.build().execute(&mut **tx).await.map_err(db)?;
        }
        if !b.enqueue.0.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO deliveries (recipient, exchange_id, message, visible_at) ",
            );
            q.push_values(0..b.enqueue.0.len(), |mut row, i| {
                row.push_bind(&b.enqueue.0[i])
                    .push_bind(&b.enqueue.1[i])
                    .push_bind(&b.enqueue.2[i])
                    .push_bind(b.enqueue.3[i]);
            });
            q.build().execute(&mut **tx).await.map_err(db)?;
        }
        if !b.dispatch.0.is_empty() {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT OR IGNORE INTO outbox (instance, recipient, exchange_id, message) ",
            );
            q.push_values(0..b.dispatch.0.len(), |mut row, i| {
                row.push_bind(&b.dispatch.0[i])
                    .push_bind(&b.dispatch.1[i])
                    .push_bind(&b.dispatch.2[i])
                    .push_bind(&b.dispatch.3[i]);
            });
            q.build().execute(&mut **tx).await.map_err(db)?;
        }
        for change in super::registry_changes(items) {
            change_query(change)?.execute(&mut **tx).await.map_err(db)?;
        }
        Ok(())
    }

    /// Open (creating the file and its directory if needed) and migrate.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Invalid(format!("{url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(format!("migration: {e}")))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
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
        sqlx::query("SELECT * FROM agencies WHERE agency = ? AND subsystem = ?")
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
             VALUES (?, ?, ?, ?, ?, ?, ?)
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
        sqlx::query("SELECT * FROM services WHERE name = ? AND version = ?")
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
             LEFT JOIN agencies a ON a.agency = ?1 AND a.subsystem = ?2
             LEFT JOIN services s ON s.name = ?3 AND s.version = ?4
             LEFT JOIN grants g ON g.consumer_agency = ?1 AND g.consumer_subsystem = ?2
                               AND g.service = ?3 AND g.purpose = ?5",
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
            "SELECT agency, subsystem FROM subscriptions s WHERE service = ? AND version = ?
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
        // IMMEDIATE takes the write lock first, so that the tail read below
        // stays the tail until commit even with another process on the file.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        // The tail, the registry version, the exchanges `claims` opens
        // that exist already, the messages it acknowledges that are still
        // queued and the exchanges it answers that are still pending: one
        // round trip.
        let json = |v: serde_json::Value| {
            serde_json::to_string(&v).map_err(|e| StoreError::Invalid(e.to_string()))
        };
        let opening = json(claims.opening.iter().map(ToString::to_string).collect())?;
        let answering = json(claims.answering.iter().map(ToString::to_string).collect())?;
        let acknowledging = json(
            claims
                .acknowledging
                .iter()
                .map(|(to, of)| serde_json::json!([to.to_string(), of.to_string()]))
                .collect(),
        )?;
        let rows = sqlx::query(
            "SELECT idx, leaf_hash, NULL AS version, NULL AS opened, NULL AS queued_to,
                    NULL AS queued_id, NULL AS pending
                 FROM log_entries WHERE idx >= ?
             UNION ALL SELECT NULL, NULL, version, NULL, NULL, NULL, NULL FROM registry_version
             UNION ALL SELECT NULL, NULL, NULL, exchange_id, NULL, NULL, NULL FROM exchanges
                 WHERE exchange_id IN (SELECT value FROM json_each(?))
             UNION ALL SELECT NULL, NULL, NULL, NULL, d.recipient, d.exchange_id, NULL
                 FROM deliveries d JOIN json_each(?) u
                 ON d.recipient = u.value ->> 0 AND d.exchange_id = u.value ->> 1
             UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, exchange_id FROM exchanges
                 WHERE exchange_id IN (SELECT value FROM json_each(?)) AND state = 'pending'
             ORDER BY idx NULLS LAST",
        )
        .bind(to_i64(known))
        .bind(opening)
        .bind(acknowledging)
        .bind(answering)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let (adopted, written, _) = super::seal_at_tail(known, &rows, claims, db, seal)?;
        Self::insert(&mut tx, &written).await?;
        tx.commit().await.map_err(db)?;
        Ok(Tail { adopted, written })
    }

    async fn lead(&self, _role: Role) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        // One SQLite file serves one hub process: it always leads.
        Ok(Some(Box::new(Always)))
    }

    async fn entries(&self, from: u64, limit: u32) -> Result<Vec<StoredEntry>, StoreError> {
        sqlx::query(
            "SELECT e.idx, e.record, e.leaf_hash, b.key_id, b.nonce, b.ciphertext FROM log_entries e LEFT JOIN log_bodies b ON b.idx = e.idx
             WHERE e.idx >= ? ORDER BY e.idx LIMIT ?",
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
            "SELECT idx, leaf_hash FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx",
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
            "SELECT block, root FROM log_blocks WHERE block >= ? AND block < ? ORDER BY block",
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
            let mut insert =
                sqlx::QueryBuilder::new("INSERT OR IGNORE INTO log_blocks (block, root) ");
            insert.push_values((from..).zip(chunk), |mut row, (block, root)| {
                row.push_bind(to_i64(block)).push_bind(&root[..]);
            });
            insert.build().execute(&self.pool).await.map_err(db)?;
        }
        Ok(())
    }

    async fn request_of(&self, id: ExchangeId) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar(
            "SELECT record FROM log_entries WHERE exchange_id = ? AND kind = 'request' ORDER BY idx LIMIT 1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)
    }

    async fn index_subjects(&self, limit: u32) -> Result<u64, StoreError> {
        // IMMEDIATE: the write lock first, so the read below cannot go stale.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        let from: i64 = sqlx::query_scalar("SELECT indexed_up_to FROM subject_index_state")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let to: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(idx) + 1, ?1) FROM log_entries WHERE idx >= ?1 AND idx < ?1 + ?2",
        )
        .bind(from)
        .bind(i64::from(limit))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if to > from {
            sqlx::query(
                "INSERT OR IGNORE INTO subjects (subject, exchange_first, idx)
                 SELECT j.value, (SELECT MIN(f.idx + 0) FROM log_entries f WHERE f.exchange_id = e.exchange_id), e.idx
                 FROM log_entries e, json_each(e.subjects) j
                 WHERE e.idx >= ?1 AND e.idx < ?2 AND e.subjects IS NOT NULL",
            )
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            sqlx::query("UPDATE subject_index_state SET indexed_up_to = MAX(indexed_up_to, ?1)")
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
        // One more exchange than asked for says whether there are more;
        // as on PostgreSQL, the index is read in the order the exchanges
        // began, from `after`, only as far as the page goes. `idx + 0`:
        // the exchange's entries found by the exchange index, not by
        // walking the log in key order.
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "WITH firsts AS (
                SELECT first FROM (
                    SELECT DISTINCT s.exchange_first AS first FROM subjects s
                    WHERE s.subject = ?1 AND s.exchange_first > ?3
                    ORDER BY s.exchange_first LIMIT ?2)
                UNION
                SELECT (SELECT MIN(f.idx + 0) FROM log_entries f WHERE f.exchange_id = t.exchange_id)
                FROM log_entries t, json_each(t.subjects) j
                WHERE t.idx >= (SELECT indexed_up_to FROM subject_index_state)
                  AND t.subjects IS NOT NULL AND j.value = ?1),
             page AS (SELECT first FROM firsts WHERE first > ?3 ORDER BY first LIMIT ?2),
             touched AS (
                SELECT e.exchange_id, e.idx AS first FROM log_entries e
                WHERE e.idx IN (SELECT first FROM page))
             SELECT e.record, t.first FROM log_entries e JOIN touched t ON t.exchange_id = e.exchange_id
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
        sqlx::query("SELECT idx FROM log_entries WHERE exchange_id = ? ORDER BY idx")
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
        // As on PostgreSQL: a reply stays while its exchange still has
        // messages queued.
        let replies = sqlx::query(
            "DELETE FROM exchanges WHERE state = 'done' AND created_at < ?
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.exchange_id = exchanges.exchange_id)",
        )
        .bind(to_i64(before_millis))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok((bodies, replies.rows_affected()))
    }

    async fn add_checkpoint(&self, c: &StoredCheckpoint) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO checkpoints (size, root, note) VALUES (?, ?, ?)")
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
            "SELECT size, root, note FROM checkpoints WHERE size >= ? ORDER BY size LIMIT ?",
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
            "SELECT size, line FROM cosignatures WHERE size >= ? AND size <= ? ORDER BY size, witness",
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
            "INSERT INTO cosignatures (size, witness, line) VALUES (?, ?, ?)
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
        sqlx::query("SELECT line FROM cosignatures WHERE size = ? ORDER BY witness")
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
             WHERE x.exchange_id = ?",
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
        // SQLite's RETURNING cannot join, so the leased rows are read
        // again with their entries. Nothing removes a leased row meanwhile
        // but an acknowledgement of it, which then needs no delivery.
        let seqs: Vec<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET visible_at = ?1, attempts = attempts + 1
             WHERE seq IN (SELECT seq FROM deliveries WHERE recipient = ?2 AND visible_at <= ?3
                               AND NOT EXISTS (SELECT 1 FROM withdrawals WHERE recipient = ?2)
                           ORDER BY visible_at, seq LIMIT ?4)
             RETURNING seq",
        )
        .bind(to_i64(now_millis.saturating_add(visibility_millis)))
        .bind(recipient.to_string())
        .bind(to_i64(now_millis))
        .bind(i64::from(max))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query(deliveries_where!(
            "d.seq IN (SELECT value FROM json_each(?)) ORDER BY d.seq"
        ))
        .bind(json_text(&seqs)?)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(rows::delivery)
        .collect()
    }

    async fn pending_withdrawals(
        &self,
        created_before_millis: u64,
    ) -> Result<Vec<Withdrawal>, StoreError> {
        sqlx::query(
            "SELECT id, recipient, service FROM withdrawals WHERE created_at < ? ORDER BY id",
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
             WHERE recipient = ? AND (visible_at, seq) > (?, ?)
             ORDER BY visible_at, seq LIMIT ?",
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
            "DELETE FROM deliveries WHERE seq IN (SELECT value FROM json_each(?1)) AND attempts = 0
                 AND EXISTS (SELECT 1 FROM log_entries e WHERE e.exchange_id = deliveries.exchange_id
                     AND e.kind = 'event' AND json_extract(e.record, '$.service') = ?2
                     AND NOT (EXISTS (SELECT 1 FROM grants g WHERE g.consumer_agency = ?3
                                  AND g.consumer_subsystem = ?4 AND g.service = ?2)
                              AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.agency = ?3
                                  AND s.subsystem = ?4 AND s.service = ?2
                                  AND s.version = json_extract(e.record, '$.version'))))",
        )
        .bind(json_text(&seqs)?)
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
        sqlx::query("DELETE FROM withdrawals WHERE id = ?")
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
        // A receipt needs the record, not the body: its columns stay NULL.
        sqlx::query(
            "SELECT d.exchange_id, d.attempts, COALESCE(d.message, x.reply) AS message,
                    e.record, NULL AS key_id, NULL AS nonce, NULL AS ciphertext
             FROM deliveries d
             LEFT JOIN exchanges x ON d.message IS NULL AND x.exchange_id = d.exchange_id
             LEFT JOIN log_entries e ON e.idx = x.reply_idx
             WHERE d.recipient = ? AND d.exchange_id IN (SELECT value FROM json_each(?))",
        )
        .bind(recipient.to_string())
        .bind(json_text(&ids)?)
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
        let r = sqlx::query("DELETE FROM deliveries WHERE recipient = ? AND exchange_id = ?")
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
        sqlx::query("SELECT seq, recipient, exchange_id, message FROM outbox WHERE instance = ? ORDER BY seq LIMIT ?")
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
        let mut tx = self.pool.begin().await.map_err(db)?;
        for seq in seqs {
            sqlx::query("DELETE FROM outbox WHERE seq = ?")
                .bind(seq)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }
}

/// The statement of one registry change, for the store's own methods and
/// for [`Effect::Registry`] inside the log's transaction alike.
fn change_query(change: &RegistryChange) -> Result<Query<'_>, StoreError> {
    Ok(match change {
        RegistryChange::UpsertAgency(a) => sqlx::query(
            "INSERT INTO agencies (agency, subsystem, name, signing_jwk, suspended, broker_user)
                 VALUES (?, ?, ?, ?, ?, ?)
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
            "INSERT OR IGNORE INTO retired_agency_keys (agency, subsystem, kid, jwk) VALUES (?, ?, ?, ?)",
        )
        .bind(member.agency.as_str())
        .bind(member.subsystem.as_str())
        .bind(key.kid.as_str())
        .bind(json_text(key)?),
        RegistryChange::AddGrant(g) => sqlx::query(
            "INSERT INTO grants (consumer_agency, consumer_subsystem, service, purpose, fields) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (consumer_agency, consumer_subsystem, service, purpose) DO UPDATE SET fields = excluded.fields",
        )
        .bind(g.consumer.agency.as_str())
        .bind(g.consumer.subsystem.as_str())
        .bind(g.service.as_str())
        .bind(g.purpose.as_str())
        .bind(g.fields_column()),
        RegistryChange::RevokeGrant(g) => sqlx::query(
            "DELETE FROM grants WHERE consumer_agency = ? AND consumer_subsystem = ? AND service = ? AND purpose = ?",
        )
        .bind(g.consumer.agency.as_str())
        .bind(g.consumer.subsystem.as_str())
        .bind(g.service.as_str())
        .bind(g.purpose.as_str()),
        RegistryChange::WithdrawUnfetchedEvents {
            recipient,
            service,
            at_millis,
        } => sqlx::query("INSERT INTO withdrawals (recipient, service, created_at) VALUES (?, ?, ?)")
            .bind(recipient.to_string())
            .bind(service.as_str())
            .bind(to_i64(*at_millis)),
        RegistryChange::AddSubscription(s) => sqlx::query(
            "INSERT OR IGNORE INTO subscriptions (agency, subsystem, service, version) VALUES (?, ?, ?, ?)",
        )
        .bind(s.subscriber.agency.as_str())
        .bind(s.subscriber.subsystem.as_str())
        .bind(s.service.as_str())
        .bind(i64::from(s.version)),
        RegistryChange::RemoveSubscription(s) => sqlx::query(
            "DELETE FROM subscriptions WHERE agency = ? AND subsystem = ? AND service = ? AND version = ?",
        )
        .bind(s.subscriber.agency.as_str())
        .bind(s.subscriber.subsystem.as_str())
        .bind(s.service.as_str())
        .bind(i64::from(s.version)),
        RegistryChange::AddWitness { name, vkey } => sqlx::query(
            "INSERT INTO witnesses (name, vkey) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET vkey = excluded.vkey",
        )
        .bind(name.as_str())
        .bind(vkey.as_str()),
        RegistryChange::RevokeCertificate { serial, member, at } => sqlx::query(
            "INSERT OR IGNORE INTO revoked_certificates (serial, agency, subsystem, revoked_at) VALUES (?, ?, ?, ?)",
        )
        .bind(serial.as_str())
        .bind(member.agency.as_str())
        .bind(member.subsystem.as_str())
        .bind(at.as_str()),
    })
}

type Query<'a> = sqlx::query::Query<'a, sqlx::Sqlite, <sqlx::Sqlite as sqlx::Database>::Arguments>;
