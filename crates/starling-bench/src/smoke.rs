//! The smoke run: every scenario, tiny, against one Starling process; checks the harness works
//! and that nothing is lost (and, at QoS 2, nothing duplicated). It never checks a speed.
//!
//! Used by `starling-bench smoke --starling <bin>` and by the `bench_smoke` test of the
//! `starling` package (`cargo test -p starling --test bench_smoke`).

use std::path::Path;
use std::time::Duration;

use crate::broker::{BrokerKind, BrokerProcess, Limits};
use crate::compare::parse_row;
use crate::scenario::run_blocking;
use crate::stats::Summary;
use crate::sys;
use crate::BenchError;

/// The smoke rows: scenario command lines, each a few thousand messages at most. The run-ahead
/// bound is 500, half of the broker's queue limit: the smoke run checks the harness and loss-free
/// delivery, not the broker's behaviour at its limits (the comparison's rows do that, at 1000).
pub const SMOKE_ROWS: &[&str] = &[
    "fan-in --qos 0 --publishers 2 --messages 4000",
    "fan-in --qos 1 --publishers 2 --messages 4000",
    "fan-in --qos 2 --publishers 2 --messages 2000",
    "fan-out --qos 1 --subscribers 4 --messages 1000",
    "p2p --qos 1 --pairs 4 --rate 500 --messages 2000",
    "connections --connections 200 --settle 0.2 --hold 0.5",
    "qos2 --publishers 2 --messages 2000 --reconnects 2",
];

/// Runs every smoke row against a Starling started from `starling` (in memory, on a free
/// port); returns the summaries.
///
/// # Errors
/// [`BenchError::Broker`] if Starling does not start or dies, [`BenchError::Check`] listing
/// every run that lost messages, duplicated at QoS 2, failed or timed out.
pub fn run(starling: &Path) -> Result<Vec<Summary>, BenchError> {
    sys::raise_nofile_limit();
    let broker = BrokerProcess::start(
        BrokerKind::Starling,
        starling,
        Limits::default(),
        Duration::from_secs(30),
    )?;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for row in SMOKE_ROWS {
        let command: Vec<String> =
            format!("{row} --max-ahead 500 --timeout 30 --drain-idle 2 --threads 2")
                .split_whitespace()
                .map(String::from)
                .collect();
        let (scenario, mut args) = parse_row(&command)?;
        args.port = broker.port();
        args.pid = Some(broker.pid());
        args.label = "starling".into();
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
    if let Some(died) = broker.stop() {
        failures.push(died);
    }
    if failures.is_empty() {
        Ok(out)
    } else {
        Err(BenchError::Check(failures.join("\n")))
    }
}
