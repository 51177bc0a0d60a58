//! The scenarios and the options they share.
//!
//! | scenario      | publishers → subscribers                       | what it measures                        |
//! |---------------|------------------------------------------------|-----------------------------------------|
//! | `fan-in`      | P publishers → 1 subscriber on `--filter` (`#`) | msgs/s, latency, lost/dup/reordered     |
//! | `fan-out`     | 1 publisher → S subscribers on its topic        | deliveries/s, latency                   |
//! | `p2p`         | N pairs, each on its own topic                  | latency at a fixed `--rate`             |
//! | `connections` | C idle connections                              | connect rate, broker RSS per connection |
//! | `qos2`        | P QoS 2 publishers → 1 persistent subscriber   | exactly-once across `--reconnects`      |
//!
//! ```text
//! run ─▶ connect + subscribe all subscribers ─▶ connect all publishers ─▶ t0
//!     ─▶ publishers (one task each) ──PUBLISH──▶ broker ──▶ subscribers (one task each)
//!            ▲                                                   │
//!            └──────────── gate: received counts ◀───────────────┘
//!     ─▶ publishers done: final sent counts ─▶ subscribers drain ─▶ Summary
//! ```
//!
//! Every wait is bounded by the run's deadline (`--timeout`); a run that hits it ends with what
//! it counted and `timed_out: true`.

pub mod connections;
pub mod flow;
mod pacer;
pub mod qos2;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::payload::HEADER_LEN;
use crate::stats::Summary;
use crate::sys::{self, CpuClock, RssSampler};
use crate::BenchError;

/// Which scenario to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// P publishers → one subscriber (`--filter`, default `#`).
    FanIn,
    /// One publisher → S subscribers.
    FanOut,
    /// N publisher/subscriber pairs, each on its own topic.
    P2p,
    /// C idle connections: connect rate and broker memory per connection.
    Connections,
    /// QoS 2 publishers → a persistent subscriber that reconnects R times.
    Qos2,
}

impl Scenario {
    /// The scenario's name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::P2p => "p2p",
            Scenario::Connections => "connections",
            Scenario::Qos2 => "qos2",
        }
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Options of every scenario (each uses the ones that apply to it).
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct RunArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Broker port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,

    /// Port the publishers connect to (default: --port); e.g. node 1 of a cluster.
    #[arg(long)]
    pub pub_port: Option<u16>,

    /// Ports the subscribers connect to, comma-separated (default: --port): subscriber i uses
    /// port i mod n (fan-out subscribers and p2p pairs alternate; the fan-in and qos2
    /// subscriber uses the first), e.g. nodes 2 and 3 of a cluster.
    #[arg(long, value_delimiter = ',')]
    pub sub_ports: Vec<u16>,

    /// Label of the broker in the JSON summary.
    #[arg(long, default_value = "broker")]
    pub label: String,

    /// Broker process id: its RSS (and CPU time) is read from /proc during the run.
    #[arg(long)]
    pub pid: Option<u32>,

    /// QoS of publishes and subscriptions (fan-in, fan-out, p2p; qos2 always uses 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,

    /// Publisher connections (fan-in, qos2; fan-out always has one).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,

    /// Subscriber connections (fan-out).
    #[arg(long, default_value_t = 16)]
    pub subscribers: usize,

    /// Publisher/subscriber pairs (p2p).
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,

    /// Messages to publish in total, split evenly over the publishers (default 100000 unless
    /// --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,

    /// Publish for this many seconds instead of a fixed count.
    #[arg(long)]
    pub duration: Option<f64>,

    /// Payload bytes (at least 32: the header).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,

    /// Unacknowledged QoS 1/2 messages each publisher may have in flight.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=65000))]
    pub inflight: u16,

    /// Messages a flow's publishers may be ahead of its slowest subscriber, in total over the
    /// flow's publishers (see the gate module).
    #[arg(long, default_value_t = 1000)]
    pub max_ahead: u64,

    /// Open loop: messages per second *per publisher*, on a schedule fixed in advance; latency
    /// is measured from the scheduled time. Without it publishers run closed loop, as fast as
    /// the window and the run-ahead bound allow.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Most messages encoded into one write.
    #[arg(long, default_value_t = 256)]
    pub batch: u64,

    /// Topic filter of the fan-in subscriber.
    #[arg(long, default_value = "#")]
    pub filter: String,

    /// Idle connections to open (connections).
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,

    /// Connections being set up at once (connections).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,

    /// Local source addresses 127.0.0.1..127.0.0.N to connect from (connections; default: one
    /// per 25000 connections, past the ~28k ephemeral ports of one address).
    #[arg(long)]
    pub source_ips: Option<u8>,

    /// Seconds to wait after connecting before reading the broker's RSS (connections).
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,

    /// Seconds to hold the idle connections (connections).
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,

    /// Abrupt disconnects of the persistent subscriber (qos2).
    #[arg(long, default_value_t = 10)]
    pub reconnects: u32,

    /// Keep-alive of every connection, seconds (no PINGREQ is sent: keep runs shorter).
    #[arg(long, default_value_t = 300)]
    pub keep_alive: u16,

    /// Deadline of the whole run, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,

    /// Once the publishers are done, subscribers stop after this many seconds without a message.
    #[arg(long, default_value_t = 3.0)]
    pub drain_idle: f64,

    /// A publisher blocked this many seconds on the run-ahead bound writes the gap off.
    #[arg(long, default_value_t = 2.0)]
    pub stall: f64,

    /// Worker threads of the load generator's runtime (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl Default for RunArgs {
    fn default() -> Self {
        use clap::Parser;
        /// Parses no arguments, so that the defaults live in one place (the attributes).
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: RunArgs,
        }
        // No arguments and valid defaults: cannot fail.
        Defaults::parse_from(["defaults"]).args
    }
}

impl RunArgs {
    /// Checks the options against the scenario.
    ///
    /// # Errors
    /// [`BenchError::Options`] naming the problem.
    pub fn validate(&self, scenario: Scenario) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Options(m));
        if self.payload < HEADER_LEN {
            return bad(format!("--payload must be at least {HEADER_LEN}"));
        }
        if let Some(r) = self.rate {
            if !(r > 0.0 && r.is_finite()) {
                return bad("--rate must be positive".into());
            }
        }
        if let Some(d) = self.duration {
            if !(d > 0.0 && d.is_finite()) {
                return bad("--duration must be positive".into());
            }
        }
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            return bad("--timeout must be positive".into());
        }
        if self.batch == 0 || self.max_ahead == 0 {
            return bad("--batch and --max-ahead must be positive".into());
        }
        match scenario {
            Scenario::FanIn | Scenario::Qos2 if self.publishers == 0 => {
                bad("--publishers must be positive".into())
            }
            Scenario::FanOut if self.subscribers == 0 => {
                bad("--subscribers must be positive".into())
            }
            Scenario::P2p if self.pairs == 0 => bad("--pairs must be positive".into()),
            Scenario::Connections if self.connections == 0 => {
                bad("--connections must be positive".into())
            }
            Scenario::Qos2 if self.duration.is_some() => {
                bad("qos2 needs --messages (its reconnects are spread over the count)".into())
            }
            _ => Ok(()),
        }
    }

    /// Total messages for count-based runs (100000 by default).
    pub fn total_messages(&self) -> Option<u64> {
        match (self.messages, self.duration) {
            (Some(m), _) => Some(m),
            (None, Some(_)) => None,
            (None, None) => Some(100_000),
        }
    }

    /// The broker's socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Where publishers connect (`--pub-port`, else `--port`).
    pub fn pub_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.pub_port.unwrap_or(self.port))
    }

    /// Where subscriber `i` connects (`--sub-ports` round robin, else `--port`).
    pub fn sub_addr(&self, i: usize) -> SocketAddr {
        let port = match self.sub_ports.len() {
            0 => self.port,
            n => self.sub_ports[i % n],
        };
        SocketAddr::new(self.host, port)
    }
}

/// State shared by all tasks of one run.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) args: RunArgs,
    pub(crate) run_id: u64,
    /// Origin of the run's clock (`*_ns` values are relative to it).
    epoch: Instant,
    /// End of every wait.
    pub(crate) deadline: Instant,
    /// When publishing started, ns since `epoch`.
    t0_ns: AtomicU64,
    /// Final sent count of each publisher, set when it finishes.
    pub(crate) final_sent: Box<[AtomicU64]>,
}

impl Ctx {
    fn new(args: RunArgs, publishers: usize) -> Ctx {
        let epoch = Instant::now();
        let deadline = epoch + Duration::from_secs_f64(args.timeout);
        Ctx {
            args,
            run_id: new_run_id(),
            epoch,
            deadline,
            t0_ns: AtomicU64::new(0),
            final_sent: (0..publishers).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Nanoseconds since the run's clock origin.
    pub(crate) fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The instant `ns` after the clock origin.
    pub(crate) fn at_ns(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    pub(crate) fn t0_ns(&self) -> u64 {
        self.t0_ns.load(Ordering::Acquire)
    }

    /// Starts a pacer thread for open-loop publishers (`None` for closed loop).
    pub(crate) fn pacer(&self) -> Option<pacer::PacerHandle> {
        self.args.rate.map(|_| pacer::start(self.epoch.into_std()))
    }

    pub(crate) fn start_clock(&self) {
        self.t0_ns.store(self.now_ns(), Ordering::Release);
    }

    /// Topic prefix unique to this run.
    pub(crate) fn prefix(&self) -> String {
        format!("sb/{:016x}", self.run_id)
    }

    /// Client id of a connection of this run.
    pub(crate) fn client_id(&self, role: &str, i: usize) -> String {
        format!("sb-{:x}-{role}{i}", self.run_id)
    }

    /// Sum of the final sent counts of `publishers`.
    pub(crate) fn sent_by(&self, publishers: &[u32]) -> u64 {
        publishers
            .iter()
            .map(|&p| {
                self.final_sent
                    .get(p as usize)
                    .map_or(0, |a| a.load(Ordering::Acquire))
            })
            .sum()
    }
}

/// A run id from the clock and the process id (no randomness needed: it only has to differ
/// between runs).
fn new_run_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mixed = nanos ^ (u64::from(std::process::id()) << 40);
    // splitmix64 finalizer, so that ids of close runs look unrelated.
    let mut z = mixed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The loopback source address number `i` (127.0.0.1 + i).
pub(crate) fn loopback(i: u32) -> IpAddr {
    let [_, b, c, d] = (1u32 + i).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(127, b, c, d))
}

/// Runs one scenario inside the current tokio runtime and returns its summary (errors and
/// timeouts are recorded in it; see [`Summary::ok`]).
pub async fn run(scenario: Scenario, args: &RunArgs) -> Summary {
    let mut s = Summary {
        scenario: scenario.name().to_string(),
        broker: args.label.clone(),
        qos: if scenario == Scenario::Qos2 {
            2
        } else {
            args.qos
        },
        payload: args.payload as u64,
        inflight: u64::from(args.inflight),
        max_ahead: args.max_ahead,
        rate_per_publisher: args.rate,
        broker_pid: args.pid,
        nofile_limit: sys::nofile_limit().0,
        load_average: sys::load_average(),
        ..Summary::default()
    };
    if let Err(e) = args.validate(scenario) {
        s.error = Some(e.to_string());
        s.judge();
        return s;
    }
    let clock = CpuClock::start(args.pid);
    let rss = args.pid.map(RssSampler::start);
    match scenario {
        Scenario::FanIn | Scenario::FanOut | Scenario::P2p => {
            flow::run(args.clone(), scenario, &mut s).await
        }
        Scenario::Qos2 => qos2::run(args.clone(), &mut s).await,
        Scenario::Connections => connections::run(args.clone(), &mut s).await,
    }
    if let Some(r) = rss {
        s.broker_rss = r.finish().await;
    }
    let usage = clock.stop();
    s.wall_s = usage.wall_s;
    s.bench_cpu_s = usage.own_cpu_s;
    s.bench_cpu_pct = if usage.wall_s > 0.0 {
        100.0 * usage.own_cpu_s / usage.wall_s
    } else {
        0.0
    };
    s.broker_cpu_s = usage.broker_cpu_s;
    s.judge();
    s
}

/// Runs one scenario on a fresh multi-thread runtime (`--threads` workers).
///
/// # Errors
/// [`BenchError::Io`] if the runtime cannot be built; everything else is in the summary.
pub fn run_blocking(scenario: Scenario, args: &RunArgs) -> Result<Summary, BenchError> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| BenchError::io("build tokio runtime", e))?;
    let s = rt.block_on(run(scenario, args));
    // Tasks still holding sockets (after a timeout) are dropped here.
    rt.shutdown_timeout(Duration::from_secs(2));
    Ok(s)
}

/// Records `e` as the run's error (the first one wins; a timeout marks the run timed out).
pub(crate) fn record_error(s: &mut Summary, e: &BenchError) {
    if e.is_timeout() {
        s.timed_out = true;
    }
    if s.error.is_none() {
        s.error = Some(e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_validate() {
        let a = RunArgs::default();
        assert_eq!(a.payload, 64);
        assert_eq!(a.max_ahead, 1000);
        assert_eq!(a.total_messages(), Some(100_000));
        for s in [
            Scenario::FanIn,
            Scenario::FanOut,
            Scenario::P2p,
            Scenario::Connections,
            Scenario::Qos2,
        ] {
            a.validate(s).unwrap();
        }
        assert_eq!(a.pub_addr(), a.addr());
        assert_eq!(a.sub_addr(5), a.addr());
        let split = RunArgs {
            pub_port: Some(1),
            sub_ports: vec![2, 3],
            ..RunArgs::default()
        };
        assert_eq!(split.pub_addr().port(), 1);
        let subs: Vec<u16> = (0..4).map(|i| split.sub_addr(i).port()).collect();
        assert_eq!(subs, [2, 3, 2, 3]);
        assert_eq!(loopback(0).to_string(), "127.0.0.1");
        assert_eq!(loopback(3).to_string(), "127.0.0.4");
    }
}
