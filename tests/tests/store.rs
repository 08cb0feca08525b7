//! One backend-neutral suite for the [`Store`] trait, run against SQLite
//! (a fresh file per test) and PostgreSQL (a fresh database per test).
//! Whatever the pipeline relies on from storage is checked here for both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hub_adapter_sdk::ServiceKind;
use hub_core::body::{DataKey, commitment};
use hub_core::fields::FieldSet;
use hub_core::hash::Hash;
use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_core::jws::SigningKey;
use hub_core::log::{EntryDraft, EntryKind, seal};
use hub_e2e::services::PgDatabase;
use hub_server::store::{
    AgencyRecord, AppendItem, AtTail, Body, Claims, Delivery, Effect, ExchangeState, Grant,
    InboxPosition, PoolSettings, Presumed, Presumption, RegistryChange, ServiceRecord, Store,
    StoredCheckpoint, StoredMessage, Subscription, message_of,
};
use hub_server::withdrawal;
use time::macros::datetime;

/// Run `test` against a fresh store of each backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let url = format!("sqlite:{}", dir.path().join("hub.db").display());
                    let store = hub_server::store::open(&url, super::PoolSettings::default()).await.unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = super::PgDatabase::create().await else { return };
                    let store = hub_server::store::open(&db.url, super::PoolSettings::default()).await.unwrap();
                    super::$name(store.clone()).await;
                    drop(store);
                    db.drop_now().await;
                }
            )*
        }
    };
}

both_backends!(
    registry_round_trips,
    append_writes_entries_and_effects_together,
    a_failed_batch_leaves_nothing_behind,
    leases_hide_messages_until_they_expire,
    a_lease_hands_out_the_longest_waiting_first,
    concurrent_leases_never_hand_out_one_message_twice,
    checkpoints_witnesses_and_cosignatures,
    purge_removes_old_bodies_and_replies_but_keeps_the_log,
    the_outbox_keeps_dispatched_messages_until_confirmed,
    a_second_claim_of_an_exchange_id_keeps_the_first,
    appends_at_the_tail_adopt_what_other_writers_wrote,
    the_subject_index_finds_whole_exchanges_oldest_first,
    two_indexers_at_once_index_each_entry_once,
    the_registry_version_advances_with_each_change_requests_are_decided_on,
    two_log_writers_on_one_store_keep_one_chain,
    an_exchange_opened_through_two_writers_at_once_is_logged_once,
    an_events_inbox_message_outlives_the_purge_of_replies_until_delivered,
    a_presumed_append_writes_only_where_the_log_ends,
    a_message_is_acknowledged_once_whichever_writer_acknowledges_it,
    answers_and_receipts_racing_through_two_writers_are_written_once,
    a_log_of_version_1_entries_goes_on_in_version_2,
    kept_block_roots_are_read_in_runs_and_never_replaced,
    a_log_writer_keeps_the_root_of_each_block_it_completes,
    withdrawn_are_only_the_events_never_handed_out_and_no_longer_delivered,
);

fn member(s: &str) -> Member {
    s.parse().unwrap()
}

const CONSUMER: &str = "000.00.00.G08/tax";
const PROVIDER: &str = "000.00.00.G09/enterprise-registry";

async fn registry(store: &dyn Store) {
    for m in [CONSUMER, PROVIDER] {
        store
            .upsert_agency(&AgencyRecord {
                member: member(m),
                name: m.into(),
                signing_key: None,
                suspended: false,
                broker_user: None,
            })
            .await
            .unwrap();
    }
    store
        .upsert_service(&ServiceRecord {
            name: ServiceName::parse("enterprise.lookup").unwrap(),
            version: 1,
            kind: ServiceKind::Query,
            provider: member(PROVIDER),
            request_schema: "enterprise.lookup.request/1".into(),
            response_schema: Some("enterprise.lookup.response/1".into()),
        })
        .await
        .unwrap();
}

async fn registry_round_trips(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let key = SigningKey::generate(&ring::rand::SystemRandom::new())
        .unwrap()
        .0;
    let renamed = AgencyRecord {
        member: member(CONSUMER),
        name: "General Department of Taxation".into(),
        signing_key: Some(key.public_jwk()),
        suspended: true,
        broker_user: Some("tax-adapter".into()),
    };
    store.upsert_agency(&renamed).await.unwrap();
    assert_eq!(
        store.agency(&member(CONSUMER)).await.unwrap(),
        Some(renamed.clone())
    );
    assert_eq!(store.agencies().await.unwrap().len(), 2);
    assert_eq!(
        store.agency(&member("000.00.00.X99/none")).await.unwrap(),
        None
    );

    let service = ServiceName::parse("enterprise.lookup").unwrap();
    let found = store.service(&service, 1).await.unwrap().unwrap();
    assert_eq!(found.provider, member(PROVIDER));
    assert_eq!(found.kind, ServiceKind::Query);
    assert!(store.service(&service, 2).await.unwrap().is_none());

    let grant = Grant {
        consumer: member(CONSUMER),
        service: service.clone(),
        purpose: PurposeCode::parse("tax_administration").unwrap(),
        fields: None,
    };
    let granted = |g: &Grant| {
        let (store, g) = (store.clone(), g.clone());
        async move {
            store
                .facts(&g.consumer, &g.service, 1, &g.purpose)
                .await
                .unwrap()
                .granted
        }
    };
    assert!(!granted(&grant).await);
    store.add_grant(&grant).await.unwrap();
    store.add_grant(&grant).await.unwrap();
    assert!(granted(&grant).await);
    assert_eq!(store.grants().await.unwrap(), vec![grant.clone()]);
    let other_purpose = Grant {
        purpose: PurposeCode::parse("public_service").unwrap(),
        ..grant.clone()
    };
    assert!(!granted(&other_purpose).await);
    let facts = store
        .facts(&grant.consumer, &service, 1, &grant.purpose)
        .await
        .unwrap();
    assert_eq!(
        facts.agency.as_ref().map(|a| &a.name),
        Some(&"General Department of Taxation".to_owned())
    );
    assert_eq!(facts.agency, Some(renamed.clone()));
    assert_eq!(facts.service, Some(found.clone()));
    assert!(facts.granted);
    assert_eq!(facts.fields, None);
    // Adding the grant again with fields replaces them; the facts carry them.
    let minimised = Grant {
        fields: Some(FieldSet::parse_list("/found,/enterprise/name").unwrap()),
        ..grant.clone()
    };
    store.add_grant(&minimised).await.unwrap();
    assert_eq!(store.grants().await.unwrap(), vec![minimised.clone()]);
    let facts = store
        .facts(&grant.consumer, &service, 1, &grant.purpose)
        .await
        .unwrap();
    assert_eq!((facts.granted, facts.fields), (true, minimised.fields));
    let other = store
        .facts(
            &member("000.00.00.X99/none"),
            &service,
            2,
            &other_purpose.purpose,
        )
        .await
        .unwrap();
    assert_eq!(
        (other.agency, other.service, other.granted),
        (None, None, false)
    );
    assert!(store.revoke_grant(&grant).await.unwrap());
    assert!(!store.revoke_grant(&grant).await.unwrap());
    assert!(
        !store
            .facts(&grant.consumer, &service, 1, &grant.purpose)
            .await
            .unwrap()
            .granted
    );
    assert!(!granted(&grant).await);

    let sub = Subscription {
        subscriber: member(CONSUMER),
        service: service.clone(),
        version: 1,
    };
    store.add_subscription(&sub).await.unwrap();
    store.add_subscription(&sub).await.unwrap();
    assert_eq!(store.subscriptions().await.unwrap(), vec![sub]);
    // Its grant was revoked above: subscribed, but delivered nothing.
    assert!(store.subscribers(&service, 1).await.unwrap().is_empty());
    // A grant for the service, whatever its purpose, makes it a subscriber.
    store.add_grant(&other_purpose).await.unwrap();
    assert_eq!(
        store.subscribers(&service, 1).await.unwrap(),
        vec![member(CONSUMER)]
    );
    assert!(store.subscribers(&service, 2).await.unwrap().is_empty());
    store.revoke_grant(&other_purpose).await.unwrap();
    assert!(store.subscribers(&service, 1).await.unwrap().is_empty());
}

/// Builds sealed entries the way the log writer does.
struct Entries {
    key: SigningKey,
    data: DataKey,
    next: u64,
    prev: Hash,
}

impl Entries {
    fn new() -> Self {
        Self {
            key: SigningKey::generate(&ring::rand::SystemRandom::new())
                .unwrap()
                .0,
            data: DataKey::from_bytes(&[7; 32]),
            next: 0,
            prev: [0; 32],
        }
    }

    /// A writer that goes on from entry `next`, after the leaf hash `prev`.
    fn after(next: u64, prev: Hash) -> Self {
        Self {
            next,
            prev,
            ..Self::new()
        }
    }

    fn item(&mut self, kind: EntryKind, id: ExchangeId, effects: Vec<Effect>) -> AppendItem {
        let (draft, body) = unsealed(self.next, kind, id, &self.data);
        let time = datetime!(2026-11-01 00:00 UTC) + time::Duration::days(self.next as i64);
        let sealed = seal(draft, self.next, &self.prev, time, &self.key).unwrap();
        self.next += 1;
        self.prev = sealed.leaf_hash;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.next.to_be_bytes());
        AppendItem {
            sealed_message: Some(self.data.seal_blob(
                id.to_string().as_bytes(),
                &message_of(&sealed, &body),
                nonce,
            )),
            sealed,
            body,
            effects,
        }
    }

    /// The text of a reply as this writer's data key opens it.
    fn reply(&self, id: ExchangeId, state: &ExchangeState) -> String {
        match state {
            ExchangeState::Done { reply } => reply.open(&self.data, id).unwrap(),
            ExchangeState::Pending => panic!("{id} has no reply yet"),
        }
    }
}

/// Entry `n`'s draft and body (`{"n": n}`, sealed with `data`), unsealed.
fn unsealed(n: u64, kind: EntryKind, id: ExchangeId, data: &DataKey) -> (EntryDraft, Body) {
    let plain = format!("{{\"n\":{n}}}").into_bytes();
    let salt = n.to_be_bytes().repeat(2);
    let commitment = commitment(&salt, &plain);
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    let body = Body {
        sealed: data.seal(&salt, &plain, &commitment, nonce),
        plain,
        salt,
        commitment,
    };
    let mut draft = EntryDraft {
        receiver: Some(member(PROVIDER)),
        service: Some(ServiceName::parse("enterprise.lookup").unwrap()),
        version: Some(1),
        ..EntryDraft::new(kind, id, member(CONSUMER))
    };
    body.describe(&mut draft);
    (draft, body)
}

/// Logs the event of exchange `n`: one entry that opens and closes its
/// exchange and queues itself for the provider.
async fn logged_event(store: &dyn Store, e: &mut Entries, n: u8) -> AppendItem {
    let event = e.item(
        EntryKind::Event,
        id(n),
        vec![open(1_000), Effect::CloseExchange, enqueue(0)],
    );
    store.append(std::slice::from_ref(&event)).await.unwrap();
    event
}

fn id(n: u8) -> ExchangeId {
    ExchangeId::from_parts(1_790_000_000_000 + u64::from(n), [n; 10])
}

fn open(at_millis: u64) -> Effect {
    Effect::OpenExchange {
        sender: member(CONSUMER),
        request_hash: "hash".into(),
        at_millis,
    }
}

fn enqueue(visible_at_millis: u64) -> Effect {
    Effect::Enqueue {
        recipient: member(PROVIDER),
        visible_at_millis,
    }
}

async fn append_writes_entries_and_effects_together(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let batch = vec![
        e.item(EntryKind::Request, id(1), vec![open(10), enqueue(0)]),
        e.item(EntryKind::Request, id(2), vec![open(20), enqueue(0)]),
        e.item(EntryKind::Request, id(3), vec![open(30)]),
    ];
    store.append(&batch).await.unwrap();
    let second = vec![
        e.item(EntryKind::Response, id(1), vec![Effect::CloseExchange]),
        e.item(EntryKind::Failure, id(3), vec![Effect::AbandonExchange]),
    ];
    store.append(&second).await.unwrap();

    let entries = store.entries(0, 100).await.unwrap();
    assert_eq!(entries.len(), 5);
    for (i, (stored, item)) in entries.iter().zip(batch.iter().chain(&second)).enumerate() {
        assert_eq!(stored.index, i as u64);
        assert_eq!(stored.record.as_bytes(), item.sealed.canonical.as_slice());
        assert_eq!(stored.leaf_hash, item.sealed.leaf_hash);
        assert_eq!(stored.body.as_ref(), Some(&item.body.sealed));
    }
    assert_eq!(store.entries(3, 1).await.unwrap()[0].index, 3);
    let leaves = store.leaf_hashes(1, 4).await.unwrap();
    assert_eq!(
        leaves,
        vec![
            entries[1].leaf_hash,
            entries[2].leaf_hash,
            entries[3].leaf_hash
        ]
    );
    assert_eq!(store.indexes_of_exchange(id(1)).await.unwrap(), vec![0, 3]);
    assert_eq!(
        store.request_of(id(1)).await.unwrap().as_deref(),
        Some(entries[0].record.as_str()),
        "the request, not the response"
    );
    assert_eq!(store.request_of(id(9)).await.unwrap(), None);

    let done = store.exchange(id(1)).await.unwrap().unwrap();
    assert_eq!(done.sender, CONSUMER);
    assert_eq!(e.reply(id(1), &done.state), second[0].message());
    assert_eq!(
        store.exchange(id(2)).await.unwrap().unwrap().state,
        ExchangeState::Pending
    );
    assert!(store.exchange(id(3)).await.unwrap().is_none(), "abandoned");

    // A second answer to a settled exchange is logged, but the exchange
    // keeps the first reply: the one its sender was given.
    let late = e.item(EntryKind::Response, id(1), vec![Effect::CloseExchange]);
    store.append(std::slice::from_ref(&late)).await.unwrap();
    assert_eq!(
        store.indexes_of_exchange(id(1)).await.unwrap(),
        vec![0, 3, 5]
    );
    assert_eq!(store.exchange(id(1)).await.unwrap().unwrap(), done);

    // An event opens and closes its exchange in one entry; a second claim
    // of its id keeps the first reply.
    let event = e.item(
        EntryKind::Event,
        id(4),
        vec![open(40), Effect::CloseExchange],
    );
    store.append(std::slice::from_ref(&event)).await.unwrap();
    let again = e.item(
        EntryKind::Event,
        id(4),
        vec![open(50), Effect::CloseExchange],
    );
    store.append(std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(
        e.reply(id(4), &store.exchange(id(4)).await.unwrap().unwrap().state),
        event.message()
    );

    let leased = store.lease(&member(PROVIDER), 10, 100, 1000).await.unwrap();
    let ids: Vec<_> = leased.iter().map(|d| d.exchange_id).collect();
    assert_eq!(ids, vec![id(1), id(2)], "in the order they were logged");
    assert_eq!(
        leased[0].message,
        StoredMessage::Sealed(batch[0].sealed_message.clone().unwrap())
    );
    assert_eq!(
        leased[0].message.record_as(&e.data, id(1)).unwrap(),
        Some(serde_json::to_value(&batch[0].sealed.record).unwrap()),
        "the record, opened from the sealed message"
    );
    assert_eq!(leased[0].attempts, 1);
}

async fn a_failed_batch_leaves_nothing_behind(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let first = e.item(EntryKind::Request, id(1), vec![open(1)]);
    store.append(std::slice::from_ref(&first)).await.unwrap();
    // A batch whose second entry claims index 0 again.
    let good = e.item(EntryKind::Request, id(2), vec![open(2), enqueue(0)]);
    let mut stale = Entries::new();
    let clash = stale.item(EntryKind::Request, id(3), vec![open(3)]);
    assert!(store.append(&[good.clone(), clash]).await.is_err());
    assert_eq!(store.entries(0, 10).await.unwrap().len(), 1);
    assert!(store.exchange(id(2)).await.unwrap().is_none());
    assert!(delivery(&*store, &member(PROVIDER), id(2)).await.is_none());
    // The indexes of the failed batch are free for the next one.
    store.append(&[good]).await.unwrap();
    assert_eq!(store.entries(0, 10).await.unwrap().len(), 2);
}

async fn a_second_claim_of_an_exchange_id_keeps_the_first(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let first = e.item(EntryKind::Request, id(1), vec![open(1)]);
    let mut again = e.item(EntryKind::Request, id(1), vec![open(2)]);
    again.effects = vec![Effect::OpenExchange {
        sender: member(PROVIDER),
        request_hash: "other".into(),
        at_millis: 2,
    }];
    store.append(&[first, again]).await.unwrap();
    let row = store.exchange(id(1)).await.unwrap().unwrap();
    assert_eq!(row.sender, CONSUMER);
    assert_eq!(row.request_hash, "hash");
    assert_eq!(
        store.entries(0, 10).await.unwrap().len(),
        2,
        "both are logged"
    );
}

async fn appends_at_the_tail_adopt_what_other_writers_wrote(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    // Two writers that each know nothing of the other.
    let mut a = Entries::new();
    let mut b = Entries::new();
    let from_a = a.item(EntryKind::Request, id(1), vec![open(1)]);
    store.append(std::slice::from_ref(&from_a)).await.unwrap();
    let tail = store
        .append_at_tail(
            0,
            &Claims {
                opening: vec![id(1), id(2)],
                ..Claims::default()
            },
            Box::new(|tail: AtTail<'_>| {
                // Exchange 1 was opened by the other writer; 2 is new.
                assert_eq!(tail.opened, [id(1)]);
                b.next = tail.adopted.len() as u64;
                b.prev = *tail.adopted.last().unwrap();
                vec![b.item(EntryKind::Request, id(2), vec![open(2)])]
            }),
        )
        .await
        .unwrap();
    assert_eq!(tail.adopted, vec![from_a.sealed.leaf_hash]);
    assert_eq!(tail.written[0].sealed.record.statement.index, 1);
    let entries = store.entries(0, 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    // Concurrent tail appends from many tasks never collide.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..8u8 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut w = Entries::new();
            let known = 0;
            store
                .append_at_tail(
                    known,
                    &Claims::default(),
                    Box::new(move |tail: AtTail<'_>| {
                        w.next = tail.adopted.len() as u64;
                        w.prev = *tail.adopted.last().unwrap();
                        vec![w.item(EntryKind::Request, id(10 + n), vec![open(10)])]
                    }),
                )
                .await
                .unwrap()
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let entries = store.entries(0, 100).await.unwrap();
    assert_eq!(entries.len(), 10);
    assert!(entries.iter().enumerate().all(|(i, e)| e.index == i as u64));
}

/// The exchange ids of items, to compare batches handed back.
fn ids_of(items: &[AppendItem]) -> Vec<ExchangeId> {
    items
        .iter()
        .map(|i| i.sealed.record.statement.draft.exchange_id)
        .collect()
}

/// The events of a service waiting in a consumer's inbox that it was never
/// handed are taken back once it would no longer be delivered them: its
/// last grant for the service revoked, or its subscription to their version
/// removed. The change writes the withdrawal; its inbox hands out nothing
/// until the withdrawal is worked off, in batches, possibly by another hub.
/// Nothing else goes: not while it still receives them, not another
/// service's, not a queued request, not a message already leased (its
/// acknowledgement is still to be logged).
async fn withdrawn_are_only_the_events_never_handed_out_and_no_longer_delivered(
    store: Arc<dyn Store>,
) {
    registry(store.as_ref()).await;
    let consumer = member(CONSUMER);
    let service = ServiceName::parse("enterprise.lookup").unwrap();
    let mut v2 = store.service(&service, 1).await.unwrap().unwrap();
    v2.version = 2;
    store.upsert_service(&v2).await.unwrap();
    let grant = |purpose: &str| Grant {
        consumer: consumer.clone(),
        service: service.clone(),
        purpose: PurposeCode::parse(purpose).unwrap(),
        fields: None,
    };
    let subscription = |version| Subscription {
        subscriber: consumer.clone(),
        service: service.clone(),
        version,
    };
    let (tax, stats) = (grant("tax_administration"), grant("statistics"));
    store.add_grant(&tax).await.unwrap();
    store.add_grant(&stats).await.unwrap();
    store.add_subscription(&subscription(1)).await.unwrap();
    store.add_subscription(&subscription(2)).await.unwrap();
    let mut e = Entries::new();
    let to_consumer = Effect::Enqueue {
        recipient: consumer.clone(),
        visible_at_millis: 0,
    };
    let events = |e: &mut Entries, ids: &[u8]| -> Vec<AppendItem> {
        ids.iter()
            .map(|&n| {
                let effects = vec![open(1_000), Effect::CloseExchange, to_consumer.clone()];
                e.item(EntryKind::Event, id(n), effects)
            })
            .collect()
    };
    let mut items = events(&mut e, &[1, 2, 3]);
    items.push(e.item(
        EntryKind::Request,
        id(4),
        vec![open(1_000), to_consumer.clone()],
    ));
    store.append(&items).await.unwrap();
    let handed = store.lease(&consumer, 1, 10_000, 60_000).await.unwrap();
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].exchange_id, id(1));
    let waiting = || async {
        let mut found = Vec::new();
        for n in 1..=6 {
            if delivery(&*store, &consumer, id(n)).await.is_some() {
                found.push(n);
            }
        }
        found
    };
    let withdraw = |service: &ServiceName| RegistryChange::WithdrawUnfetchedEvents {
        recipient: consumer.clone(),
        service: service.clone(),
        at_millis: 5_000,
    };
    // A change with its withdrawal; worked off in batches of two messages,
    // as another hub would: how many went.
    let change = |change: RegistryChange, of: &ServiceName| {
        let (store, withdrawal) = (store.clone(), withdraw(of));
        async move {
            store.apply_changes(&[change, withdrawal]).await.unwrap();
            let pending = store.pending_withdrawals(5_001).await.unwrap();
            assert_eq!(pending.len(), 1);
            assert!(store.pending_withdrawals(5_000).await.unwrap().is_empty());
            let mut after = InboxPosition::START;
            let mut removed = 0;
            while let Some((last, n)) = store.withdraw_batch(&pending[0], after, 2).await.unwrap() {
                // The inbox is closed until the withdrawal is worked off.
                assert!(
                    store
                        .lease(&pending[0].recipient, 10, 20_000, 60_000)
                        .await
                        .unwrap()
                        .is_empty()
                );
                (after, removed) = (last, removed + n);
            }
            store.finish_withdrawal(pending[0].id).await.unwrap();
            removed
        }
    };

    // Another purpose's grant for the service remains: nothing goes.
    assert_eq!(change(RegistryChange::RevokeGrant(tax), &service).await, 0);
    assert_eq!(waiting().await, [1, 2, 3, 4]);
    // The events are of v1: unsubscribed from v2, nothing goes.
    let unsubscribe = |version| RegistryChange::RemoveSubscription(subscription(version));
    assert_eq!(change(unsubscribe(2), &service).await, 0);
    assert_eq!(waiting().await, [1, 2, 3, 4]);
    // Unsubscribed from v1: the two events never handed out go.
    assert_eq!(change(unsubscribe(1), &service).await, 2);
    assert_eq!(waiting().await, [1, 4]);

    // Subscribed again, two more events; the last grant goes, with a
    // withdrawal of another service's events: nothing goes.
    store.add_subscription(&subscription(1)).await.unwrap();
    store.append(&events(&mut e, &[5, 6])).await.unwrap();
    let other = ServiceName::parse("citizen.lookup").unwrap();
    assert_eq!(change(RegistryChange::RevokeGrant(stats), &other).await, 0);
    assert_eq!(waiting().await, [1, 4, 5, 6]);
    // This service's: the two events never handed out go, and the inbox
    // hands out again (the queued request).
    let removed = store.apply_changes(&[withdraw(&service)]).await.unwrap();
    assert_eq!(removed, 1, "one withdrawal written");
    assert_eq!(
        withdrawal::work_off(store.as_ref(), 5_001, |_| true)
            .await
            .unwrap(),
        2
    );
    assert_eq!(waiting().await, [1, 4]);
    let leased = store.lease(&consumer, 10, 20_000, 60_000).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].exchange_id, id(4));
}

/// Whether the provider's queue holds exchange `id`.
/// The one message `id` waiting for `recipient`, if any.
async fn delivery(store: &dyn Store, recipient: &Member, id: ExchangeId) -> Option<Delivery> {
    let mut found = store.deliveries(recipient, &[id]).await.unwrap();
    assert!(found.len() <= 1, "{found:?}");
    found.pop()
}

async fn queued(store: &dyn Store, id: ExchangeId) -> bool {
    delivery(store, &member(PROVIDER), id).await.is_some()
}

async fn a_presumed_append_writes_only_where_the_log_ends(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let version = store.registry_version().await.unwrap();
    let at = |size| Presumed {
        size,
        registry_version: version,
    };
    let written = |p: Presumption| match p {
        Presumption::Written(items) => items,
        Presumption::Moved(_) => panic!("the log had not moved"),
    };
    let moved = |p: Presumption| match p {
        Presumption::Moved(items) => items,
        Presumption::Written(_) => panic!("written though the log had moved"),
    };
    let mut e = Entries::new();
    // Where the log ends: written, effects and all.
    let event = e.item(
        EntryKind::Event,
        id(1),
        vec![open(1), Effect::CloseExchange, enqueue(0)],
    );
    let request = e.item(EntryKind::Request, id(2), vec![open(2), enqueue(0)]);
    let items = written(
        store
            .append_presumed(at(0), vec![event, request])
            .await
            .unwrap(),
    );
    assert_eq!(ids_of(&items), [id(1), id(2)]);
    assert!(matches!(
        store.exchange(id(1)).await.unwrap().unwrap().state,
        ExchangeState::Done { .. }
    ));
    assert!(queued(store.as_ref(), id(2)).await);

    // Another writer appended meanwhile: this one's batch, sealed at 2,
    // comes back whole and nothing of it is written.
    let mut other = Entries::after(2, items[1].sealed.leaf_hash);
    store
        .append(&[other.item(EntryKind::Request, id(3), vec![open(3)])])
        .await
        .unwrap();
    let late = e.item(EntryKind::Request, id(4), vec![open(4), enqueue(0)]);
    let back = moved(store.append_presumed(at(2), vec![late]).await.unwrap());
    assert_eq!(ids_of(&back), [id(4)]);
    assert!(store.exchange(id(4)).await.unwrap().is_none());
    assert!(!queued(store.as_ref(), id(4)).await);
    assert_eq!(store.entries(0, 10).await.unwrap().len(), 3);

    // Sealed again at the real tail but on an older registry version, or
    // opening an exchange that is open already: handed back as well.
    let tail_hash = store.entries(2, 1).await.unwrap()[0].leaf_hash;
    let at_the_tail = || Entries::after(3, tail_hash);
    let mut w = at_the_tail();
    let fresh = w.item(EntryKind::Request, id(4), vec![open(4)]);
    let stale = Presumed {
        size: 3,
        registry_version: version - 1,
    };
    moved(store.append_presumed(stale, vec![fresh]).await.unwrap());
    let mut w = at_the_tail();
    let reopen = w.item(EntryKind::Request, id(3), vec![open(5)]);
    moved(store.append_presumed(at(3), vec![reopen]).await.unwrap());
    assert_eq!(store.entries(0, 10).await.unwrap().len(), 3);
    assert_eq!(
        store.exchange(id(3)).await.unwrap().unwrap().request_hash,
        "hash"
    );

    // The presumption holding, a batch that also updates rows (an answer
    // closing its request's exchange) is written with its changes.
    let mut w = at_the_tail();
    let answer = w.item(
        EntryKind::Response,
        id(2),
        vec![
            Effect::CloseExchange,
            Effect::Dequeue {
                recipient: member(PROVIDER),
            },
        ],
    );
    let answer = written(store.append_presumed(at(3), vec![answer]).await.unwrap());
    assert_eq!(
        w.reply(id(2), &store.exchange(id(2)).await.unwrap().unwrap().state),
        answer[0].message()
    );
    assert!(!queued(store.as_ref(), id(2)).await);

    // A request and its answer in one batch: the answer's reply is kept.
    let mut w = Entries::after(4, answer[0].sealed.leaf_hash);
    let both = vec![
        w.item(EntryKind::Request, id(6), vec![open(6)]),
        w.item(EntryKind::Response, id(6), vec![Effect::CloseExchange]),
    ];
    let both = written(store.append_presumed(at(4), both).await.unwrap());
    assert_eq!(
        w.reply(id(6), &store.exchange(id(6)).await.unwrap().unwrap().state),
        both[1].message()
    );
    assert_eq!(store.entries(0, 10).await.unwrap().len(), 6);

    // A message queued and removed by one batch (a receipt, an answer
    // settling it) is not left queued, nor is one queued before.
    let mut w = Entries::after(6, both[1].sealed.leaf_hash);
    let dequeue = || Effect::Dequeue {
        recipient: member(PROVIDER),
    };
    let earlier = w.item(EntryKind::Request, id(7), vec![open(7), enqueue(0)]);
    written(store.append_presumed(at(6), vec![earlier]).await.unwrap());
    assert!(queued(store.as_ref(), id(7)).await);
    let batch = vec![
        w.item(EntryKind::Request, id(8), vec![open(8), enqueue(0)]),
        w.item(EntryKind::Receipt, id(8), vec![dequeue()]),
        w.item(EntryKind::Receipt, id(7), vec![dequeue()]),
    ];
    written(store.append_presumed(at(7), batch).await.unwrap());
    assert!(
        !queued(store.as_ref(), id(8)).await,
        "queued and removed at once"
    );
    assert!(
        !queued(store.as_ref(), id(7)).await,
        "queued by an earlier commit"
    );
}

/// The registry version the writer reads under its lock.
async fn version_at_the_tail(store: &dyn Store) -> u64 {
    let known = store.entries(0, 1000).await.unwrap().len() as u64;
    let mut seen = None;
    store
        .append_at_tail(
            known,
            &Claims::default(),
            Box::new(|tail: AtTail<'_>| {
                seen = Some(tail.registry_version);
                vec![]
            }),
        )
        .await
        .unwrap();
    let seen = seen.unwrap();
    assert_eq!(seen, store.registry_version().await.unwrap());
    seen
}

async fn the_registry_version_advances_with_each_change_requests_are_decided_on(
    store: Arc<dyn Store>,
) {
    let start = version_at_the_tail(store.as_ref()).await;
    registry(store.as_ref()).await;
    let mut last = version_at_the_tail(store.as_ref()).await;
    assert!(last > start, "agencies and services added");
    let grant = Grant {
        consumer: member(CONSUMER),
        service: ServiceName::parse("enterprise.lookup").unwrap(),
        purpose: PurposeCode::parse("tax_audit").unwrap(),
        fields: None,
    };
    let suspended = AgencyRecord {
        member: member(CONSUMER),
        name: CONSUMER.into(),
        signing_key: None,
        suspended: true,
        broker_user: None,
    };
    let subscription = Subscription {
        subscriber: member(CONSUMER),
        service: ServiceName::parse("enterprise.lookup").unwrap(),
        version: 1,
    };
    for change in [
        RegistryChange::AddGrant(grant.clone()),
        RegistryChange::UpsertAgency(suspended),
        RegistryChange::AddSubscription(subscription.clone()),
        RegistryChange::RemoveSubscription(subscription.clone()),
        RegistryChange::RevokeGrant(grant),
    ] {
        store
            .apply_changes(std::slice::from_ref(&change))
            .await
            .unwrap();
        let now = version_at_the_tail(store.as_ref()).await;
        assert!(now > last, "{change:?} advanced the version");
        last = now;
        let subscribed = store.subscriptions().await.unwrap().contains(&subscription);
        assert_eq!(
            subscribed,
            matches!(change, RegistryChange::AddSubscription(_)),
            "{change:?}"
        );
    }
    // What requests are not decided on leaves it alone.
    store.add_witness("w", "w+00000000+AAAA").await.unwrap();
    assert_eq!(version_at_the_tail(store.as_ref()).await, last);
}

async fn leases_hide_messages_until_they_expire(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let later = 5_000;
    let batch = vec![
        e.item(EntryKind::Event, id(1), vec![enqueue(0)]),
        e.item(EntryKind::Event, id(1), vec![enqueue(0)]), // a duplicate is ignored
        e.item(EntryKind::Event, id(2), vec![enqueue(later)]),
    ];
    store.append(&batch).await.unwrap();
    let provider = member(PROVIDER);
    let first = store.lease(&provider, 10, 1000, 500).await.unwrap();
    assert_eq!(
        first.len(),
        1,
        "one message for id 1; id 2 is not visible yet"
    );
    assert!(
        store
            .lease(&provider, 10, 1200, 500)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.lease(&provider, 10, 1500, 500).await.unwrap();
    assert_eq!(again.len(), 1, "back after the visibility timeout");
    assert_eq!(again[0].attempts, 2);
    assert_eq!(
        delivery(&*store, &provider, id(1)).await.unwrap().attempts,
        2
    );
    assert!(store.remove_delivery(&provider, id(1)).await.unwrap());
    assert!(!store.remove_delivery(&provider, id(1)).await.unwrap());
    let late = store.lease(&provider, 10, later, 500).await.unwrap();
    assert_eq!(
        late.iter().map(|d| d.exchange_id).collect::<Vec<_>>(),
        vec![id(2)]
    );
    assert!(
        store
            .lease(&member(CONSUMER), 10, later, 500)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A message whose lease lapsed becomes visible again when it lapsed: it
/// waits behind those visible before, even those queued after it. A batch
/// comes in the order it was queued.
async fn a_lease_hands_out_the_longest_waiting_first(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let batch = vec![
        e.item(EntryKind::Event, id(1), vec![enqueue(0)]),
        e.item(EntryKind::Event, id(2), vec![enqueue(0)]),
        e.item(EntryKind::Event, id(3), vec![enqueue(100)]),
        e.item(EntryKind::Event, id(4), vec![enqueue(300)]),
    ];
    store.append(&batch).await.unwrap();
    let provider = member(PROVIDER);
    let lease = async |max: u32, now: u64| {
        let leased = store.lease(&provider, max, now, 100).await.unwrap();
        leased.iter().map(|d| d.exchange_id).collect::<Vec<_>>()
    };
    assert_eq!(lease(1, 50).await, vec![id(1)], "visible again at 150");
    assert_eq!(lease(2, 200).await, vec![id(2), id(3)]);
    assert_eq!(lease(10, 400).await, vec![id(1), id(2), id(3), id(4)]);
}

async fn concurrent_leases_never_hand_out_one_message_twice(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let batch: Vec<_> = (0..60)
        .map(|n| e.item(EntryKind::Event, id(n), vec![enqueue(0)]))
        .collect();
    store.append(&batch).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut got = Vec::new();
            loop {
                let leased = store.lease(&member(PROVIDER), 4, 10, 60_000).await.unwrap();
                assert!(
                    leased.len() <= 4,
                    "a lease of 4 handed out {}",
                    leased.len()
                );
                if leased.is_empty() {
                    return got;
                }
                got.extend(leased.into_iter().map(|d| d.exchange_id));
            }
        });
    }
    let mut all = Vec::new();
    while let Some(got) = tasks.join_next().await {
        all.extend(got.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, 60, "every message leased exactly once");
    assert_eq!(all.len(), 60);
}

async fn checkpoints_witnesses_and_cosignatures(store: Arc<dyn Store>) {
    assert!(store.latest_checkpoint().await.unwrap().is_none());
    for size in [1u64, 5, 3] {
        store
            .add_checkpoint(&StoredCheckpoint {
                size,
                root: [size as u8; 32],
                note: format!("note {size}"),
            })
            .await
            .unwrap();
    }
    assert!(
        store
            .add_checkpoint(&StoredCheckpoint {
                size: 5,
                root: [0; 32],
                note: "another note for 5".into(),
            })
            .await
            .is_err(),
        "a checkpoint is never replaced"
    );
    let sizes = |page: Vec<hub_server::store::CosignedCheckpoint>| -> Vec<u64> {
        page.iter().map(|c| c.checkpoint.size).collect()
    };
    assert_eq!(
        sizes(store.checkpoints_from(0, 100).await.unwrap()),
        [1, 3, 5]
    );
    assert_eq!(sizes(store.checkpoints_from(2, 1).await.unwrap()), [3]);
    assert!(store.checkpoints_from(6, 100).await.unwrap().is_empty());
    assert_eq!(
        store.latest_checkpoint().await.unwrap().unwrap().note,
        "note 5"
    );
    let three = store.checkpoint_of_size(3).await.unwrap().unwrap();
    assert_eq!(
        (three.size, three.root, three.note.as_str()),
        (3, [3; 32], "note 3")
    );
    assert!(store.checkpoint_of_size(4).await.unwrap().is_none());

    store.add_witness("w1", "w1+00000000+AAAA").await.unwrap();
    store.add_witness("w1", "w1+11111111+BBBB").await.unwrap();
    store.add_witness("w0", "w0+22222222+CCCC").await.unwrap();
    assert_eq!(
        store.witnesses().await.unwrap(),
        vec![
            ("w0".into(), "w0+22222222+CCCC".into()),
            ("w1".into(), "w1+11111111+BBBB".into())
        ]
    );
    store.add_cosignature(5, "w1", "— w1 old").await.unwrap();
    store.add_cosignature(5, "w1", "— w1 new").await.unwrap();
    store.add_cosignature(5, "w0", "— w0").await.unwrap();
    assert_eq!(
        store.cosignatures(5).await.unwrap(),
        vec!["— w0", "— w1 new"]
    );
    assert!(store.cosignatures(3).await.unwrap().is_empty());
    let cosigned: Vec<(u64, Vec<String>)> = store
        .checkpoints_from(1, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.checkpoint.size, c.cosignatures))
        .collect();
    assert_eq!(
        cosigned,
        [
            (1, vec![]),
            (3, vec![]),
            (5, vec!["— w0".to_owned(), "— w1 new".to_owned()])
        ]
    );
    assert!(
        store.add_cosignature(4, "w0", "— w0").await.is_err(),
        "no checkpoint of size 4"
    );
}

async fn purge_removes_old_bodies_and_replies_but_keeps_the_log(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    // Entries are logged on 2026-11-01, -02, -03, -04.
    let batch = vec![
        e.item(EntryKind::Request, id(1), vec![open(1_000)]),
        e.item(EntryKind::Request, id(2), vec![open(9_000)]),
    ];
    store.append(&batch).await.unwrap();
    let closes = vec![
        e.item(EntryKind::Response, id(1), vec![Effect::CloseExchange]),
        e.item(EntryKind::Response, id(2), vec![Effect::CloseExchange]),
    ];
    store.append(&closes).await.unwrap();
    let (bodies, replies) = store
        .purge("2026-11-03T00:00:00.000Z", 5_000)
        .await
        .unwrap();
    assert_eq!((bodies, replies), (2, 1));
    let entries = store.entries(0, 10).await.unwrap();
    assert_eq!(entries.len(), 4, "the log itself is never purged");
    let kept: Vec<_> = entries.iter().map(|e| e.body.is_some()).collect();
    assert_eq!(kept, vec![false, false, true, true]);
    assert!(store.exchange(id(1)).await.unwrap().is_none());
    assert!(store.exchange(id(2)).await.unwrap().is_some());
}

async fn the_outbox_keeps_dispatched_messages_until_confirmed(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let dispatch = |instance: &str| Effect::Dispatch {
        recipient: member(PROVIDER),
        instance: instance.into(),
    };
    let batch = vec![
        e.item(EntryKind::Request, id(1), vec![open(1), dispatch("a")]),
        e.item(EntryKind::Request, id(2), vec![open(2), dispatch("a")]),
        e.item(EntryKind::Request, id(4), vec![open(4), dispatch("b")]),
        e.item(EntryKind::Request, id(3), vec![open(3), dispatch("a")]),
    ];
    store.append(&batch).await.unwrap();
    assert!(
        store
            .lease(&member(PROVIDER), 10, 0, 1)
            .await
            .unwrap()
            .is_empty(),
        "dispatched messages are not in the inbox"
    );
    let rows = store.outbox("a", 2).await.unwrap();
    let ids: Vec<_> = rows.iter().map(|r| r.exchange_id).collect();
    assert_eq!(ids, vec![id(1), id(2)], "oldest first, at most max");
    assert_eq!(rows[0].recipient, member(PROVIDER));
    assert_eq!(Some(&rows[0].sealed), batch[0].sealed_message.as_ref());
    store.remove_outbox(&[rows[0].seq]).await.unwrap();
    let theirs = store.outbox("b", 10).await.unwrap();
    assert_eq!(theirs.len(), 1, "each instance relays its own rows");
    assert_eq!(theirs[0].exchange_id, id(4));
    let left: Vec<_> = store
        .outbox("a", 10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.exchange_id)
        .collect();
    assert_eq!(left, vec![id(2), id(3)]);
    // What waits, as the metrics report it: outbox rows by instance, and
    // the provider's inbox empty (dispatched messages never enter it).
    let backlog = store.backlog().await.unwrap();
    assert_eq!(
        backlog.outbox,
        vec![("a".to_owned(), 2), ("b".to_owned(), 1)]
    );
    assert!(backlog.inboxes.is_empty(), "{backlog:?}");
    let queued = e.item(EntryKind::Request, id(5), vec![open(5), enqueue(0)]);
    store.append(&[queued]).await.unwrap();
    assert_eq!(
        store.backlog().await.unwrap().inboxes,
        vec![(PROVIDER.to_owned(), 1)]
    );
}

fn subjects(list: &[&str]) -> Effect {
    Effect::IndexSubjects {
        subjects: list.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn the_subject_index_finds_whole_exchanges_oldest_first(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let exchange_of = |records: &[String]| -> Vec<String> {
        records
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r).unwrap()["exchange_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    // Exchange 1 is about An (its request); exchange 2 about An and Bình
    // (its answer only); exchange 3 about Bình (its request names him
    // twice); their entries interleave.
    let batch = [
        e.item(EntryKind::Request, id(1), vec![subjects(&["an"])]),
        e.item(EntryKind::Request, id(2), vec![]),
        e.item(
            EntryKind::Request,
            id(3),
            vec![subjects(&["binh"]), subjects(&["binh"])],
        ),
        e.item(EntryKind::Response, id(2), vec![subjects(&["an", "binh"])]),
        e.item(EntryKind::Response, id(1), vec![]),
    ];
    // The first three entries indexed, the last two found past the index.
    store.append(&batch[..3]).await.unwrap();
    assert_eq!(store.index_subjects(100).await.unwrap(), 3);
    assert_eq!(store.index_subjects(100).await.unwrap(), 0);
    store.append(&batch[3..]).await.unwrap();

    let (records, next) = store.subject_records("an", 10, None).await.unwrap();
    assert_eq!(next, None);
    // Every entry of both exchanges, in log order.
    assert_eq!(
        exchange_of(&records),
        [id(1), id(2), id(2), id(1)].map(|i| i.to_string())
    );
    let (records, _) = store.subject_records("binh", 10, None).await.unwrap();
    assert_eq!(
        exchange_of(&records),
        [id(2), id(3), id(2)].map(|i| i.to_string())
    );
    assert_eq!(
        store.subject_records("nobody", 10, None).await.unwrap(),
        (vec![], None)
    );

    // A page at a time: `next` is the first entry index of the page's last
    // exchange, and the next page starts after it.
    let (records, next) = store.subject_records("an", 1, None).await.unwrap();
    assert_eq!(exchange_of(&records), [id(1), id(1)].map(|i| i.to_string()));
    assert_eq!(next, Some(0));
    let (records, next) = store.subject_records("an", 1, next).await.unwrap();
    assert_eq!(exchange_of(&records), [id(2), id(2)].map(|i| i.to_string()));
    assert_eq!(next, None);
    // Exchanges come in the order they began, not in the order they first
    // touched the person: exchange 2 began (entry 1) before exchange 3
    // (entry 2), though it touched Bình only with its answer (entry 3).
    let (records, next) = store.subject_records("binh", 1, None).await.unwrap();
    assert_eq!(exchange_of(&records), [id(2), id(2)].map(|i| i.to_string()));
    assert_eq!(next, Some(1));
    let (records, next) = store.subject_records("binh", 1, next).await.unwrap();
    assert_eq!(exchange_of(&records), [id(3)].map(|i| i.to_string()));
    assert_eq!(next, None);
}

/// Indexers on two hubs at once: each entry is indexed by one of them,
/// and neither fails.
async fn two_indexers_at_once_index_each_entry_once(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let batch: Vec<_> = (0..120)
        .map(|n| {
            e.item(
                EntryKind::Request,
                id(n),
                vec![subjects(&["an", if n % 2 == 0 { "binh" } else { "chi" }])],
            )
        })
        .collect();
    store.append(&batch).await.unwrap();
    let indexer = |store: Arc<dyn Store>| async move {
        let mut covered = 0;
        loop {
            match store.index_subjects(7).await.unwrap() {
                0 => return covered,
                n => covered += n,
            }
        }
    };
    let (a, b) = tokio::join!(
        tokio::spawn(indexer(store.clone())),
        tokio::spawn(indexer(store.clone()))
    );
    assert_eq!(a.unwrap() + b.unwrap(), 120);
    let (records, next) = store.subject_records("binh", 100, None).await.unwrap();
    assert_eq!((records.len(), next), (60, None));
}

fn event_id(n: u32) -> ExchangeId {
    ExchangeId::from_parts(1_790_000_000_000 + u64::from(n), [9; 10])
}

/// Append events `0..count` (`event_id`), `per_batch` at a time, straight
/// to the store (no log writer, so no block roots kept).
async fn append_events(store: &dyn Store, e: &mut Entries, count: u32, per_batch: u32) {
    for first in (0..count).step_by(per_batch as usize) {
        let batch: Vec<AppendItem> = (first..(first + per_batch).min(count))
            .map(|n| e.item(EntryKind::Event, event_id(n), vec![]))
            .collect();
        store.append(&batch).await.unwrap();
    }
}

/// Two log writers on `store`, as two hubs would run them, with batches of
/// up to 8; their signing and data keys.
async fn two_log_writers(
    store: &Arc<dyn Store>,
) -> (
    [hub_server::log_writer::LogWriter; 2],
    Arc<SigningKey>,
    Arc<DataKey>,
) {
    use hub_server::clock::{Clock, SystemClock, SystemRandom};
    use hub_server::log_writer::{LogWriter, WriterKeys};

    let signing = Arc::new(
        SigningKey::generate(&ring::rand::SystemRandom::new())
            .unwrap()
            .0,
    );
    let data = Arc::new(DataKey::from_bytes(&[7; 32]));
    let keys = Arc::new(WriterKeys {
        signing: signing.clone(),
        data: data.clone(),
        random: Arc::new(SystemRandom::default()),
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let start = || LogWriter::start(store.clone(), keys.clone(), clock.clone(), 8);
    let (a, b) = (start().await.unwrap(), start().await.unwrap());
    ([a, b], signing, data)
}

async fn kept_block_roots_are_read_in_runs_and_never_replaced(store: Arc<dyn Store>) {
    let (a, b, c, d) = ([1; 32], [2; 32], [3; 32], [4; 32]);
    assert_eq!(store.block_roots(0, 10).await.unwrap(), Vec::<Hash>::new());
    store.keep_block_roots(0, &[a, b]).await.unwrap();
    store.keep_block_roots(3, &[d]).await.unwrap();
    store.keep_block_roots(1, &[c]).await.unwrap();
    assert_eq!(
        store.block_roots(0, 10).await.unwrap(),
        [a, b],
        "up to the gap"
    );
    assert_eq!(
        store.block_roots(0, 1).await.unwrap(),
        [a],
        "at most the limit"
    );
    assert_eq!(store.block_roots(3, 10).await.unwrap(), [d]);
    assert_eq!(store.block_roots(2, 10).await.unwrap(), Vec::<Hash>::new());
    // More than one statement's worth.
    let many: Vec<Hash> = (0..2_500u32)
        .map(|n| {
            let mut h = [0; 32];
            h[..4].copy_from_slice(&n.to_be_bytes());
            h
        })
        .collect();
    store.keep_block_roots(10, &many).await.unwrap();
    assert_eq!(store.block_roots(10, 5_000).await.unwrap(), many);
}

/// A log writer on `store`, as a hub runs it, with batches of up to 8.
async fn log_writer(store: &Arc<dyn Store>) -> hub_server::log_writer::LogWriter {
    use hub_server::clock::{SystemClock, SystemRandom};
    use hub_server::log_writer::{LogWriter, WriterKeys};

    let keys = Arc::new(WriterKeys {
        signing: Arc::new(
            SigningKey::generate(&ring::rand::SystemRandom::new())
                .unwrap()
                .0,
        ),
        data: Arc::new(DataKey::from_bytes(&[7; 32])),
        random: Arc::new(SystemRandom::default()),
    });
    LogWriter::start(store.clone(), keys, Arc::new(SystemClock), 8)
        .await
        .unwrap()
}

async fn a_log_writer_keeps_the_root_of_each_block_it_completes(store: Arc<dyn Store>) {
    // 700 entries written without kept block roots (as by an older hub),
    // and a checkpoint of the first 600.
    append_events(store.as_ref(), &mut Entries::new(), 700, 100).await;
    let leaves = store.leaf_hashes(0, 700).await.unwrap();
    store
        .add_checkpoint(&StoredCheckpoint {
            size: 600,
            root: hub_core::merkle::root(&leaves[..600]),
            note: "checkpoint\n".into(),
        })
        .await
        .unwrap();
    let block_roots = |leaves: &[Hash]| -> Vec<Hash> {
        leaves
            .chunks_exact(256)
            .map(hub_core::merkle::root)
            .collect()
    };

    // A start reads the leaves, and keeps the roots of the blocks they fill.
    let writer = log_writer(&store).await;
    assert_eq!(
        store.block_roots(0, 100).await.unwrap(),
        block_roots(&leaves)
    );
    // Appends that complete blocks keep their roots too (each commit's
    // before the next commit: these appends wait for one another).
    let data = DataKey::from_bytes(&[7; 32]);
    for n in 700..1_030u32 {
        let (draft, body) = unsealed(u64::from(n), EntryKind::Event, event_id(n), &data);
        writer.append(draft, body, vec![]).await.unwrap();
    }
    let leaves = store.leaf_hashes(0, 1_030).await.unwrap();
    assert_eq!(leaves.len(), 1_030);
    let head = writer.head();
    assert_eq!(head.root, hub_core::merkle::root(&leaves));
    assert_eq!(
        store.block_roots(0, 100).await.unwrap(),
        block_roots(&leaves),
        "blocks 0 to 3 kept"
    );
    drop(writer);

    // A restart folds the kept roots up to the checkpoint and reads the
    // leaves after it: the same tree.
    let writer = log_writer(&store).await;
    assert_eq!(writer.head(), head);
    let (draft, body) = unsealed(1_030, EntryKind::Event, event_id(1_030), &data);
    let item = writer.append(draft, body, vec![]).await.unwrap();
    assert_eq!(item.sealed.record.statement.index, 1_030);
    assert_eq!(
        item.sealed.record.statement.prev,
        URL_SAFE_NO_PAD.encode(leaves[1_029])
    );
}

async fn two_log_writers_on_one_store_keep_one_chain(store: Arc<dyn Store>) {
    use hub_server::log_writer::AppendError;

    registry(store.as_ref()).await;
    // Two writers (two hubs) on one store: each seals batches ahead of its
    // own commits, and must seal again whenever the other wrote between.
    let ([a, b], signing, data) = two_log_writers(&store).await;
    let version = version_at_the_tail(store.as_ref()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..240u32 {
        let writer = if n % 3 == 0 { b.clone() } else { a.clone() };
        let (draft, body) = unsealed(u64::from(n), EntryKind::Event, event_id(n), &data);
        // Some record decisions made on the registry as it stands.
        let decided = (n % 2 == 0).then_some(version);
        tasks.spawn(async move {
            writer
                .append_decided(decided, draft, body, vec![])
                .await
                .unwrap()
                .sealed
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(sealed) = tasks.join_next().await {
        acknowledged.push(sealed.unwrap());
    }

    // A registry change: decisions made before it are refused by both
    // writers, decisions made after it are written.
    store
        .upsert_agency(&AgencyRecord {
            member: member(CONSUMER),
            name: "renamed".into(),
            signing_key: None,
            suspended: false,
            broker_user: None,
        })
        .await
        .unwrap();
    for (n, writer) in [(1000, &a), (1001, &b)] {
        let (draft, body) = unsealed(u64::from(n), EntryKind::Event, event_id(n), &data);
        let refused = writer
            .append_decided(Some(version), draft, body, vec![])
            .await;
        assert!(
            matches!(refused, Err(AppendError::RegistryChanged { now }) if now > version),
            "{refused:?}"
        );
    }
    let now = version_at_the_tail(store.as_ref()).await;
    for (n, writer) in [(1002, &a), (1003, &b), (1004, &a)] {
        let (draft, body) = unsealed(u64::from(n), EntryKind::Event, event_id(n), &data);
        let sealed = writer
            .append_decided(Some(now), draft, body, vec![])
            .await
            .unwrap()
            .sealed;
        acknowledged.push(sealed);
    }

    // One chain: every entry after the one before, signed, and exactly
    // what its writer acknowledged.
    let jwks = hub_core::jws::Jwks {
        keys: vec![signing.public_jwk()],
    };
    let entries = store.entries(0, 1000).await.unwrap();
    assert_eq!(entries.len(), acknowledged.len());
    let mut prev: Hash = [0; 32];
    for (i, entry) in entries.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_str(&entry.record).unwrap();
        assert_eq!(record["index"], i as u64);
        assert_eq!(record["prev"], hub_core::hash::b64url(&prev));
        hub_core::log::verify_record_signature(&record, &jwks).unwrap();
        assert_eq!(
            entry.leaf_hash,
            hub_core::log::canonical_record_leaf_hash(&entry.record)
        );
        prev = entry.leaf_hash;
    }
    for sealed in &acknowledged {
        let index = usize::try_from(sealed.record.statement.index).unwrap();
        assert_eq!(
            entries[index].record.as_bytes(),
            sealed.canonical.as_slice()
        );
    }
}

/// Entry `index` as a hub before entry format 2 wrote it: the hub's JWS
/// over the statement (`hub_signature`), the leaf over the whole record.
fn sealed_in_version_1(entries: &Entries, kind: EntryKind, index: u64, prev: &Hash) -> AppendItem {
    use hub_core::log::{HubSeal, Record, Sealed, place};
    let (draft, body) = unsealed(index, kind, id(u8::try_from(index).unwrap()), &entries.data);
    let mut statement = place(draft, index, prev, datetime!(2026-11-01 00:00 UTC))
        .unwrap()
        .statement()
        .clone();
    statement.v = 1;
    let signature = entries
        .key
        .sign_detached(&hub_core::jcs::canonicalize_serialize(&statement).unwrap());
    let record = Record {
        statement,
        seal: HubSeal::Signature(signature),
    };
    let canonical = hub_core::jcs::canonicalize_serialize(&record).unwrap();
    AppendItem {
        sealed_message: None,
        sealed: Sealed {
            leaf_hash: hub_core::log::leaf_hash(&canonical),
            record,
            canonical,
        },
        body,
        effects: Vec::new(),
    }
}

/// A hub upgraded to entry format 2 goes on from a log of version 1
/// entries: one chain, every record verifying by its own version.
async fn a_log_of_version_1_entries_goes_on_in_version_2(store: Arc<dyn Store>) {
    use hub_server::clock::{Clock, SystemClock, SystemRandom};
    use hub_server::log_writer::{LogWriter, WriterKeys};

    registry(store.as_ref()).await;
    let old = Entries::new();
    let mut prev: Hash = [0; 32];
    let mut items = Vec::new();
    for index in 0..3 {
        let item = sealed_in_version_1(&old, EntryKind::Receipt, index, &prev);
        prev = item.sealed.leaf_hash;
        items.push(item);
    }
    store.append(&items).await.unwrap();

    let keys = Arc::new(WriterKeys {
        signing: Arc::new(old.key),
        data: Arc::new(DataKey::from_bytes(&[7; 32])),
        random: Arc::new(SystemRandom::default()),
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let writer = LogWriter::start(store.clone(), keys.clone(), clock, 8)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..6u32 {
        let (draft, body) = unsealed(u64::from(n), EntryKind::Event, event_id(n), &keys.data);
        let writer = writer.clone();
        tasks.spawn(async move { writer.append(draft, body, vec![]).await.unwrap() });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }

    let jwks = hub_core::jws::Jwks {
        keys: vec![keys.signing.public_jwk()],
    };
    let entries = store.entries(0, 100).await.unwrap();
    assert_eq!(entries.len(), 9);
    let mut prev: Hash = [0; 32];
    for (i, entry) in entries.iter().enumerate() {
        let record: serde_json::Value = serde_json::from_str(&entry.record).unwrap();
        let version = if i < 3 { 1 } else { 2 };
        assert_eq!(record["v"], version, "entry {i}");
        assert_eq!(record.get("hub_seal").is_some(), version == 2, "entry {i}");
        assert_eq!(record["prev"], hub_core::hash::b64url(&prev), "entry {i}");
        hub_core::log::verify_record_signature(&record, &jwks).unwrap();
        assert_eq!(
            entry.leaf_hash,
            hub_core::log::canonical_record_leaf_hash(&entry.record),
            "entry {i}"
        );
        assert_eq!(
            entry.leaf_hash,
            hub_core::log::record_leaf_hash(&record).unwrap()
        );
        // The server reads either version back.
        let _: hub_core::log::Record = serde_json::from_value(record).unwrap();
        prev = entry.leaf_hash;
    }
}

async fn an_exchange_opened_through_two_writers_at_once_is_logged_once(store: Arc<dyn Store>) {
    use hub_server::log_writer::AppendError;

    registry(store.as_ref()).await;
    let (writers, _, data) = two_log_writers(&store).await;
    // Every id opened through both writers at once, as two hubs do when a
    // sender retries an event through the other one: the first to commit
    // keeps it, the other is told so and writes nothing.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..24u32 {
        for (w, writer) in (0u64..).zip(&writers) {
            let writer = writer.clone();
            let (draft, body) =
                unsealed(u64::from(n) * 2 + w, EntryKind::Event, event_id(n), &data);
            let effects = vec![open(1_000), Effect::CloseExchange];
            tasks.spawn(async move { (n, writer.append(draft, body, effects).await) });
        }
    }
    let mut written = std::collections::BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (n, Ok(_)) => *written.entry(n).or_insert(0) += 1,
            (n, Err(AppendError::AlreadyOpen(id))) => assert_eq!(id, event_id(n)),
            (n, Err(e)) => panic!("exchange {n}: {e}"),
        }
    }
    assert!(
        written.len() == 24 && written.values().all(|&w| w == 1),
        "{written:?}"
    );
    let ids: Vec<String> = store
        .entries(0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| {
            let record: serde_json::Value = serde_json::from_str(&e.record).unwrap();
            record["exchange_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (24, 24));

    // Later, through either writer, the id stays taken.
    for (n, writer) in (100u64..).zip(&writers) {
        let (draft, body) = unsealed(n, EntryKind::Event, event_id(5), &data);
        let again = writer.append(draft, body, vec![open(2_000)]).await;
        assert!(
            matches!(again, Err(AppendError::AlreadyOpen(id)) if id == event_id(5)),
            "{again:?}"
        );
    }
}

async fn an_events_inbox_message_outlives_the_purge_of_replies_until_delivered(
    store: Arc<dyn Store>,
) {
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    // An event opens and closes its exchange and queues itself for a
    // subscriber in one entry (logged 2026-11-01).
    let event = logged_event(&*store, &mut e, 1).await;
    let subscriber = member(PROVIDER);
    // What an acknowledgement reads of it: the entry's record, not its body.
    let queued = delivery(&*store, &subscriber, id(1)).await.unwrap();
    assert!(
        matches!(queued.message, StoredMessage::Entry { body: None, .. }),
        "an event's inbox row points at its entry, not at a copy, and its body is not read: {queued:?}"
    );
    assert_eq!(
        queued.message.record_as(&e.data, id(1)).unwrap(),
        Some(serde_json::to_value(&event.sealed.record).unwrap()),
        "the record, read without the body"
    );

    // Replies and bodies older than the event are purged, but not the
    // message that still waits in an inbox, nor the body it is made of.
    let (bodies, replies) = store
        .purge("2026-11-05T00:00:00.000Z", 5_000)
        .await
        .unwrap();
    assert_eq!((bodies, replies), (0, 0));
    let leased = store.lease(&subscriber, 10, 10_000, 1_000).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        leased[0].message.open(&e.data, id(1)).unwrap(),
        event.message()
    );
    assert_eq!(
        e.reply(id(1), &store.exchange(id(1)).await.unwrap().unwrap().state),
        event.message()
    );

    // Once delivered, the reply and the body go with the next purge.
    assert!(store.remove_delivery(&subscriber, id(1)).await.unwrap());
    let (bodies, replies) = store
        .purge("2026-11-05T00:00:00.000Z", 5_000)
        .await
        .unwrap();
    assert_eq!((bodies, replies), (1, 1));
    assert!(store.exchange(id(1)).await.unwrap().is_none());
    assert_eq!(store.entries(0, 1).await.unwrap()[0].body, None);
}

/// Before migration 14 an exchange stored its reply sealed in `reply`
/// (and, on PostgreSQL, an event's inbox rows pointed there; on SQLite,
/// before migration 15, they held a sealed copy each): such rows,
/// made here by putting the sealed message back and clearing `reply_idx`,
/// still read as they did.
async fn an_event_stored_before_replies_pointed_at_entries(
    store: &dyn Store,
    make_old: impl AsyncFnOnce(Vec<u8>),
) {
    registry(store).await;
    let mut e = Entries::new();
    let event = logged_event(store, &mut e, 1).await;
    make_old(event.sealed_message.clone().unwrap()).await;
    let state = store.exchange(id(1)).await.unwrap().unwrap().state;
    assert_eq!(
        state,
        ExchangeState::Done {
            reply: StoredMessage::Sealed(event.sealed_message.clone().unwrap())
        }
    );
    assert_eq!(e.reply(id(1), &state), event.message());
    let queued = delivery(store, &member(PROVIDER), id(1)).await.unwrap();
    assert_eq!(
        queued.message.open(&e.data, id(1)).unwrap(),
        event.message()
    );
    let leased = store.lease(&member(PROVIDER), 10, 0, 1_000).await.unwrap();
    assert_eq!(
        leased[0].message.open(&e.data, id(1)).unwrap(),
        event.message()
    );
}

#[tokio::test]
async fn sqlite_reads_replies_stored_before_they_pointed_at_entries() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hub.db").display());
    let store = hub_server::store::open(&url, PoolSettings::default())
        .await
        .unwrap();
    an_event_stored_before_replies_pointed_at_entries(store.as_ref(), async |sealed| {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("UPDATE exchanges SET reply = ?, reply_idx = NULL")
            .bind(&sealed)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("UPDATE deliveries SET message = ?")
            .bind(&sealed)
            .execute(&pool)
            .await
            .unwrap();
    })
    .await;
}

/// Subject index rows made before the index kept each row's exchange's
/// first entry (PostgreSQL's migration 16, SQLite's 17) get it from the
/// log when the hub starts on them, and page as new ones do. `make_old`
/// turns the index back into its old form and forgets the migration.
async fn subjects_indexed_before_the_first_entries_were_kept(
    url: &str,
    make_old: impl AsyncFnOnce(),
) {
    let store = hub_server::store::open(url, PoolSettings::default())
        .await
        .unwrap();
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    // As in `the_subject_index_finds_whole_exchanges_oldest_first`:
    // exchange 2 touched Bình only with its answer, after exchange 3 began.
    store
        .append(&[
            e.item(EntryKind::Request, id(1), vec![subjects(&["an"])]),
            e.item(EntryKind::Request, id(2), vec![]),
            e.item(EntryKind::Request, id(3), vec![subjects(&["binh"])]),
            e.item(EntryKind::Response, id(2), vec![subjects(&["an", "binh"])]),
            e.item(EntryKind::Response, id(1), vec![]),
        ])
        .await
        .unwrap();
    assert_eq!(store.index_subjects(100).await.unwrap(), 5);
    drop(store);
    make_old().await;

    let store = hub_server::store::open(url, PoolSettings::default())
        .await
        .unwrap();
    let pages = |subject: &'static str| {
        let store = store.clone();
        async move {
            let mut pages = Vec::new();
            let mut after = None;
            loop {
                let (records, next) = store.subject_records(subject, 1, after).await.unwrap();
                let kinds: Vec<String> = records
                    .iter()
                    .map(|r| {
                        let r: serde_json::Value = serde_json::from_str(r).unwrap();
                        format!(
                            "{} {}",
                            r["exchange_id"].as_str().unwrap(),
                            r["kind"].as_str().unwrap()
                        )
                    })
                    .collect();
                pages.push(kinds);
                match next {
                    Some(n) => after = Some(n),
                    None => return pages,
                }
            }
        }
    };
    let (one, two, three) = (id(1), id(2), id(3));
    assert_eq!(
        pages("binh").await,
        [
            vec![format!("{two} request"), format!("{two} response")],
            vec![format!("{three} request")],
        ]
    );
    assert_eq!(
        pages("an").await,
        [
            vec![format!("{one} request"), format!("{one} response")],
            vec![format!("{two} request"), format!("{two} response")],
        ]
    );
}

#[tokio::test]
async fn sqlite_subjects_indexed_before_the_first_entries_were_kept_page_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hub.db").display());
    subjects_indexed_before_the_first_entries_were_kept(&url, async || {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE old_subjects (subject TEXT NOT NULL, idx INTEGER NOT NULL,
                                        PRIMARY KEY (subject, idx));
             INSERT INTO old_subjects SELECT subject, idx FROM subjects;
             DROP TABLE subjects;
             ALTER TABLE old_subjects RENAME TO subjects;
             DELETE FROM _sqlx_migrations WHERE version = 17;",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    })
    .await;
}

#[tokio::test]
async fn postgres_subjects_indexed_before_the_first_entries_were_kept_page_in_order() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    subjects_indexed_before_the_first_entries_were_kept(&db.url, async || {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::raw_sql(
            "ALTER TABLE subjects DROP CONSTRAINT subjects_pkey;
             ALTER TABLE subjects DROP COLUMN exchange_first;
             ALTER TABLE subjects ADD PRIMARY KEY (subject, idx);
             DELETE FROM _sqlx_migrations WHERE version = 16;",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    })
    .await;
    db.drop_now().await;
}

/// Migration 15 rebuilds SQLite's inbox table so that an event's rows can
/// point at its entry: rows queued before it (sealed copies) survive it,
/// keep their order, and new ones queue behind them.
#[tokio::test]
async fn sqlite_inbox_rows_queued_before_migration_15_survive_it_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("hub.db").display());
    // Messages of entries that this test does not log (the data key is
    // the same in every `Entries`).
    let mut unlogged = Entries::new();
    let old = [1, 2].map(|n| unlogged.item(EntryKind::Event, id(n), vec![enqueue(0)]));
    let options = url
        .parse::<sqlx::sqlite::SqliteConnectOptions>()
        .unwrap()
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate!("../hub/server/migrations/sqlite")
        .run_to(14, &pool)
        .await
        .unwrap();
    // Newest first, so that the order kept is the queue's, not the ids'.
    for (seq, n) in [(7, 2), (9, 1)] {
        sqlx::query(
            "INSERT INTO deliveries (seq, recipient, exchange_id, message, visible_at)
             VALUES (?, ?, ?, ?, 0)",
        )
        .bind(seq)
        .bind(PROVIDER)
        .bind(id(n).to_string())
        .bind(&old[usize::from(n) - 1].sealed_message)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;

    let store = hub_server::store::open(&url, PoolSettings::default())
        .await
        .unwrap();
    registry(store.as_ref()).await;
    let mut e = Entries::new();
    let event = logged_event(&*store, &mut e, 3).await;
    let leased = store.lease(&member(PROVIDER), 10, 0, 1_000).await.unwrap();
    let ids: Vec<_> = leased.iter().map(|d| d.exchange_id).collect();
    assert_eq!(ids, [id(2), id(1), id(3)]);
    for (delivery, item) in leased.iter().zip([&old[1], &old[0], &event]) {
        assert_eq!(
            delivery
                .message
                .open(&e.data, delivery.exchange_id)
                .unwrap(),
            item.message()
        );
    }
    assert!(matches!(leased[0].message, StoredMessage::Sealed(_)));
    assert!(matches!(leased[2].message, StoredMessage::Entry { .. }));
}

#[tokio::test]
async fn postgres_reads_replies_stored_before_they_pointed_at_entries() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    an_event_stored_before_replies_pointed_at_entries(store.as_ref(), async |sealed| {
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        sqlx::query("UPDATE exchanges SET reply = $1, reply_idx = NULL")
            .bind(sealed)
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    })
    .await;
    drop(store);
    db.drop_now().await;
}

/// The hub's statements are prepared once per connection and run on one
/// generic plan (`PgStore::open`), made when they first run - on empty
/// tables, where a plan that reads the whole table costs least; kept, it
/// would read the whole log, every exchange or every queued message at
/// each commit as they grow. Here every commit goes through one
/// connection (a pool of one), alternately through the tail read and
/// presumed where the log ends, each batch opening exchanges and queueing
/// events, and answering and acknowledging those of the batch before:
/// eight commits on near-empty tables, twenty that grow them to ~30,000
/// entries, ~20,000 exchanges and ~10,000 messages, then small ones; over
/// ten of those PostgreSQL's own counters say how many rows were read, by
/// scanning or through an index.
#[tokio::test]
async fn postgres_commits_do_not_scan_the_log_as_it_grows() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = store_on_one_connection(&db.url).await;
    let mut entries = Entries::new();
    let version = store.registry_version().await.unwrap();
    let (mut known, mut opened) = (0u64, 0u32);
    let mut previous = 0..0;
    const EVENTS: u32 = 1_000_000;
    let mut commit = |size: u32| {
        let answered = previous.clone();
        previous = opened..opened + size;
        opened += size;
        let mut batch: Vec<AppendItem> = answered
            .clone()
            .map(|n| {
                entries.item(
                    EntryKind::Response,
                    event_id(n),
                    vec![Effect::CloseExchange],
                )
            })
            .collect();
        batch.extend(answered.map(|n| {
            let acknowledge = Effect::Acknowledge {
                recipient: member(PROVIDER),
            };
            entries.item(EntryKind::Receipt, event_id(EVENTS + n), vec![acknowledge])
        }));
        batch.extend(
            previous
                .clone()
                .map(|n| entries.item(EntryKind::Request, event_id(n), vec![open(1)])),
        );
        batch.extend(previous.clone().map(|n| {
            let effects = vec![open(1), Effect::CloseExchange, enqueue(0)];
            entries.item(EntryKind::Event, event_id(EVENTS + n), effects)
        }));
        let at = known;
        known += batch.len() as u64;
        (at, batch)
    };
    let write = async |n: usize, (at, batch): (u64, Vec<AppendItem>)| {
        if n.is_multiple_of(2) {
            let seal = Box::new(move |_: AtTail<'_>| batch);
            store
                .append_at_tail(at, &Claims::default(), seal)
                .await
                .unwrap();
        } else {
            let at = Presumed {
                size: at,
                registry_version: version,
            };
            let written = store.append_presumed(at, batch).await.unwrap();
            assert!(
                matches!(written, Presumption::Written(_)),
                "only this writer appends"
            );
        }
    };
    let growing = std::iter::repeat_n(1, 8).chain(std::iter::repeat_n(500, 20));
    for (n, size) in growing.enumerate() {
        write(n, commit(size)).await;
    }
    // This one still answers the last 500, a twentieth of the table:
    // scanning is the better plan for that.
    write(0, commit(1)).await;
    let tables = ["deliveries", "exchanges", "log_entries"];
    let before = rows_read(&store, &db.url, &tables).await;
    for n in 0..10 {
        write(2 * n + 1, commit(1)).await;
    }
    let after = rows_read(&store, &db.url, &tables).await;
    assert!(matches!(
        store
            .exchange(event_id(9_000))
            .await
            .unwrap()
            .unwrap()
            .state,
        ExchangeState::Done { .. }
    ));
    store.pool().close().await;
    db.drop_now().await;
    // A pass over any grown table or its indexes reads 10,000 rows or more.
    for ((table, scanned, indexed), (_, scanned_after, indexed_after)) in before.iter().zip(&after)
    {
        assert!(
            scanned_after - scanned < 1_000,
            "ten small commits read {} rows of {table} by scanning it",
            scanned_after - scanned
        );
        assert!(
            indexed_after - indexed < 1_000,
            "ten small commits read {} rows of {table} through its indexes",
            indexed_after - indexed
        );
    }
}

/// A lease reads about what it hands out, however long the backlog and
/// whatever plan PostgreSQL settled on: here the generic plan of the
/// prepared statement (one made without the limit's value, which
/// PostgreSQL may choose by itself after five runs), 6,000 events queued
/// for one subscriber, half of them leased and not acknowledged. Ten
/// leases of ten then read, by PostgreSQL's own counters, fewer rows than
/// one pass over the backlog would.
///
/// The half leased backlog is rewritten before the ten leases, without the
/// old versions the first leases left: while any snapshot in the database
/// (an autovacuum worker's, even on a catalog) is older than those
/// leases, every lease reads their 3,000 dead index entries again (4,590
/// and 30,650 rows in runs under load; 650 at most now, with a snapshot
/// held throughout). That is MVCC, which the hub's own vacuum of the
/// queues deals with, not the plan this test is about.
#[tokio::test]
async fn postgres_a_lease_reads_what_it_hands_out_not_the_backlog() {
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = store_on_one_connection(&db.url).await;
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(store.pool())
        .await
        .unwrap();
    registry(&store).await;
    let mut entries = Entries::new();
    for chunk in 0..6 {
        let batch: Vec<_> = (chunk * 1000..(chunk + 1) * 1000)
            .map(|n| {
                let effects = vec![open(1), Effect::CloseExchange, enqueue(0)];
                entries.item(EntryKind::Event, event_id(n), effects)
            })
            .collect();
        store.append(&batch).await.unwrap();
    }
    let provider = member(PROVIDER);
    let mut leased = Vec::new();
    for _ in 0..30 {
        let batch = store.lease(&provider, 100, 10, 60_000).await.unwrap();
        leased.extend(batch.iter().map(|d| d.exchange_id));
    }
    assert_eq!(leased, (0..3000).map(event_id).collect::<Vec<_>>());
    // TRUNCATE takes no notice of snapshots: the rows come back without
    // any dead version behind them.
    sqlx::raw_sql(
        "BEGIN;
         CREATE TEMP TABLE half_leased AS SELECT * FROM deliveries;
         TRUNCATE deliveries;
         INSERT INTO deliveries OVERRIDING SYSTEM VALUE SELECT * FROM half_leased;
         DROP TABLE half_leased;
         COMMIT;
         ANALYZE deliveries",
    )
    .execute(store.pool())
    .await
    .unwrap();

    let tables = ["deliveries", "exchanges", "log_bodies", "log_entries"];
    let before = rows_read(&store, &db.url, &tables).await;
    let mut next = Vec::new();
    for _ in 0..10 {
        let batch = store.lease(&provider, 10, 20, 60_000).await.unwrap();
        next.extend(batch.iter().map(|d| d.exchange_id));
    }
    let after = rows_read(&store, &db.url, &tables).await;
    store.pool().close().await;
    db.drop_now().await;
    assert_eq!(next, (3000..3100).map(event_id).collect::<Vec<_>>());
    for ((table, scanned, fetched), (_, scanned_after, fetched_after)) in before.iter().zip(&after)
    {
        let read = scanned_after + fetched_after - scanned - fetched;
        assert!(
            read < 3_000,
            "ten leases of ten read {read} rows of {table}"
        );
    }
}

/// A PostgreSQL store whose statements all go through one connection, so
/// that one session's plans and counters are those measured.
async fn store_on_one_connection(url: &str) -> hub_server::store::postgres::PgStore {
    let one_connection = PoolSettings {
        max_connections: 1,
        ..PoolSettings::default()
    };
    hub_server::store::postgres::PgStore::open(url, one_connection)
        .await
        .unwrap()
}

/// Per table of `tables`, the rows read so far by scanning it and the
/// entries read from its indexes: the store's one connection hands its
/// counters over first.
async fn rows_read(
    store: &hub_server::store::postgres::PgStore,
    url: &str,
    tables: &[&str],
) -> Vec<(String, i64, i64)> {
    use sqlx::Connection;
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(store.pool())
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let read = sqlx::query_as(
        "SELECT t.relname::text, t.seq_tup_read,
                COALESCE((SELECT sum(i.idx_tup_read) FROM pg_stat_user_indexes i
                          WHERE i.relid = t.relid), 0)::bigint
         FROM pg_stat_user_tables t WHERE t.relname = ANY($1) ORDER BY t.relname",
    )
    .bind(tables)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    read
}

/// Begin a transaction on `conn` that holds the log writers' lock, as
/// another hub's writer does while it appends.
async fn hold_the_writers_lock(conn: &mut sqlx::PgConnection) {
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(hub_server::store::postgres::LOG_WRITER_LOCK)
        .execute(&mut *conn)
        .await
        .unwrap();
}

/// A presumed append waits for the writers' lock itself. One that waits
/// while another writer commits entries at the same indexes reads a
/// snapshot from before that commit: PostgreSQL's unique index tells it
/// that the log moved, and it writes nothing.
#[tokio::test]
async fn postgres_a_presumed_append_behind_another_writers_commit_finds_the_log_moved() {
    use sqlx::Connection;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = hub_server::store::postgres::PgStore::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    registry(&store).await;
    let version = store.registry_version().await.unwrap();
    let store = Arc::new(store);
    let append_at = |size: u64, batch: Vec<AppendItem>| {
        let store = store.clone();
        let at = Presumed {
            size,
            registry_version: version,
        };
        tokio::spawn(async move { store.append_presumed(at, batch).await })
    };
    let mut other = sqlx::PgConnection::connect(&db.url).await.unwrap();

    // Another writer holds the lock and has written nothing: the presumed
    // append waits for the lock itself, and writes once it is free.
    hold_the_writers_lock(&mut other).await;
    let mut ours = Entries::new();
    let first = append_at(0, vec![ours.item(EntryKind::Event, id(1), vec![open(1)])]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
    )
    .fetch_one(&mut other)
    .await
    .unwrap();
    assert!(!first.is_finished(), "the presumed append did not wait");
    assert_eq!(
        waiting, 1,
        "the presumed append waits for the writers' lock"
    );
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    let Presumption::Written(written) = first.await.unwrap().unwrap() else {
        panic!("the log had not moved");
    };
    let after_first = written[0].sealed.leaf_hash;

    // The other writer holds the lock and has written entry 1, uncommitted:
    // once it commits, the presumed append at 1 finds the log moved.
    hold_the_writers_lock(&mut other).await;
    let mut theirs = Entries::after(1, after_first);
    let entry = theirs.item(EntryKind::Event, id(2), vec![]);
    sqlx::query(
        "INSERT INTO log_entries (idx, exchange_id, kind, record, leaf_hash) VALUES (1, $1, 'event', $2, $3)",
    )
    .bind(id(2).to_string())
    .bind(String::from_utf8(entry.sealed.canonical.clone()).unwrap())
    .bind(entry.sealed.leaf_hash.to_vec())
    .execute(&mut other)
    .await
    .unwrap();
    let mut ours = Entries::after(1, after_first);
    let second = append_at(
        1,
        vec![ours.item(
            EntryKind::Event,
            id(3),
            vec![open(3), Effect::CloseExchange],
        )],
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the presumed append did not wait");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    let outcome = second.await.unwrap().unwrap();
    assert!(matches!(outcome, Presumption::Moved(ref items) if ids_of(items) == [id(3)]));
    let entries = store.entries(0, 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[1].leaf_hash, entry.sealed.leaf_hash);
    assert!(store.exchange(id(3)).await.unwrap().is_none());
    other.close().await.unwrap();
    store.pool().close().await;
    drop(store);
    db.drop_now().await;
}

async fn a_message_is_acknowledged_once_whichever_writer_acknowledges_it(store: Arc<dyn Store>) {
    registry(store.as_ref()).await;
    let version = store.registry_version().await.unwrap();
    let provider = member(PROVIDER);
    let acknowledge = || Effect::Acknowledge {
        recipient: member(PROVIDER),
    };
    let mut e = Entries::new();
    let requests = vec![
        e.item(EntryKind::Request, id(1), vec![open(1), enqueue(0)]),
        e.item(EntryKind::Request, id(2), vec![open(2), enqueue(0)]),
    ];
    store.append(&requests).await.unwrap();
    let claims = |ids: &[u8]| Claims {
        acknowledging: ids.iter().map(|n| (provider.clone(), id(*n))).collect(),
        ..Claims::default()
    };
    // Under the lock the writer learns which messages are gone: 9 was
    // never queued; 1 is, and its receipt removes it.
    let mut gone = Vec::new();
    store
        .append_at_tail(
            2,
            &claims(&[1, 9]),
            Box::new(|tail: AtTail<'_>| {
                gone = tail.acknowledged.to_vec();
                vec![e.item(EntryKind::Receipt, id(1), vec![acknowledge()])]
            }),
        )
        .await
        .unwrap();
    assert_eq!(gone, [(provider.clone(), id(9))]);
    assert!(!queued(store.as_ref(), id(1)).await);
    let mut gone = Vec::new();
    store
        .append_at_tail(
            3,
            &claims(&[1, 2]),
            Box::new(|tail: AtTail<'_>| {
                gone = tail.acknowledged.to_vec();
                vec![]
            }),
        )
        .await
        .unwrap();
    assert_eq!(gone, [(provider.clone(), id(1))], "acknowledged by now");

    // A receipt sealed ahead for a message acknowledged meanwhile comes
    // back unwritten, though the log ends where it presumed; one for a
    // message still queued is written and removes it.
    let at = Presumed {
        size: 3,
        registry_version: version,
    };
    let tail = store.entries(2, 1).await.unwrap()[0].leaf_hash;
    let mut w = Entries::after(3, tail);
    let again = w.item(EntryKind::Receipt, id(1), vec![acknowledge()]);
    assert!(matches!(
        store.append_presumed(at, vec![again]).await.unwrap(),
        Presumption::Moved(_)
    ));
    assert_eq!(store.entries(0, 10).await.unwrap().len(), 3);
    let mut w = Entries::after(3, tail);
    let first = w.item(EntryKind::Receipt, id(2), vec![acknowledge()]);
    assert!(matches!(
        store.append_presumed(at, vec![first]).await.unwrap(),
        Presumption::Written(_)
    ));
    assert!(!queued(store.as_ref(), id(2)).await);
}

/// Answers to one request, and receipts of one queued message, racing
/// through two writers (two hubs): one of each is written, the others are
/// told it was taken, whichever writer took it.
async fn answers_and_receipts_racing_through_two_writers_are_written_once(store: Arc<dyn Store>) {
    use hub_server::log_writer::AppendError;

    registry(store.as_ref()).await;
    let ([a, b], _, data) = two_log_writers(&store).await;
    const N: u32 = 12;
    // Requests 0..N queued for the provider: even ones to be answered,
    // odd ones to be acknowledged.
    for n in 0..N {
        let (draft, body) = unsealed(u64::from(n), EntryKind::Request, event_id(n), &data);
        a.append(draft, body, vec![open(u64::from(n)), enqueue(0)])
            .await
            .unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..N {
        for attempt in 0..4u64 {
            let writer = if attempt % 2 == 0 {
                a.clone()
            } else {
                b.clone()
            };
            let kind = if n % 2 == 0 {
                EntryKind::Response
            } else {
                EntryKind::Receipt
            };
            let (draft, body) =
                unsealed(100 + u64::from(n) * 4 + attempt, kind, event_id(n), &data);
            let settle = if n % 2 == 0 {
                vec![
                    Effect::CloseExchange,
                    Effect::Dequeue {
                        recipient: member(PROVIDER),
                    },
                ]
            } else {
                vec![Effect::Acknowledge {
                    recipient: member(PROVIDER),
                }]
            };
            tasks.spawn(async move { (n, writer.append(draft, body, settle).await) });
        }
    }
    let mut written = vec![0; N as usize];
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            (n, Ok(_)) => written[n as usize] += 1,
            (n, Err(AppendError::AlreadyAnswered(id))) if n % 2 == 0 => assert_eq!(id, event_id(n)),
            (n, Err(AppendError::AlreadyAcknowledged(id))) if n % 2 == 1 => {
                assert_eq!(id, event_id(n));
            }
            (n, Err(e)) => panic!("exchange {n}: {e}"),
        }
    }
    assert_eq!(written, vec![1; N as usize], "one answer or receipt each");
    let entries = store.entries(0, 1000).await.unwrap();
    assert_eq!(entries.len(), 2 * N as usize, "nothing else was logged");
    for n in 0..N {
        assert!(!queued(store.as_ref(), event_id(n)).await);
    }
}

/// PostgreSQL plans each of the hub's statements once per connection, for
/// any values (`plan_cache_mode = force_generic_plan`, see
/// `PgStore::open`), and on a log whose statistics may be stale. Looking
/// up an exchange's request or a data subject's exchanges, and reading
/// entries with their bodies, must still go to the rows by index, not read
/// the log from its start: counted by PostgreSQL's own statistics of the
/// rows read.
#[tokio::test]
async fn a_long_log_is_looked_up_by_index_not_read_through_on_postgres() {
    const EXCHANGES: u32 = 1_500;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let exchange = |n: u32| {
        let mut random = [0u8; 10];
        random[..4].copy_from_slice(&n.to_be_bytes());
        ExchangeId::from_parts(1_790_000_000_000 + u64::from(n), random)
    };
    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    let mut e = Entries::new();
    for first in (0..EXCHANGES).step_by(250) {
        let batch: Vec<AppendItem> = (first..first + 250)
            .flat_map(|n| {
                let subject = format!("subject-{}", n % 100);
                [
                    e.item(EntryKind::Request, exchange(n), vec![subjects(&[&subject])]),
                    e.item(EntryKind::Response, exchange(n), vec![]),
                ]
            })
            .collect();
        store.append(&batch).await.unwrap();
    }
    // All but the last 500 entries indexed: lookups read the rest as the
    // index's unindexed tail.
    let indexed = EXCHANGES * 2 - 500;
    assert_eq!(
        store.index_subjects(indexed).await.unwrap(),
        u64::from(indexed)
    );
    drop(store);
    let before = rows_read_from(&db, "log_entries").await;

    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    for n in [3, 700, EXCHANGES - 1] {
        let request = store.request_of(exchange(n)).await.unwrap().unwrap();
        assert!(request.contains(&exchange(n).to_string()), "{request}");
    }
    for subject in ["subject-7", "subject-99"] {
        let (records, next) = store.subject_records(subject, 5, None).await.unwrap();
        assert!(next.is_some(), "{subject} touched 15 exchanges");
        assert_eq!(records.len(), 10, "{subject}: 5 exchanges, 2 entries each");
    }
    drop(store);
    let read = rows_read_from(&db, "log_entries").await - before;
    // Each subject's lookup reads the unindexed tail (500 entries) and its
    // own hits; together the five lookups stay below one whole scan.
    assert!(
        read < i64::from(EXCHANGES) * 2,
        "looking up 3 requests and 2 subjects read {read} rows of a {}-entry log",
        EXCHANGES * 2
    );

    // The last ten entries with their bodies.
    let before = rows_read_from(&db, "log_bodies").await;
    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    let last = store
        .entries(u64::from(EXCHANGES) * 2 - 10, 10)
        .await
        .unwrap();
    assert_eq!(last.len(), 10);
    assert!(last.iter().all(|e| e.body.is_some()));
    drop(store);
    let read = rows_read_from(&db, "log_bodies").await - before;
    assert!(read < 100, "reading the last 10 entries read {read} bodies");

    db.drop_now().await;
}

/// A data subject's access history is read a page at a time: a page
/// costs the rows of its own exchanges, not of every exchange that ever
/// touched the person - on PostgreSQL, counted as above, for the first
/// page and one from the middle, with some of the log past the index.
#[tokio::test]
async fn a_page_of_a_long_access_history_reads_the_page_not_the_history_on_postgres() {
    const EXCHANGES: u32 = 2_000;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    let mut e = Entries::new();
    // Every exchange's request names "often"; every tenth one's answer
    // (only) names "seldom" too.
    for first in (0..EXCHANGES).step_by(500) {
        let batch: Vec<AppendItem> = (first..first + 500)
            .flat_map(|n| {
                let answer = if n % 10 == 0 {
                    vec![subjects(&["seldom"])]
                } else {
                    vec![]
                };
                [
                    e.item(EntryKind::Request, event_id(n), vec![subjects(&["often"])]),
                    e.item(EntryKind::Response, event_id(n), answer),
                ]
            })
            .collect();
        store.append(&batch).await.unwrap();
    }
    // All but the last 40 entries indexed.
    store.index_subjects(EXCHANGES * 2 - 40).await.unwrap();
    drop(store);
    let before = rows_read_from(&db, "log_entries").await;

    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    let exchanges = |records: &[String]| -> Vec<String> {
        let mut ids: Vec<String> = records
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r).unwrap()["exchange_id"].to_string()
            })
            .collect();
        ids.dedup();
        ids
    };
    let (records, next) = store.subject_records("often", 5, None).await.unwrap();
    assert_eq!(records.len(), 10, "5 exchanges, 2 entries each");
    assert_eq!(next, Some(8), "the 5th exchange begins at entry 8");
    let (records, next) = store
        .subject_records("often", 5, Some(1_999))
        .await
        .unwrap();
    assert_eq!(exchanges(&records).len(), 5);
    assert_eq!(next, Some(2_008), "exchanges 1,000 to 1,004");
    // Exchanges that touched "seldom" only with their answer, the last
    // ones past the index: in the order they began.
    let (records, next) = store
        .subject_records("seldom", 3, Some(3_900))
        .await
        .unwrap();
    assert_eq!(
        exchanges(&records).len(),
        3,
        "exchanges 1,960, 1,970, 1,980"
    );
    assert_eq!(next, Some(3_960));
    drop(store);
    let read = rows_read_from(&db, "log_entries").await - before;
    assert!(
        read < 400,
        "three pages of 5, 5 and 3 exchanges read {read} rows of a log whose \
         subject touched {EXCHANGES} exchanges"
    );
    db.drop_now().await;
}

/// A hub starting on a long log folds the kept roots of its 256-leaf
/// blocks up to the last checkpoint and reads only the leaves after them:
/// on PostgreSQL, counted as above.
#[tokio::test]
async fn a_start_reads_the_leaves_after_the_kept_blocks_not_the_log_on_postgres() {
    const ENTRIES: u32 = 3_000;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    append_events(store.as_ref(), &mut Entries::new(), ENTRIES, 500).await;
    let leaves = store.leaf_hashes(0, u64::from(ENTRIES)).await.unwrap();
    store
        .add_checkpoint(&StoredCheckpoint {
            size: 2_900,
            root: hub_core::merkle::root(&leaves[..2_900]),
            note: "checkpoint\n".into(),
        })
        .await
        .unwrap();
    // The first start reads every leaf and keeps the blocks' roots.
    let head = log_writer(&store).await.head();
    drop(store);
    let before = rows_read_from(&db, "log_entries").await;

    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    assert_eq!(log_writer(&store).await.head(), head);
    drop(store);
    let read = rows_read_from(&db, "log_entries").await - before;
    // 11 blocks end at 2,816: 84 leaves to the checkpoint, 100 after it.
    assert!(
        read < 512,
        "a start read {read} rows of a {ENTRIES}-entry log with its blocks kept"
    );
    db.drop_now().await;
}

/// The hourly purge of expired bodies reads what expired since the last
/// one, not the whole log: on PostgreSQL, counted as above.
#[tokio::test]
async fn a_purge_reads_what_expired_since_the_last_not_the_log_on_postgres() {
    const ENTRIES: u32 = 3_000;
    let Some(db) = PgDatabase::create().await else {
        return;
    };
    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    // Entry n is written on day n (`Entries::item`).
    let day = |n: i64| {
        hub_core::timefmt::rfc3339_millis(datetime!(2026-11-01 00:00 UTC) + time::Duration::days(n))
    };
    append_events(store.as_ref(), &mut Entries::new(), ENTRIES, 500).await;
    assert_eq!(store.purge(&day(2_900), 0).await.unwrap(), (2_900, 0));
    drop(store);
    let before = rows_read_from(&db, "log_entries").await;

    let store = hub_server::store::open(&db.url, PoolSettings::default())
        .await
        .unwrap();
    assert_eq!(store.purge(&day(2_950), 0).await.unwrap(), (50, 0));
    let kept: Vec<bool> = store
        .entries(2_949, 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.body.is_some())
        .collect();
    assert_eq!(kept, [false, true]);
    drop(store);
    let read = rows_read_from(&db, "log_entries").await - before;
    assert!(
        read < i64::from(ENTRIES) / 3,
        "a purge of 50 bodies read {read} rows of a {ENTRIES}-entry log"
    );
    db.drop_now().await;
}

/// PostgreSQL's count of the rows read from `table`, by sequential scans
/// and through indexes, once every other connection to `db` has gone (a
/// backend hands in its statistics when it exits).
async fn rows_read_from(db: &PgDatabase, table: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut waited = 0;
    loop {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if others == 0 {
            break;
        }
        waited += 1;
        assert!(waited < 300, "the store's connections did not close");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut conn)
        .await
        .unwrap();
    let scans: i64 = sqlx::query_scalar(
        "SELECT COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    scans
}
