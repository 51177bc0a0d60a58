//! `starling-bench`: run one scenario against a broker, compare brokers, or smoke-test.
//!
//! ```text
//! starling-bench fan-in --qos 1 --publishers 4 --port 1883 --pid $(pidof starling)
//! starling-bench compare --starling target/release/starling
//! starling-bench smoke --starling target/debug/starling
//! ```
//!
//! A scenario prints one JSON line on stdout (progress goes to stderr) and exits 0 when the run
//! was clean, 1 when it failed or timed out, 3 when it completed but lost messages (or
//! duplicated them at QoS 2).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use starling_bench::compare::{self, CompareArgs};
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
    },
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
        Cmd::Smoke { starling } => smoke::run(starling)
            .map(|runs| {
                eprintln!("smoke: {} runs, all clean", runs.len());
                ExitCode::SUCCESS
            })
            .context("smoke run"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("starling-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
