//! `cluster`: cross-node routing on a three-node cluster of real `starling` processes, next to
//! the same scenarios on a single node, in the same run.
//!
//! ```text
//! for row in rows:                 (fan-in / fan-out QoS 0 and 1, p2p latency, durable QoS 2)
//!   for round in 1..=rounds:
//!     for topology in [cluster, single]:
//!       cluster: 3 fresh nodes (data dirs in /tmp, --fsync F, a fresh cluster secret),
//!                wait for an agreed leader and /readyz on every node
//!                publishers ─▶ node 1 ─(fast path: Cluster.Forward / durable path: Raft)─▶
//!                subscribers on nodes 2 and 3 (--pub-port, --sub-ports)
//!       single:  1 fresh node (data dir, --fsync F), every client on it
//!       ─▶ the row's scenario ─▶ one JSON line (with the topology, leader, nodes' CPU)
//! table: per metric, each topology's median (min–max) and cluster ÷ single
//! ```
//!
//! Nothing is built here: the Starling binary is given (`--starling`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::broker::{BrokerProcess, Limits, StarlingSpec};
use crate::compare::{create_outputs, int, median_min_max, parse_row, si, Row};
use crate::scenario::run_blocking;
use crate::stats::{ClusterInfo, Summary};
use crate::sys;
use crate::BenchError;

/// Where the clients of a run are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Topology {
    /// Three nodes: publishers on node 1, subscribers on nodes 2 and 3.
    Cluster,
    /// One node: every client on it.
    Single,
}

impl Topology {
    /// Name in the JSON and the table.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Cluster => "cluster",
            Topology::Single => "single",
        }
    }
}

/// Options of `starling-bench cluster`.
#[derive(Clone, Debug, clap::Args)]
pub struct ClusterArgs {
    /// The Starling binary (build it with `cargo build --release -p starling`).
    #[arg(long, default_value = "target/release/starling")]
    pub starling: PathBuf,

    /// Topologies to run, in this order within each round.
    #[arg(long, value_delimiter = ',', default_value = "cluster,single")]
    pub topologies: Vec<Topology>,

    /// Nodes of the cluster topology (publishers on node 1, subscribers on the others).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,

    /// Rounds: every row runs this many times on every topology.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,

    /// Only these rows (ids as printed by --list), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,

    /// Print the rows and exit.
    #[arg(long)]
    pub list: bool,

    /// `--fsync` of every node: always, or interval (single node only: a cluster refuses it).
    #[arg(long, default_value = "always")]
    pub fsync: String,

    /// Raft tick of the cluster's nodes, ms (STARLING_CLUSTER_TICK_MS).
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,

    /// Seconds each throughput and latency row publishes for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Open-loop rate of each p2p publisher (msgs/s).
    #[arg(long, default_value_t = 100.0)]
    pub p2p_rate: f64,

    /// Messages of the durable QoS 2 rows.
    #[arg(long, default_value_t = 100_000)]
    pub qos2_messages: u64,

    /// Subscriber reconnects of the `qos2-durable-reconnects` row.
    #[arg(long, default_value_t = 10)]
    pub qos2_reconnects: u32,

    /// Run-ahead bound of the durable QoS 2 rows. Below the other rows' 1000: on the durable
    /// path a persistent session's queue also holds messages whose PUBCOMP is not committed yet,
    /// and at 1000 the cluster dropped 100 messages as "session queue full"
    /// (docs/benchmarks.md, "Cluster").
    #[arg(long, default_value_t = 800)]
    pub qos2_max_ahead: u64,

    /// Outbound in-flight limit of every node.
    #[arg(long, default_value_t = 100)]
    pub inflight: u32,

    /// Per-session queue limit of every node.
    #[arg(long, default_value_t = 1000)]
    pub queued: u32,

    /// Extra options appended to every row (e.g. "--threads 2").
    #[arg(long, allow_hyphen_values = true)]
    pub extra: Option<String>,

    /// File the raw JSON lines are written to.
    #[arg(long, default_value = "bench/results/cluster.jsonl")]
    pub out: PathBuf,

    /// File the markdown table is written to.
    #[arg(long, default_value = "bench/results/cluster.md")]
    pub table: PathBuf,
}

impl Default for ClusterArgs {
    fn default() -> Self {
        use clap::Parser;
        /// Parses no arguments, so that the defaults live in the attributes.
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: ClusterArgs,
        }
        Defaults::parse_from(["defaults"]).args
    }
}

/// The rows of the cluster comparison.
pub fn rows(a: &ClusterArgs) -> Vec<Row> {
    let d = a.duration;
    let timeout = a.duration + 60.0;
    let run = |s: String| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let mut rows = vec![];
    for q in 0..=1 {
        rows.push(Row {
            id: format!("fan-in-q{q}"),
            command: run(format!(
                "fan-in --qos {q} --publishers 4 --payload 64 --max-ahead 1000 --filter # \
                 --duration {d} --timeout {timeout}"
            )),
        });
        rows.push(Row {
            id: format!("fan-out-q{q}"),
            command: run(format!(
                "fan-out --qos {q} --subscribers 16 --payload 64 --max-ahead 1000 \
                 --duration {d} --timeout {timeout}"
            )),
        });
        rows.push(Row {
            id: format!("p2p-q{q}"),
            command: run(format!(
                "p2p --qos {q} --pairs 100 --payload 64 --rate {} --max-ahead 1000 \
                 --duration {d} --timeout {timeout}",
                a.p2p_rate
            )),
        });
    }
    for (id, reconnects) in [
        ("qos2-durable", 0),
        ("qos2-durable-reconnects", a.qos2_reconnects),
    ] {
        rows.push(Row {
            id: id.into(),
            command: run(format!(
                "qos2 --publishers 4 --payload 64 --max-ahead {} --messages {} \
                 --reconnects {reconnects} --timeout 600",
                a.qos2_max_ahead, a.qos2_messages
            )),
        });
    }
    if let Some(extra) = &a.extra {
        for r in &mut rows {
            r.command.extend(extra.split_whitespace().map(String::from));
        }
    }
    rows
}

/// One node of a running topology.
struct Node {
    id: u64,
    process: BrokerProcess,
    admin: Option<SocketAddr>,
}

/// The nodes of one run (dropping it kills them).
struct Nodes {
    nodes: Vec<Node>,
    leader: u64,
}

/// `n` distinct free loopback ports, held until the listeners are dropped.
fn reserve(n: usize) -> Result<Vec<TcpListener>, BenchError> {
    (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::io("reserve ports", e))
}

fn port(l: &TcpListener) -> Result<u16, BenchError> {
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| BenchError::io("reserved port", e))
}

/// Starts the topology's nodes and waits until they serve (cluster: an agreed leader and
/// `/readyz` on every node).
fn start(a: &ClusterArgs, topology: Topology, limits: Limits) -> Result<Nodes, BenchError> {
    let wait = Duration::from_secs(30);
    let fsync = vec!["--fsync".to_string(), a.fsync.clone()];
    if topology == Topology::Single {
        let held = reserve(1)?;
        let spec = StarlingSpec {
            name: "single".into(),
            port: port(&held[0])?,
            args: fsync,
            env: vec![],
        };
        drop(held);
        let mut p = BrokerProcess::spawn_starling(&a.starling, &spec, limits)?;
        p.wait_listening(wait)?;
        return Ok(Nodes {
            nodes: vec![Node {
                id: 1,
                process: p,
                admin: None,
            }],
            leader: 1,
        });
    }
    let n = usize::from(a.nodes.max(2));
    // Per node: MQTT, peer (Raft), admin.
    let held = reserve(3 * n)?;
    let ports: Vec<u16> = held.iter().map(port).collect::<Result<_, _>>()?;
    let peers = (0..n)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, ports[3 * i + 1]))
        .collect::<Vec<_>>()
        .join(",");
    let secret = sys::random_secret();
    drop(held);
    let mut nodes = Vec::new();
    for i in 0..n {
        let id = i as u64 + 1;
        let admin = SocketAddr::from(([127, 0, 0, 1], ports[3 * i + 2]));
        let mut args = vec![
            "--node-id".to_string(),
            id.to_string(),
            "--cluster-listen".into(),
            format!("127.0.0.1:{}", ports[3 * i + 1]),
            "--peers".into(),
            peers.clone(),
            "--admin-listen".into(),
            admin.to_string(),
        ];
        args.extend(fsync.iter().cloned());
        let spec = StarlingSpec {
            name: format!("node{id}"),
            port: ports[3 * i],
            args,
            env: vec![
                ("STARLING_CLUSTER_SECRET".into(), secret.clone()),
                ("STARLING_CLUSTER_TICK_MS".into(), a.tick_ms.to_string()),
            ],
        };
        nodes.push(Node {
            id,
            process: BrokerProcess::spawn_starling(&a.starling, &spec, limits)?,
            admin: Some(admin),
        });
    }
    let mut out = Nodes { nodes, leader: 0 };
    for node in &mut out.nodes {
        node.process.wait_listening(wait)?;
    }
    out.leader = wait_leader(&out.nodes, wait)?;
    let deadline = Instant::now() + wait;
    for node in &out.nodes {
        let Some(admin) = node.admin else { continue };
        loop {
            match http_get(admin, "/readyz") {
                Ok((200, _)) => break,
                other if Instant::now() > deadline => {
                    return Err(BenchError::Broker(format!(
                        "node {} not ready within {wait:?}: {other:?}",
                        node.id
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(out)
}

/// Waits until one node says it leads and every node names it; returns its id.
fn wait_leader(nodes: &[Node], wait: Duration) -> Result<u64, BenchError> {
    let deadline = Instant::now() + wait;
    loop {
        let mut view = Vec::new();
        for n in nodes {
            let Some(admin) = n.admin else { continue };
            let status = http_get(admin, "/cluster/status").and_then(|(code, body)| {
                if code != 200 {
                    return Err(format!("HTTP {code}"));
                }
                serde_json::from_str::<serde_json::Value>(&body).map_err(|e| e.to_string())
            });
            match status {
                Ok(v) => view.push((
                    n.id,
                    v["role"].as_str().unwrap_or("").to_string(),
                    v["leader"].as_u64().unwrap_or(0),
                )),
                Err(e) => view.push((n.id, format!("no status ({e})"), 0)),
            }
        }
        if let Some((leader, _, _)) = view.iter().find(|(_, role, _)| role == "leader") {
            if view.iter().all(|(_, _, l)| l == leader) {
                return Ok(*leader);
            }
        }
        if Instant::now() > deadline {
            return Err(BenchError::Broker(format!(
                "no agreed leader within {wait:?}: {view:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over HTTP/1.1 on a fresh connection (the testkit's admin client); the status
/// code and the body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    starling_testkit::cluster::http(addr, "GET", path, None)
}

/// Runs one row once on a fresh topology.
///
/// # Errors
/// Only for a row that does not parse; failures to start are recorded in the summary.
pub fn run_once(
    a: &ClusterArgs,
    topology: Topology,
    limits: Limits,
    row: &Row,
    round: u32,
) -> Result<Summary, BenchError> {
    let (scenario, mut args) = parse_row(&row.command)?;
    let label = match topology {
        Topology::Cluster => format!("starling-{}-nodes", a.nodes),
        Topology::Single => "starling-single".into(),
    };
    let mut info = ClusterInfo {
        topology: topology.name().into(),
        fsync: a.fsync.clone(),
        ..ClusterInfo::default()
    };
    let mut summary = match start(a, topology, limits) {
        Ok(mut nodes) => {
            let ports: Vec<u16> = nodes.nodes.iter().map(|n| n.process.port()).collect();
            args.port = ports[0];
            args.pub_port = Some(ports[0]);
            args.sub_ports = if ports.len() > 1 {
                ports[1..].to_vec()
            } else {
                vec![ports[0]]
            };
            args.pid = Some(nodes.nodes[0].process.pid());
            args.label = label.clone();
            info.nodes = nodes.nodes.len() as u64;
            info.leader = nodes.leader;
            info.pub_node = 1;
            info.sub_nodes = if nodes.nodes.len() > 1 {
                (2..=nodes.nodes.len() as u64).collect()
            } else {
                vec![1]
            };
            info.load_average = sys::load_averages();
            let pids: Vec<u32> = nodes.nodes.iter().map(|n| n.process.pid()).collect();
            let cpu0: Vec<f64> = pids
                .iter()
                .map(|p| sys::cpu_seconds(Some(*p)).unwrap_or(0.0))
                .collect();
            let mut s = run_blocking(scenario, &args)?;
            info.nodes_cpu_s = pids
                .iter()
                .zip(&cpu0)
                .map(|(p, c)| sys::cpu_seconds(Some(*p)).map_or(0.0, |now| now - c))
                .collect();
            for n in &mut nodes.nodes {
                if let Some(status) = n.process.exited() {
                    s.error.get_or_insert(format!(
                        "node {} exited during the run ({status}); log:\n{}",
                        n.id,
                        n.process.log_tail(30)
                    ));
                    s.judge();
                }
            }
            if !s.ok {
                for n in &nodes.nodes {
                    eprintln!("-- node {} log tail:\n{}", n.id, n.process.log_tail(15));
                }
            }
            s
        }
        Err(e) => {
            let mut s = Summary {
                scenario: scenario.name().into(),
                broker: label,
                error: Some(e.to_string()),
                ..Summary::default()
            };
            s.judge();
            s
        }
    };
    summary.row = Some(row.id.clone());
    summary.round = Some(round);
    summary.cluster = Some(info);
    Ok(summary)
}

/// Runs every selected row `rounds` times on every topology (interleaved); writes the JSON
/// lines (also to stdout) and the table, and returns the table.
///
/// # Errors
/// IO errors on the output files, invalid rows.
pub fn run(a: &ClusterArgs) -> Result<String, BenchError> {
    let selected: Vec<Row> = rows(a)
        .into_iter()
        .filter(|r| a.only.is_empty() || a.only.contains(&r.id))
        .collect();
    if selected.is_empty() || a.topologies.is_empty() {
        return Err(BenchError::Options(
            "no rows or topologies selected (see --list)".into(),
        ));
    }
    for r in &selected {
        parse_row(&r.command)?;
    }
    if a.fsync == "interval" && a.topologies.contains(&Topology::Cluster) {
        return Err(BenchError::Options(
            "a cluster refuses storage.fsync = interval (Raft votes and acknowledgements must \
             not precede their writes): --fsync interval runs --topologies single only"
                .into(),
        ));
    }
    let limits = Limits {
        inflight: a.inflight,
        queued: a.queued,
        ..Limits::default()
    };
    let mut out = create_outputs(&a.out, &a.table)?;
    let mut results = Vec::new();
    let n = selected.len();
    for (ri, row) in selected.iter().enumerate() {
        for round in 1..=a.rounds {
            for &t in &a.topologies {
                eprintln!(
                    "== row {}/{n} {} round {round}/{} {}: {}",
                    ri + 1,
                    row.id,
                    a.rounds,
                    t.name(),
                    row.command.join(" ")
                );
                let s = run_once(a, t, limits, row, round)?;
                let line = s.to_json();
                println!("{line}");
                writeln!(out, "{line}")
                    .and_then(|_| out.flush())
                    .map_err(|e| BenchError::io(format!("write {}", a.out.display()), e))?;
                results.push(s);
            }
        }
    }
    let table = render(&results, a);
    std::fs::write(&a.table, &table)
        .map_err(|e| BenchError::io(format!("write {}", a.table.display()), e))?;
    Ok(table)
}

/// One line of the table.
struct Metric {
    row: String,
    title: String,
    /// Largest value over the runs instead of the median (counts that must be 0).
    max: bool,
    get: fn(&Summary) -> Option<f64>,
    fmt: fn(f64) -> String,
}

fn metrics(a: &ClusterArgs) -> Vec<Metric> {
    let thr: fn(&Summary) -> Option<f64> = |s| Some(s.throughput_msgs_per_s);
    let p50: fn(&Summary) -> Option<f64> = |s| s.latency_us.map(|l| l.p50 as f64);
    let p99: fn(&Summary) -> Option<f64> = |s| s.latency_us.map(|l| l.p99 as f64);
    let m = |row: &str, title: String, get, fmt| Metric {
        row: row.into(),
        title,
        max: false,
        get,
        fmt,
    };
    let others = a.nodes.saturating_sub(1).max(1);
    let mut v = vec![];
    for q in 0..=1 {
        let row = format!("fan-in-q{q}");
        v.push(m(
            &row,
            format!("fan-in QoS {q}, 4 pubs (node 1) → `#` sub (node 2), 64 B: msgs/s"),
            thr,
            si,
        ));
        v.push(m(&row, "… p50 latency, µs (closed loop)".into(), p50, int));
        v.push(m(&row, "… p99 latency, µs (closed loop)".into(), p99, int));
        let row = format!("fan-out-q{q}");
        v.push(m(
            &row,
            format!(
                "fan-out QoS {q}, 1 pub (node 1) → 16 subs (nodes 2–{}), 64 B: deliveries/s",
                others + 1
            ),
            thr,
            si,
        ));
        v.push(m(&row, "… p50 latency, µs (closed loop)".into(), p50, int));
        v.push(m(&row, "… p99 latency, µs (closed loop)".into(), p99, int));
        let row = format!("p2p-q{q}");
        v.push(m(
            &row,
            format!(
                "p2p QoS {q}, 100 pairs at {} msgs/s each (pubs node 1, subs nodes 2–{}): p50 \
                 latency, µs",
                a.p2p_rate,
                others + 1
            ),
            p50,
            int,
        ));
        v.push(m(&row, "… p99 latency, µs".into(), p99, int));
        v.push(m(&row, "… msgs/s delivered".into(), thr, si));
    }
    for (row, what) in [
        ("qos2-durable", "no reconnects".to_string()),
        (
            "qos2-durable-reconnects",
            format!("{} subscriber reconnects", a.qos2_reconnects),
        ),
    ] {
        v.push(m(
            row,
            format!(
                "QoS 2 durable, 4 clean pubs (node 1) → persistent sub (node 2), {} msgs, \
                 {what}: msgs/s",
                a.qos2_messages
            ),
            thr,
            si,
        ));
        v.push(m(row, "… p50 latency, µs (closed loop)".into(), p50, int));
        v.push(m(row, "… p99 latency, µs (closed loop)".into(), p99, int));
        v.push(Metric {
            row: row.into(),
            title: "… lost (max over runs; must be 0)".into(),
            max: true,
            get: |s| Some(s.lost as f64),
            fmt: int,
        });
        v.push(Metric {
            row: row.into(),
            title: "… duplicated (max over runs; must be 0)".into(),
            max: true,
            get: |s| Some(s.duplicated as f64),
            fmt: int,
        });
    }
    v
}

/// Renders the markdown table (topologies as columns, cluster ÷ single as the last), the load
/// averages and leaders seen, and every run that was not clean.
pub fn render(results: &[Summary], a: &ClusterArgs) -> String {
    let topo = |s: &Summary| {
        s.cluster
            .as_ref()
            .map_or(String::new(), |c| c.topology.clone())
    };
    let mut by: BTreeMap<(String, String), Vec<&Summary>> = BTreeMap::new();
    for s in results {
        by.entry((s.row.clone().unwrap_or_default(), topo(s)))
            .or_default()
            .push(s);
    }
    let both =
        a.topologies.contains(&Topology::Cluster) && a.topologies.contains(&Topology::Single);
    let mut t = String::from("| metric |");
    for tp in &a.topologies {
        t.push_str(&format!(" {} |", header(*tp, a)));
    }
    if both {
        t.push_str(" cluster ÷ single |");
    }
    t.push_str("\n|---|");
    for _ in &a.topologies {
        t.push_str("---:|");
    }
    if both {
        t.push_str("---:|");
    }
    t.push('\n');
    for m in metrics(a) {
        if !results
            .iter()
            .any(|s| s.row.as_deref() == Some(m.row.as_str()))
        {
            continue;
        }
        t.push_str(&format!("| {} |", m.title));
        let mut medians = BTreeMap::new();
        for tp in &a.topologies {
            let runs = by
                .get(&(m.row.clone(), tp.name().to_string()))
                .cloned()
                .unwrap_or_default();
            let mut vals: Vec<f64> = runs.iter().filter_map(|s| (m.get)(s)).collect();
            let bad = runs.iter().filter(|s| !s.ok).count();
            let mark = if bad > 0 {
                format!(" ({bad}/{} not ok)", runs.len())
            } else {
                String::new()
            };
            let cell = match median_min_max(&mut vals) {
                None => "n/a".to_string(),
                Some((_, _, hi)) if m.max => (m.fmt)(hi),
                Some((med, lo, hi)) => {
                    medians.insert(*tp, med);
                    format!("{} ({}–{})", (m.fmt)(med), (m.fmt)(lo), (m.fmt)(hi))
                }
            };
            t.push_str(&format!(" {cell}{mark} |"));
        }
        if both {
            let r = match (
                medians.get(&Topology::Cluster),
                medians.get(&Topology::Single),
            ) {
                (Some(c), Some(s)) if *s > 0.0 => format!("{:.2}", c / s),
                _ => String::new(),
            };
            t.push_str(&format!(" {r} |"));
        }
        t.push('\n');
    }
    t.push('\n');
    for tp in &a.topologies {
        let runs: Vec<&Summary> = results.iter().filter(|s| topo(s) == tp.name()).collect();
        let mut loads: Vec<f64> = runs
            .iter()
            .filter_map(|s| s.cluster.as_ref()?.load_average.map(|l| l[0]))
            .collect();
        if let Some((med, lo, hi)) = median_min_max(&mut loads) {
            t.push_str(&format!(
                "- {}: 1-minute load average at the start of the runs {med:.1} (min {lo:.1}, \
                 max {hi:.1}) over {} runs\n",
                tp.name(),
                runs.len()
            ));
        }
        let mut cpu: Vec<f64> = runs
            .iter()
            .filter(|s| s.row.as_deref() == Some("fan-in-q0") && s.duration_s > 0.0)
            .filter_map(|s| {
                let c = s.cluster.as_ref()?;
                Some(100.0 * c.nodes_cpu_s.iter().sum::<f64>() / s.wall_s.max(1e-9))
            })
            .collect();
        if let Some((med, lo, hi)) = median_min_max(&mut cpu) {
            t.push_str(&format!(
                "- {}: broker CPU during fan-in QoS 0 (all nodes, % of one core over the run's \
                 wall time) {med:.0} ({lo:.0}–{hi:.0})\n",
                tp.name()
            ));
        }
    }
    let leaders: Vec<String> = results
        .iter()
        .filter(|s| topo(s) == Topology::Cluster.name())
        .filter_map(|s| {
            Some(format!(
                "{}/r{}: {}",
                s.row.as_deref()?,
                s.round?,
                s.cluster.as_ref()?.leader
            ))
        })
        .collect();
    if !leaders.is_empty() {
        t.push_str(&format!(
            "- Raft leader per cluster run: {}\n",
            leaders.join(", ")
        ));
    }
    let problems: Vec<&Summary> = results.iter().filter(|s| !s.ok).collect();
    if !problems.is_empty() {
        t.push_str("\nRuns that were not clean (lost, duplicated at QoS 2, errors, timeouts):\n\n");
        for s in problems {
            t.push_str(&format!(
                "- {} round {} {}: lost {}, duplicated {}, reordered {}, stalls {}, timed out {}, \
                 lost ranges {:?}, error: {}\n",
                s.row.as_deref().unwrap_or("?"),
                s.round.unwrap_or(0),
                topo(s),
                s.lost,
                s.duplicated,
                s.reordered,
                s.stalls,
                s.timed_out,
                s.lost_ranges,
                s.error
                    .as_deref()
                    .unwrap_or("none")
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    t
}

/// The cluster smoke rows: tiny, run against one three-node cluster.
pub const SMOKE_ROWS: &[&str] = &[
    "fan-in --qos 1 --publishers 2 --messages 2000",
    "fan-out --qos 0 --subscribers 4 --messages 1000",
    "qos2 --publishers 2 --messages 1000 --reconnects 2",
];

/// The cluster smoke run: a three-node cluster of `starling` (fsync always, 50 ms ticks),
/// publishers on node 1, subscribers on nodes 2 and 3, each of [`SMOKE_ROWS`]. Checks that the
/// runner works and that nothing is lost; never checks a speed.
///
/// # Errors
/// [`BenchError::Broker`] if the cluster does not start, [`BenchError::Check`] listing every run
/// that was not clean.
pub fn smoke(starling: &std::path::Path) -> Result<Vec<Summary>, BenchError> {
    sys::raise_nofile_limit();
    let a = ClusterArgs {
        starling: starling.to_path_buf(),
        tick_ms: 50,
        ..ClusterArgs::default()
    };
    let mut nodes = start(&a, Topology::Cluster, Limits::default())?;
    let ports: Vec<u16> = nodes.nodes.iter().map(|n| n.process.port()).collect();
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for row in SMOKE_ROWS {
        let command: Vec<String> =
            format!("{row} --max-ahead 500 --timeout 30 --drain-idle 2 --threads 2")
                .split_whitespace()
                .map(String::from)
                .collect();
        let (scenario, mut args) = parse_row(&command)?;
        args.port = ports[0];
        args.pub_port = Some(ports[0]);
        args.sub_ports = ports[1..].to_vec();
        args.label = "starling-cluster".into();
        let s = run_blocking(scenario, &args)?;
        eprintln!("{}", s.to_json());
        if !s.ok {
            failures.push(format!(
                "{row}: lost {}, duplicated {}, timed out {}, error {}",
                s.lost,
                s.duplicated,
                s.timed_out,
                s.error.as_deref().unwrap_or("none")
            ));
        }
        out.push(s);
    }
    for n in &mut nodes.nodes {
        if let Some(status) = n.process.exited() {
            failures.push(format!(
                "node {} exited ({status}); log:\n{}",
                n.id,
                n.process.log_tail(30)
            ));
        }
    }
    if failures.is_empty() {
        Ok(out)
    } else {
        for n in &nodes.nodes {
            eprintln!("-- node {} log tail:\n{}", n.id, n.process.log_tail(20));
        }
        Err(BenchError::Check(failures.join("\n")))
    }
}

fn header(t: Topology, a: &ClusterArgs) -> String {
    match t {
        Topology::Cluster => format!("cluster ({} nodes, fsync {})", a.nodes, a.fsync),
        Topology::Single => format!("single node (fsync {})", a.fsync),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_parses() {
        let a = ClusterArgs::default();
        let rows = rows(&a);
        assert_eq!(rows.len(), 8);
        for r in &rows {
            let (scenario, ra) = parse_row(&r.command).unwrap();
            ra.validate(scenario).unwrap();
        }
        assert_eq!(a.topologies, [Topology::Cluster, Topology::Single]);
    }

    #[test]
    fn table_has_ratio() {
        let a = ClusterArgs::default();
        let mk = |topology: &str, v: f64| Summary {
            row: Some("fan-in-q0".into()),
            round: Some(1),
            throughput_msgs_per_s: v,
            ok: true,
            cluster: Some(ClusterInfo {
                topology: topology.into(),
                leader: 2,
                load_average: Some([1.5, 1.0, 1.0]),
                ..ClusterInfo::default()
            }),
            ..Summary::default()
        };
        let t = render(
            &[
                mk("cluster", 100.0),
                mk("single", 400.0),
                mk("cluster", 300.0),
                mk("single", 300.0),
            ],
            &a,
        );
        assert!(
            t.contains("| 200 (100–300) | 350 (300–400) | 0.57 |"),
            "{t}"
        );
        assert!(t.contains("fan-in-q0/r1: 2"), "{t}");
        assert!(
            t.contains("load average at the start of the runs 1.5"),
            "{t}"
        );
    }
}
