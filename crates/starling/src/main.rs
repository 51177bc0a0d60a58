//! `starling`: the broker server.
//!
//! `cargo run --release` serves MQTT on 127.0.0.1:1883 with the embedded defaults
//! (`starling --print-config`); `starling --help` lists the flags.

mod cluster_cli;
mod config;
mod logging;
mod passwd;
mod restore_cli;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use starling_broker::{Broker, Forwarder, Metrics, NodeOptions, ReplicatedLog};
use starling_cluster::admin::{self, AdminState};
use starling_cluster::{ClusterHandle, FsyncPolicy, LocalLog, RaftLog, TransferLeadership};
use tracing::{error, info, warn};

use crate::config::{Config, Fsync, LogFormat};

/// mimalloc: the broker allocates and frees a few small blocks per message on every worker
/// thread; glibc's allocator spent about a quarter of the hot path's instructions on that
/// (docs/performance.md). Built without transparent huge pages (`no_thp`): with them the
/// arenas mimalloc commits up front became 2 MiB resident pages, and an idle broker took 18 MiB
/// of RSS instead of 2 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Starling: a clustered MQTT 3.1 / 3.1.1 broker.
///
/// With no arguments it serves MQTT on 127.0.0.1:1883, anonymous access allowed, with persistent
/// sessions and retained messages kept in ./starling-data. Settings come from the embedded
/// defaults (see --print-config), then the --config file, then STARLING_<SECTION>_<KEY>
/// environment variables (e.g. STARLING_MQTT_MAX_INFLIGHT=50), then these flags.
// The text is `--help`'s, not HTML.
#[allow(rustdoc::invalid_html_tags)]
#[derive(Parser, Debug)]
#[command(name = "starling", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    flags: ConfigFlags,

    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_config: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

// The settings flags: the top of the configuration layering (defaults, `--config` file,
// `STARLING_*` variables, these). `starling restore` takes them too. (A plain comment: a doc
// comment on a flattened struct would become the command's about text.)
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ConfigFlags {
    /// Configuration file (TOML). Keys not in it keep their defaults.
    #[arg(short, long, value_name = "FILE", env = "STARLING_CONFIG")]
    config: Option<PathBuf>,

    /// MQTT listener; repeat for several. Replaces mqtt.listeners.
    #[arg(short, long = "listen", value_name = "ADDR:PORT")]
    listen: Vec<SocketAddr>,

    /// Directory for the database (storage.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Keep nothing on disk (storage.persistence = false).
    #[arg(long)]
    in_memory: bool,

    /// When commits are fsync'd (storage.fsync).
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,

    /// Log format (log.format): structured text, JSON, or Mosquitto's lines.
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,

    /// Log level or filter (log.level), e.g. "debug" or "info,starling_broker=debug".
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// This node's id in a cluster (cluster.node_id); default: from the host name `name-N`.
    #[arg(long, value_name = "N")]
    node_id: Option<u64>,

    /// Peer (gRPC) listener of this node (cluster.listen).
    #[arg(long, value_name = "ADDR:PORT")]
    cluster_listen: Option<SocketAddr>,

    /// Address other nodes use to reach this one (cluster.advertise).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,

    /// Cluster members `1=HOST:PORT,2=HOST:PORT,...` (cluster.peers); turns clustered mode on.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    peers: Option<String>,

    /// On an empty data directory, wait to be added to an existing cluster instead of
    /// bootstrapping one (cluster.bootstrap = false).
    #[arg(long)]
    join: bool,

    /// Admin HTTP endpoint (cluster.admin_listen).
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<String>,

    /// Password file (mqtt.password_file); `starling passwd` manages it.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,

    /// ACL file in Mosquitto's acl_file syntax (mqtt.acl_file).
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,

    /// Accept clients without a user name: true, false or auto (mqtt.allow_anonymous; auto =
    /// only while every listener is on a loopback address).
    #[arg(long, value_name = "true|false|auto")]
    allow_anonymous: Option<String>,
}

/// Subcommands (without one, `starling` runs the broker).
// Parsed once at start: the size of `Restore` (its settings flags) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Cluster administration through a node's admin endpoint.
    Cluster {
        #[command(subcommand)]
        op: cluster_cli::ClusterOp,
    },
    /// Manage a password file: `starling passwd FILE add|delete|verify USER`. Passwords are read
    /// from standard input and never printed, nor are their hashes.
    Passwd {
        /// The password file.
        file: PathBuf,
        #[command(subcommand)]
        op: passwd::PasswdOp,
    },
    /// Restore a backup (`GET /cluster/snapshot`) into this node's data directory, offline.
    ///
    /// The node's own configuration applies (the new cluster's members and addresses, its data
    /// directory). Run it on every member of the new cluster, with the same backup and peers,
    /// while the nodes are stopped and their data directories empty; then start them.
    Restore(restore_cli::RestoreArgs),
}

/// The configuration of `cli`: defaults, the `--config` file, `STARLING_*` variables, flags;
/// checked as the broker needs it.
fn build_config(cli: &Cli) -> Result<Config, String> {
    let c = layer_config(&cli.flags, None)?;
    if c.cluster.enabled() {
        // A Raft vote or append acknowledgement must not precede the write it promises.
        if c.storage.fsync == Fsync::Interval {
            return Err(
                "storage.fsync = \"interval\" is refused in clustered mode: Raft votes \
                        and log acknowledgements would be sent before they are durable, so a \
                        crash could lose committed entries; use storage.fsync = \"always\" \
                        (the default)"
                    .into(),
            );
        }
        // No secret (and not insecure), an unreadable file, a short secret: exit code 2.
        c.cluster.peer_secret().map_err(|e| e.to_string())?;
        c.cluster.validate().map_err(|e| e.to_string())?;
        check_entry_bound(&c)?;
    }
    Ok(c)
}

/// In a cluster one log entry travels in one peer message: the largest PUBLISH accepted must
/// fit in one entry, and one entry in `cluster.max_message_bytes`.
fn check_entry_bound(c: &Config) -> Result<(), String> {
    let needed = c
        .mqtt
        .max_packet_size
        .saturating_add(starling_broker::store::ENTRY_OVERHEAD)
        .saturating_add(starling_cluster::config::RAFT_MESSAGE_OVERHEAD);
    if needed > c.cluster.max_message_bytes {
        return Err(format!(
            "mqtt.max_packet_size = {} does not fit in one peer message: \
             cluster.max_message_bytes = {} must be at least {needed} (max_packet_size plus \
             {} bytes); raise cluster.max_message_bytes or lower mqtt.max_packet_size",
            c.mqtt.max_packet_size,
            c.cluster.max_message_bytes,
            needed - c.mqtt.max_packet_size
        ));
    }
    Ok(())
}

/// Defaults, the configuration file, `STARLING_*` variables, then the flags of `top`, then
/// those of `sub` (a subcommand's own flags, which win; its `--config` replaces the top one).
fn layer_config(top: &ConfigFlags, sub: Option<&ConfigFlags>) -> Result<Config, String> {
    let file = sub
        .and_then(|f| f.config.as_deref())
        .or(top.config.as_deref());
    let mut c = config::load(file, std::env::vars()).map_err(|e| e.to_string())?;
    apply_flags(&mut c, top)?;
    if let Some(sub) = sub {
        apply_flags(&mut c, sub)?;
    }
    c.cluster.peer_list().map_err(|e| e.to_string())?;
    c.mqtt.validate().map_err(|e| e.to_string())?;
    Ok(c)
}

fn apply_flags(c: &mut Config, f: &ConfigFlags) -> Result<(), String> {
    if !f.listen.is_empty() {
        c.mqtt.listeners = f.listen.clone();
    }
    if let Some(d) = &f.data_dir {
        c.storage.data_dir = d.clone();
    }
    if f.in_memory {
        c.storage.persistence = false;
    }
    if let Some(x) = f.fsync {
        c.storage.fsync = x;
    }
    if let Some(x) = f.log_format {
        c.log.format = x;
    }
    if let Some(l) = &f.log_level {
        c.log.level = l.clone();
    }
    if let Some(n) = f.node_id {
        c.cluster.node_id = n;
    }
    if let Some(l) = f.cluster_listen {
        c.cluster.listen = l;
    }
    if let Some(a) = &f.advertise {
        c.cluster.advertise = a.clone();
    }
    if let Some(p) = &f.peers {
        c.cluster.peers = vec![p.clone()];
    }
    if f.join {
        c.cluster.bootstrap = false;
    }
    if let Some(a) = &f.admin_listen {
        c.cluster.admin_listen = a.clone();
    }
    if let Some(x) = &f.password_file {
        c.mqtt.password_file = x.clone();
    }
    if let Some(x) = &f.acl_file {
        c.mqtt.acl_file = x.clone();
    }
    if let Some(a) = &f.allow_anonymous {
        c.mqtt.allow_anonymous = match a.as_str() {
            "true" => starling_broker::Anonymous::Allow,
            "false" => starling_broker::Anonymous::Deny,
            "auto" => starling_broker::Anonymous::Auto,
            other => return Err(format!("--allow-anonymous {other:?}: true, false or auto")),
        };
    }
    Ok(())
}

fn fsync_policy(c: &Config) -> FsyncPolicy {
    match c.storage.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Interval => {
            FsyncPolicy::Interval(Duration::from_millis(c.storage.fsync_interval_ms.max(1)))
        }
    }
}

/// The log behind the session store: Raft in clustered mode, the local log otherwise.
fn open_log(
    c: &Config,
    node_id: u64,
) -> Result<(Box<dyn ReplicatedLog>, Option<ClusterHandle>), String> {
    if c.cluster.enabled() {
        if !c.storage.persistence {
            return Err("clustered mode needs storage.persistence = true".into());
        }
        warn_if_advertise_differs(&c.cluster, node_id);
        let log = RaftLog::start(
            &c.cluster,
            node_id,
            &c.storage.data_dir,
            fsync_policy(c),
            c.storage.queue_capacity,
        )
        .map_err(|e| e.to_string())?;
        let handle = log.handle();
        return Ok((Box::new(log), Some(handle)));
    }
    let log = if c.storage.persistence {
        LocalLog::open(
            &c.storage.data_dir,
            fsync_policy(c),
            c.storage.queue_capacity,
        )
    } else {
        LocalLog::in_memory(c.storage.queue_capacity)
    };
    Ok((Box::new(log.map_err(|e| e.to_string())?), None))
}

/// Other nodes dial the address `cluster.peers` gives for this node; a different
/// `cluster.advertise` means one of the two is wrong (a node that cannot be reached, or a peer
/// list copied from another deployment), which shows up later only as a silent follower.
fn warn_if_advertise_differs(c: &starling_cluster::ClusterConfig, node_id: u64) {
    if c.advertise.is_empty() {
        return;
    }
    let listed = c
        .peer_list()
        .ok()
        .and_then(|peers| peers.into_iter().find(|(id, _)| *id == node_id))
        .map(|(_, addr)| addr);
    if let Some(listed) = listed {
        if listed != c.advertise {
            tracing::warn!(
                node_id,
                advertise = %c.advertise,
                listed = %listed,
                "cluster.advertise differs from this node's entry in cluster.peers; \
                 the other nodes dial the cluster.peers address"
            );
        }
    }
}

/// This node's id: 1 for a single node; configured or from the host name in a cluster.
pub(crate) fn node_id(c: &Config) -> Result<u64, String> {
    if !c.cluster.enabled() {
        return Ok(1);
    }
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default();
    c.cluster
        .resolve_node_id(hostname.trim())
        .map_err(|e| e.to_string())
}

async fn serve(c: Config) -> Result<(), String> {
    let node_id = node_id(&c)?;
    let (log, cluster) = open_log(&c, node_id)?;
    let metrics = Metrics::new();
    let forwarder = cluster
        .as_ref()
        .map(|h| h.forwarder.clone() as Arc<dyn Forwarder>);
    let max_entry_bytes = if c.cluster.enabled() {
        c.cluster.max_entry_bytes()
    } else {
        0
    };
    let node = NodeOptions {
        node_id,
        forwarder,
        max_entry_bytes,
        freshness: cluster.as_ref().map(|h| h.freshness.clone()),
    };
    let broker = Broker::start(c.mqtt.clone(), node, log, metrics.clone())
        .await
        .map_err(|e| e.to_string())?;
    if let Some(h) = &cluster {
        // Forwards from other nodes are delivered from now on.
        let _ = h.delivery.set(broker.local_delivery());
    }
    for a in broker.local_addrs() {
        let family = if a.is_ipv4() { "ipv4" } else { "ipv6" };
        info!(target: "mqtt", addr = %a, "Opening {family} listen socket on port {}.", a.port());
    }
    if !c.cluster.admin_listen.is_empty() {
        let addr: SocketAddr = c
            .cluster
            .admin_listen
            .parse()
            .map_err(|e| format!("cluster.admin_listen {:?}: {e}", c.cluster.admin_listen))?;
        let state = AdminState {
            cluster: cluster.clone(),
            store: broker.store().clone(),
            metrics,
        };
        let local = admin::serve(addr, state)
            .await
            .map_err(|e| format!("admin endpoint {addr}: {e}"))?;
        info!(addr = %local, "Admin endpoint on {local}.");
    }
    wait_for_signal(|| match broker.reload_security() {
        Ok(s) => info!(
            users = s.users,
            acl_rules = s.acl_rules,
            "SIGHUP: security files reloaded"
        ),
        Err(e) => error!(error = %e, "SIGHUP: security files not reloaded, the previous ones stay in force: {e}"),
    })
    .await;
    info!(target: "mqtt", "starling version {} terminating", env!("CARGO_PKG_VERSION"));
    if let Some(c) = &cluster {
        transfer_leadership(c, LEADERSHIP_TRANSFER_TIMEOUT).await;
    }
    broker.shutdown().await;
    Ok(())
}

/// How long a leader that is asked to stop tries to hand leadership over.
const LEADERSHIP_TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// On a leader: asks Raft to hand leadership to the most up-to-date voter and waits until another
/// node leads (re-asking every 500 ms, as raft-rs abandons a transfer after an election timeout),
/// so the cluster does not sit out an election timeout after this node exits. Gives up after
/// `timeout`; a follower returns at once.
async fn transfer_leadership(c: &ClusterHandle, timeout: Duration) {
    let leader = || {
        let s = c.status.lock().unwrap_or_else(|e| e.into_inner());
        (s.leader, s.voters.len())
    };
    let (first, voters) = leader();
    if first != c.node_id || voters < 2 {
        return;
    }
    let start = tokio::time::Instant::now();
    let mut asked = start - Duration::from_secs(1);
    while start.elapsed() < timeout {
        if asked.elapsed() >= Duration::from_millis(500) {
            c.node.do_send(TransferLeadership);
            asked = tokio::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (now, _) = leader();
        if now != 0 && now != c.node_id {
            info!(
                to = now,
                elapsed_ms = start.elapsed().as_millis() as u64,
                "leadership transferred"
            );
            return;
        }
    }
    warn!(
        ?timeout,
        "leadership not transferred in time; stopping anyway"
    );
}

/// Waits for SIGTERM or SIGINT; calls `on_hup` for every SIGHUP meanwhile (reload the security
/// files, as Mosquitto does).
async fn wait_for_signal(mut on_hup: impl FnMut()) {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(mut term), Ok(mut int), Ok(mut hup)) => loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => on_hup(),
            }
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Cluster { op }) = cli.command {
        return match cluster_cli::run(&op) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("starling cluster: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Passwd { file, op }) = &cli.command {
        return match passwd::run(file, op) {
            Ok(passwd::Outcome::Done(msg)) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Ok(passwd::Outcome::No(msg)) => {
                eprintln!("starling passwd: {msg}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("starling passwd: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Restore(args)) = &cli.command {
        return match layer_config(&cli.flags, Some(&args.flags)) {
            Ok(c) => restore_cli::run(&c, args),
            Err(e) => {
                eprintln!("starling restore: {e}");
                ExitCode::from(2)
            }
        };
    }
    if cli.print_config {
        print!("{}", config::DEFAULT_TOML);
        return ExitCode::SUCCESS;
    }
    let c = match build_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("starling: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = logging::init(&c.log) {
        eprintln!("starling: {e}");
        return ExitCode::from(2);
    }
    info!(target: "mqtt", "starling version {} starting", env!("CARGO_PKG_VERSION"));
    if let Some(path) = &cli.flags.config {
        info!(target: "mqtt", "Config loaded from {}.", path.display());
    } else {
        info!(target: "mqtt", "Using default config.");
    }
    let sys = actix_rt::System::new();
    // A part that cannot go on (a Raft node whose disk failed, a derived index found wrong)
    // stops the system with its code: the process exits with it instead of serving on.
    let stopped = sys.stop_future();
    let result = sys.block_on(async move {
        tokio::select! {
            r = serve(c) => r.map_err(|e| (e, ExitCode::FAILURE)),
            code = stopped => {
                let code = code.unwrap_or(1);
                Err((format!("stopped with exit code {code}"), ExitCode::from(code.clamp(1, 255) as u8)))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, code)) => {
            error!("{e}");
            eprintln!("starling: {e}");
            code
        }
    }
}
