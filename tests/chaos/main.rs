//! Jepsen-style chaos tests on the three-node docker-compose cluster (`docs/chaos.md`).
//!
//! The FROM-scratch image (`deploy/docker/build.sh`) runs as the compose project
//! `starling-chaos` (`deploy/compose/docker-compose.yml` with `tests/chaos/compose.chaos.yml`
//! over it: a snapshot every 500 entries, so that lagging nodes catch up by snapshot; ports on
//! loopback). Persistent-session strict clients ([`starling_testkit::StrictClient`]) publish
//! sequence-numbered QoS 1 and QoS 2 messages and subscribe, and clean-session ones subscribe,
//! spread over the nodes, each failing over through the node list ([`workload`]), while Docker
//! kills, stops, isolates and pauses nodes and the admin endpoint changes a replicated limit
//! ([`faults`]): a random node, the leader, a publisher's node, a subscriber's node, a node in
//! the middle of a QoS 2 flow (between PUBREC and PUBREL, between PUBREL and PUBCOMP), the
//! leader or a follower cut off the network, a node paused past the election timeout, every
//! node at once, a graceful restart (SIGTERM) of a node or of the leader, `max_inflight`
//! changed. Then [`verdict`] checks the recorded history: QoS 2 exactly once, QoS 1 at least
//! once, per-publisher order per topic, the clean subscribers' rule per connection, retained
//! messages equal on every node, every acknowledged subscription still delivering, no session
//! lost, replicas converged, and at least one snapshot installed.
//!
//! Runs only with `STARLING_RUN_DOCKER_TESTS=1` (`tests/chaos/run.sh` sets it); prints SKIPPED
//! otherwise. The checker's own tests always run.
//!
//! | Variable | Default | |
//! |---|---|---|
//! | `STARLING_CHAOS_SECS` | 300 | length of the fault phase |
//! | `STARLING_CHAOS_FAULTS` | 30 | fewest faults (the phase runs on until there were this many) |
//! | `STARLING_CHAOS_RATE` | 20 | messages a second per publisher (three publishers) |
//! | `STARLING_TEST_SEED` | clock | replays a run's choices (printed at the start) |
//! | `STARLING_CHAOS_HISTORY` | `<target>/chaos/history-<seed>.jsonl` | where the history goes |
//! | `STARLING_CHAOS_IMAGE` | `starling:chaos` | the image (built if missing) |

// The failover suite's per-subscriber checker.
#[path = "../failover/check.rs"]
#[allow(dead_code)]
mod check;
mod compose;
mod faults;
mod verdict;
mod workload;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use starling_codec::QoS;
use starling_testkit::StrictClient;

use crate::check::{ledger_from_history, parse_payload};
use crate::compose::{say, service, Cluster, NODES};
use crate::faults::{blocking, Chaos, Kind, Rng, ALL};
use crate::verdict::{CleanView, Report, SubscriberView};
use crate::workload::Workload;

const GATE: &str = "STARLING_RUN_DOCKER_TESTS";
/// From `compose up` to `/readyz` 200 on every node.
const START: Duration = Duration::from_secs(180);
/// For the publishers to complete what they hold once the faults are over.
const DRAIN: Duration = Duration::from_secs(180);
/// For the subscribers to receive everything acknowledged, for probes and retained messages.
const DELIVER: Duration = Duration::from_secs(120);
/// What each node logs as it installs a snapshot sent by the leader.
const SNAPSHOT_INSTALLED: &str = "installing snapshot from the leader";

fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `<target dir>/chaos`, from the test binary's path (`<target>/<profile>/deps/chaos-*`).
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(PathBuf::from))
        .unwrap_or_else(std::env::temp_dir)
        .join("chaos")
}

/// Polls `cond` every 200 ms until it holds or `timeout` passes; returns whether it held.
async fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn docker_timestamps_are_read() {
    assert_eq!(unix_secs("1970-01-01T00:00:01.5Z"), Some(1.5));
    let t = unix_secs("2026-12-07T18:21:58.279590123Z").expect("a time");
    assert!((t - 1_796_667_718.279_59).abs() < 1e-3, "{t}");
    assert_eq!(unix_secs("2026-12-07 18:21:58"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_the_compose_cluster() {
    if std::env::var(GATE).as_deref() != Ok("1") {
        say(&format!(
            "SKIPPED chaos_on_the_compose_cluster: set {GATE}=1 (or run tests/chaos/run.sh) to \
             run the chaos test on the compose cluster (needs a Docker engine)"
        ));
        return;
    }
    let secs = Duration::from_secs(env_u64("STARLING_CHAOS_SECS", 300));
    let min_faults = env_u64("STARLING_CHAOS_FAULTS", 30) as usize;
    let rate = env_u64("STARLING_CHAOS_RATE", 20) as f64;
    let seed = env_u64(
        "STARLING_TEST_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    );
    say(&format!(
        "STARLING_TEST_SEED={seed} STARLING_CHAOS_SECS={} STARLING_CHAOS_FAULTS={min_faults} \
         STARLING_CHAOS_RATE={rate}",
        secs.as_secs()
    ));
    let mut rng = Rng::from_seed(seed);
    let image = std::env::var("STARLING_CHAOS_IMAGE").unwrap_or_else(|_| "starling:chaos".into());
    blocking(|| compose::ensure_image(&image));

    let t0 = Instant::now();
    let c = blocking(|| Cluster::start(&image, START));
    say(&format!(
        "cluster up: /readyz 200 on every node {:.1}s after compose up; {}",
        t0.elapsed().as_secs_f64(),
        c.describe().replace('\n', "; ")
    ));

    let start = Instant::now();
    // The nodes' logs are dated by the wall clock; the history by `start`.
    let started_at = std::time::SystemTime::now();
    let mut w = Workload::start(&c, rate).await;
    let flowing = poll(Duration::from_secs(60), || {
        w.subscribers.iter().all(|(s, _)| s.delivered() >= 20)
    })
    .await;
    assert!(flowing, "no traffic: {:?}", w.fatal());

    // ---- faults
    let mut chaos = Chaos::new(&c, &w, Rng::from_seed(rng.range(1, u64::MAX - 1)), start);
    let chaos_start = Instant::now();
    let mut order: Vec<Kind> = Vec::new();
    let mut retries: BTreeMap<Kind, u32> = BTreeMap::new();
    while chaos_start.elapsed() < secs || chaos.log.len() < min_faults {
        if order.is_empty() {
            order = faults::round(&mut rng);
        }
        let kind = order.pop().expect("a kind");
        chaos.gap().await;
        if let Some(f) = w.fatal() {
            panic!("a client gave up: {f}");
        }
        if chaos.inject(kind).await.is_none() {
            // An aim that missed its stage is tried again (a few times) later in the round.
            let n = retries.entry(kind).or_default();
            *n += 1;
            if *n <= 5 {
                order.insert(0, kind);
            }
        }
    }
    let chaos_took = chaos_start.elapsed();
    let faults = std::mem::take(&mut chaos.log);
    let missed_aims = chaos.missed_aims;
    drop(chaos);
    say(&format!(
        "{} faults in {:.0}s; draining",
        faults.len(),
        chaos_took.as_secs_f64()
    ));

    // ---- drain: everything handed out completes and arrives
    blocking(|| c.heal_everything());
    blocking(|| c.wait_all_ready(START)).unwrap_or_else(|e| panic!("after the faults: {e}"));
    w.stop_feeding().await;
    for p in w.clients() {
        p.wait_idle(DRAIN)
            .await
            .unwrap_or_else(|e| panic!("draining: {e}\n{}", c.describe()));
    }
    let mut ledger = Vec::new();
    for p in &w.publishers {
        ledger.extend(ledger_from_history(&p.history()));
    }
    let want: HashSet<(String, u64)> = ledger
        .iter()
        .filter(|p| p.completed)
        .map(|p| (p.publisher.clone(), p.seq))
        .collect();
    for (s, _) in &w.subscribers {
        let all = poll(DELIVER, || {
            let got: HashSet<(String, u64)> = s
                .deliveries()
                .iter()
                .filter_map(|d| parse_payload(&d.payload))
                .collect();
            want.is_subset(&got)
        })
        .await;
        if !all {
            say(&format!(
                "{}: not everything acknowledged arrived within {DELIVER:?}",
                s.client_id()
            ));
        }
        let done = poll(DELIVER, || s.inbound_awaiting().is_empty()).await;
        assert!(
            done,
            "{} still awaits PUBREL for {:?}",
            s.client_id(),
            s.inbound_awaiting()
        );
    }

    // The clean subscribers' open connections: what they owe arrives.
    let timings = verdict::timings(
        w.publishers
            .iter()
            .map(|p| p.history())
            .collect::<Vec<_>>()
            .iter()
            .map(Vec::as_slice),
    );
    // Whole histories for the verdict; while waiting, only the current connections (the only
    // ones that can still receive anything), which is cheaper to copy.
    let clean_views = |whole: bool| -> Vec<CleanView> {
        w.clean
            .iter()
            .map(|(s, q)| CleanView {
                client: s.client_id().to_string(),
                qos: *q,
                history: if whole {
                    s.history()
                } else {
                    s.connection_history()
                },
            })
            .collect()
    };
    let name = |a: SocketAddr| {
        c.node_of(a)
            .map_or(a.to_string(), |i| format!("node {}", i + 1))
    };
    if !poll(DELIVER, || {
        verdict::check_clean(start, &name, &ledger, &timings, &clean_views(false)).lost_open == 0
    })
    .await
    {
        say(&format!(
            "clean subscribers: not everything owed arrived within {DELIVER:?}"
        ));
    }

    // ---- acknowledged subscriptions: one probe each
    let acked = w
        .acked_subscriptions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (client, topic) in &acked {
        drop(
            w.retainer
                .publish_nowait(topic, format!("probe/{client}"), QoS::AtLeastOnce, false),
        );
    }
    w.retainer
        .wait_idle(DRAIN)
        .await
        .unwrap_or_else(|e| panic!("probes: {e}"));
    let probed = poll(DELIVER, || {
        acked.iter().all(|(client, topic)| {
            w.subscribers
                .iter()
                .find(|(s, _)| s.client_id() == client)
                .is_some_and(|(s, _)| s.deliveries().iter().any(|d| d.topic == *topic))
        })
    })
    .await;
    if !probed {
        say("not every probe arrived");
    }

    // ---- replicas and retained messages
    let converged = {
        let c = &c;
        poll(Duration::from_secs(60), move || {
            blocking(|| c.converged()).is_some()
        })
        .await
    };
    let replicas = blocking(|| c.converged());
    let mut expected_retained: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for p in ledger_from_history(&w.retainer.history()) {
        if p.completed && p.topic.starts_with("chaosret/") {
            let e = expected_retained
                .entry(p.topic.clone())
                .or_insert((0, String::new()));
            if p.seq > e.0 {
                *e = (p.seq, format!("{}/{}", p.publisher, p.seq));
            }
        }
    }
    let expected_retained: BTreeMap<String, String> = expected_retained
        .into_iter()
        .map(|(t, (_, p))| (t, p))
        .collect();
    let mut retained_per_node = Vec::new();
    for i in 0..NODES {
        retained_per_node.push((
            format!("node {}", i + 1),
            retained_on(&c, i, expected_retained.len()).await,
        ));
    }

    // ---- the verdict
    let subs: Vec<SubscriberView> = w
        .subscribers
        .iter()
        .map(|(s, q)| SubscriberView {
            client: s.client_id().to_string(),
            qos: *q,
            deliveries: s.deliveries(),
            history: s.history(),
        })
        .collect();
    let mut report = verdict::check_messages(&ledger, &subs);
    for p in w.publishers.iter().chain([&w.retainer]) {
        report
            .sessions_lost
            .extend(verdict::sessions_lost(p.client_id(), &p.history()));
    }
    report.clean = verdict::check_clean(start, &name, &ledger, &timings, &clean_views(true));
    report.retained = verdict::check_retained(&expected_retained, &retained_per_node);
    let by_client: BTreeMap<String, Vec<starling_testkit::strict::Delivery>> = subs
        .iter()
        .map(|s| (s.client.clone(), s.deliveries.clone()))
        .collect();
    report.subscriptions_lost = verdict::check_subscriptions(&acked, &by_client);
    if !converged {
        report.replicas.push(format!(
            "no common applied index and digest within 60 s:\n{}",
            c.describe()
        ));
    }

    let history = write_history(seed, (start, started_at), &w.clients(), &faults);
    let (events, logs) = node_logs(&c, seed, &history, started_at);
    let snapshots: Vec<usize> = events.iter().map(|e| e.installed.len()).collect();
    let failovers: Vec<(Instant, Duration)> = w
        .clients()
        .iter()
        .flat_map(|cl| verdict::failover_times(&cl.history()))
        .collect();
    summary(&Summary {
        seed,
        chaos_took,
        report: &report,
        ledger: &ledger,
        faults: &faults,
        missed_aims,
        retained_topics: expected_retained.len(),
        acked_subscriptions: acked.len(),
        replicas: replicas.as_ref(),
        failovers: &failovers,
        snapshots: &snapshots,
        events: &events,
        cluster: &c,
        history: &history,
        logs: &logs,
    });

    // Everything that fails the run, at once.
    let mut problems = report.problems();
    let failed: Vec<String> = faults
        .iter()
        .filter_map(|f| {
            f.failure.as_ref().map(|e| {
                format!(
                    "{} at +{:.1}s: {e}",
                    f.kind.name(),
                    (f.at - start).as_secs_f64()
                )
            })
        })
        .collect();
    if !failed.is_empty() {
        problems.push(format!(
            "faults that failed: {} (first: {:?})",
            failed.len(),
            &failed[..failed.len().min(5)]
        ));
    }
    if snapshots.iter().sum::<usize>() == 0 {
        problems.push(format!(
            "no node installed a snapshot ({SNAPSHOT_INSTALLED:?} never logged): the run did \
             not test catch-up by snapshot"
        ));
    }
    let kinds: HashSet<Kind> = faults.iter().map(|f| f.kind).collect();
    let missing: Vec<&str> = ALL
        .iter()
        .filter(|k| !kinds.contains(k))
        .map(|k| k.name())
        .collect();
    if faults.len() >= ALL.len() && !missing.is_empty() {
        problems.push(format!("fault kinds never injected: {missing:?}"));
    }
    if faults.len() < min_faults {
        problems.push(format!("{} faults, fewer than {min_faults}", faults.len()));
    }
    if report.completed < 100 {
        problems.push(format!(
            "too little traffic: {} messages acknowledged",
            report.completed
        ));
    }
    assert!(
        problems.is_empty(),
        "chaos (seed {seed}): {}\nhistory: {}",
        problems.join("\n"),
        history.display()
    );
    drop(w);
    drop(c);
}

/// What a node's log says happened to it, in seconds since the start of the workload.
#[derive(Debug, Default)]
struct NodeEvents {
    /// The process started (first start included).
    started: Vec<f64>,
    /// A snapshot from the leader was installed.
    installed: Vec<f64>,
}

/// Saves every node's log (`nodes-<seed>/starling-N.log` beside the history, Docker's
/// timestamps in front) and reads from it, per node, when the process started and when it
/// installed a snapshot from the leader.
fn node_logs(
    c: &Cluster,
    seed: u64,
    history: &std::path::Path,
    started_at: std::time::SystemTime,
) -> (Vec<NodeEvents>, PathBuf) {
    let dir = history
        .parent()
        .map_or_else(target_dir, PathBuf::from)
        .join(format!("nodes-{seed}"));
    let _ = std::fs::create_dir_all(&dir);
    let origin = started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut events = Vec::new();
    for i in 0..NODES {
        let log = blocking(|| c.logs(i));
        let mut e = NodeEvents::default();
        for line in log.lines() {
            let at = || {
                line.split_whitespace()
                    .next()
                    .and_then(unix_secs)
                    .map_or(f64::NAN, |t| t - origin)
            };
            if line.contains(SNAPSHOT_INSTALLED) {
                e.installed.push(at());
            } else if line.contains(NODE_STARTED) && line.trim_end().ends_with(" starting") {
                e.started.push(at());
            }
        }
        events.push(e);
        let _ = std::fs::write(dir.join(format!("{}.log", service(i))), log);
    }
    (events, dir)
}

/// What each node logs as its process starts (`starling version 0.1.0 starting`), and stops.
const NODE_STARTED: &str = "starling version ";

/// Seconds since the Unix epoch of an RFC 3339 UTC time as `docker logs -t` writes it
/// (`2026-12-07T18:21:58.279590123Z`).
fn unix_secs(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// The retained messages a new clean session on node `i` receives for `chaosret/#`: topic →
/// payload. Waits until `want` topics arrived (or the deadline).
async fn retained_on(c: &Cluster, i: usize, want: usize) -> BTreeMap<String, String> {
    let mut cfg = workload::config(c, &format!("chaos-retained-check-{i}"), 1);
    cfg.nodes = vec![c.mqtt_addr(i)];
    cfg.clean_session = true;
    cfg.failover_deadline = Duration::from_secs(30);
    let Ok(cl) = StrictClient::connect(cfg).await else {
        return BTreeMap::new();
    };
    if cl
        .subscribe(&[("chaosret/#", QoS::AtLeastOnce)], Duration::from_secs(30))
        .await
        .is_err()
    {
        return BTreeMap::new();
    }
    let cl = Arc::new(cl);
    let got = |cl: &StrictClient| -> BTreeMap<String, String> {
        cl.deliveries()
            .iter()
            .filter(|d| d.retain)
            .map(|d| {
                (
                    d.topic.clone(),
                    String::from_utf8_lossy(&d.payload).into_owned(),
                )
            })
            .collect()
    };
    poll(DELIVER, || got(&cl).len() >= want).await;
    got(&cl)
}

/// Every client's history and the faults, as JSON lines ordered by time; the first line gives
/// the wall-clock time of `t` = 0, to read the history beside the nodes' logs.
fn write_history(
    seed: u64,
    (start, started_at): (Instant, std::time::SystemTime),
    clients: &[Arc<StrictClient>],
    faults: &[faults::Injected],
) -> PathBuf {
    let path = std::env::var("STARLING_CHAOS_HISTORY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir().join(format!("history-{seed}.jsonl")));
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut lines: Vec<(f64, String)> = vec![(
        0.0,
        serde_json::json!({
            "t": 0.0,
            "ev": "start",
            "seed": seed,
            "unix_s": started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })
        .to_string(),
    )];
    for cl in clients {
        for r in cl.history() {
            let v = verdict::record_json(start, cl.client_id(), &r);
            lines.push((verdict::secs(start, r.at), v.to_string()));
        }
    }
    for f in faults {
        let v = serde_json::json!({
            "t": verdict::secs(start, f.at),
            "ev": "fault",
            "kind": f.kind.name(),
            "nodes": f.nodes.iter().map(|n| n + 1).collect::<Vec<_>>(),
            "detail": f.detail,
            "healed_t": verdict::secs(start, f.healed),
            "recovered_s": f.recovered.as_secs_f64(),
            "failure": f.failure,
        });
        lines.push((verdict::secs(start, f.at), v.to_string()));
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    let file = std::fs::File::create(&path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    let mut out = std::io::BufWriter::new(file);
    for (_, l) in &lines {
        writeln!(out, "{l}").expect("history written");
    }
    out.flush().expect("history written");
    path
}

struct Summary<'a> {
    seed: u64,
    chaos_took: Duration,
    report: &'a Report,
    ledger: &'a [check::Published],
    faults: &'a [faults::Injected],
    missed_aims: usize,
    retained_topics: usize,
    acked_subscriptions: usize,
    replicas: Option<&'a (u64, String)>,
    /// Every client failover: when the connection was lost, and how long to the next CONNACK 0.
    failovers: &'a [(Instant, Duration)],
    /// Snapshots installed, per node.
    snapshots: &'a [usize],
    /// Restarts and snapshot installs, per node.
    events: &'a [NodeEvents],
    /// To name the nodes.
    cluster: &'a Cluster,
    history: &'a PathBuf,
    logs: &'a PathBuf,
}

fn summary(s: &Summary<'_>) {
    let r = s.report;
    let by_qos = |q: QoS| s.ledger.iter().filter(|p| p.qos == q).count();
    let resent = s.ledger.iter().filter(|p| p.writes > 1).count();
    let mut kinds: BTreeMap<&str, usize> = ALL.iter().map(|k| (k.name(), 0)).collect();
    for f in s.faults {
        *kinds.entry(f.kind.name()).or_default() += 1;
    }
    let lines = [
        format!(
            "===== chaos summary (seed {}, {:.0}s of faults) =====",
            s.seed,
            s.chaos_took.as_secs_f64()
        ),
        format!(
            "messages: {} published (QoS 1: {}, QoS 2: {}; {} written more than once), {} \
             acknowledged; deliveries: {} expected, {} seen ({} QoS 1 redeliveries)",
            r.published,
            by_qos(QoS::AtLeastOnce),
            by_qos(QoS::ExactlyOnce),
            resent,
            r.completed,
            r.expected,
            r.deliveries,
            r.qos1_redeliveries
        ),
        format!(
            "faults: {} ({}); aims at a QoS 2 stage that missed: {}",
            s.faults.len(),
            kinds
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            s.missed_aims
        ),
        format!(
            "lost: {}, duplicated: {}, reordered: {} (out of order after a publisher's resend, \
             allowed: {}), unknown: {}",
            r.lost.len(),
            r.duplicated.len(),
            r.reordered.len(),
            r.explained_reorders,
            r.unknown.len()
        ),
        format!(
            "retained: {} topics checked on {NODES} nodes, {} differences; subscriptions: {} \
             acknowledged, {} lost; sessions lost: {}; replicas: {}",
            s.retained_topics,
            r.retained.len(),
            s.acked_subscriptions,
            r.subscriptions_lost.len(),
            r.sessions_lost.len(),
            match s.replicas {
                Some((i, d)) => format!("converged at applied index {i}, digest {d}"),
                None => "NOT converged".into(),
            }
        ),
        format!(
            "lost (clean): {} of {} owed on {} clean connections ({} published through another \
             node than the subscriber's); duplicated (clean, QoS 2 within a connection): {}, \
             reordered (clean): {} (allowed: {}), unknown (clean): {}; {} deliveries, {} QoS 1 \
             repeats",
            r.clean.lost.len(),
            r.clean.owed,
            r.clean.windows,
            r.clean.crossed,
            r.clean.duplicated.len(),
            r.clean.reordered.len(),
            r.clean.explained_reorders,
            r.clean.unknown.len(),
            r.clean.deliveries,
            r.clean.qos1_redeliveries
        ),
        format!(
            "snapshots installed: {} (per node: {})",
            s.snapshots.iter().sum::<usize>(),
            s.snapshots
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        format!(
            "failover time (client lost its connection -> next CONNACK 0): {}",
            verdict::percentiles(&mut s.failovers.iter().map(|(_, d)| *d).collect::<Vec<_>>())
        ),
        format!(
            "recovery time (fault healed -> /readyz 200 on every node): {}",
            verdict::percentiles(&mut s.faults.iter().map(|f| f.recovered).collect::<Vec<_>>())
        ),
    ];
    for l in lines {
        say(&l);
    }
    for ((connection, through), g) in &r.clean.lost_by_route {
        let node = through.and_then(|a| s.cluster.node_of(a));
        // What happened to the node they went through since the subscription: a restart or a
        // snapshot installed (the routes it holds are derived from what it applied).
        let events = node.map_or(String::new(), |i| {
            let e = &s.events[i];
            let since = |v: &[f64]| -> Vec<String> {
                v.iter()
                    .filter(|t| **t >= g.subacked && **t <= g.written.1)
                    .map(|t| format!("+{t:.1}s"))
                    .collect()
            };
            format!(
                "; since the SUBACK at +{:.1}s node {} started at {:?}, installed a snapshot at \
                 {:?}",
                g.subacked,
                i + 1,
                since(&e.started),
                since(&e.installed)
            )
        });
        say(&format!(
            "  lost (clean) on {connection}: {} published through {} between +{:.3}s and \
             +{:.3}s{events}",
            g.count,
            node.map_or("?".to_string(), |i| format!("node {}", i + 1)),
            g.written.0,
            g.written.1
        ));
    }
    say("per fault kind (failovers are filed under the fault active, or last injected, when the connection was lost):");
    let injected: Vec<(Instant, &str)> = s.faults.iter().map(|f| (f.at, f.kind.name())).collect();
    let failovers = verdict::by_fault(s.failovers, &injected);
    let mut kinds: Vec<&str> = vec![verdict::BEFORE_FAULTS];
    kinds.extend(ALL.iter().map(|k| k.name()));
    for kind in kinds {
        let recoveries: Vec<Duration> = s
            .faults
            .iter()
            .filter(|f| f.kind.name() == kind)
            .map(|f| f.recovered)
            .collect();
        let mut fo = failovers.get(kind).cloned().unwrap_or_default();
        if fo.is_empty() && recoveries.is_empty() {
            continue;
        }
        say(&format!(
            "  {kind:<28} failover {:<44} recovery {}",
            verdict::percentiles(&mut fo),
            verdict::percentiles(&mut recoveries.clone())
        ));
    }
    say(&format!("history (JSON lines): {}", s.history.display()));
    say(&format!("node logs: {}", s.logs.display()));
}
