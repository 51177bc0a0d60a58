//! `raft`: committed proposals per second and commit latency of Starling's Raft store, on an
//! in-process cluster of three nodes over loopback gRPC.
//!
//! ```text
//!  one process, one actix System
//!   node 1: RaftLog (own arbiter, redb in /tmp/starling-bench-raft-*/, peer port 127.0.0.1:a)
//!   node 2: RaftLog (...                                                          127.0.0.1:b)
//!   node 3: RaftLog (...                                                          127.0.0.1:c)
//!     each ──LogEvent──▶ Sink actor (counts committed entries; the leader's also resolves waits)
//!
//!   N proposers (closed loop, on the System's thread):
//!     entry = magic | proposal id | filler (--entry-bytes in all)
//!     register a wait for the id ─▶ ClusterHandle::propose on the leader
//!       ─▶ Raft: append + replicate + fsync (group commit) ─▶ committed, applied on the leader
//!       ─▶ the leader's Sink sees the id ─▶ wakes the proposer ─▶ latency ─▶ next proposal
//! ```
//!
//! Each proposal is its own Raft entry. The Raft actor handles everything that arrived during
//! one pass over its mailbox as one Ready (one append to the log, one AppendEntries per peer, one
//! write batch), and the storage writer thread commits every batch queued meanwhile in one redb
//! transaction with one fsync: that is the batching (group commit). Throughput is the number of
//! proposals whose commit a proposer saw inside the measurement window (after `--warmup`),
//! divided by the window; latency is from just before `propose` to the proposer being woken.
//! After the run every node must have applied every committed entry.
//!
//! `raft-table` runs `raft` in a fresh child process per run (proposer counts × fsync policies ×
//! rounds, interleaved) and renders the markdown table of medians.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_broker::{LogEvent, ProposeError, ReplicatedLog};
use starling_cluster::config::Secret;
use starling_cluster::{ClusterConfig, ClusterHandle, FsyncPolicy, RaftLog};
use tokio::sync::oneshot;

use crate::compare::{median_min_max, si};
use crate::stats::{Latency, LatencySummary};
use crate::sys;
use crate::BenchError;

/// First 8 bytes of every entry the benchmark proposes.
pub const MAGIC: [u8; 8] = *b"sbraft01";

/// Magic plus the proposal id: the smallest entry.
pub const ENTRY_HEADER: usize = 16;

/// When the nodes fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fsync {
    /// Every write batch is fsync'd before Raft treats it as persisted (the default of
    /// `storage.fsync`).
    Always,
    /// Written without fsync, fsync'd every `--fsync-interval-ms`.
    Interval,
}

impl Fsync {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Interval => "interval",
        }
    }
}

/// Options of `starling-bench raft`.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct RaftArgs {
    /// Concurrent proposers, each with one proposal in flight (closed loop).
    #[arg(long, default_value_t = 16)]
    pub proposers: usize,

    /// Bytes of each entry (at least 16: magic and proposal id).
    #[arg(long, default_value_t = 100)]
    pub entry_bytes: usize,

    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds of proposing before the measurement starts.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// When the nodes fsync their Raft log.
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    pub fsync: Fsync,

    /// Fsync period with `--fsync interval`, ms (storage.fsync_interval_ms).
    #[arg(long, default_value_t = 100)]
    pub fsync_interval_ms: u64,

    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,

    /// Raft tick, ms (cluster.tick_ms; elections take 10 ticks).
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,

    /// Write batches queued per storage writer before Raft writes wait (storage.queue_capacity).
    #[arg(long, default_value_t = 1024)]
    pub queue_capacity: usize,

    /// Seconds a proposal may take to commit before it counts as timed out.
    #[arg(long, default_value_t = 5.0)]
    pub commit_timeout: f64,

    /// Seconds to wait for the nodes to elect a leader.
    #[arg(long, default_value_t = 30.0)]
    pub leader_timeout: f64,

    /// Directory the nodes' temporary data directories are created in (default: the system's
    /// temporary directory, /tmp).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl Default for RaftArgs {
    fn default() -> Self {
        use clap::Parser;
        /// Parses no arguments, so that the defaults live in the attributes.
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: RaftArgs,
        }
        Defaults::parse_from(["defaults"]).args
    }
}

impl RaftArgs {
    /// Checks the options.
    ///
    /// # Errors
    /// [`BenchError::Options`] naming the problem.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Options(m.into()));
        if self.proposers == 0 {
            return bad("--proposers must be positive");
        }
        if self.entry_bytes < ENTRY_HEADER {
            return bad("--entry-bytes must be at least 16");
        }
        if self.nodes == 0 || self.nodes > 9 {
            return bad("--nodes must be 1 to 9");
        }
        for (v, name) in [
            (self.duration, "--duration"),
            (self.commit_timeout, "--commit-timeout"),
            (self.leader_timeout, "--leader-timeout"),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(&format!("{name} must be positive"));
            }
        }
        if !(self.warmup >= 0.0 && self.warmup.is_finite()) {
            return bad("--warmup must be 0 or more");
        }
        Ok(())
    }

    fn policy(&self) -> FsyncPolicy {
        match self.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms.max(1)))
            }
        }
    }

    fn fsync_label(&self) -> String {
        match self.fsync {
            Fsync::Always => "always".into(),
            Fsync::Interval => format!("interval {}ms", self.fsync_interval_ms),
        }
    }
}

/// One `raft` run, printed as one JSON line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RaftSummary {
    /// Always `raft`.
    pub scenario: String,
    /// Round of `raft-table`, from 1.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub round: Option<u32>,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// Concurrent proposers.
    pub proposers: u64,
    /// Bytes per entry.
    pub entry_bytes: u64,
    /// `always` or `interval <ms>ms`.
    pub fsync: String,
    /// Raft tick, ms.
    pub tick_ms: u64,
    /// Seconds of warm-up before the window.
    pub warmup_s: f64,
    /// Seconds of the measurement window.
    pub window_s: f64,
    /// Proposals whose commit was seen inside the window.
    pub committed: u64,
    /// `committed` ÷ `window_s`.
    pub committed_per_s: f64,
    /// Commit latency of proposals started inside the window, µs.
    pub latency_us: Option<LatencySummary>,
    /// Proposals taken by the Raft actor over the whole run (warm-up and tail included).
    pub proposed_total: u64,
    /// Of those, commits seen by their proposer.
    pub committed_total: u64,
    /// Benchmark entries each node (1, 2, …) had applied at the end: all equal when every
    /// node applied every committed entry.
    pub applied_per_node: Vec<u64>,
    /// Every node applied the same entries as the leader.
    pub replicas_converged: bool,
    /// Mean benchmark entries per `Committed` event on the leader (entries applied per Ready).
    pub entries_per_apply: f64,
    /// The leader (node id).
    pub leader: u64,
    /// Seconds from start to an agreed leader.
    pub leader_elected_s: f64,
    /// `LeaderChanged` events seen by any node after the first election.
    pub leader_changes: u64,
    /// Proposals refused because the Raft actor's mailbox was full (retried).
    pub busy: u64,
    /// Proposals the leader rejected (`LogEvent::Rejected`).
    pub rejected: u64,
    /// Proposals not committed within `--commit-timeout`.
    pub timeouts: u64,
    /// CPU seconds of the whole process (three nodes, their storage threads and the proposers)
    /// during the window.
    pub cpu_s: f64,
    /// `cpu_s` as a percentage of the window (200 % = two cores busy).
    pub cpu_pct: f64,
    /// Load averages (1, 5, 15 min) when the window started.
    pub load_average: Option<[f64; 3]>,
    /// Load averages when the window ended.
    pub load_average_end: Option<[f64; 3]>,
    /// Wall time of the whole run, setup included.
    pub wall_s: f64,
    /// First error, if any.
    pub error: Option<String>,
    /// No error, no timeout, no rejection, something committed, replicas converged.
    pub ok: bool,
}

impl RaftSummary {
    fn judge(&mut self) {
        self.ok = self.error.is_none()
            && self.timeouts == 0
            && self.rejected == 0
            && self.committed > 0
            && self.replicas_converged;
    }

    /// The JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The proposal id of a benchmark entry, `None` for other entries (the leader's empty entry,
/// configuration changes).
pub fn proposal_id(data: &[u8]) -> Option<u64> {
    if data.len() < ENTRY_HEADER || data[..8] != MAGIC {
        return None;
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&data[8..16]);
    Some(u64::from_le_bytes(id))
}

/// Waits of the proposers: proposal id → who to wake (with `Err(reason)` on rejection).
type Waiters = Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>;

/// What one node's sink counted.
#[derive(Debug, Default)]
struct NodeCounters {
    applied: AtomicU64,
    commit_events: AtomicU64,
    leader_changes: AtomicU64,
    rejected: AtomicU64,
}

/// Receives one node's log events.
struct Sink {
    counters: Arc<NodeCounters>,
    /// Waits registered on this node (only the leader's get any).
    waiters: Arc<Waiters>,
}

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<LogEvent> for Sink {
    type Result = ();

    fn handle(&mut self, ev: LogEvent, _: &mut Context<Self>) {
        match ev {
            LogEvent::Committed(entries) => {
                let ids: Vec<u64> = entries.iter().filter_map(|(_, d)| proposal_id(d)).collect();
                if ids.is_empty() {
                    return;
                }
                let c = &self.counters;
                c.applied.fetch_add(ids.len() as u64, Ordering::Relaxed);
                c.commit_events.fetch_add(1, Ordering::Relaxed);
                let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                if w.is_empty() {
                    return;
                }
                for id in ids {
                    if let Some(tx) = w.remove(&id) {
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            LogEvent::Rejected { entry, reason } => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(id) = proposal_id(&entry) {
                    let tx = self
                        .waiters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(Err(reason));
                    }
                }
            }
            LogEvent::LeaderChanged { .. } => {
                self.counters.leader_changes.fetch_add(1, Ordering::Relaxed);
            }
            LogEvent::Restore { .. } | LogEvent::Recovered | LogEvent::PeerDown { .. } => {}
        }
    }
}

/// The timeline every proposer follows.
#[derive(Clone, Copy, Debug)]
struct Plan {
    window_start: Instant,
    end: Instant,
    commit_timeout: Duration,
    entry_bytes: usize,
}

/// What one proposer did.
#[derive(Debug, Default)]
struct ProposerResult {
    latency: Latency,
    proposed: u64,
    committed: u64,
    in_window: u64,
    busy: u64,
    rejected: u64,
    timeouts: u64,
    error: Option<String>,
}

async fn proposer(
    handle: ClusterHandle,
    waiters: Arc<Waiters>,
    ids: Arc<AtomicU64>,
    plan: Plan,
) -> ProposerResult {
    let mut r = ProposerResult::default();
    let mut buf = vec![0xA5u8; plan.entry_bytes];
    buf[..8].copy_from_slice(&MAGIC);
    loop {
        let start = Instant::now();
        if start >= plan.end {
            return r;
        }
        let id = ids.fetch_add(1, Ordering::Relaxed);
        buf[8..16].copy_from_slice(&id.to_le_bytes());
        let (tx, rx) = oneshot::channel();
        let forget = |waiters: &Waiters| {
            waiters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        };
        waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        match handle.propose(Bytes::copy_from_slice(&buf)) {
            Ok(()) => r.proposed += 1,
            Err(ProposeError::Busy) => {
                forget(&waiters);
                r.busy += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            Err(e) => {
                forget(&waiters);
                r.error = Some(e.to_string());
                return r;
            }
        }
        match tokio::time::timeout(plan.commit_timeout, rx).await {
            Ok(Ok(Ok(()))) => {
                let done = Instant::now();
                r.committed += 1;
                if start >= plan.window_start {
                    r.latency
                        .record_ns(done.duration_since(start).as_nanos() as u64);
                }
                if done >= plan.window_start && done < plan.end {
                    r.in_window += 1;
                }
            }
            Ok(Ok(Err(_))) => r.rejected += 1,
            Ok(Err(_)) => {
                r.error = Some("the leader's sink dropped a wait".into());
                return r;
            }
            Err(_) => {
                forget(&waiters);
                r.timeouts += 1;
            }
        }
    }
}

/// The agreed leader's index in `handles`, once one node leads and every node names it.
fn agreed_leader(handles: &[ClusterHandle]) -> Option<usize> {
    let view: Vec<(&'static str, u64)> = handles
        .iter()
        .map(|h| {
            let s = h.status.lock().unwrap_or_else(|e| e.into_inner());
            (s.role, s.leader)
        })
        .collect();
    let i = view.iter().position(|(role, _)| *role == "leader")?;
    let id = handles[i].node_id;
    view.iter().all(|(_, l)| *l == id).then_some(i)
}

fn describe(handles: &[ClusterHandle]) -> String {
    handles
        .iter()
        .map(|h| {
            let s = h.status.lock().unwrap_or_else(|e| e.into_inner());
            format!(
                "node {}: role={} leader={} term={} commit={}",
                h.node_id, s.role, s.leader, s.term, s.commit_index
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs one `raft` measurement in a new actix System on this thread.
///
/// # Errors
/// [`BenchError::Options`] for invalid options; everything else is in the summary.
pub fn run(args: &RaftArgs) -> Result<RaftSummary, BenchError> {
    args.validate()?;
    let wall = Instant::now();
    let system = actix::System::new();
    let mut s = system.block_on(run_in_system(args.clone()));
    s.wall_s = wall.elapsed().as_secs_f64();
    s.judge();
    Ok(s)
}

async fn run_in_system(args: RaftArgs) -> RaftSummary {
    let mut s = RaftSummary {
        scenario: "raft".into(),
        nodes: args.nodes,
        proposers: args.proposers as u64,
        entry_bytes: args.entry_bytes as u64,
        fsync: args.fsync_label(),
        tick_ms: args.tick_ms,
        warmup_s: args.warmup,
        window_s: args.duration,
        ..RaftSummary::default()
    };
    let mut logs = Vec::new();
    let mut dirs = Vec::new();
    if let Err(e) = measure(&args, &mut s, &mut logs, &mut dirs).await {
        s.error.get_or_insert(e.to_string());
    }
    // The writers finish what is queued before the directories go.
    for log in &mut logs {
        let (done, stopped) = tokio::sync::oneshot::channel();
        log.shutdown(done);
        let _ = tokio::time::timeout(Duration::from_secs(10), stopped).await;
    }
    drop(logs);
    System::current().stop();
    drop(dirs);
    s
}

async fn measure(
    args: &RaftArgs,
    s: &mut RaftSummary,
    logs: &mut Vec<RaftLog>,
    dirs: &mut Vec<tempfile::TempDir>,
) -> Result<(), BenchError> {
    let started = Instant::now();
    let n = args.nodes as usize;
    // Held until each node binds its own (so that no two nodes get the same port).
    let mut held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::io("reserve peer ports", e))?;
    let addrs: Vec<SocketAddr> = held
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::io("peer port", e))?;
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let secret = sys::random_secret();
    let mut counters = Vec::new();
    let mut waiters = Vec::new();
    let mut handles = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let prefix = format!("starling-bench-raft-n{}-", i + 1);
        let mut b = tempfile::Builder::new();
        b.prefix(&prefix);
        let dir = match &args.data_dir {
            Some(d) => b.tempdir_in(d),
            None => b.tempdir(),
        }
        .map_err(|e| BenchError::io("create a node's data directory", e))?;
        let config = ClusterConfig {
            node_id: i as u64 + 1,
            listen: *addr,
            peers: vec![peers.clone()],
            tick_ms: args.tick_ms,
            secret: Secret(secret.clone()),
            ..ClusterConfig::default()
        };
        drop(held.remove(0));
        let mut log = RaftLog::start(
            &config,
            i as u64 + 1,
            dir.path(),
            args.policy(),
            args.queue_capacity,
        )
        .map_err(|e| BenchError::Broker(format!("node {}: {e}", i + 1)))?;
        let c = Arc::new(NodeCounters::default());
        let w: Arc<Waiters> = Arc::default();
        let sink = Sink {
            counters: c.clone(),
            waiters: w.clone(),
        }
        .start();
        ReplicatedLog::start(&mut log, sink.recipient())
            .map_err(|e| BenchError::Broker(format!("node {}: {e}", i + 1)))?;
        handles.push(log.handle());
        logs.push(log);
        dirs.push(dir);
        counters.push(c);
        waiters.push(w);
    }
    eprintln!(
        "raft: {n} nodes on {peers}, fsync {}, waiting for a leader",
        s.fsync
    );
    let deadline = Instant::now() + Duration::from_secs_f64(args.leader_timeout);
    let leader = loop {
        if let Some(i) = agreed_leader(&handles) {
            break i;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout(format!(
                "no leader after {}s: {}",
                args.leader_timeout,
                describe(&handles)
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    s.leader = handles[leader].node_id;
    s.leader_elected_s = started.elapsed().as_secs_f64();
    let changes_before: u64 = counters
        .iter()
        .map(|c| c.leader_changes.load(Ordering::Relaxed))
        .sum();
    eprintln!(
        "raft: leader node {} after {:.2}s; {} proposers × {} B entries, {}s warm-up + {}s",
        s.leader, s.leader_elected_s, args.proposers, args.entry_bytes, args.warmup, args.duration
    );

    let begin = Instant::now();
    let window_start = begin + Duration::from_secs_f64(args.warmup);
    let plan = Plan {
        window_start,
        end: window_start + Duration::from_secs_f64(args.duration),
        commit_timeout: Duration::from_secs_f64(args.commit_timeout),
        entry_bytes: args.entry_bytes,
    };
    let ids = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.proposers)
        .map(|_| {
            actix::spawn(proposer(
                handles[leader].clone(),
                waiters[leader].clone(),
                ids.clone(),
                plan,
            ))
        })
        .collect();
    tokio::time::sleep_until(window_start.into()).await;
    let cpu0 = sys::cpu_seconds(None).unwrap_or(0.0);
    let (events0, applied0) = (
        counters[leader].commit_events.load(Ordering::Relaxed),
        counters[leader].applied.load(Ordering::Relaxed),
    );
    s.load_average = sys::load_averages();
    tokio::time::sleep_until(plan.end.into()).await;
    s.cpu_s = sys::cpu_seconds(None).unwrap_or(0.0) - cpu0;
    s.cpu_pct = 100.0 * s.cpu_s / args.duration;
    s.load_average_end = sys::load_averages();
    let events = counters[leader].commit_events.load(Ordering::Relaxed) - events0;
    let applied = counters[leader].applied.load(Ordering::Relaxed) - applied0;
    if events > 0 {
        s.entries_per_apply = applied as f64 / events as f64;
    }

    let mut latency = Latency::new();
    for t in tasks {
        match t.await {
            Ok(r) => {
                latency.merge(&r.latency);
                s.proposed_total += r.proposed;
                s.committed_total += r.committed;
                s.committed += r.in_window;
                s.busy += r.busy;
                s.rejected += r.rejected;
                s.timeouts += r.timeouts;
                if let Some(e) = r.error {
                    s.error.get_or_insert(e);
                }
            }
            Err(e) => {
                s.error.get_or_insert(format!("proposer task: {e}"));
            }
        }
    }
    s.latency_us = latency.summary();
    s.committed_per_s = s.committed as f64 / args.duration;
    s.leader_changes = counters
        .iter()
        .map(|c| c.leader_changes.load(Ordering::Relaxed))
        .sum::<u64>()
        - changes_before;

    // Every node must apply what the leader applied (followers learn the commit index with
    // the leader's next message).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        s.applied_per_node = counters
            .iter()
            .map(|c| c.applied.load(Ordering::Relaxed))
            .collect();
        let want = s.applied_per_node[leader];
        s.replicas_converged =
            want >= s.committed_total && s.applied_per_node.iter().all(|a| *a == want);
        if s.replicas_converged || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "raft: {} committed in {}s ({:.0}/s), p99 {} µs, applied per node {:?}",
        s.committed,
        args.duration,
        s.committed_per_s,
        s.latency_us.map_or(0, |l| l.p99),
        s.applied_per_node
    );
    Ok(())
}

/// Options of `starling-bench raft-table`.
#[derive(Clone, Debug, clap::Args)]
pub struct RaftTableArgs {
    /// Proposer counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub proposers: Vec<usize>,

    /// Fsync policies, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "always,interval"
    )]
    pub fsync: Vec<Fsync>,

    /// Runs of every combination.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,

    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Bytes per entry.
    #[arg(long, default_value_t = 100)]
    pub entry_bytes: usize,

    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,

    /// Extra options appended to every run (e.g. "--tick-ms 50").
    #[arg(long, allow_hyphen_values = true)]
    pub extra: Option<String>,

    /// File the raw JSON lines are written to.
    #[arg(long, default_value = "bench/results/raft.jsonl")]
    pub out: PathBuf,

    /// File the markdown table is written to.
    #[arg(long, default_value = "bench/results/raft.md")]
    pub table: PathBuf,
}

impl RaftTableArgs {
    /// The `raft` command line (after the binary) of one run.
    pub fn command(&self, proposers: usize, fsync: Fsync) -> Vec<String> {
        let mut c: Vec<String> = format!(
            "raft --proposers {proposers} --entry-bytes {} --duration {} --fsync {} --nodes {}",
            self.entry_bytes,
            self.duration,
            fsync.name(),
            self.nodes
        )
        .split_whitespace()
        .map(String::from)
        .collect();
        if let Some(extra) = &self.extra {
            c.extend(extra.split_whitespace().map(String::from));
        }
        c
    }
}

/// Runs `exe raft …` in a child process and parses the JSON line it prints.
fn run_child(exe: &std::path::Path, command: &[String], limit: Duration) -> RaftSummary {
    let failed = |e: String| {
        let mut s = RaftSummary {
            scenario: "raft".into(),
            error: Some(e),
            ..RaftSummary::default()
        };
        s.judge();
        s
    };
    let mut child = match Command::new(exe)
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {}: {e}", exe.display())),
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(format!("raft run did not finish within {limit:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return failed(format!("waiting for the raft run: {e}")),
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    match out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(serde_json::from_str::<RaftSummary>)
    {
        Some(Ok(s)) => s,
        Some(Err(e)) => failed(format!("raft run printed bad JSON ({e}); exit {status}")),
        None => failed(format!("raft run printed no summary; exit {status}")),
    }
}

/// Runs every combination `rounds` times (interleaved: round → fsync → proposers), each in a
/// fresh child process; writes the JSON lines and the table, and returns the table.
///
/// # Errors
/// IO errors on the output files, no combination to run.
pub fn run_table(a: &RaftTableArgs) -> Result<String, BenchError> {
    if a.proposers.is_empty() || a.fsync.is_empty() || a.rounds == 0 {
        return Err(BenchError::Options(
            "nothing to run (--proposers, --fsync, --rounds)".into(),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| BenchError::io("find own binary", e))?;
    for dir in [a.out.parent(), a.table.parent()].into_iter().flatten() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
        }
    }
    let mut out = std::fs::File::create(&a.out)
        .map_err(|e| BenchError::io(format!("create {}", a.out.display()), e))?;
    let limit = Duration::from_secs_f64(a.duration + 120.0);
    let mut results = Vec::new();
    for round in 1..=a.rounds {
        for &fsync in &a.fsync {
            for &p in &a.proposers {
                let command = a.command(p, fsync);
                eprintln!(
                    "== round {round}/{}: starling-bench {}",
                    a.rounds,
                    command.join(" ")
                );
                let mut s = run_child(&exe, &command, limit);
                s.round = Some(round);
                let line = s.to_json();
                println!("{line}");
                writeln!(out, "{line}")
                    .and_then(|_| out.flush())
                    .map_err(|e| BenchError::io(format!("write {}", a.out.display()), e))?;
                results.push(s);
            }
        }
    }
    let table = render_table(&results);
    std::fs::write(&a.table, &table)
        .map_err(|e| BenchError::io(format!("write {}", a.table.display()), e))?;
    Ok(table)
}

fn cell(vals: &mut [f64], fmt: fn(f64) -> String) -> String {
    match median_min_max(vals) {
        Some((med, lo, hi)) => format!("{} ({}–{})", fmt(med), fmt(lo), fmt(hi)),
        None => "n/a".into(),
    }
}

fn us(v: f64) -> String {
    format!("{v:.0}")
}

fn load(v: f64) -> String {
    format!("{v:.1}")
}

/// The markdown table: one line per fsync policy and proposer count, medians (min–max) over
/// the runs.
pub fn render_table(results: &[RaftSummary]) -> String {
    let mut by: BTreeMap<(String, u64), Vec<&RaftSummary>> = BTreeMap::new();
    for s in results {
        by.entry((s.fsync.clone(), s.proposers))
            .or_default()
            .push(s);
    }
    let mut t = String::from(
        "| fsync | proposers | committed entries/s | p50 µs | p90 µs | p99 µs | max µs | \
         entries per apply | CPU % (2 cores = 200) | load avg (1 min) | runs ok |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for ((fsync, proposers), runs) in &by {
        let col = |f: fn(&RaftSummary) -> Option<f64>| -> Vec<f64> {
            runs.iter().filter_map(|s| f(s)).collect()
        };
        let lat = |f: fn(&LatencySummary) -> u64| -> Vec<f64> {
            runs.iter()
                .filter_map(|s| s.latency_us.as_ref().map(|l| f(l) as f64))
                .collect()
        };
        let ok = runs.iter().filter(|s| s.ok).count();
        t.push_str(&format!(
            "| {fsync} | {proposers} | {} | {} | {} | {} | {} | {} | {} | {} | {ok}/{} |\n",
            cell(&mut col(|s| Some(s.committed_per_s)), si),
            cell(&mut lat(|l| l.p50), us),
            cell(&mut lat(|l| l.p90), us),
            cell(&mut lat(|l| l.p99), us),
            cell(&mut lat(|l| l.max), us),
            cell(&mut col(|s| Some(s.entries_per_apply)), load),
            cell(&mut col(|s| Some(s.cpu_pct)), us),
            cell(&mut col(|s| s.load_average.map(|l| l[0])), load),
            runs.len()
        ));
    }
    let problems: Vec<&RaftSummary> = results.iter().filter(|s| !s.ok).collect();
    if !problems.is_empty() {
        t.push_str("\nRuns that were not clean:\n\n");
        for s in problems {
            t.push_str(&format!(
                "- round {} fsync {} proposers {}: timeouts {}, rejected {}, converged {}, \
                 applied per node {:?}, error: {}\n",
                s.round.unwrap_or(0),
                s.fsync,
                s.proposers,
                s.timeouts,
                s.rejected,
                s.replicas_converged,
                s.applied_per_node,
                s.error.as_deref().unwrap_or("none")
            ));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_their_id() {
        let mut e = vec![0u8; 100];
        e[..8].copy_from_slice(&MAGIC);
        e[8..16].copy_from_slice(&42u64.to_le_bytes());
        assert_eq!(proposal_id(&e), Some(42));
        assert_eq!(proposal_id(&e[..15]), None);
        assert_eq!(proposal_id(b""), None);
        e[0] = b'x';
        assert_eq!(proposal_id(&e), None);
    }

    #[test]
    fn defaults_and_table_commands() {
        let a = RaftArgs::default();
        assert_eq!((a.proposers, a.entry_bytes, a.nodes), (16, 100, 3));
        a.validate().unwrap();
        let t = RaftTableArgs {
            proposers: vec![1],
            fsync: vec![Fsync::Always],
            rounds: 1,
            duration: 10.0,
            entry_bytes: 100,
            nodes: 3,
            extra: Some("--tick-ms 50".into()),
            out: "x".into(),
            table: "y".into(),
        };
        assert_eq!(
            t.command(256, Fsync::Interval).join(" "),
            "raft --proposers 256 --entry-bytes 100 --duration 10 --fsync interval --nodes 3 \
             --tick-ms 50"
        );
    }

    #[test]
    fn table_has_medians() {
        let mk = |v: f64, p99: u64| RaftSummary {
            fsync: "always".into(),
            proposers: 16,
            committed_per_s: v,
            latency_us: Some(LatencySummary {
                count: 1,
                min: 1,
                mean: 1,
                p50: 1,
                p90: 1,
                p99,
                p999: 1,
                max: 1,
            }),
            ok: true,
            ..RaftSummary::default()
        };
        let t = render_table(&[mk(30_000.0, 900), mk(40_000.0, 1100), mk(35_000.0, 1000)]);
        assert!(t.contains("| always | 16 | 35.0k (30.0k–40.0k) |"), "{t}");
        assert!(t.contains("| 1000 (900–1100) |"), "{t}");
    }

    /// A short real run: three nodes in this process, fsync interval, 4 proposers for ~1 s.
    #[test]
    fn three_nodes_commit_and_converge() {
        let a = RaftArgs {
            proposers: 4,
            duration: 1.0,
            warmup: 0.2,
            fsync: Fsync::Interval,
            tick_ms: 20,
            ..RaftArgs::default()
        };
        let s = run(&a).unwrap();
        assert!(s.ok, "{}", s.to_json());
        assert_eq!(s.applied_per_node.len(), 3);
        assert!(s.committed > 0);
    }
}
