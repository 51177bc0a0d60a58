//! The comparison: the same scenarios against Starling, Mosquitto and rumqttd.
//!
//! ```text
//! for row in rows:                       (fan-in QoS 0/1/2, fan-out, qos2, connections, p2p)
//!   for round in 1..=rounds:
//!     for broker in brokers:             (A B C A B C …: drift hits every broker alike)
//!       start the broker fresh ─▶ run the row's scenario ─▶ stop it ─▶ one JSON line
//! table: per metric, each broker's median (min–max) and Starling's ratio to each other broker
//! ```
//!
//! Nothing is built here: the binaries are given (`--starling`, `--mosquitto`, `--rumqttd`).
//! Each row is a scenario command line; `starling-bench <row> --port P --pid PID` reproduces
//! one run against a broker started by hand.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::broker::{BrokerKind, BrokerProcess, Limits};
use crate::scenario::{run_blocking, RunArgs, Scenario};
use crate::stats::Summary;
use crate::BenchError;

/// Options of `starling-bench compare`.
#[derive(Clone, Debug, clap::Args)]
pub struct CompareArgs {
    /// The Starling binary (build it with `cargo build --release -p starling`).
    #[arg(long, default_value = "target/release/starling")]
    pub starling: PathBuf,

    /// The Mosquitto binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    pub mosquitto: PathBuf,

    /// The rumqttd binary (default: ~/.cargo/bin/rumqttd).
    #[arg(long)]
    pub rumqttd: Option<PathBuf>,

    /// Brokers to run, in this order within each round.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "starling,mosquitto,rumqttd"
    )]
    pub brokers: Vec<BrokerKind>,

    /// Rounds: every row runs this many times against every broker.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,

    /// Only these rows (ids as printed by --list), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,

    /// Print the rows and exit.
    #[arg(long)]
    pub list: bool,

    /// Seconds each throughput and latency row publishes for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Open-loop rate of each p2p publisher (msgs/s).
    #[arg(long, default_value_t = 100.0)]
    pub p2p_rate: f64,

    /// Idle connections of the connections row.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,

    /// Messages of the qos2 row.
    #[arg(long, default_value_t = 100_000)]
    pub qos2_messages: u64,

    /// Subscriber reconnects of the qos2 row.
    #[arg(long, default_value_t = 10)]
    pub qos2_reconnects: u32,

    /// Outbound in-flight limit set on every broker that has one.
    #[arg(long, default_value_t = 100)]
    pub inflight: u32,

    /// Per-session queue limit set on every broker that has one.
    #[arg(long, default_value_t = 1000)]
    pub queued: u32,

    /// Extra options appended to every row (e.g. "--threads 2").
    #[arg(long, allow_hyphen_values = true)]
    pub extra: Option<String>,

    /// File the raw JSON lines are written to.
    #[arg(long, default_value = "bench/results/compare.jsonl")]
    pub out: PathBuf,

    /// File the markdown table is written to.
    #[arg(long, default_value = "bench/results/compare.md")]
    pub table: PathBuf,
}

impl CompareArgs {
    fn rumqttd_path(&self) -> PathBuf {
        self.rumqttd.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            Path::new(&home).join(".cargo/bin/rumqttd")
        })
    }

    fn bin(&self, kind: BrokerKind) -> PathBuf {
        match kind {
            BrokerKind::Starling => self.starling.clone(),
            BrokerKind::Mosquitto => self.mosquitto.clone(),
            BrokerKind::Rumqttd => self.rumqttd_path(),
        }
    }
}

/// One scenario configuration of the comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Short id (`fan-in-q0`, …).
    pub id: String,
    /// The scenario command line (scenario name, then options), as `starling-bench` takes it.
    pub command: Vec<String>,
}

/// The rows of the comparison for these options.
pub fn rows(a: &CompareArgs) -> Vec<Row> {
    let d = a.duration.to_string();
    let run = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
    let throughput_timeout = (a.duration + 60.0).to_string();
    let mut rows = vec![];
    for q in 0..=2 {
        rows.push(Row {
            id: format!("fan-in-q{q}"),
            command: run(&format!(
                "fan-in --qos {q} --publishers 4 --payload 64 --max-ahead 1000 --filter # \
                 --duration {d} --timeout {throughput_timeout}"
            )),
        });
    }
    rows.push(Row {
        id: "fan-out-q1".into(),
        command: run(&format!(
            "fan-out --qos 1 --subscribers 16 --payload 64 --max-ahead 1000 --duration {d} \
             --timeout {throughput_timeout}"
        )),
    });
    rows.push(Row {
        id: "qos2-persistent".into(),
        command: run(&format!(
            "qos2 --publishers 4 --payload 64 --max-ahead 1000 --messages {} --reconnects {} \
             --timeout 300",
            a.qos2_messages, a.qos2_reconnects
        )),
    });
    rows.push(Row {
        id: "connections".into(),
        command: run(&format!(
            "connections --connections {} --connect-concurrency 64 --settle 2 --hold 2 \
             --timeout 180",
            a.connections
        )),
    });
    rows.push(Row {
        id: "p2p-q1".into(),
        command: run(&format!(
            "p2p --qos 1 --pairs 100 --payload 64 --rate {} --max-ahead 1000 --duration {d} \
             --timeout {throughput_timeout}",
            a.p2p_rate
        )),
    });
    if let Some(extra) = &a.extra {
        for r in &mut rows {
            r.command.extend(run(extra));
        }
    }
    rows
}

/// Parses a row's command line into its scenario and options.
///
/// # Errors
/// [`BenchError::Options`] if clap rejects it.
pub fn parse_row(command: &[String]) -> Result<(Scenario, RunArgs), BenchError> {
    /// A row: the scenario name, then its options.
    #[derive(clap::Parser)]
    #[command(no_binary_name = true)]
    struct RowCli {
        #[arg(value_enum)]
        scenario: Scenario,
        #[command(flatten)]
        args: RunArgs,
    }
    let r = RowCli::try_parse_from(command)
        .map_err(|e| BenchError::Options(format!("row {}: {e}", command.join(" "))))?;
    Ok((r.scenario, r.args))
}

/// Runs one row once against a freshly started broker.
pub fn run_once(
    kind: BrokerKind,
    bin: &Path,
    limits: Limits,
    row: &Row,
    round: u32,
) -> Result<Summary, BenchError> {
    let (scenario, mut args) = parse_row(&row.command)?;
    let mut summary = match BrokerProcess::start(kind, bin, limits, Duration::from_secs(20)) {
        Ok(broker) => {
            args.port = broker.port();
            args.pid = Some(broker.pid());
            args.label = kind.name().to_string();
            let mut s = run_blocking(scenario, &args)?;
            if let Some(died) = broker.stop() {
                s.error.get_or_insert(died);
                s.judge();
            }
            s
        }
        Err(e) => {
            let mut s = Summary {
                scenario: scenario.name().into(),
                broker: kind.name().into(),
                error: Some(e.to_string()),
                ..Summary::default()
            };
            s.judge();
            s
        }
    };
    summary.row = Some(row.id.clone());
    summary.round = Some(round);
    Ok(summary)
}

/// Runs the comparison: every row, `rounds` times, brokers interleaved. Writes the JSON lines
/// (also to stdout) and the table, and returns the table.
///
/// # Errors
/// IO errors on the output files, invalid rows.
pub fn run(a: &CompareArgs) -> Result<String, BenchError> {
    let all = rows(a);
    let selected: Vec<Row> = all
        .into_iter()
        .filter(|r| a.only.is_empty() || a.only.contains(&r.id))
        .collect();
    if selected.is_empty() {
        return Err(BenchError::Options("no rows selected (see --list)".into()));
    }
    for r in &selected {
        parse_row(&r.command)?;
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
            for &kind in &a.brokers {
                eprintln!(
                    "== row {}/{n} {} round {round}/{} {}: {}",
                    ri + 1,
                    row.id,
                    a.rounds,
                    kind.name(),
                    row.command.join(" ")
                );
                let s = run_once(kind, &a.bin(kind), limits, row, round)?;
                let line = s.to_json();
                println!("{line}");
                writeln!(out, "{line}")
                    .and_then(|_| out.flush())
                    .map_err(|e| BenchError::io(format!("write {}", a.out.display()), e))?;
                results.push(s);
            }
        }
    }
    let table = render(&results, &a.brokers, a);
    std::fs::write(&a.table, &table)
        .map_err(|e| BenchError::io(format!("write {}", a.table.display()), e))?;
    Ok(table)
}

/// How a metric's runs are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agg {
    /// Median (min–max).
    Median,
    /// Largest value over the runs (for counts that must be 0).
    Max,
}

/// One line of the table.
struct Metric {
    row: &'static str,
    title: String,
    agg: Agg,
    get: fn(&Summary) -> Option<f64>,
    fmt: fn(f64) -> String,
}

/// A count with k/M suffixes (3 significant digits or so).
pub(crate) fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(crate) fn int(v: f64) -> String {
    format!("{v:.0}")
}

fn mib(v: f64) -> String {
    format!("{:.1}", v / 1024.0)
}

fn metrics(a: &CompareArgs) -> Vec<Metric> {
    let thr: fn(&Summary) -> Option<f64> = |s| Some(s.throughput_msgs_per_s);
    let mut m = vec![];
    for (q, row) in [(0, "fan-in-q0"), (1, "fan-in-q1"), (2, "fan-in-q2")] {
        m.push(Metric {
            row,
            title: format!("fan-in QoS {q}, 4 pubs → 1 `#` sub, 64 B: msgs/s"),
            agg: Agg::Median,
            get: thr,
            fmt: si,
        });
    }
    m.push(Metric {
        row: "fan-in-q1",
        title: "broker peak RSS during fan-in QoS 1, MiB (lower is better)".into(),
        agg: Agg::Median,
        get: |s| s.broker_rss.map(|r| r.max_kb as f64),
        fmt: mib,
    });
    m.push(Metric {
        row: "fan-in-q0",
        title: "broker peak RSS during fan-in QoS 0, MiB (lower is better)".into(),
        agg: Agg::Median,
        get: |s| s.broker_rss.map(|r| r.max_kb as f64),
        fmt: mib,
    });
    m.push(Metric {
        row: "fan-out-q1",
        title: "fan-out 1 → 16 QoS 1: deliveries/s".into(),
        agg: Agg::Median,
        get: thr,
        fmt: si,
    });
    m.push(Metric {
        row: "qos2-persistent",
        title: format!(
            "QoS 2 persistent sub, {} msgs, {} reconnects: msgs/s",
            a.qos2_messages, a.qos2_reconnects
        ),
        agg: Agg::Median,
        get: thr,
        fmt: si,
    });
    m.push(Metric {
        row: "qos2-persistent",
        title: "… lost (max over runs; must be 0)".into(),
        agg: Agg::Max,
        get: |s| Some(s.lost as f64),
        fmt: int,
    });
    m.push(Metric {
        row: "qos2-persistent",
        title: "… duplicated (max over runs; must be 0)".into(),
        agg: Agg::Max,
        get: |s| Some(s.duplicated as f64),
        fmt: int,
    });
    m.push(Metric {
        row: "connections",
        title: format!(
            "memory per idle connection ({}), bytes (lower is better)",
            a.connections
        ),
        agg: Agg::Median,
        get: |s| s.connections.as_ref().and_then(|c| c.bytes_per_connection),
        fmt: int,
    });
    m.push(Metric {
        row: "connections",
        title: "connect rate, connections/s".into(),
        agg: Agg::Median,
        get: |s| s.connections.as_ref().map(|c| c.connect_rate_per_s),
        fmt: si,
    });
    m.push(Metric {
        row: "p2p-q1",
        title: format!(
            "p2p 100 pairs QoS 1 at {} msgs/s each: p99 latency, µs (lower is better)",
            a.p2p_rate
        ),
        agg: Agg::Median,
        get: |s| s.latency_us.map(|l| l.p99 as f64),
        fmt: int,
    });
    m.push(Metric {
        row: "p2p-q1",
        title: "… p50 latency, µs (lower is better)".into(),
        agg: Agg::Median,
        get: |s| s.latency_us.map(|l| l.p50 as f64),
        fmt: int,
    });
    m
}

/// Median, min and max of the values (`None` if empty).
pub(crate) fn median_min_max(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if !n.is_multiple_of(2) {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((med, v[0], v[n - 1]))
}

/// Renders the markdown table, and below it every run that was not clean.
pub fn render(results: &[Summary], brokers: &[BrokerKind], a: &CompareArgs) -> String {
    let mut by: BTreeMap<(String, String), Vec<&Summary>> = BTreeMap::new();
    for s in results {
        by.entry((s.row.clone().unwrap_or_default(), s.broker.clone()))
            .or_default()
            .push(s);
    }
    let others: Vec<BrokerKind> = brokers
        .iter()
        .copied()
        .filter(|b| *b != BrokerKind::Starling)
        .collect();
    let has_starling = brokers.contains(&BrokerKind::Starling);
    let mut t = String::from("| metric |");
    for b in brokers {
        t.push_str(&format!(" {} |", b.name()));
    }
    if has_starling {
        for o in &others {
            t.push_str(&format!(" starling / {} |", o.name()));
        }
    }
    t.push_str("\n|---|");
    for _ in brokers {
        t.push_str("---:|");
    }
    if has_starling {
        for _ in &others {
            t.push_str("---:|");
        }
    }
    t.push('\n');
    for m in metrics(a) {
        if !results.iter().any(|s| s.row.as_deref() == Some(m.row)) {
            continue;
        }
        let mut medians: BTreeMap<BrokerKind, f64> = BTreeMap::new();
        t.push_str(&format!("| {} |", m.title));
        for &b in brokers {
            let runs = by
                .get(&(m.row.to_string(), b.name().to_string()))
                .cloned()
                .unwrap_or_default();
            let mut vals: Vec<f64> = runs.iter().filter_map(|s| (m.get)(s)).collect();
            let bad = runs.iter().filter(|s| !s.ok).count();
            let mark = if bad > 0 {
                format!(" ({bad}/{} not ok)", runs.len())
            } else {
                String::new()
            };
            let cell = match (m.agg, median_min_max(&mut vals)) {
                (_, None) => "n/a".to_string(),
                (Agg::Median, Some((med, lo, hi))) => {
                    medians.insert(b, med);
                    format!("{} ({}–{})", (m.fmt)(med), (m.fmt)(lo), (m.fmt)(hi))
                }
                (Agg::Max, Some((_, _, hi))) => (m.fmt)(hi),
            };
            t.push_str(&format!(" {cell}{mark} |"));
        }
        if has_starling {
            for o in &others {
                let r = match (m.agg, medians.get(&BrokerKind::Starling), medians.get(o)) {
                    (Agg::Median, Some(s), Some(x)) if *x > 0.0 => format!("{:.2}×", s / x),
                    _ => "".to_string(),
                };
                t.push_str(&format!(" {r} |"));
            }
        }
        t.push('\n');
    }
    let problems: Vec<&Summary> = results.iter().filter(|s| !s.ok).collect();
    if !problems.is_empty() {
        t.push_str("\nRuns that were not clean (lost, duplicated at QoS 2, errors, timeouts):\n\n");
        for s in problems {
            t.push_str(&format!(
                "- {} round {} {}: lost {}, duplicated {}, reordered {}, stalls {}, \
                 timed out {}, error: {}\n",
                s.row.as_deref().unwrap_or("?"),
                s.round.unwrap_or(0),
                s.broker,
                s.lost,
                s.duplicated,
                s.reordered,
                s.stalls,
                s.timed_out,
                s.error.as_deref().unwrap_or("none")
            ));
        }
    }
    t
}

/// Creates the directories of the JSON lines file `out` and the table `table`, and `out`.
pub(crate) fn create_outputs(
    out: &std::path::Path,
    table: &std::path::Path,
) -> Result<std::fs::File, BenchError> {
    for dir in [out.parent(), table.parent()].into_iter().flatten() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| BenchError::io(format!("create {}", dir.display()), e))?;
        }
    }
    std::fs::File::create(out).map_err(|e| BenchError::io(format!("create {}", out.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> CompareArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: CompareArgs,
        }
        Cli::parse_from(["compare"]).a
    }

    #[test]
    fn every_row_parses() {
        let a = args();
        let rows = rows(&a);
        assert_eq!(rows.len(), 7);
        for r in &rows {
            let (scenario, ra) = parse_row(&r.command).unwrap();
            ra.validate(scenario).unwrap();
        }
    }

    #[test]
    fn table_has_medians_and_ratios() {
        let a = args();
        let mk = |broker: &str, v: f64| Summary {
            row: Some("fan-in-q0".into()),
            broker: broker.into(),
            throughput_msgs_per_s: v,
            ok: true,
            ..Summary::default()
        };
        let results = vec![
            mk("starling", 100.0),
            mk("mosquitto", 50.0),
            mk("starling", 300.0),
            mk("mosquitto", 60.0),
            mk("starling", 200.0),
            mk("mosquitto", 40.0),
        ];
        let t = render(&results, &[BrokerKind::Starling, BrokerKind::Mosquitto], &a);
        assert!(
            t.contains("| 200 (100–300) | 50.0 (40.0–60.0) | 4.00× |"),
            "{t}"
        );
    }
}
