//! Runs one seed and prints its report: `cargo run -p starling-sim --release --example one --
//! SEED` (with `--features mutations` and `MUTATION=NoRouteRebuild|...`, a broken variant;
//! with `NO_DERIVED=1`, without the derived-index checks).

fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    #[cfg(feature = "mutations")]
    if let Ok(m) = std::env::var("MUTATION") {
        use starling_sim::mutations::{set, ALL};
        for x in ALL {
            if format!("{x:?}") == m {
                set(x, true);
            }
        }
    }
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let mut opts = starling_sim::Options::new(seed);
    opts.derived_checks = std::env::var_os("NO_DERIVED").is_none();
    let t = std::time::Instant::now();
    let r = starling_sim::run(opts);
    println!(
        "seed {seed}: {} violations, {} steps, {} ms simulated, {:?}",
        r.violations.len(),
        r.steps,
        r.sim_ms,
        t.elapsed()
    );
    println!("coverage {:?}", r.coverage);
    println!("faults {:#?}", r.faults);
    println!("messages {} operations {}", r.messages, r.operations);
    for v in r.violations.iter().take(30) {
        println!("VIOLATION {v}");
    }
    if std::env::var_os("HISTORY").is_some() {
        println!("{}", r.history);
    }
}
