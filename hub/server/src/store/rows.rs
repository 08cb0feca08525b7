//! The store's rows read into typed values, once for both backends: the
//! tables have the same columns on PostgreSQL and SQLite, and sqlx decodes
//! the few column types used here alike on both. Each backend keeps only
//! its statements.

use hub_adapter_sdk::ServiceKind;
use hub_core::body::SealedBody;
use hub_core::hash::Hash;
use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_core::jws::Jwk;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{
    AgencyRecord, Delivery, ExchangeRow, ExchangeState, Facts, Grant, InboxPosition, OutboxRow,
    ServiceRecord, StoreError, StoredCheckpoint, StoredEntry, StoredMessage, Subscription,
    Withdrawal, corrupt, fields_of_column, member, to_u64,
};

/// A row's columns by name, as the types the store's tables use.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn text_or_null(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StoreError>;
    fn bytes_or_null(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError>;
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
}

/// A column that is missing or of another type: the schema is not the one
/// this build migrates to.
fn column(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, c: &str) -> Result<String, StoreError> {
        self.try_get(c).map_err(column)
    }

    fn text_or_null(&self, c: &str) -> Result<Option<String>, StoreError> {
        self.try_get(c).map_err(column)
    }

    fn int(&self, c: &str) -> Result<i64, StoreError> {
        self.try_get(c).map_err(column)
    }

    fn bytes(&self, c: &str) -> Result<Vec<u8>, StoreError> {
        self.try_get(c).map_err(column)
    }

    fn bytes_or_null(&self, c: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.try_get(c).map_err(column)
    }

    fn flag(&self, c: &str) -> Result<bool, StoreError> {
        self.try_get(c).map_err(column)
    }
}

/// A 32-byte hash from a column.
pub(crate) fn hash(bytes: Vec<u8>, what: &str) -> Result<Hash, StoreError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what} is not 32 bytes")))
}

/// The member named by two columns.
pub(crate) fn member_in(
    row: &impl Columns,
    agency: &str,
    subsystem: &str,
) -> Result<Member, StoreError> {
    member(row.text(agency)?, row.text(subsystem)?)
}

fn version_in(row: &impl Columns, c: &str) -> Result<u32, StoreError> {
    u32::try_from(row.int(c)?).map_err(corrupt)
}

fn service_name_in(row: &impl Columns, c: &str) -> Result<ServiceName, StoreError> {
    ServiceName::parse(&row.text(c)?).map_err(corrupt)
}

fn exchange_id_in(row: &impl Columns, c: &str) -> Result<ExchangeId, StoreError> {
    ExchangeId::parse(&row.text(c)?).map_err(corrupt)
}

fn jwk_of(text: Option<String>) -> Result<Option<Jwk>, StoreError> {
    text.map(|j| Jwk::parse(&j)).transpose().map_err(corrupt)
}

/// A row of `agencies`.
pub(crate) fn agency(row: &impl Columns) -> Result<AgencyRecord, StoreError> {
    Ok(AgencyRecord {
        member: member_in(row, "agency", "subsystem")?,
        name: row.text("name")?,
        signing_key: jwk_of(row.text_or_null("signing_jwk")?)?,
        suspended: row.flag("suspended")?,
        broker_user: row.text_or_null("broker_user")?,
    })
}

/// A row of `services`.
pub(crate) fn service(row: &impl Columns) -> Result<ServiceRecord, StoreError> {
    let kind = row.text("kind")?;
    Ok(ServiceRecord {
        name: service_name_in(row, "name")?,
        version: version_in(row, "version")?,
        kind: ServiceKind::parse(&kind).ok_or_else(|| corrupt(kind))?,
        provider: member_in(row, "provider_agency", "provider_subsystem")?,
        request_schema: row.text("request_schema")?,
        response_schema: row.text_or_null("response_schema")?,
    })
}

/// The one row that answers `Store::facts` for `who` calling `service`
/// `version`: the agency's columns prefixed `a_`, the service's `s_`, the
/// grant's `g_`, each NULL where there is none.
pub(crate) fn facts(
    row: &impl Columns,
    who: &Member,
    service: &ServiceName,
    version: u32,
) -> Result<Facts, StoreError> {
    let agency = match row.text_or_null("a_agency")? {
        None => None,
        Some(_) => Some(AgencyRecord {
            member: who.clone(),
            name: row.text("a_name")?,
            signing_key: jwk_of(row.text_or_null("a_jwk")?)?,
            suspended: row.flag("a_suspended")?,
            broker_user: row.text_or_null("a_broker_user")?,
        }),
    };
    let service = match row.text_or_null("s_kind")? {
        None => None,
        Some(kind) => Some(ServiceRecord {
            name: service.clone(),
            version,
            kind: ServiceKind::parse(&kind).ok_or_else(|| corrupt(kind))?,
            provider: member_in(row, "s_provider_agency", "s_provider_subsystem")?,
            request_schema: row.text("s_request_schema")?,
            response_schema: row.text_or_null("s_response_schema")?,
        }),
    };
    Ok(Facts {
        agency,
        service,
        granted: row.text_or_null("g_purpose")?.is_some(),
        fields: fields_of_column(row.text_or_null("g_fields")?)?,
    })
}

/// A row of `grants`.
pub(crate) fn grant(row: &impl Columns) -> Result<Grant, StoreError> {
    Ok(Grant {
        consumer: member_in(row, "consumer_agency", "consumer_subsystem")?,
        service: service_name_in(row, "service")?,
        purpose: PurposeCode::parse(&row.text("purpose")?).map_err(corrupt)?,
        fields: fields_of_column(row.text_or_null("fields")?)?,
    })
}

/// A row of `subscriptions`.
pub(crate) fn subscription(row: &impl Columns) -> Result<Subscription, StoreError> {
    Ok(Subscription {
        subscriber: member_in(row, "agency", "subsystem")?,
        service: service_name_in(row, "service")?,
        version: version_in(row, "version")?,
    })
}

/// A row of `withdrawals`.
pub(crate) fn withdrawal(row: &impl Columns) -> Result<Withdrawal, StoreError> {
    Ok(Withdrawal {
        id: row.int("id")?,
        recipient: row.text("recipient")?.parse().map_err(corrupt)?,
        service: service_name_in(row, "service")?,
    })
}

/// A row's place in its inbox.
pub(crate) fn inbox_position(row: &impl Columns) -> Result<InboxPosition, StoreError> {
    Ok(InboxPosition {
        visible_at: row.int("visible_at")?,
        seq: row.int("seq")?,
    })
}

/// A row of `retired_agency_keys`.
pub(crate) fn retired_key(row: &impl Columns) -> Result<(Member, Jwk), StoreError> {
    Ok((
        member_in(row, "agency", "subsystem")?,
        Jwk::parse(&row.text("jwk")?).map_err(corrupt)?,
    ))
}

/// A row of `log_entries`, with its body's columns (`key_id`, `nonce`,
/// `ciphertext`; NULL where the body was purged).
pub(crate) fn entry(row: &impl Columns) -> Result<StoredEntry, StoreError> {
    let body = match row.text_or_null("key_id")? {
        None => None,
        Some(key_id) => Some(SealedBody {
            key_id,
            nonce: row
                .bytes("nonce")?
                .try_into()
                .map_err(|_| corrupt("a body nonce is not 12 bytes"))?,
            ciphertext: row.bytes("ciphertext")?,
        }),
    };
    Ok(StoredEntry {
        index: to_u64(row.int("idx")?),
        record: row.text("record")?,
        leaf_hash: hash(row.bytes("leaf_hash")?, "a leaf hash")?,
        body,
    })
}

/// A row of `checkpoints`.
pub(crate) fn checkpoint(row: &impl Columns) -> Result<StoredCheckpoint, StoreError> {
    Ok(StoredCheckpoint {
        size: to_u64(row.int("size")?),
        root: hash(row.bytes("root")?, "a checkpoint root")?,
        note: row.text("note")?,
    })
}

/// A message from the columns `message` (sealed) or `record`, `key_id`,
/// `nonce` and `ciphertext` (the entry it points at).
pub(crate) fn stored_message(row: &impl Columns) -> Result<Option<StoredMessage>, StoreError> {
    StoredMessage::from_columns(
        row.bytes_or_null("message")?,
        row.text_or_null("record")?,
        row.text_or_null("key_id")?,
        row.bytes_or_null("nonce")?,
        row.bytes_or_null("ciphertext")?,
    )
}

/// A queued message: `exchange_id`, `attempts` and the message's columns
/// ([`stored_message`]).
pub(crate) fn delivery(row: &impl Columns) -> Result<Delivery, StoreError> {
    let exchange_id = exchange_id_in(row, "exchange_id")?;
    Ok(Delivery {
        message: stored_message(row)?
            .ok_or_else(|| corrupt(format!("the queued message of {exchange_id} is gone")))?,
        exchange_id,
        attempts: u32::try_from(row.int("attempts")?).unwrap_or(u32::MAX),
    })
}

/// Exchange `id`'s row: `sender`, `request_hash`, `state` and its reply's
/// columns ([`stored_message`]).
pub(crate) fn exchange(row: &impl Columns, id: ExchangeId) -> Result<ExchangeRow, StoreError> {
    let state = row.text("state")?;
    Ok(ExchangeRow {
        sender: row.text("sender")?,
        request_hash: row.text("request_hash")?,
        state: match (state.as_str(), stored_message(row)?) {
            ("done", Some(reply)) => ExchangeState::Done { reply },
            ("pending", _) => ExchangeState::Pending,
            _ => {
                return Err(corrupt(format!(
                    "exchange {id} in state {state} without reply"
                )));
            }
        },
    })
}

/// A row of `outbox`.
pub(crate) fn outbox(row: &impl Columns) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        seq: row.int("seq")?,
        recipient: row.text("recipient")?.parse().map_err(corrupt)?,
        exchange_id: exchange_id_in(row, "exchange_id")?,
        sealed: row.bytes("message")?,
    })
}

/// A row of `witnesses`: the name and the note verifier key.
pub(crate) fn witness(row: &impl Columns) -> Result<(String, String), StoreError> {
    Ok((row.text("name")?, row.text("vkey")?))
}
