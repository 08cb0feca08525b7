//! Requests the hub sent a provider over RabbitMQ, taken from its queue
//! and published back as the hub's relay does: for tests that play the
//! adapter's or the broker's part around a real hub.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use hub_adapter_sdk::amqp::Topology;
use hub_core::ids::{ExchangeId, Member};
use serde_json::Value;

use crate::services::{AmqpNamespace, publish_taken};
use crate::{POPULATION_REGISTRY, TestHub, citizen_lookup};

/// Take (unacknowledged) the messages of `queue` until they hold `n`
/// requests: their exchange ids and bytes, in order, and the messages.
pub async fn take_requests(
    ch: &lapin::Channel,
    queue: &str,
    n: usize,
    keys: &hub_core::jws::Jwks,
) -> (
    Vec<ExchangeId>,
    Vec<Vec<u8>>,
    Vec<lapin::message::BasicGetMessage>,
) {
    let seals = hub_core::log::SealVerifier::new();
    let (mut ids, mut requests, mut messages) = (Vec::new(), Vec::new(), Vec::new());
    while requests.len() < n {
        let got = ch
            .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
            .await
            .unwrap();
        let Some(message) = got else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for part in hub_adapter_sdk::amqp::message_parts(&message.data).unwrap() {
            let checked = hub_adapter_sdk::amqp::check_request(part, keys, &seals).unwrap();
            ids.push(checked.request.exchange_id);
            requests.push(part.to_vec());
        }
        messages.push(message);
    }
    (ids, requests, messages)
}

/// Requests waiting for the population registry, sent through `hub` by
/// `n` senders, taken from the broker: the senders, the requests' ids and
/// bytes, and the hub's reply queue.
pub async fn waiting_requests(
    setup_ns: &AmqpNamespace,
    hub: &Arc<TestHub>,
    instance: &str,
    n: usize,
) -> (
    tokio::task::JoinSet<(StatusCode, Value)>,
    Vec<ExchangeId>,
    Vec<Vec<u8>>,
) {
    let topology = Topology::new(setup_ns.prefix.clone());
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    let keys = hub.hub_keys();
    let mut sending = tokio::task::JoinSet::new();
    for _ in 0..n {
        let hub = hub.clone();
        sending.spawn(async move { hub.send(citizen_lookup("001085012345")).await });
    }
    let (conn, ch) = setup_ns.client_channel().await;
    topology.declare_provider(&ch, &provider).await.unwrap();
    let (ids, requests, messages) =
        take_requests(&ch, &topology.provider_queue(&provider), n, &keys).await;
    for message in messages {
        assert_eq!(
            message.properties.reply_to().as_ref().map(|q| q.as_str()),
            Some(topology.reply_queue(instance).as_str())
        );
        message
            .ack(lapin::options::BasicAckOptions::default())
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    (sending, ids, requests)
}

/// Publish `requests` as one message to the population registry's queue,
/// as the hub's relay does.
pub async fn publish_requests(ns: &AmqpNamespace, instance: &str, requests: &[&[u8]]) {
    publish_requests_with(ns, instance, requests, lapin::types::FieldTable::default()).await;
}

/// [`publish_requests`] with these headers.
pub async fn publish_requests_with(
    ns: &AmqpNamespace,
    instance: &str,
    requests: &[&[u8]],
    headers: lapin::types::FieldTable,
) {
    let topology = Topology::new(ns.prefix.clone());
    let provider: Member = POPULATION_REGISTRY.parse().unwrap();
    let (conn, ch) = ns.client_channel().await;
    publish_taken(
        &ch,
        (&topology.exchange(), &Topology::routing_key(&provider)),
        &hub_adapter_sdk::amqp::array_message(requests),
        lapin::BasicProperties::default()
            .with_message_id("several".into())
            .with_delivery_mode(2)
            .with_reply_to(topology.reply_queue(instance).into())
            .with_headers(headers),
    )
    .await;
    let _ = conn.close(200, "done".into()).await;
}
