//! `connections`: open C idle connections, measure the connect rate and the broker's memory per
//! connection, hold them, and check none was dropped.
//!
//! ```text
//! RSS before ─▶ K connector tasks (--connect-concurrency), each: TCP connect from
//!               127.0.0.(1 + i mod N) ─▶ CONNECT (keep-alive --keep-alive) ─▶ CONNACK
//!               ─▶ hand the connection to its own holder task (waits for EOF or release)
//!           ─▶ connect rate ─▶ settle ─▶ RSS after ─▶ hold ─▶ release (DISCONNECT)
//! ```
//!
//! One process needs one descriptor per connection: the soft `RLIMIT_NOFILE` is raised to the
//! hard limit at start and the run refuses to start if C does not fit. One source address has
//! about 28k ephemeral ports (32768–60999), so past 25k connections several loopback source
//! addresses are used.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout_at, Instant};

use super::{loopback, record_error, Ctx, RunArgs};
use crate::mqtt::Conn;
use crate::stats::{ConnectionStats, Latency, Summary};
use crate::sys;
use crate::BenchError;

/// Connections per source address before another is used.
const PER_SOURCE: usize = 25_000;

/// Descriptors kept free for everything else.
const SPARE_FDS: u64 = 64;

/// Read buffer of an idle connection.
const IDLE_READ_CHUNK: usize = 256;

/// Counters shared by connector and holder tasks.
#[derive(Debug, Default)]
struct Shared {
    established: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    first_error: Mutex<Option<String>>,
    latency: Mutex<Latency>,
}

/// Runs the `connections` scenario.
pub(crate) async fn run(args: RunArgs, s: &mut Summary) {
    let ctx = Arc::new(Ctx::new(args, 0));
    let a = &ctx.args;
    s.run_id = format!("{:016x}", ctx.run_id);
    let c = a.connections;
    let limit = sys::nofile_limit().0;
    if c as u64 + SPARE_FDS > limit {
        let e = BenchError::Options(format!(
            "{c} connections need {} file descriptors; RLIMIT_NOFILE is {limit} \
             (the hard limit cannot be raised without privileges)",
            c as u64 + SPARE_FDS
        ));
        return record_error(s, &e);
    }
    let sources = a
        .source_ips
        .map_or(c.div_ceil(PER_SOURCE), usize::from)
        .max(1);
    let mut st = ConnectionStats {
        requested: c as u64,
        source_addresses: sources as u32,
        rss_before_kb: a.pid.and_then(sys::rss_kb),
        ..ConnectionStats::default()
    };
    eprintln!(
        "[{}] connections: {c} from {sources} source address(es), {} at a time, nofile {limit}",
        a.label, a.connect_concurrency
    );
    let shared = Arc::new(Shared {
        latency: Mutex::new(Latency::new()),
        ..Shared::default()
    });
    let (release_tx, release_rx) = watch::channel(false);
    let holders = Arc::new(Mutex::new(JoinSet::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut connectors = JoinSet::new();
    for _ in 0..a.connect_concurrency.clamp(1, c) {
        let (ctx, shared, next, holders, release) = (
            ctx.clone(),
            shared.clone(),
            next.clone(),
            holders.clone(),
            release_rx.clone(),
        );
        connectors.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= c {
                    return;
                }
                let bind = (sources > 1).then(|| loopback((i % sources) as u32));
                let t = Instant::now();
                match open_idle(&ctx, bind, i).await {
                    Ok(conn) => {
                        shared.established.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = shared.latency.lock() {
                            l.record_ns(t.elapsed().as_nanos() as u64);
                        }
                        let (shared, release, ctx) = (shared.clone(), release.clone(), ctx.clone());
                        if let Ok(mut h) = holders.lock() {
                            h.spawn(hold(ctx, conn, shared, release));
                        }
                    }
                    Err(e) => {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut f) = shared.first_error.lock() {
                            f.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
            }
        });
    }
    while connectors.join_next().await.is_some() {}
    let connect_secs = start.elapsed().as_secs_f64();
    st.established = shared.established.load(Ordering::Relaxed);
    st.failed = shared.failed.load(Ordering::Relaxed);
    st.connect_rate_per_s = st.established as f64 / connect_secs.max(1e-9);
    eprintln!(
        "[{}]   {} established, {} failed in {connect_secs:.2}s ({:.0}/s)",
        a.label, st.established, st.failed, st.connect_rate_per_s
    );
    let remaining = ctx.deadline.saturating_duration_since(Instant::now());
    sleep(Duration::from_secs_f64(a.settle).min(remaining)).await;
    st.rss_after_kb = a.pid.and_then(sys::rss_kb);
    if let (Some(b), Some(af), true) = (st.rss_before_kb, st.rss_after_kb, st.established > 0) {
        st.bytes_per_connection = Some((af as f64 - b as f64) * 1024.0 / st.established as f64);
    }
    let remaining = ctx.deadline.saturating_duration_since(Instant::now());
    sleep(Duration::from_secs_f64(a.hold).min(remaining)).await;
    st.dropped = shared.dropped.load(Ordering::Relaxed);
    let _ = release_tx.send(true);
    let mut set = std::mem::take(&mut *holders.lock().unwrap_or_else(|p| p.into_inner()));
    let _ = timeout_at(ctx.deadline, async {
        while set.join_next().await.is_some() {}
    })
    .await;
    set.abort_all();
    st.connect_latency_us = shared.latency.lock().ok().and_then(|l| l.summary());
    st.first_error = shared.first_error.lock().ok().and_then(|f| f.clone());
    s.duration_s = connect_secs;
    if st.failed > 0 {
        record_error(
            s,
            &BenchError::Protocol(format!(
                "{} connections failed; first: {}",
                st.failed,
                st.first_error.as_deref().unwrap_or("?")
            )),
        );
    }
    if st.dropped > 0 {
        record_error(
            s,
            &BenchError::Closed(format!("{} idle connections dropped", st.dropped)),
        );
    }
    s.connections = Some(st);
}

/// Opens one idle connection (small buffers).
async fn open_idle(
    ctx: &Ctx,
    bind: Option<std::net::IpAddr>,
    i: usize,
) -> Result<Conn, BenchError> {
    let a = &ctx.args;
    let mut conn = Conn::open(a.addr(), bind, ctx.deadline).await?;
    conn.set_read_chunk(IDLE_READ_CHUNK);
    conn.handshake(&ctx.client_id("c", i), true, a.keep_alive, ctx.deadline)
        .await?;
    Ok(conn)
}

/// Holds one connection until release; counts it dropped if the broker closes it first.
async fn hold(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    shared: Arc<Shared>,
    mut release: watch::Receiver<bool>,
) {
    loop {
        if *release.borrow() {
            conn.disconnect(ctx.deadline).await;
            return;
        }
        tokio::select! {
            res = conn.read_some() => {
                // An idle client gets nothing; any packet is ignored, EOF or error is a drop.
                if res.is_err() {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                while let Ok(Some(_)) = conn.next_packet() {}
            }
            res = release.changed() => {
                if res.is_err() {
                    return;
                }
            }
        }
    }
}
