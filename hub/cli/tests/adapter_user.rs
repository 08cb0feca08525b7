//! `hub adapter-user`: the commands it prints, run by a shell, make a
//! RabbitMQ user that can run its provider's adapter and nothing more, and
//! the `hub agency set-broker-user` command it prints binds the two on a
//! running hub.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{HUB, admin, export, replay, serve, stop, text};
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

    // The command, uncommented and run as the administrator of a running
    // hub, binds the provider to the user in the registry.
    let bind = script
        .lines()
        .find_map(|l| l.strip_prefix("# hub agency set-broker-user "))
        .unwrap_or_else(|| panic!("no set-broker-user command in\n{script}"));
    let data = tempfile::tempdir().unwrap();
    let served = serve(data.path());
    let bound = Command::new("bash")
        .args([
            "-euc",
            &format!("hub() {{ \"$HUB\" --data-dir \"$DATA\" --admin-hub \"$ADMIN\" \"$@\"; }}\nhub agency set-broker-user {bind}"),
        ])
        .env("HUB", HUB)
        .env("DATA", data.path())
        .env("ADMIN", &served.admin)
        .output()
        .unwrap();
    assert!(bound.status.success(), "{}", text(&bound));
    let listed = admin(data.path(), &served, &["agency", "list"]);
    let population_line = String::from_utf8(listed.stdout.clone())
        .unwrap()
        .lines()
        .find(|l| l.starts_with(POPULATION_REGISTRY))
        .map(str::to_owned);
    assert!(
        population_line.is_some_and(|l| l.ends_with(&format!("(answers as broker user {name})"))),
        "{}",
        text(&listed)
    );
    // The binding is an admin entry an auditor's replay goes through.
    let replayed = replay(data.path(), &export(data.path(), "bundle"));
    assert!(replayed.status.success(), "{}", text(&replayed));
    stop(served);
    let population: Member = POPULATION_REGISTRY.parse().unwrap();

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
