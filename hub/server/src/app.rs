//! Start-up: configuration in, a running hub out. Everything the binary and
//! the tests start goes through [`start`], so tests run the real thing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hub_adapter_sdk::{Adapter, ServiceKind};
use hub_core::ids::{Member, PurposeCode, ServiceName};
use hub_core::jws::SigningKey;
use hub_core::schema::Catalog;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::access_history::AccessHistory;
use crate::broker::Broker;
use crate::clock::{Clock, Random};
use crate::config::Config;
use crate::http::{AppState, admin_routes, api_routes, public_routes};
use crate::log_writer::{LogWriter, WriterKeys};
use crate::pipeline::{Hub, Remote};
use crate::pki::{DEMO_AGENCIES, PkiPaths, ensure_dev_pki, read_data_key, read_signing_key};
use crate::queue::EmbeddedQueue;
use crate::store::{AgencyRecord, Grant, ServiceRecord, Store, Subscription};
use crate::{serve, store, tls};
use hub_adapter_sdk::amqp::Topology;
use hub_core::body::DataKey;
use hub_core::fields::FieldSet;
use tokio::sync::Notify;

/// A hub that is serving.
pub struct RunningHub {
    pub api_addr: SocketAddr,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub hub: Arc<Hub>,
    pub pki: PkiPaths,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for RunningHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningHub")
            .field("api_addr", &self.api_addr)
            .field("public_addr", &self.public_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl RunningHub {
    /// Stop accepting, let open connections and workers finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// The in-process reference adapters over their synthetic registries.
pub fn reference_adapters(generated: usize) -> Vec<Arc<dyn Adapter>> {
    vec![
        Arc::new(adapter_population::PopulationAdapter::new(
            adapter_population::Registry::synthetic(1, generated),
        )),
        Arc::new(adapter_land::LandAdapter::new(
            adapter_land::Registry::synthetic(2, generated),
        )),
        Arc::new(adapter_enterprise::EnterpriseAdapter::new(
            adapter_enterprise::Registry::synthetic(3, generated),
        )),
    ]
}

/// What `init` made or found.
pub struct Initialized {
    pub pki: PkiPaths,
    pub store: Arc<dyn Store>,
    pub hub_key: SigningKey,
    pub data_key: Arc<DataKey>,
    /// The services the hub answers itself, always in process.
    pub own_services: Vec<Arc<dyn Adapter>>,
    pub new_pki: bool,
    pub seeded: bool,
}

/// Create what is missing - dev PKI, database, demo registry - and open it.
pub async fn init(
    config: &Config,
    clock: &dyn Clock,
    adapters: &[Arc<dyn Adapter>],
) -> anyhow::Result<Initialized> {
    tls::install_default_provider();
    let pki = PkiPaths::new(&config.data_dir);
    let new_pki = ensure_dev_pki(&pki, clock.now()).context("creating the dev PKI")?;
    let store = store::open(&config.database_url(), config.pool_settings())
        .await
        .with_context(|| {
            format!(
                "opening {}",
                store::postgres::redact(&config.database_url())
            )
        })?;
    match crate::pki::finish_interrupted_rotation(&pki)
        .context("finishing an interrupted rotation of the hub key")?
    {
        crate::pki::InterruptedRotation::None => {}
        crate::pki::InterruptedRotation::Finished { kid } => {
            warn!(%kid, "finished a rotation of the hub key that had stopped after its hand-over");
        }
        crate::pki::InterruptedRotation::Undone => {
            warn!("undid a rotation of the hub key that had stopped before its hand-over");
        }
    }
    let hub_key =
        read_signing_key(&pki.hub_signing_key()).context("reading the hub signing key")?;
    let data_key = Arc::new(read_data_key(&pki.data_key()).context("reading the data key")?);
    let own_services: Vec<Arc<dyn Adapter>> = vec![Arc::new(AccessHistory::new(
        store.clone(),
        data_key.clone(),
    ))];
    register_adapters(store.as_ref(), adapters).await?;
    register_adapters(store.as_ref(), &own_services).await?;
    let seeded = config.seed_demo && seed_demo(store.as_ref(), &pki).await?;
    Ok(Initialized {
        pki,
        store,
        hub_key,
        data_key,
        own_services,
        new_pki,
        seeded,
    })
}

/// Register the in-process adapters' members and services (idempotent).
async fn register_adapters(store: &dyn Store, adapters: &[Arc<dyn Adapter>]) -> anyhow::Result<()> {
    for a in adapters {
        let provider = a.provider().clone();
        if store.agency(&provider).await?.is_none() {
            store
                .upsert_agency(&AgencyRecord {
                    member: provider.clone(),
                    name: provider.to_string(),
                    signing_key: None,
                    suspended: false,
                    broker_user: None,
                })
                .await?;
        }
        for spec in a.services() {
            store
                .upsert_service(&ServiceRecord {
                    request_schema: spec.request_schema(),
                    response_schema: spec.response_schema(),
                    name: spec.name,
                    version: spec.version,
                    kind: spec.kind,
                    provider: provider.clone(),
                })
                .await?;
        }
    }
    Ok(())
}

fn parse_member(s: &str) -> anyhow::Result<Member> {
    s.parse().with_context(|| format!("demo member {s}"))
}

/// The `citizen.lookup` fields the demo commune office receives for a
/// public service or a residence registration.
pub const COMMUNE_CITIZEN_FIELDS: &str = "/found,/citizen/personal_id,/citizen/full_name,\
     /citizen/birth_date,/citizen/birth_date_precision,/citizen/current_residence,\
     /citizen/permanent_residence";

/// ... and for a civil-status procedure (a birth or marriage registration).
pub const CIVIL_STATUS_CITIZEN_FIELDS: &str = "/found,/citizen/personal_id,/citizen/full_name,\
     /citizen/birth_date,/citizen/birth_date_precision,/citizen/sex,/citizen/nationality,\
     /citizen/birth_registration_province,/citizen/current_residence,/citizen/permanent_residence,\
     /citizen/marital_status";

/// Seed the demo agencies, grants and subscriptions once (when no grant exists yet).
async fn seed_demo(store: &dyn Store, pki: &PkiPaths) -> anyhow::Result<bool> {
    if !store.grants().await?.is_empty() {
        return Ok(false);
    }
    for demo in DEMO_AGENCIES {
        let member = parse_member(demo.member)?;
        let signing_key = if demo.signs {
            Some(read_signing_key(&pki.agency_signing_key(&member))?.public_jwk())
        } else {
            None
        };
        store
            .upsert_agency(&AgencyRecord {
                member,
                name: demo.name.to_owned(),
                signing_key,
                suspended: false,
                broker_user: None,
            })
            .await?;
    }
    let grants: [(&str, &str, &[&str], Option<&str>); 15] = [
        // A commune office reads who a citizen is and where they live -
        // not their ethnicity, old ID card number or marital status.
        (
            "000.00.29.H29/one-stop",
            "citizen.lookup",
            &["public_service", "residence_registration"],
            Some(COMMUNE_CITIZEN_FIELDS),
        ),
        (
            "000.00.29.H29/one-stop",
            "citizen.lookup",
            &["civil_status"],
            Some(CIVIL_STATUS_CITIZEN_FIELDS),
        ),
        (
            "000.00.29.H29/one-stop",
            "citizen.verify",
            &["public_service"],
            None,
        ),
        (
            "000.00.29.H29/one-stop",
            "parcel.lookup",
            &["public_service", "land_administration"],
            None,
        ),
        (
            "000.00.29.H29/one-stop",
            "parcels.by_holder",
            &["land_administration"],
            None,
        ),
        (
            "000.00.29.H29/one-stop",
            "enterprise.lookup",
            &["public_service", "business_registration"],
            None,
        ),
        (
            "000.00.00.G08/tax",
            "enterprise.lookup",
            &["tax_administration"],
            None,
        ),
        (
            "000.00.00.G08/tax",
            "citizen.verify",
            &["tax_administration"],
            None,
        ),
        (
            "000.00.00.G08/tax",
            "enterprise.registered",
            &["tax_administration"],
            None,
        ),
        (
            "000.00.00.G22/social-insurance",
            "citizen.lookup",
            &["social_insurance"],
            None,
        ),
        (
            "000.00.00.G22/social-insurance",
            "enterprise.lookup",
            &["social_insurance"],
            None,
        ),
        (
            "000.00.00.G22/social-insurance",
            "enterprise.registered",
            &["social_insurance"],
            None,
        ),
        (
            "000.00.00.G22/social-insurance",
            "citizen.address_changed",
            &["social_insurance"],
            None,
        ),
        ("000.00.00.Z01/bank-ekyc", "citizen.verify", &["kyc"], None),
        (
            crate::pki::CITIZEN_PORTAL,
            crate::access_history::SERVICE,
            &["data_subject_request"],
            None,
        ),
    ];
    // Only what the registered adapters provide: a hub started with other
    // adapters gets the part of the demo that applies to it.
    let provided: Vec<ServiceName> = store
        .services()
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    for (consumer, service, purposes, fields) in grants {
        if !provided.iter().any(|p| p.as_str() == service) {
            continue;
        }
        for purpose in purposes {
            store
                .add_grant(&Grant {
                    consumer: parse_member(consumer)?,
                    service: ServiceName::parse(service)?,
                    purpose: PurposeCode::parse(purpose)?,
                    fields: fields.map(FieldSet::parse_list).transpose()?,
                })
                .await?;
        }
    }
    for (subscriber, service) in [
        ("000.00.00.G08/tax", "enterprise.registered"),
        ("000.00.00.G22/social-insurance", "enterprise.registered"),
        ("000.00.00.G22/social-insurance", "citizen.address_changed"),
    ] {
        if !provided.iter().any(|p| p.as_str() == service) {
            continue;
        }
        store
            .add_subscription(&Subscription {
                subscriber: parse_member(subscriber)?,
                service: ServiceName::parse(service)?,
                version: 1,
            })
            .await?;
    }
    Ok(true)
}

/// Start the hub with the reference adapters.
pub async fn start(
    config: Config,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
) -> anyhow::Result<RunningHub> {
    let adapters = reference_adapters(config.synthetic_records);
    start_with_adapters(config, clock, random, adapters).await
}

/// Start the hub: init, then the log writer, the in-process adapters'
/// workers and both listeners.
pub async fn start_with_adapters(
    config: Config,
    clock: Arc<dyn Clock>,
    random: Arc<dyn Random>,
    adapters: Vec<Arc<dyn Adapter>>,
) -> anyhow::Result<RunningHub> {
    let init = init(&config, clock.as_ref(), &adapters).await?;
    if init.new_pki {
        info!(dir = %init.pki.dir.display(), "created a dev PKI");
    }
    let catalog = Arc::new(Catalog::builtin().context("compiling the schema catalog")?);
    let hub_key = Arc::new(init.hub_key);
    let data_key = init.data_key.clone();
    let keys = Arc::new(WriterKeys {
        signing: hub_key.clone(),
        data: data_key.clone(),
        random: random.clone(),
    });
    let log = LogWriter::start(
        init.store.clone(),
        keys,
        clock.clone(),
        config.log_batch_max,
    )
    .await?;
    let queue = Arc::new(EmbeddedQueue::new(
        init.store.clone(),
        data_key.clone(),
        clock.clone(),
        Duration::from_secs(config.inbox_visibility_secs),
    ));
    let note_verifier = hub_core::note::verifier_for(&config.log_origin, &hub_key)
        .context("the log origin must be a valid note key name (no spaces or '+')")?;
    let mut hub = Hub::new(
        catalog,
        init.store.clone(),
        queue,
        log,
        clock.clone(),
        random,
        &hub_key,
        data_key,
        note_verifier,
        Duration::from_millis(config.query_timeout_ms),
    );
    hub.provider_queue_max = config.provider_queue_max;
    hub.backlog = Arc::new(crate::backlog::BacklogCount::new(config.inbox_max));
    // The current key and the retired ones, whose signatures still verify.
    hub.jwks = crate::pki::hub_jwks(&init.pki, &hub_key).context("reading the retired hub keys")?;
    hub.key_handovers = crate::pki::read_hub_key_handovers(&init.pki)
        .context("reading the hub key's hand-overs")?;
    let remote = !config.amqp_url.is_empty();
    if remote {
        hub.remote = Some(Remote {
            broker: Arc::new(
                Broker::new(
                    config.amqp_url.clone(),
                    Topology::new(config.amqp_prefix.clone()),
                    config.instance.clone(),
                    config.amqp_confirm_window,
                    &hub.key_handovers,
                )
                .context("reading amqp_url")?,
            ),
            relay: Arc::new(Notify::new()),
        });
    }
    // Adapters run in process without a broker; the hub's own services always.
    let in_process: Vec<Arc<dyn Adapter>> = match remote {
        true => init.own_services.clone(),
        false => adapters.iter().chain(&init.own_services).cloned().collect(),
    };
    hub.local = in_process
        .iter()
        .map(|a| (a.provider().clone(), a.clone()))
        .collect();
    let hub = Arc::new(hub);
    write_jwks(&init.pki, &hub.jwks)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    if let Some(remote) = &hub.remote {
        tasks.spawn(crate::broker::run_relay(
            hub.clone(),
            remote.broker.clone(),
            remote.relay.clone(),
            shutdown_rx.clone(),
        ));
        tasks.spawn(crate::broker::run_replies(
            hub.clone(),
            remote.broker.clone(),
            shutdown_rx.clone(),
        ));
    }
    if config.body_retention_days > 0 {
        tasks.spawn(run_purger(
            init.store.clone(),
            clock.clone(),
            config.body_retention_days,
            shutdown_rx.clone(),
        ));
    }
    tasks.spawn(crate::transparency::run_checkpointer(
        init.store.clone(),
        hub_key.clone(),
        config.log_origin.clone(),
        hub.log.clone(),
        Duration::from_millis(config.checkpoint_interval_ms),
        shutdown_rx.clone(),
    ));
    for adapter in in_process {
        if adapter
            .services()
            .iter()
            .any(|s| s.kind == ServiceKind::Query)
        {
            tasks.spawn(adapter_worker(hub.clone(), adapter, shutdown_rx.clone()));
        }
    }

    let state = AppState {
        hub: hub.clone(),
        max_body_bytes: config.max_body_bytes,
        body_timeout: std::time::Duration::from_millis(config.body_timeout_ms),
    };
    let api = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API listener to {}", config.api_listen))?;
    let public = TcpListener::bind(config.public_listen)
        .await
        .with_context(|| format!("binding the public listener to {}", config.public_listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener to {}", config.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    let api_addr = api.local_addr()?;
    let public_addr = public.local_addr()?;
    hub.revoked_certificates.replace(
        init.store
            .revoked_certificates()
            .await
            .context("reading the revoked certificates")?,
    );
    let agencies = init
        .store
        .agencies()
        .await
        .context("reading the agencies")?;
    let answerers = hub.remote.as_ref().map(|r| r.broker.answerers.clone());
    if let Some(answerers) = &answerers {
        answerers.replace(&agencies);
    }
    hub.suspended.replace(suspended_members(agencies));
    tasks.spawn(index_subjects(init.store.clone(), shutdown_rx.clone()));
    tasks.spawn(crate::backlog::count_backlog(
        init.store.clone(),
        hub.backlog.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(vacuum_queues(
        init.store.clone(),
        hub.log.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(crate::withdrawal::run_left_over(
        init.store.clone(),
        hub.clock.clone(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(reload_refusals(
        init.store.clone(),
        hub.revoked_certificates.clone(),
        hub.suspended.clone(),
        answerers,
        shutdown_rx.clone(),
    ));
    let api_tls = tls::ServerTls::api(&init.pki, hub.revoked_certificates.clone())?;
    let public_tls = tls::ServerTls::fixed(tls::public_server_config(&init.pki)?);
    let admin_tls = tls::ServerTls::admin(&init.pki)?;
    tasks.spawn(serve::serve_tls(
        api,
        api_tls.clone(),
        api_routes(state.clone())
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(
                crate::limits::AgencyLimits::new(config.agency_quota()),
                crate::limits::admit,
            ))
            .layer(axum::middleware::from_fn_with_state(
                api_tls,
                crate::identity::refuse_revoked,
            ))
            .layer(axum::middleware::from_fn_with_state(
                (hub.metrics.clone(), "api"),
                crate::metrics::count_requests,
            )),
        config.timeouts(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(serve::serve_tls(
        admin,
        admin_tls.clone(),
        admin_routes()
            .with_state(state.clone())
            .layer(axum::middleware::from_fn_with_state(
                admin_tls,
                crate::identity::refuse_revoked,
            ))
            .layer(axum::middleware::from_fn_with_state(
                (hub.metrics.clone(), "admin"),
                crate::metrics::count_requests,
            )),
        config.timeouts(),
        shutdown_rx.clone(),
    ));
    tasks.spawn(serve::serve_tls(
        public,
        public_tls,
        public_routes()
            .with_state(state)
            .layer(axum::middleware::from_fn_with_state(
                (hub.metrics.clone(), "public"),
                crate::metrics::count_requests,
            )),
        config.timeouts(),
        shutdown_rx,
    ));
    info!(%api_addr, %public_addr, %admin_addr, "hub listening");
    Ok(RunningHub {
        api_addr,
        public_addr,
        admin_addr,
        hub,
        pki: init.pki,
        shutdown,
        tasks,
    })
}

/// Publish the hub's keys beside the PKI for adapter processes
/// (`HUB_JWKS_FILE`), the same document as `/.well-known/jwks.json`.
fn write_jwks(pki: &PkiPaths, jwks: &hub_core::jws::Jwks) -> anyhow::Result<()> {
    let path = pki.dir.join("hub-jwks.json");
    let text = serde_json::to_string_pretty(jwks)?;
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// Keep the subject index close behind the log: every half second, index
/// what was appended since, in batches (a lookup scans what is not indexed
/// yet, so this is about speed, never about what a lookup finds).
async fn index_subjects(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    const BATCH: u32 = 10_000;
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => break,
        }
        loop {
            match store.index_subjects(BATCH).await {
                Ok(done) if done == u64::from(BATCH) => continue,
                Ok(_) => break,
                Err(e) => {
                    warn!(error = %e, "indexing the log's subjects failed; retrying");
                    break;
                }
            }
        }
    }
}

/// Reload the revoked certificates, the suspended members and the
/// providers' broker users every second: a revocation, suspension or
/// binding made through another hub's admin listener holds here from the
/// next handshake, request or answer after.
async fn reload_refusals(
    store: Arc<dyn Store>,
    revoked: Arc<tls::RevokedCertificates>,
    suspended: Arc<crate::identity::SuspendedMembers>,
    answerers: Option<Arc<crate::broker::Answerers>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => break,
        }
        match store.revoked_certificates().await {
            Ok(serials) => revoked.replace(serials),
            Err(e) => {
                warn!(error = %e, "could not reload the revoked certificates; keeping the last list")
            }
        }
        match store.agencies().await {
            Ok(agencies) => {
                if let Some(answerers) = &answerers {
                    answerers.replace(&agencies);
                }
                suspended.replace(suspended_members(agencies));
            }
            Err(e) => {
                warn!(error = %e, "could not reload the agencies (suspensions, broker users); keeping the last ones")
            }
        }
    }
}

fn suspended_members(agencies: Vec<crate::store::AgencyRecord>) -> impl Iterator<Item = Member> {
    agencies
        .into_iter()
        .filter(|a| a.suspended)
        .map(|a| a.member)
}

/// How often the queues' removed rows are reclaimed while the log grows.
/// Measured on PostgreSQL + RabbitMQ (docs/performance.md, "Vacuuming the
/// queues"): every 2 s keeps `deliveries` to a few thousand dead rows.
const QUEUE_VACUUM_INTERVAL: Duration = Duration::from_secs(2);

/// Vacuum the queues ([`Store::vacuum_queues`]) every
/// [`QUEUE_VACUUM_INTERVAL`] in which the log grew or the last vacuum left
/// dead rows behind, until shutdown.
async fn vacuum_queues(store: Arc<dyn Store>, log: LogWriter, mut shutdown: watch::Receiver<bool>) {
    let mut vacuumed_at = log.head().size;
    let mut dead_left = false;
    let mut failing = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(QUEUE_VACUUM_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
        let size = log.head().size;
        if size == vacuumed_at && !dead_left {
            continue;
        }
        match store.vacuum_queues().await {
            Ok(left) => {
                vacuumed_at = size;
                dead_left = left;
                failing = false;
            }
            // Once per outage: the database's unavailability shows elsewhere.
            Err(e) if !failing => {
                warn!(error = %e, "vacuuming the queues failed");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Purge bodies and cached replies older than the retention period, at
/// start and then hourly.
async fn run_purger(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    days: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (before, before_millis) = retention_cutoff(clock.as_ref(), days);
        match store.purge(&before, before_millis).await {
            Ok((bodies, replies)) if bodies + replies > 0 => {
                info!(bodies, replies, %before, "purged what is past the retention period");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "purge failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = shutdown.changed() => break,
        }
    }
}

/// The instant `days` ago, as entries write times and as epoch milliseconds.
pub fn retention_cutoff(clock: &dyn Clock, days: u32) -> (String, u64) {
    let cutoff = clock.now() - time::Duration::days(i64::from(days));
    let millis = u64::try_from(cutoff.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    (hub_core::timefmt::rfc3339_millis(cutoff), millis)
}

/// Feed one in-process adapter from its queue until shutdown.
async fn adapter_worker(
    hub: Arc<Hub>,
    adapter: Arc<dyn Adapter>,
    mut shutdown: watch::Receiver<bool>,
) {
    let provider = adapter.provider().clone();
    let wake = hub.waker(&provider);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match hub.queue.receive(&provider, 64).await {
            Ok(batch) if !batch.is_empty() => {
                let work = batch
                    .into_iter()
                    .map(|d| hub.deliver_to_adapter(adapter.as_ref(), d));
                futures_util::future::join_all(work).await;
                continue;
            }
            Ok(_) => {}
            Err(e) => warn!(%provider, error = %e, "could not read the queue"),
        }
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}
