//! Running many seeds: on every core, until a number of seeds or a time budget is reached, with
//! totals of what the runs exercised (what CI prints and checks).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::node::Coverage;
use crate::world::{Options, Report};

/// How a search runs.
#[derive(Clone, Debug)]
pub struct Search {
    /// First seed.
    pub first: u64,
    /// Most seeds (`None`: as many as the time budget allows).
    pub seeds: Option<u64>,
    /// Time budget.
    pub budget: Option<Duration>,
    /// Threads.
    pub threads: usize,
    /// Stop at the first failing seed.
    pub stop_at_failure: bool,
    /// The options of every run (its seed aside).
    pub options: Options,
}

impl Search {
    /// `seeds` seeds from `first`, on every core.
    pub fn new(first: u64, seeds: u64) -> Search {
        Search {
            first,
            seeds: Some(seeds),
            budget: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_at_failure: false,
            options: Options::new(first),
        }
    }

    /// Reads `STARLING_SIM_SEEDS`, `STARLING_SIM_SECS`, `STARLING_SIM_FIRST_SEED` and
    /// `STARLING_SIM_THREADS` over `self`.
    pub fn from_env(mut self) -> Search {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = var("STARLING_SIM_SEEDS") {
            self.seeds = Some(n);
        }
        if let Some(secs) = var("STARLING_SIM_SECS") {
            self.budget = Some(Duration::from_secs(secs));
            if var("STARLING_SIM_SEEDS").is_none() {
                self.seeds = None;
            }
        }
        if let Some(f) = var("STARLING_SIM_FIRST_SEED") {
            self.first = f;
        }
        if let Some(t) = var("STARLING_SIM_THREADS") {
            self.threads = t.max(1) as usize;
        }
        self
    }

    /// Runs the seeds.
    pub fn run(&self) -> Summary {
        let next = AtomicU64::new(self.first);
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let results: Mutex<Vec<Report>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..self.threads.max(1) {
                scope.spawn(|| loop {
                    if stop.load(Ordering::Relaxed)
                        || self.budget.is_some_and(|b| started.elapsed() >= b)
                    {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if self.seeds.is_some_and(|n| seed >= self.first + n) {
                        return;
                    }
                    let mut opts = self.options.clone();
                    opts.seed = seed;
                    let report = crate::run(opts);
                    if !report.passed() && self.stop_at_failure {
                        stop.store(true, Ordering::Relaxed);
                    }
                    results
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(report);
                });
            }
        });
        let mut reports = results.into_inner().unwrap_or_else(|e| e.into_inner());
        reports.sort_by_key(|r| r.seed);
        Summary::of(reports, started.elapsed())
    }
}

/// What a search found.
#[derive(Debug)]
pub struct Summary {
    /// Seeds run.
    pub seeds: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The failing runs, by seed.
    pub failures: Vec<Report>,
    /// Totals over all runs.
    pub coverage: Coverage,
    /// Fewest faults and messages of a run.
    pub min_faults: u64,
    /// Fewest messages of a run.
    pub min_messages: u64,
    /// Fewest client operations of a run.
    pub min_operations: u64,
    /// Messages over all runs.
    pub messages: u64,
    /// The longest run: (seed, events, simulated ms).
    pub longest: (u64, u64, u64),
    /// Simulated time over all runs, ms.
    pub sim_ms: u64,
}

impl Summary {
    fn of(reports: Vec<Report>, elapsed: Duration) -> Summary {
        let mut c = Coverage::default();
        let mut longest = (0, 0, 0);
        for r in &reports {
            let x = &r.coverage;
            c.snapshots_installed += x.snapshots_installed;
            c.snapshots_taken += x.snapshots_taken;
            c.snapshot_failures += x.snapshot_failures;
            c.crashes += x.crashes;
            c.crashes_mid_qos2 += x.crashes_mid_qos2;
            c.graceful_restarts += x.graceful_restarts;
            c.membership_changes += x.membership_changes;
            c.takeovers += x.takeovers;
            c.partitions += x.partitions;
            c.limit_changes += x.limit_changes;
            c.startup_refusals += x.startup_refusals;
            c.leader_changes += x.leader_changes;
            c.derived_checks += x.derived_checks;
            c.digest_checks += x.digest_checks;
            if r.steps > longest.1 {
                longest = (r.seed, r.steps, r.sim_ms);
            }
        }
        Summary {
            seeds: reports.len() as u64,
            elapsed,
            min_faults: reports
                .iter()
                .map(|r| r.faults.len() as u64)
                .min()
                .unwrap_or(0),
            min_messages: reports.iter().map(|r| r.messages).min().unwrap_or(0),
            min_operations: reports.iter().map(|r| r.operations).min().unwrap_or(0),
            messages: reports.iter().map(|r| r.messages).sum(),
            sim_ms: reports.iter().map(|r| r.sim_ms).sum(),
            longest,
            coverage: c,
            failures: reports.into_iter().filter(|r| !r.passed()).collect(),
        }
    }

    /// Seeds per second of wall time.
    pub fn rate(&self) -> f64 {
        self.seeds as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The coverage counters CI requires to be non-zero, with their names.
    pub fn required_coverage(&self) -> [(&'static str, u64); 7] {
        let c = &self.coverage;
        [
            ("snapshots installed", c.snapshots_installed),
            ("crashes in the middle of a QoS 2 flow", c.crashes_mid_qos2),
            ("membership changes", c.membership_changes),
            ("takeovers", c.takeovers),
            ("graceful restarts", c.graceful_restarts),
            (
                "snapshot transfers failed (and reported)",
                c.snapshot_failures,
            ),
            (
                "restarts without a leader past the startup hold",
                c.startup_refusals,
            ),
        ]
    }

    /// A report for a person.
    pub fn describe(&self) -> String {
        let c = &self.coverage;
        let mut s = format!(
            "{} seeds in {:.1} s ({:.1} seeds/s); {} messages, {:.0} s of simulated time; \
             per seed at least {} faults, {} messages, {} client operations; longest run: seed \
             {} ({} events, {:.1} s simulated)\n",
            self.seeds,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.messages,
            self.sim_ms as f64 / 1000.0,
            self.min_faults,
            self.min_messages,
            self.min_operations,
            self.longest.0,
            self.longest.1,
            self.longest.2 as f64 / 1000.0,
        );
        s.push_str(&format!(
            "coverage: snapshots installed {}, taken {}, transfers failed {}; crashes {} ({} in \
             the middle of a QoS 2 flow); graceful restarts {}; membership changes {}; \
             takeovers {}; partitions {}; limit changes {}; restarts past the startup hold {}; \
             leader changes {}; derived-index checks {}; digest comparisons {}\n",
            c.snapshots_installed,
            c.snapshots_taken,
            c.snapshot_failures,
            c.crashes,
            c.crashes_mid_qos2,
            c.graceful_restarts,
            c.membership_changes,
            c.takeovers,
            c.partitions,
            c.limit_changes,
            c.startup_refusals,
            c.leader_changes,
            c.derived_checks,
            c.digest_checks,
        ));
        for f in &self.failures {
            s.push_str(&format!(
                "FAILED seed {} (replay: STARLING_SIM_SEED={}): {}\n",
                f.seed,
                f.seed,
                f.violations.first().map_or("", String::as_str)
            ));
        }
        s
    }
}
