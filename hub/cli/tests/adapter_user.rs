//! `hub adapter-user`: the commands it prints, run by a shell, make a
//! RabbitMQ user that can run its provider's adapter and nothing more, and
//! the setting it prints binds the two on a hub.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::HUB;
use hub_adapter_sdk::amqp::Topology;
use hub_core::ids::Member;
use hub_e2e::services::{AmqpNamespace, BrokerUser, amqp_url, unavailable};
use hub_e2e::{POPULATION_REGISTRY, REFERENCE_PROVIDERS};

#[tokio::test]
async fn the_printed_commands_make_a_user_that_runs_its_providers_adapter_alone() {
    let Some(ns) = AmqpNamespace::create(&REFERENCE_PROVIDERS, &["hub-x"]).await else {
        return;
    };
    let name = format!("hubtest-{}", uuid::Uuid::now_v7().simple());
    let password = uuid::Uuid::now_v7().simple().to_string();
    let printed = Command::new(HUB)
        .args(["adapter-user", POPULATION_REGISTRY, &name])
        .env("HUB_AMQP_URL", amqp_url())
        .env("HUB_AMQP_PREFIX", &ns.prefix)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let script = String::from_utf8(printed.stdout).unwrap();

    let ran = Command::new("bash")
        .args(["-euc", &script])
        .env("PASSWORD", &password)
        .output()
        .unwrap();
    let user = BrokerUser::made(name.clone(), &password);
    if !ran.status.success() {
        let why = String::from_utf8_lossy(&ran.stderr).into_owned();
        unavailable::<()>("rabbitmqctl (to make a broker user)", why);
        return;
    }

    // The setting, uncommented, binds the provider to the user.
    let setting: String = script
        .lines()
        .skip_while(|l| *l != "# [amqp_provider_users]")
        .map(|l| l.trim_start_matches("# "))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, setting).unwrap();
    let config = hub_server::config::Config::load(Some(&file)).unwrap();
    let population: Member = POPULATION_REGISTRY.parse().unwrap();
    assert_eq!(config.provider_users().unwrap()[&population], name);

    // The user can do what the adapter does, and no more.
    let topology = Topology::new(ns.prefix.clone());
    let (hub_conn, hub_ch) = ns.client_channel().await;
    topology.declare_replies(&hub_ch, "hub-x").await.unwrap();
    let _ = hub_conn.close(200, "done".into()).await;
    let conn = lapin::Connection::connect(&user.url, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    topology.declare_common(&ch).await.unwrap();
    topology.declare_provider(&ch, &population).await.unwrap();
    ch.basic_consume(
        topology.provider_queue(&population).as_str().into(),
        "test".into(),
        Default::default(),
        Default::default(),
    )
    .await
    .unwrap();
    let land: Member = REFERENCE_PROVIDERS[1].parse().unwrap();
    let ch = conn.create_channel().await.unwrap();
    assert!(topology.declare_provider(&ch, &land).await.is_err());
    let ch = conn.create_channel().await.unwrap();
    let reply = ch
        .basic_get(
            topology.reply_queue("hub-x").as_str().into(),
            Default::default(),
        )
        .await;
    assert!(reply.is_err(), "{reply:?}");
    let _ = conn.close(200, "done".into()).await;
    drop(user);
    ns.delete_now().await;
}
