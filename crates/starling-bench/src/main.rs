//! `starling-bench`: run one scenario against a broker, compare brokers, or smoke-test.
//!
//! ```text
//! starling-bench fan-in --qos 1 --publishers 4 --port 1883 --pid $(pidof starling)
//! starling-bench compare --starling target/release/starling
//! starling-bench smoke --starling target/debug/starling [--cluster]
//! starling-bench raft --proposers 16 --entry-bytes 100 --duration 10 --fsync always
//! starling-bench raft-table --proposers 1,16,256 --fsync always,interval --rounds 3
//! starling-bench cluster --starling target/release/starling
//! ```
//!
//! A scenario prints one JSON line on stdout (progress goes to stderr) and exits 0 when the run
//! was clean, 1 when it failed or timed out, 3 when it completed but lost messages (or
//! duplicated them at QoS 2).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_bench::cluster::{self, ClusterArgs};
use starling_bench::compare::{self, CompareArgs};
use starling_bench::raft::{self, RaftArgs, RaftTableArgs};
use starling_bench::scenario::{run_blocking, RunArgs, Scenario};
use starling_bench::{smoke, sys};

/// Load generator for MQTT 3.1.1 brokers.
#[derive(Parser, Debug)]
#[command(name = "starling-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// P publishers → one subscriber on --filter (default `#`).
    FanIn(RunArgs),
    /// One publisher → S subscribers on its topic.
    FanOut(RunArgs),
    /// N publisher/subscriber pairs on their own topics (use --rate for latency).
    P2p(RunArgs),
    /// C idle connections: connect rate and broker RSS per connection (--pid).
    Connections(RunArgs),
    /// QoS 2 publishers → a persistent subscriber that reconnects --reconnects times.
    Qos2(RunArgs),
    /// Start Starling, Mosquitto and rumqttd in turn, run every row, print the table.
    Compare(CompareArgs),
    /// Tiny run of every scenario against a Starling binary; fails on any loss.
    Smoke {
        /// The Starling binary.
        #[arg(long, default_value = "target/release/starling")]
        starling: PathBuf,
        /// Also run the cluster smoke rows on a three-node cluster (pubs on node 1, subs on
        /// nodes 2 and 3).
        #[arg(long)]
        cluster: bool,
    },
    /// The Raft store alone: committed entries/s and commit latency on an in-process cluster.
    Raft(RaftArgs),
    /// `raft` for several proposer counts and fsync policies, each run in a fresh process.
    RaftTable(RaftTableArgs),
    /// Cross-node routing on a three-node cluster of `starling` processes next to one node.
    Cluster(ClusterArgs),
}

fn init_tracing() {
    // The Raft store logs through `tracing`: warnings and errors to stderr (RUST_LOG overrides).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn scenario(s: Scenario, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let summary = run_blocking(s, args).context("running the scenario")?;
    println!("{}", summary.to_json());
    Ok(if summary.ok {
        ExitCode::SUCCESS
    } else if summary.timed_out || summary.error.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::from(3)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limit = sys::raise_nofile_limit();
    eprintln!("starling-bench: RLIMIT_NOFILE {limit}");
    let result = match &cli.cmd {
        Cmd::FanIn(a) => scenario(Scenario::FanIn, a),
        Cmd::FanOut(a) => scenario(Scenario::FanOut, a),
        Cmd::P2p(a) => scenario(Scenario::P2p, a),
        Cmd::Connections(a) => scenario(Scenario::Connections, a),
        Cmd::Qos2(a) => scenario(Scenario::Qos2, a),
        Cmd::Compare(a) if a.list => {
            for r in compare::rows(a) {
                println!("{:16} starling-bench {}", r.id, r.command.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare(a) => compare::run(a)
            .map(|table| {
                println!("\n{table}");
                ExitCode::SUCCESS
            })
            .context("comparison"),
        Cmd::Smoke { starling, cluster } => {
            smoke::run(starling).context("smoke run").and_then(|runs| {
                eprintln!("smoke: {} runs, all clean", runs.len());
                if *cluster {
                    let runs = cluster::smoke(starling).context("cluster smoke run")?;
                    eprintln!("cluster smoke: {} runs, all clean", runs.len());
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Cmd::Raft(a) => {
            init_tracing();
            raft::run(a).context("raft run").map(|s| {
                println!("{}", s.to_json());
                if s.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            })
        }
        Cmd::RaftTable(a) => raft::run_table(a)
            .map(|table| {
                println!("\n{table}");
                ExitCode::SUCCESS
            })
            .context("raft table"),
        Cmd::Cluster(a) if a.list => {
            for r in cluster::rows(a) {
                println!("{:24} starling-bench {}", r.id, r.command.join(" "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Cluster(a) => cluster::run(a)
            .map(|table| {
                println!("\n{table}");
                ExitCode::SUCCESS
            })
            .context("cluster comparison"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("starling-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
