//! The hub's command line: serve, initialise, administer the registry of
//! agencies, services, grants and subscriptions, act as an agency (send an
//! exchange, read an inbox, ask who saw a person's data) with that
//! agency's dev certificate, run a reference adapter as its own process,
//! re-drive dead letters, rotate the hub's key, run a witness, purge old
//! bodies, and audit the log offline.
#![forbid(unsafe_code)]
#![allow(clippy::print_stderr)]

/// `println!` that returns the write's failure from the enclosing
/// function instead of panicking: `hub inbox --ack > file` on a full disk
/// must fail before it acknowledges, and `hub ... | head` must not print
/// a panic. `main` exits quietly when the reader went away.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).context(STDOUT)?
    }};
}

/// What a failed write to standard output is reported as.
const STDOUT: &str = "writing to standard output";

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use hub_client::{HubClient, SealVerifier, sign_envelope, verify_reply};
use hub_core::fields::FieldSet;
use hub_core::ids::{ExchangeId, Member, PurposeCode, ServiceName};
use hub_server::admin::AdminChange;
use hub_server::clock::{SystemClock, SystemRandom};
use hub_server::pki::{PkiPaths, issue_client_cert, read_signing_key};
use hub_server::store::Store;
use hub_server::{Config, app};
use serde_json::{Value, json};

/// The interoperability hub.
#[derive(Debug, Parser)]
#[command(name = "hub", version, about)]
pub struct Cli {
    /// A TOML configuration file (HUB_* environment variables override it).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// The data directory (database, dev PKI, keys).
    #[arg(long, global = true, env = "HUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// For registry changes: the hub's admin listener (default:
    /// https://<admin_listen>).
    #[arg(long, global = true, env = "HUB_ADMIN_URL")]
    pub admin_hub: Option<String>,
    /// For registry changes: the administrator, with its certificate from
    /// `<data_dir>/pki/admins/`.
    #[arg(long, global = true, default_value = hub_server::pki::DEV_ADMIN)]
    pub admin: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Where and as whom registry changes are sent.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    pub url: String,
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the hub (creates the dev PKI and demo registry on first run).
    Serve,
    /// Create the dev PKI, the database and the demo registry, then exit.
    Init,
    /// Agencies and their subsystems.
    #[command(subcommand)]
    Agency(AgencyCmd),
    /// List services.
    Services,
    /// Grants: which consumer may call which service for which purpose.
    #[command(subcommand)]
    Grant(GrantCmd),
    /// Event subscriptions.
    #[command(subcommand)]
    Subscription(SubscriptionCmd),
    /// Send an exchange as an agency (query or event).
    Send(SendArgs),
    /// Fetch (and optionally acknowledge) an agency's inbox.
    Inbox(InboxArgs),
    /// Who saw a person's data: ask the hub's `subject.access_history`
    /// service as an agency granted it (the citizen portal), and print
    /// every exchange that touched the person. The question is logged.
    AccessHistory(AccessHistoryArgs),
    /// The auditor's toolkit: export the log, verify and prove offline.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Delete the bodies (personal data) and cached replies older than N days; the log still verifies.
    Purge {
        #[arg(long)]
        older_than_days: u32,
    },
    /// Witnesses: register them (admin), or run one (cosign the hub's checkpoints).
    #[command(subcommand)]
    Witness(WitnessCmd),
    /// Retire the hub's signing key and make a new one, which the old key
    /// signs over to (`pki/hub-key-handovers.json`). Run it with every hub
    /// process stopped, then start them: they sign with the new key and
    /// publish the retired one (with `valid_until`) beside it, so that what
    /// it signed still verifies, and the hand-over, so that a key set pinned
    /// before leads to the new key (audit bundles carry it too).
    RotateHubKey,
    /// Make a new data key, which seals the bodies stored from the next
    /// start on; the older keys stay in `pki/data.key` to open what they
    /// sealed (stored bodies are never sealed again: the log commits to
    /// their sealed bytes), and the oldest keeps keying the hashes of
    /// personal IDs. Run it with every hub process stopped, then copy the
    /// file to every hub host and start them.
    RotateDataKey,
    /// Run a reference adapter as its own process, consuming its queue on
    /// RabbitMQ (`amqp_url`), until Ctrl-C or SIGTERM.
    Adapter {
        #[arg(value_enum)]
        registry: ReferenceRegistry,
    },
    /// Messages that kept failing and were dead-lettered on RabbitMQ.
    #[command(subcommand)]
    DeadLetters(DeadLettersCmd),
    /// Print the commands that make USER the RabbitMQ user of PROVIDER's
    /// adapter, with only the permissions it needs (on the vhost of
    /// `amqp_url`, under `amqp_prefix`), and the `agency set-broker-user`
    /// command that binds them: the hubs take PROVIDER's answers from USER
    /// alone.
    AdapterUser {
        /// The provider's member id (`agency/subsystem`).
        provider: Member,
        /// The broker user its adapter logs in as.
        user: String,
    },
}

/// The reference adapters.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ReferenceRegistry {
    Population,
    Land,
    Enterprise,
}

#[derive(Debug, Subcommand)]
pub enum DeadLettersCmd {
    /// List them (they stay in the queue).
    List,
    /// Publish them again to where they came from: the given message
    /// (exchange) ids, or with --all every one.
    Redrive {
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum WitnessCmd {
    /// Register a witness by its cosignature verifier key (admin).
    Add { vkey: String },
    /// List registered witnesses (admin).
    List,
    /// Make a witness key; prints its verifier key.
    Keygen {
        /// The witness's name, e.g. audit.example.vn/witness
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check the hub's latest checkpoint against the last one this witness
    /// cosigned (consistency proof), then cosign it and hand it to the hub.
    Cosign {
        #[command(flatten)]
        agent: Agent,
        #[arg(long)]
        name: String,
        /// The witness's private key (from `hub witness keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Where the witness remembers the last checkpoint it cosigned.
        #[arg(long)]
        state: PathBuf,
        /// The log's checkpoint verifier key, pinned (GET /v1/log/verifier).
        /// After a rotation of the hub's key the witness follows the hub's
        /// hand-overs from it and cosigns only under the latest key.
        #[arg(long)]
        log_key: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Export the whole log from the data directory into a bundle directory.
    Export {
        #[arg(long)]
        out: PathBuf,
        /// Leave the bodies (envelopes, answers: personal data) out.
        #[arg(long)]
        no_bodies: bool,
        /// Export entries 0..N only, with the checkpoints up to size N
        /// (ranges start at 0: verification recomputes every root).
        #[arg(long)]
        up_to: Option<u64>,
    },
    /// Verify a bundle, trusting only the pinned hub keys (a saved /.well-known/jwks.json).
    Verify {
        bundle: PathBuf,
        #[arg(long)]
        jwks: PathBuf,
        /// Also write the full report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Check the log's integrity only (hashes, tree, checkpoints), not every signature, body and reference.
        #[arg(long)]
        integrity_only: bool,
        /// A witness whose cosignatures count (cosignature verifier key); repeatable.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// How many of the witnesses must have cosigned the latest checkpoint (default: all given).
        #[arg(long)]
        quorum: Option<usize>,
        /// The data key that opens the bodies (the hub's pki/data.key); without it bodies are not checked.
        #[arg(long)]
        data_key: Option<PathBuf>,
    },
    /// Re-run the pipeline's decisions for every logged request, event and refusal, against the exported registry.
    Replay {
        bundle: PathBuf,
        /// The data key that opens the bodies (the hub's pki/data.key).
        #[arg(long)]
        data_key: PathBuf,
        /// Also write the full report as JSON here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Print the inclusion proofs of one exchange's entries against the bundle's latest checkpoint, checked.
    Prove {
        bundle: PathBuf,
        exchange_id: ExchangeId,
        #[arg(long)]
        jwks: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum AgencyCmd {
    /// List agencies.
    List,
    /// Add or rename an agency subsystem.
    Add {
        /// agency/subsystem, e.g. 000.00.01.H29/ho-tich
        member: Member,
        #[arg(long)]
        name: String,
        /// Also issue a client certificate from the dev CA into the data directory.
        #[arg(long)]
        issue_cert: bool,
    },
    /// Suspend an agency: its requests are refused (403 member_suspended)
    /// from the next one on, without a restart.
    Suspend { member: Member },
    /// Lift a suspension.
    Resume { member: Member },
    /// Revoke the member's client certificate: its next TLS handshake with
    /// any hub fails (a logged registry change).
    RevokeCert {
        member: Member,
        /// The certificate's serial (hex); default: the one in this data
        /// directory's dev PKI.
        #[arg(long)]
        serial: Option<String>,
    },
    /// Take the answers for a provider's query services only from this
    /// RabbitMQ user, on every hub (or, with --none, from the hubs' own
    /// user again): a logged registry change, no restart.
    SetBrokerUser {
        member: Member,
        #[arg(required_unless_present = "none", conflicts_with = "none")]
        user: Option<String>,
        #[arg(long)]
        none: bool,
    },
    /// Register (or, with --none, remove) the Ed25519/P-256 public key that must sign the member's envelopes.
    SetKey {
        member: Member,
        /// A file holding the public key: a PEM public key (`openssl pkey
        /// -pubout`), or a JWK whose kid is its RFC 7638 thumbprint.
        #[arg(long = "public-key", alias = "jwk", conflicts_with = "none")]
        public_key: Option<PathBuf>,
        #[arg(long)]
        none: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GrantCmd {
    List,
    /// Let a consumer call a query service for these purposes (adding a
    /// grant that exists replaces its fields).
    Add {
        consumer: Member,
        service: ServiceName,
        purposes: Vec<PurposeCode>,
        /// Release only these response fields: comma-separated JSON
        /// pointers into the response schema (`/found,/citizen/full_name`);
        /// checked against the schema. Without it, the whole response.
        #[arg(long, value_parser = FieldSet::parse_list)]
        fields: Option<FieldSet>,
    },
    /// Remove a grant. With its last grant for an event service gone, the
    /// consumer receives none of its events, and those waiting in its inbox
    /// that it never fetched are taken out.
    Revoke {
        consumer: Member,
        service: ServiceName,
        purpose: PurposeCode,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionCmd {
    List,
    Add {
        subscriber: Member,
        service: ServiceName,
        #[arg(long, default_value_t = 1)]
        version: u32,
    },
    /// Deliver no more of the service's events to the subscriber; those
    /// waiting in its inbox that it never fetched are taken out.
    Remove {
        subscriber: Member,
        service: ServiceName,
        #[arg(long, default_value_t = 1)]
        version: u32,
    },
}

#[derive(Debug, Args)]
pub struct Agent {
    /// Act as this member, with its certificate from the data directory.
    #[arg(long = "as")]
    pub member: Member,
    /// The hub's API (default: https://<api_listen>).
    #[arg(long)]
    pub hub: Option<String>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub agent: Agent,
    /// The service, e.g. citizen.lookup
    pub service: ServiceName,
    /// The payload as JSON, or @file.json
    pub payload: String,
    #[arg(long, default_value_t = 1)]
    pub version: u32,
    #[arg(long)]
    pub purpose: PurposeCode,
    /// The case (dossier) reference.
    #[arg(long = "case")]
    pub case_ref: String,
    /// Set the exchange id (UUIDv7) to make a retry idempotent.
    #[arg(long)]
    pub id: Option<ExchangeId>,
    /// Act on behalf of this citizen (personal ID).
    #[arg(long)]
    pub citizen: Option<String>,
}

#[derive(Debug, Args)]
pub struct AccessHistoryArgs {
    #[command(flatten)]
    pub agent: Agent,
    /// The person's personal ID (12 digits).
    pub personal_id: String,
    /// The case reference of the citizen's request.
    #[arg(long = "case")]
    pub case_ref: String,
    /// The next page: the `--after` an earlier answer printed.
    #[arg(long)]
    pub after: Option<u64>,
    /// Print the hub's signed reply as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InboxArgs {
    #[command(flatten)]
    pub agent: Agent,
    #[arg(long, default_value_t = 20)]
    pub max: u32,
    /// Acknowledge what was fetched once it is written to standard output
    /// (each acknowledgment is logged as a receipt); if it cannot be
    /// written, nothing is acknowledged.
    #[arg(long)]
    pub ack: bool,
}

/// Log to stderr, `RUST_LOG` or `info`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config =
        Config::load(cli.config.as_deref()).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if let Some(dir) = &cli.data_dir {
        config.data_dir.clone_from(dir);
    }
    Ok(config)
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let adapters = app::reference_adapters(0);
    Ok(app::init(config, &SystemClock, &adapters).await?.store)
}

/// Run one command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = load_config(&cli)?;
    let admin = AdminTarget {
        url: cli
            .admin_hub
            .clone()
            .unwrap_or_else(|| format!("https://{}", config.admin_listen)),
        name: cli.admin.clone(),
    };
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Adapter { registry } => run_adapter(&config, registry).await,
        Command::DeadLetters(cmd) => dead_letters(&config, cmd).await,
        Command::AdapterUser { provider, user } => adapter_user(&config, &provider, &user),
        Command::Init => {
            let adapters = app::reference_adapters(0);
            let init = app::init(&config, &SystemClock, &adapters).await?;
            out!("data directory: {}", config.data_dir.display());
            out!(
                "dev PKI: {} ({})",
                init.pki.dir.display(),
                if init.new_pki {
                    "created"
                } else {
                    "already there"
                }
            );
            out!(
                "demo registry: {}",
                if init.seeded {
                    "seeded"
                } else {
                    "already there"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Agency(cmd) => agency(&config, &admin, cmd).await,
        Command::Services => {
            let store = open_store(&config).await?;
            for s in store.services().await? {
                out!(
                    "{:<26} v{}  {:<5}  provider {}  request {}  response {}",
                    s.name.as_str(),
                    s.version,
                    s.kind.as_str(),
                    s.provider,
                    s.request_schema,
                    s.response_schema.as_deref().unwrap_or("-")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Grant(cmd) => grant(&config, &admin, cmd).await,
        Command::Subscription(cmd) => subscription(&config, &admin, cmd).await,
        Command::Send(args) => send(&config, args).await,
        Command::Inbox(args) => inbox(&config, args).await,
        Command::AccessHistory(args) => access_history(&config, args).await,
        Command::Audit(cmd) => audit(&config, cmd).await,
        Command::Witness(cmd) => witness(&config, &admin, cmd).await,
        Command::RotateHubKey => {
            let pki = PkiPaths::new(&config.data_dir);
            let (old, new) =
                hub_server::pki::rotate_hub_key(&pki, time::OffsetDateTime::now_utc())?;
            out!(
                "hub signing key {old} retired (kept in {}); new key {new}, handed over to in {}. \
                 Copy the pki folder to every hub host and restart every hub process.",
                pki.hub_retired_keys().display(),
                pki.hub_key_handovers().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::RotateDataKey => {
            let pki = PkiPaths::new(&config.data_dir);
            let (old, new) = hub_server::pki::rotate_data_key(&pki)?;
            out!(
                "data key {old} retired (it still opens what it sealed); new key {new} seals \
                 from the next start. Copy {} to every hub host and restart every hub process.",
                pki.data_key().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Purge { older_than_days } => {
            let store = open_store(&config).await?;
            let (before, before_millis) = app::retention_cutoff(&SystemClock, older_than_days);
            let (bodies, replies) = store.purge(&before, before_millis).await?;
            out!("purged {bodies} bodies and {replies} cached replies from before {before}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What a witness remembers: the last checkpoint it cosigned.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct WitnessState {
    size: u64,
    root: String,
}

async fn witness(
    config: &Config,
    admin: &AdminTarget,
    cmd: WitnessCmd,
) -> anyhow::Result<ExitCode> {
    use hub_core::note;
    match cmd {
        WitnessCmd::Add { vkey } => {
            let name = note::Verifier::parse(&vkey)
                .map(|v| v.name)
                .unwrap_or_default();
            admin_change(config, admin, AdminChange::WitnessAdd { vkey }).await?;
            out!("witness {name} registered");
        }
        WitnessCmd::List => {
            for (name, vkey) in open_store(config).await?.witnesses().await? {
                out!("{name:<40} {vkey}");
            }
        }
        WitnessCmd::Keygen { name, out } => {
            let key = hub_server::pki::generate_signing_key(&out)?;
            let v = note::cosigner_for(&name, &key).map_err(|e| anyhow::anyhow!("{e}"))?;
            out!("{}", v.to_vkey());
            eprintln!(
                "private key written to {} (keep it secret); register the line above with `hub witness add`",
                out.display()
            );
        }
        WitnessCmd::Cosign {
            agent,
            name,
            key,
            state,
            log_key,
        } => {
            let pinned =
                note::Verifier::parse(&log_key).map_err(|e| anyhow::anyhow!("--log-key: {e}"))?;
            let key = read_signing_key(&key)?;
            let (client, _) = client_for(config, &agent)?;
            let log = current_log_key(&client, &pinned).await?;
            let (status, body) = client
                .send(hub_client::Method::GET, "/v1/log/checkpoint", None)
                .await?;
            if !status.is_success() {
                bail!("the hub has no checkpoint (HTTP {status})");
            }
            let text = String::from_utf8(body.to_vec()).context("the checkpoint is not UTF-8")?;
            let unsigned = || {
                anyhow::anyhow!(
                    "the checkpoint is not signed by the log's current key {}{}",
                    log.to_vkey(),
                    if log == pinned {
                        " (the pinned one)"
                    } else {
                        " (handed over to from the pinned one; a checkpoint signed before the \
                         rotation is not cosigned, wait for the next)"
                    }
                )
            };
            let opened = note::open(&text, std::slice::from_ref(&log)).map_err(|e| match e {
                note::NoteError::NoKnownSignature => unsigned(),
                e => anyhow::anyhow!("checkpoint: {e}"),
            })?;
            if opened.signed_by.is_empty() {
                return Err(unsigned());
            }
            let cp =
                note::Checkpoint::parse_body(&opened.body).map_err(|e| anyhow::anyhow!("{e}"))?;
            let b64 =
                |h: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, h);
            if let Ok(text) = std::fs::read_to_string(&state) {
                let last: WitnessState =
                    serde_json::from_str(&text).with_context(|| state.display().to_string())?;
                let last_root =
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &last.root)?;
                if cp.size < last.size {
                    bail!(
                        "the log went back from size {} to {}: refusing to cosign",
                        last.size,
                        cp.size
                    );
                }
                if cp.size == last.size && last_root != cp.root {
                    bail!(
                        "two different roots for size {}: the log forked; refusing to cosign",
                        cp.size
                    );
                }
                if cp.size > last.size {
                    let path = format!(
                        "/v1/log/proof/consistency?from={}&to={}",
                        last.size, cp.size
                    );
                    let (status, proof) = client.get_json(&path).await?;
                    if !status.is_success() {
                        bail!(
                            "no consistency proof from {} to {}: {proof}",
                            last.size,
                            cp.size
                        );
                    }
                    let hashes: Vec<Vec<u8>> = proof["proof"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|h| h.as_str())
                                .filter_map(|h| {
                                    base64::Engine::decode(
                                        &base64::engine::general_purpose::STANDARD,
                                        h,
                                    )
                                    .ok()
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    hub_core::merkle::verify_consistency(
                        last.size, cp.size, &last_root, &cp.root, &hashes,
                    )
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "the log is not consistent with size {}: {e}; refusing to cosign",
                            last.size
                        )
                    })?;
                }
            }
            let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
            let line =
                note::cosign(&opened.body, &name, &key, now).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (status, answer) = client
                .post_json(
                    "/v1/log/cosignatures",
                    &json!({"size": cp.size, "cosignature": line}),
                )
                .await?;
            if !status.is_success() {
                bail!("the hub refused the cosignature: {answer}");
            }
            std::fs::write(
                &state,
                serde_json::to_string(&WitnessState {
                    size: cp.size,
                    root: b64(&cp.root),
                })?,
            )
            .with_context(|| state.display().to_string())?;
            out!("cosigned {} at size {}", cp.origin, cp.size);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The log's checkpoint key now: where the hub key's hand-overs lead from
/// the `pinned` one (`hub_core::handover`), so that a witness goes on
/// across rotations without being re-pinned. Only that key: a retired key
/// signs no checkpoint the witness cosigns.
async fn current_log_key(
    client: &hub_client::HubClient,
    pinned: &hub_core::note::Verifier,
) -> anyhow::Result<hub_core::note::Verifier> {
    use hub_core::handover::{KeyHandover, latest};
    let (status, list) = client
        .get_json("/.well-known/hub-key-handovers.json")
        .await?;
    if !status.is_success() {
        bail!("the hub's key hand-overs are unavailable (HTTP {status}): {list}");
    }
    let handovers: Vec<KeyHandover> =
        serde_json::from_value(list).context("the hub's key hand-overs")?;
    let current = latest(&hub_core::jws::Jwk::ed25519(&pinned.public_key), &handovers);
    let public: [u8; 32] = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        &current.x,
    )
    .ok()
    .and_then(|x| x.try_into().ok())
    .ok_or_else(|| anyhow::anyhow!("the hub key {} is not an Ed25519 key", current.kid))?;
    hub_core::note::Verifier::new(&pinned.name, public).map_err(|e| anyhow::anyhow!("{e}"))
}

fn read_jwks(path: &Path) -> anyhow::Result<hub_core::jws::Jwks> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a JWK Set", path.display()))
}

async fn audit(config: &Config, cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCmd::Export {
            out,
            no_bodies,
            up_to,
        } => {
            let end = up_to.unwrap_or(u64::MAX);
            let store = open_store(config).await?;
            let mut writer = hub_audit::BundleWriter::create(&out, !no_bodies)?;
            let bar = indicatif::ProgressBar::new_spinner().with_message("exporting entries");
            let mut next = 0u64;
            loop {
                let chunk = store.entries(next, 10_000).await?;
                let Some(last) = chunk.last() else { break };
                next = last.index + 1;
                for e in chunk.iter().filter(|e| e.index < end) {
                    writer.push(&e.record, e.body.as_ref())?;
                }
                if next >= end {
                    break;
                }
                bar.set_position(next);
            }
            bar.finish_and_clear();
            let bar = indicatif::ProgressBar::new_spinner().with_message("exporting checkpoints");
            let mut checkpoints = 0u64;
            let mut from = 0;
            'pages: loop {
                let page = store.checkpoints_from(from, 10_000).await?;
                let Some(last) = page.last() else { break };
                from = last.checkpoint.size + 1;
                for c in page {
                    if c.checkpoint.size > end {
                        break 'pages;
                    }
                    let mut note = c.checkpoint.note;
                    for line in c.cosignatures {
                        note.push_str(&line);
                    }
                    writer.push_checkpoint(&hub_audit::BundleCheckpoint {
                        size: c.checkpoint.size,
                        note,
                    })?;
                    checkpoints += 1;
                }
                bar.set_position(checkpoints);
            }
            bar.finish_and_clear();
            let retired = store.retired_agency_keys().await?;
            let registry = hub_audit::RegistrySnapshot {
                agencies: store
                    .agencies()
                    .await?
                    .into_iter()
                    .map(|a| hub_audit::registry::AgencyEntry {
                        retired_keys: retired
                            .iter()
                            .filter(|(m, _)| *m == a.member)
                            .map(|(_, k)| k.clone())
                            .collect(),
                        member: a.member,
                        signing_key: a.signing_key,
                        suspended: a.suspended,
                    })
                    .collect(),
                services: store
                    .services()
                    .await?
                    .into_iter()
                    .map(|s| hub_audit::registry::ServiceEntry {
                        name: s.name,
                        version: s.version,
                        kind: s.kind,
                        provider: s.provider,
                        request_schema: s.request_schema,
                        response_schema: s.response_schema,
                    })
                    .collect(),
                grants: store
                    .grants()
                    .await?
                    .into_iter()
                    .map(|g| hub_audit::registry::GrantEntry {
                        consumer: g.consumer,
                        service: g.service,
                        purpose: g.purpose,
                        fields: g.fields,
                    })
                    .collect(),
                subscriptions: Some(
                    store
                        .subscriptions()
                        .await?
                        .into_iter()
                        .map(|s| hub_audit::registry::SubscriptionEntry {
                            subscriber: s.subscriber,
                            service: s.service,
                            version: s.version,
                        })
                        .collect(),
                ),
            };
            let now = hub_core::timefmt::rfc3339_millis(time::OffsetDateTime::now_utc());
            let handovers =
                hub_server::pki::read_hub_key_handovers(&PkiPaths::new(&config.data_dir))?;
            let manifest = writer.finish(&config.log_origin, &now, &registry, &handovers)?;
            out!(
                "exported {} entries and {} checkpoints to {}{}",
                manifest.entries,
                checkpoints,
                out.display(),
                if manifest.bodies {
                    ""
                } else {
                    " (without bodies)"
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify {
            bundle,
            jwks,
            report: report_path,
            integrity_only,
            witnesses,
            quorum,
            data_key,
        } => {
            let depth = if integrity_only {
                hub_audit::Depth::Integrity
            } else {
                hub_audit::Depth::Full
            };
            let witnesses = witnesses
                .iter()
                .map(|v| {
                    hub_core::note::Verifier::parse(v)
                        .map_err(|e| anyhow::anyhow!("--witness {v}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = hub_audit::Options {
                depth,
                quorum: quorum.unwrap_or(witnesses.len()),
                witnesses,
                data_key: data_key
                    .map(|p| hub_server::pki::read_data_key(&p).map(Arc::new))
                    .transpose()?,
            };
            let bodies_sealed = options.data_key.is_none() && hub_audit::manifest(&bundle)?.bodies;
            let pinned = read_jwks(&jwks)?;
            let total = hub_audit::manifest(&bundle)?.entries;
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} entries {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let report = hub_audit::verify(&bundle, &pinned, &options, &|done, _| {
                bar.set_position(done)
            })?;
            bar.finish_and_clear();
            out!("{:<22} {:>12} {:>8}", "check", "passed", "failed");
            for (check, tally) in &report.checks {
                out!("{check:<22} {:>12} {:>8}", tally.passed, tally.failed);
            }
            if let Some(path) = report_path {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| path.display().to_string())?;
            }
            if report.ok() {
                out!(
                    "OK: {} entries and {} checkpoints of {} verified",
                    report.entries,
                    report.checkpoints,
                    report.origin
                );
                if bodies_sealed && depth == hub_audit::Depth::Full {
                    out!("note: the bodies are sealed; give --data-key to check them too");
                }
                if report.entries_after_last_checkpoint > 0 {
                    out!(
                        "note: the last {} entries are not yet covered by a signed checkpoint",
                        report.entries_after_last_checkpoint
                    );
                }
                Ok(ExitCode::SUCCESS)
            } else {
                for f in report.findings.iter().take(20) {
                    eprintln!("FAILED {f}");
                }
                let more =
                    report.findings.len().saturating_sub(20) as u64 + report.findings_not_listed;
                if more > 0 {
                    eprintln!("... and {more} more (see --report)");
                }
                Ok(ExitCode::FAILURE)
            }
        }
        AuditCmd::Replay {
            bundle,
            data_key,
            report: report_path,
        } => {
            let data_key = hub_server::pki::read_data_key(&data_key)?;
            let total = hub_audit::manifest(&bundle)?.entries;
            let bar = indicatif::ProgressBar::new(total);
            let report =
                hub_audit::replay::replay(&bundle, &data_key, &|done, _| bar.set_position(done))?;
            bar.finish_and_clear();
            out!("{:<22} {:>12}", "entries", report.entries);
            out!("{:<22} {:>12}", "registry changes", report.registry_changes);
            out!("{:<22} {:>12}", "decisions replayed", report.replayed);
            out!("{:<22} {:>12}", "same outcome", report.matched);
            out!(
                "{:<22} {:>12}",
                "different outcome",
                report.differences.len()
            );
            if let Some(path) = report_path {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| path.display().to_string())?;
            }
            for d in report.differences.iter().take(20) {
                eprintln!(
                    "DIFFERS entry {} ({}): recorded {}, replayed {}: {}",
                    d.index, d.kind, d.recorded, d.replayed, d.detail
                );
            }
            Ok(if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        AuditCmd::Prove {
            bundle,
            exchange_id,
            jwks,
        } => {
            let pinned = read_jwks(&jwks)?;
            let report = hub_audit::prove(&bundle, &pinned, &exchange_id.to_string())?;
            out!("{}", serde_json::to_string_pretty(&report)?);
            eprintln!(
                "{} entr{} of {exchange_id} included in the signed tree of size {} (proofs checked)",
                report.proofs.len(),
                if report.proofs.len() == 1 { "y" } else { "ies" },
                report.size
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_adapter(config: &Config, registry: ReferenceRegistry) -> anyhow::Result<ExitCode> {
    use hub_adapter_sdk::Adapter;
    if config.amqp_url.is_empty() {
        bail!("set amqp_url (HUB_AMQP_URL): an adapter process is reached through RabbitMQ");
    }
    let jwks_file = std::env::var_os("HUB_JWKS_FILE").map_or_else(
        || PkiPaths::new(&config.data_dir).dir.join("hub-jwks.json"),
        PathBuf::from,
    );
    let jwks = std::fs::read_to_string(&jwks_file).with_context(|| {
        format!(
            "reading the hub's keys from {} (start the hub once, or set HUB_JWKS_FILE)",
            jwks_file.display()
        )
    })?;
    let n = config.synthetic_records;
    let adapter: Arc<dyn Adapter> = match registry {
        ReferenceRegistry::Population => Arc::new(adapter_population::PopulationAdapter::new(
            adapter_population::Registry::synthetic(1, n),
        )),
        ReferenceRegistry::Land => Arc::new(adapter_land::LandAdapter::new(
            adapter_land::Registry::synthetic(2, n),
        )),
        ReferenceRegistry::Enterprise => Arc::new(adapter_enterprise::EnterpriseAdapter::new(
            adapter_enterprise::Registry::synthetic(3, n),
        )),
    };
    let worker = hub_adapter_sdk::amqp::WorkerConfig {
        amqp_url: config.amqp_url.clone(),
        topology: hub_adapter_sdk::amqp::Topology::new(config.amqp_prefix.clone()),
        hub_keys: serde_json::from_str(&jwks)
            .with_context(|| format!("{} is not a JWK set", jwks_file.display()))?,
        prefetch: hub_adapter_sdk::amqp::WorkerConfig::prefetch_from_env()?,
    };
    banner_line(&format!(
        "adapter {} consuming its queue",
        adapter.provider()
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        hub_adapter_sdk::stop_signal().await;
        let _ = stop.send(true);
    });
    hub_adapter_sdk::amqp::run(adapter, worker, stopped).await;
    Ok(ExitCode::SUCCESS)
}

async fn dead_letters(config: &Config, cmd: DeadLettersCmd) -> anyhow::Result<ExitCode> {
    if config.amqp_url.is_empty() {
        bail!("set amqp_url (HUB_AMQP_URL): dead letters live on RabbitMQ");
    }
    let topology = hub_adapter_sdk::amqp::Topology::new(config.amqp_prefix.clone());
    let redrive = match &cmd {
        DeadLettersCmd::List => None,
        DeadLettersCmd::Redrive { all: true, .. } => Some(Vec::new()),
        DeadLettersCmd::Redrive { ids, .. } if ids.is_empty() => {
            bail!("name the message ids to re-drive, or pass --all")
        }
        DeadLettersCmd::Redrive { ids, .. } => Some(ids.clone()),
    };
    let (letters, redriven) =
        hub_server::broker::dead_letters(&config.amqp_url, &topology, redrive.as_deref()).await?;
    for l in &letters {
        out!(
            "{:<38} {:<16} from {} via {:?} {:?} ({} bytes)",
            l.message_id.as_deref().unwrap_or("-"),
            l.reason,
            l.queue,
            l.exchange,
            l.routing_key,
            l.bytes
        );
        if !l.because.is_empty() {
            out!("    because: {}", l.because);
        }
    }
    out!("{} dead letter(s)", letters.len());
    if redrive.is_some() {
        out!("{redriven} re-driven");
    }
    Ok(ExitCode::SUCCESS)
}

fn adapter_user(config: &Config, provider: &Member, user: &str) -> anyhow::Result<ExitCode> {
    let vhost = match config.amqp_url.as_str() {
        "" => "/".to_owned(),
        url => {
            hub_adapter_sdk::amqp::parse_url(url)
                .map_err(|e| anyhow::anyhow!("amqp_url: {e}"))?
                .vhost
        }
    };
    let topology = hub_adapter_sdk::amqp::Topology::new(config.amqp_prefix.clone());
    let [configure, write, read] = topology
        .adapter_permissions(provider)
        .map(|p| shell_word(&p));
    let (vhost, quoted_user) = (shell_word(&vhost), shell_word(user));
    out!("# the password is read from $PASSWORD");
    out!("rabbitmqctl add_user {quoted_user} \"$PASSWORD\"");
    out!("rabbitmqctl set_permissions -p {vhost} {quoted_user} \\");
    out!("  {configure} \\\n  {write} \\\n  {read}");
    out!("# then, as an administrator, bind it to the provider on every hub (logged):");
    out!(
        "# hub agency set-broker-user {} {quoted_user}",
        shell_word(&provider.to_string())
    );
    Ok(ExitCode::SUCCESS)
}

/// `s` as one word for a POSIX shell: single-quoted.
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let running = app::start(
        config.clone(),
        Arc::new(SystemClock),
        Arc::new(SystemRandom::default()),
    )
    .await?;
    let banner = format!(
        "hub API (mTLS):       https://{api}\n\
         admin (registry):     https://{admin}\n\
         public (health, keys): https://{public}/healthz\n\
         data directory:       {data}\n\n\
         Next, in another terminal, ask the population registry for a citizen as the demo one-stop office:\n  \
         cargo run --release -p hub -- send --as 000.00.29.H29/one-stop citizen.lookup '{{\"personal_id\":\"001085012345\"}}' --purpose public_service --case HS-2026-0001\n\n\
         Press Ctrl-C to stop.",
        api = running.api_addr,
        admin = running.admin_addr,
        public = running.public_addr,
        data = config.data_dir.display(),
    );
    // The banner is for a person at a terminal: a closed standard output
    // (a supervisor's, or `| tee` stopped by the same Ctrl-C) must not
    // stop the hub, nor skip its graceful shutdown.
    banner_line(&banner);
    hub_adapter_sdk::stop_signal().await;
    banner_line("stopping...");
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// How the command ends on `e`: with the error on standard error, or
/// quietly when standard output's reader went away (`hub ... | head` has
/// what it wanted), with the status a shell gives a program stopped by
/// SIGPIPE, so that a script can tell it from a failed check.
pub fn report_failure(e: &anyhow::Error) -> ExitCode {
    let closed = e
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
    if closed {
        return ExitCode::from(141);
    }
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}

/// Write a line of a long-running command's banner (`serve`, `adapter`);
/// a failure is only logged.
fn banner_line(text: &str) {
    use std::io::Write as _;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        tracing::debug!(error = %e, "standard output is closed");
    }
}

/// Send one registry change to the hub's admin listener as the
/// administrator, check the hub's signature on the logged change, and say
/// where it was logged.
async fn admin_change(
    config: &Config,
    admin: &AdminTarget,
    change: AdminChange,
) -> anyhow::Result<()> {
    let pki = PkiPaths::new(&config.data_dir);
    let cert = pki.admin_cert(&admin.name);
    if !cert.exists() {
        bail!(
            "no administrator certificate {} (run `hub init` for the dev PKI's `{}`)",
            cert.display(),
            hub_server::pki::DEV_ADMIN
        );
    }
    let client = HubClient::from_files(
        &admin.url,
        &pki.ca_cert(),
        Some((&cert, &pki.admin_key(&admin.name))),
    )?;
    let (status, reply) = client
        .post_json("/admin/v1/changes", &serde_json::to_value(&change)?)
        .await
        .with_context(|| format!("reaching the hub's admin listener at {}", admin.url))?;
    if !status.is_success() {
        bail!(
            "the hub refused the change: HTTP {status} {}: {}",
            reply["code"].as_str().unwrap_or_default(),
            reply["message"].as_str().unwrap_or_default()
        );
    }
    let jwks = client.jwks().await?;
    verify_reply(&reply, &jwks).context("the hub's seal on the change does not verify")?;
    eprintln!(
        "logged as admin entry {} by {}",
        reply["record"]["index"], admin.name
    );
    if let Some(n) = reply["withdrawn"].as_u64() {
        eprintln!("{n} events waiting in the inbox, never fetched, were withdrawn");
    }
    Ok(())
}

async fn agency(config: &Config, admin: &AdminTarget, cmd: AgencyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        AgencyCmd::List => {
            let store = open_store(config).await?;
            for a in store.agencies().await? {
                let key = a
                    .signing_key
                    .as_ref()
                    .map_or("-".to_owned(), |k| k.kid.clone());
                out!(
                    "{:<40} signing key {:<44} {}{}{}",
                    a.member.to_string(),
                    key,
                    a.name,
                    if a.suspended { " (suspended)" } else { "" },
                    a.broker_user
                        .as_ref()
                        .map_or(String::new(), |u| format!(" (answers as broker user {u})"))
                );
            }
        }
        AgencyCmd::Add {
            member,
            name,
            issue_cert,
        } => {
            admin_change(
                config,
                admin,
                AdminChange::AgencyAdd {
                    member: member.clone(),
                    name: name.clone(),
                },
            )
            .await?;
            out!("added {member}");
            if issue_cert {
                let pki = PkiPaths::new(&config.data_dir);
                let now = time::OffsetDateTime::now_utc();
                issue_client_cert(
                    &pki,
                    &member,
                    &name,
                    now - time::Duration::hours(1),
                    now + time::Duration::days(365),
                )?;
                out!("certificate: {}", pki.agency_cert(&member).display());
                out!("key:         {}", pki.agency_key(&member).display());
            }
        }
        AgencyCmd::SetKey {
            member,
            public_key,
            none,
        } => {
            let key = match (public_key, none) {
                (Some(path), false) => Some(hub_server::pki::read_public_jwk(&path)?),
                (None, true) => None,
                _ => bail!("give --public-key FILE or --none"),
            };
            let kid = key.as_ref().map_or("removed".into(), |k| k.kid.clone());
            admin_change(
                config,
                admin,
                AdminChange::AgencySetKey {
                    member: member.clone(),
                    key,
                },
            )
            .await?;
            out!("{member}: signing key {kid}; the one it replaces is retired");
        }
        AgencyCmd::SetBrokerUser { member, user, .. } => {
            admin_change(
                config,
                admin,
                AdminChange::AgencySetBrokerUser {
                    member: member.clone(),
                    user: user.clone(),
                },
            )
            .await?;
            match user {
                Some(user) => out!(
                    "{member}: answers taken only from broker user {user}, on every hub within a second"
                ),
                None => out!(
                    "{member}: answers taken from the hubs' own broker user, on every hub within a second"
                ),
            }
        }
        AgencyCmd::Suspend { member } => {
            admin_change(
                config,
                admin,
                AdminChange::AgencySuspend {
                    member: member.clone(),
                },
            )
            .await?;
            out!("{member}: suspended from its next request on");
        }
        AgencyCmd::Resume { member } => {
            admin_change(
                config,
                admin,
                AdminChange::AgencyResume {
                    member: member.clone(),
                },
            )
            .await?;
            out!("{member}: resumed from its next request on");
        }
        AgencyCmd::RevokeCert { member, serial } => {
            let serial = match serial {
                Some(serial) => serial.to_ascii_lowercase(),
                None => hub_server::pki::certificate_serial(
                    &PkiPaths::new(&config.data_dir).agency_cert(&member),
                )
                .context("give --serial, or issue the certificate from this data directory")?,
            };
            admin_change(
                config,
                admin,
                AdminChange::CertificateRevoke {
                    member: member.clone(),
                    serial: serial.clone(),
                },
            )
            .await?;
            out!(
                "{member}: certificate {serial} revoked; refused from its next connection to any hub"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn grant(config: &Config, admin: &AdminTarget, cmd: GrantCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        GrantCmd::List => {
            let store = open_store(config).await?;
            for g in store.grants().await? {
                out!(
                    "{:<40} {:<26} {:<24} {}",
                    g.consumer.to_string(),
                    g.service.as_str(),
                    g.purpose.as_str(),
                    g.fields
                        .as_ref()
                        .map_or("(all fields)".into(), FieldSet::to_list)
                );
            }
        }
        GrantCmd::Add {
            consumer,
            service,
            purposes,
            fields,
        } => {
            if purposes.is_empty() {
                bail!("name at least one purpose");
            }
            for purpose in purposes {
                admin_change(
                    config,
                    admin,
                    AdminChange::GrantAdd {
                        consumer: consumer.clone(),
                        service: service.clone(),
                        purpose: purpose.clone(),
                        fields: fields.clone(),
                    },
                )
                .await?;
                let what = fields
                    .as_ref()
                    .map_or("every field".into(), FieldSet::to_list);
                out!("granted {consumer} {service} for {purpose}: {what}");
            }
        }
        GrantCmd::Revoke {
            consumer,
            service,
            purpose,
        } => {
            admin_change(
                config,
                admin,
                AdminChange::GrantRevoke {
                    consumer,
                    service,
                    purpose,
                },
            )
            .await?;
            out!("revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn subscription(
    config: &Config,
    admin: &AdminTarget,
    cmd: SubscriptionCmd,
) -> anyhow::Result<ExitCode> {
    match cmd {
        SubscriptionCmd::List => {
            let store = open_store(config).await?;
            let grants = store.grants().await?;
            for s in store.subscriptions().await? {
                // Events go only to subscribers granted the service.
                let granted = grants
                    .iter()
                    .any(|g| g.consumer == s.subscriber && g.service == s.service);
                out!(
                    "{:<40} {} v{}{}",
                    s.subscriber.to_string(),
                    s.service.as_str(),
                    s.version,
                    if granted {
                        ""
                    } else {
                        "  (no grant for it: receives nothing)"
                    }
                );
            }
        }
        SubscriptionCmd::Add {
            subscriber,
            service,
            version,
        } => {
            let done = format!("{subscriber} subscribed to {service} v{version}");
            let change = AdminChange::SubscriptionAdd {
                subscriber,
                service,
                version,
            };
            admin_change(config, admin, change).await?;
            out!("{done}");
        }
        SubscriptionCmd::Remove {
            subscriber,
            service,
            version,
        } => {
            let done = format!("{subscriber} no longer subscribed to {service} v{version}");
            let change = AdminChange::SubscriptionRemove {
                subscriber,
                service,
                version,
            };
            admin_change(config, admin, change).await?;
            out!("{done}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn client_for(config: &Config, agent: &Agent) -> anyhow::Result<(HubClient, PkiPaths)> {
    let pki = PkiPaths::new(&config.data_dir);
    let cert = pki.agency_cert(&agent.member);
    if !cert.exists() {
        bail!(
            "no certificate for {} in {} (run `hub serve` or `hub init` first, or `hub agency add --issue-cert`)",
            agent.member,
            pki.dir.display()
        );
    }
    let base = agent
        .hub
        .clone()
        .unwrap_or_else(|| format!("https://{}", config.api_listen));
    let client = HubClient::from_files(
        &base,
        &pki.ca_cert(),
        Some((&cert, &pki.agency_key(&agent.member))),
    )?;
    Ok((client, pki))
}

fn read_payload(arg: &str) -> anyhow::Result<Value> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(Path::new(path)).with_context(|| path.to_owned())?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).context("the payload is not JSON")
}

async fn send(config: &Config, args: SendArgs) -> anyhow::Result<ExitCode> {
    let mut envelope = json!({
        "sender": args.agent.member,
        "service": args.service,
        "version": args.version,
        "purpose": args.purpose,
        "case_ref": args.case_ref,
        "payload": read_payload(&args.payload)?,
    });
    if let Some(id) = args.id {
        envelope["id"] = json!(id);
    }
    if let Some(citizen) = args.citizen {
        envelope["on_behalf_of"] = json!({"kind": "citizen", "personal_id": citizen});
    }
    let reply = exchange(config, &args.agent, envelope).await?;
    if let Some(reply) = &reply {
        out!("{}", serde_json::to_string_pretty(reply)?);
    }
    Ok(if reply.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Send `envelope` as `agent` (signed when the agency has a key) and check
/// the hub's signature on the reply. `None`: refused (printed).
async fn exchange(
    config: &Config,
    agent: &Agent,
    envelope: Value,
) -> anyhow::Result<Option<Value>> {
    let (client, pki) = client_for(config, agent)?;
    let mut request = json!({ "envelope": envelope });
    let key_path = pki.agency_signing_key(&agent.member);
    if key_path.exists() {
        let key = read_signing_key(&key_path)?;
        request["signature"] = json!(sign_envelope(&request["envelope"], &key)?);
    }
    let (status, reply) = client.post_json("/v1/exchanges", &request).await?;
    if !status.is_success() {
        out!("{}", serde_json::to_string_pretty(&reply)?);
        eprintln!(
            "refused: HTTP {status} {}",
            reply["code"].as_str().unwrap_or_default()
        );
        return Ok(None);
    }
    let jwks = client.jwks().await?;
    let kid = verify_reply(&reply, &jwks).context("the hub's seal on the reply does not verify")?;
    let record = &reply["record"];
    eprintln!(
        "HTTP {status}: {} {} at log index {}; hub signature verified (key {kid})",
        record["kind"].as_str().unwrap_or_default(),
        record["exchange_id"].as_str().unwrap_or_default(),
        record["index"]
    );
    Ok(Some(reply))
}

async fn access_history(config: &Config, args: AccessHistoryArgs) -> anyhow::Result<ExitCode> {
    let envelope = json!({
        "sender": args.agent.member,
        "service": hub_server::access_history::SERVICE,
        "version": 1,
        "purpose": "data_subject_request",
        "case_ref": args.case_ref,
        "payload": match args.after {
            Some(after) => json!({"personal_id": args.personal_id, "after": after}),
            None => json!({"personal_id": args.personal_id}),
        },
    });
    let Some(reply) = exchange(config, &args.agent, envelope).await? else {
        return Ok(ExitCode::FAILURE);
    };
    if args.json {
        out!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    let member = |m: &Value| {
        format!(
            "{}/{}",
            m["agency"].as_str().unwrap_or_default(),
            m["subsystem"].as_str().unwrap_or_default()
        )
    };
    let accesses = reply["body"]["accesses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    out!(
        "{:<24} {:<32} {:<24} {:<22} {:<16} {:<9} {:<32} fields",
        "time",
        "agency",
        "service",
        "purpose",
        "case",
        "outcome",
        "received by"
    );
    for a in &accesses {
        let received: Vec<String> = a["received_by"]
            .as_array()
            .into_iter()
            .flatten()
            .map(member)
            .collect();
        let fields = a["fields"].as_array().map_or("all".into(), |f| {
            f.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        });
        out!(
            "{:<24} {:<32} {:<24} {:<22} {:<16} {:<9} {:<32} {}",
            a["time"].as_str().unwrap_or_default(),
            member(&a["agency"]),
            a["service"].as_str().unwrap_or_default(),
            a["purpose"].as_str().unwrap_or("-"),
            a["case_ref"].as_str().unwrap_or("-"),
            a["outcome"].as_str().unwrap_or_default(),
            if received.is_empty() {
                "-".into()
            } else {
                received.join(",")
            },
            if a["kind"] == "event" {
                "-".into()
            } else {
                fields
            }
        );
    }
    let more = match reply["body"]["next"].as_u64() {
        Some(next) => format!(" (more exist: ask again with --after {next})"),
        None => String::new(),
    };
    eprintln!("{} accesses{more}", accesses.len());
    Ok(ExitCode::SUCCESS)
}

async fn inbox(config: &Config, args: InboxArgs) -> anyhow::Result<ExitCode> {
    let (client, _) = client_for(config, &args.agent)?;
    let (status, inbox) = client
        .get_json(&format!("/v1/inbox?max={}", args.max))
        .await?;
    if !status.is_success() {
        out!("{}", serde_json::to_string_pretty(&inbox)?);
        return Ok(ExitCode::FAILURE);
    }
    let jwks = client.jwks().await?;
    let messages = inbox["messages"].as_array().cloned().unwrap_or_default();
    let mut ids = Vec::new();
    // The messages of one group commit share one signature: check it once.
    let seals = SealVerifier::new();
    for m in &messages {
        seals
            .verify_message(m, &jwks)
            .context("a message's hub seal does not verify")?;
        ids.push(m["record"]["exchange_id"].clone());
    }
    eprintln!("{} message(s), every hub seal verified", messages.len());
    // An acknowledged message is gone from the inbox: acknowledge only
    // what was written out.
    let written = (|| -> anyhow::Result<()> {
        out!("{}", serde_json::to_string_pretty(&inbox)?);
        std::io::Write::flush(&mut std::io::stdout()).context(STDOUT)
    })();
    if let Err(e) = written {
        if !ids.is_empty() {
            eprintln!(
                "nothing acknowledged: the messages could not be written out; \
                 they come back after the inbox's visibility timeout"
            );
        }
        return Err(e);
    }
    if args.ack && !ids.is_empty() {
        let (status, answer) = client
            .post_json("/v1/inbox/ack", &json!({ "exchange_ids": ids }))
            .await?;
        out!("{}", serde_json::to_string_pretty(&answer)?);
        if !status.is_success() {
            return Ok(ExitCode::FAILURE);
        }
        eprintln!(
            "acknowledged {} message(s); each receipt is logged",
            ids.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
