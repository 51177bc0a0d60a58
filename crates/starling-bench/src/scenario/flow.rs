//! Message flows: `fan-in`, `fan-out` and `p2p`, and the publisher and receiver that `qos2`
//! shares.
//!
//! Publisher loop (one task per connection):
//!
//! ```text
//! ┌▶ drain acks without waiting (PUBACK / PUBREC → PUBREL / PUBCOMP free window slots)
//! │  k = min(batch, window free, due by the schedule, gate.try_reserve)
//! │  encode k PUBLISHes (+ pending PUBRELs) into one buffer ─▶ one write_all
//! └─ nothing to send: wait for the socket, the gate, the next scheduled time, or the deadline
//! ```
//!
//! Receiver (one task per subscriber connection): read a chunk, decode every packet in it, take
//! one timestamp for the chunk, count each PUBLISH by its header, append the acks, write them
//! with one `write_all`, then tell the gate how many new messages arrived.

// #[PerformanceCriticalPath]: the publisher and receiver loops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::encode::{encode_ack, encode_publish};
use starling_codec::{Packet, PacketType, PubAck, PubComp, PubRec, PubRel, QoS};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

use super::pacer::PacerHandle;
use super::{record_error, Ctx, RunArgs, Scenario};
use crate::gate::Gate;
use crate::mqtt::{qos_of, Conn};
use crate::payload::{new_payload, Header};
use crate::stats::{Counts, Latency, Seen, SeqTracker, Summary};
use crate::BenchError;

/// How late the tokio-timer fallback fires after a scheduled send the pacer should wake for.
const TIMER_FALLBACK: Duration = Duration::from_millis(3);

/// What one publisher does.
#[derive(Debug)]
pub(crate) struct PubSpec {
    /// Index of the publisher in the run (carried in the payload header).
    pub(crate) id: u32,
    /// Publishers in the run (spreads the open-loop schedules).
    pub(crate) of: u32,
    pub(crate) topic: String,
    /// Messages to send; `None`: until `--duration` has passed.
    pub(crate) count: Option<u64>,
    pub(crate) qos: QoS,
    pub(crate) gate: Arc<Gate>,
    /// Precise wake-ups for open-loop schedules.
    pub(crate) pacer: Option<PacerHandle>,
}

/// What a publisher did.
#[derive(Debug, Default)]
pub(crate) struct PubResult {
    pub(crate) sent: u64,
    pub(crate) stalls: u64,
    pub(crate) unexpected_acks: u64,
    pub(crate) last_send_ns: u64,
    pub(crate) error: Option<BenchError>,
}

/// Packet ids of one publisher and the QoS stage of each.
struct InFlight {
    /// 0: free; 1: PUBLISH sent; 2: PUBREL sent (QoS 2).
    stage: Vec<u8>,
    next: u16,
    len: u64,
}

impl InFlight {
    fn new() -> InFlight {
        InFlight {
            stage: vec![0; 65536],
            next: 0,
            len: 0,
        }
    }

    /// A free packet id (the window is below 65535, so one exists).
    fn alloc(&mut self) -> u16 {
        loop {
            self.next = if self.next == u16::MAX {
                1
            } else {
                self.next + 1
            };
            if self.stage[self.next as usize] == 0 {
                self.stage[self.next as usize] = 1;
                self.len += 1;
                return self.next;
            }
        }
    }

    fn free(&mut self, id: u16) {
        self.stage[id as usize] = 0;
        self.len -= 1;
    }
}

/// Runs one publisher until its count or duration is done and every message is acknowledged.
pub(crate) async fn publisher(ctx: Arc<Ctx>, mut conn: Conn, spec: PubSpec) -> PubResult {
    let mut r = PubResult::default();
    if let Err(e) = publish_loop(&ctx, &mut conn, &spec, &mut r).await {
        r.error = Some(e);
    }
    ctx.final_sent[spec.id as usize].store(r.sent, Ordering::Release);
    if r.error.is_none() {
        conn.disconnect(ctx.deadline).await;
    }
    r
}

async fn publish_loop(
    ctx: &Ctx,
    conn: &mut Conn,
    spec: &PubSpec,
    r: &mut PubResult,
) -> Result<(), BenchError> {
    let args = &ctx.args;
    let t0 = ctx.t0_ns();
    let period_ns = args.rate.map(|rate| 1e9 / rate);
    let offset_ns = period_ns.map_or(0.0, |p| p * f64::from(spec.id) / f64::from(spec.of));
    let end_ns = args
        .duration
        .map(|d| t0 + Duration::from_secs_f64(d).as_nanos() as u64);
    let sched = |seq: u64| t0 + (offset_ns + seq as f64 * period_ns.unwrap_or(0.0)) as u64;
    let window = if spec.qos == QoS::AtMostOnce {
        u64::MAX
    } else {
        u64::from(args.inflight)
    };
    let stall = Duration::from_secs_f64(args.stall);
    let mut payload = new_payload(args.payload);
    let mut ids = InFlight::new();
    let mut blocked_since: Option<Instant> = None;
    let gate = &spec.gate;
    let wake = Arc::new(Notify::new());
    let mut requested: Option<u64> = None;
    loop {
        while conn.try_read_some()? > 0 {}
        while let Some(p) = conn.next_packet()? {
            on_ack(p, spec.qos, &mut ids, conn.wbuf(), r);
        }
        let now_ns = ctx.now_ns();
        let done_sending = match (spec.count, end_ns) {
            (Some(c), _) => r.sent >= c,
            (None, Some(end)) => now_ns >= end,
            (None, None) => true,
        };
        if done_sending && ids.len == 0 {
            conn.flush(ctx.deadline).await?;
            return Ok(());
        }
        let mut want = if done_sending {
            0
        } else {
            let left = spec.count.map_or(u64::MAX, |c| c - r.sent);
            left.min(args.batch).min(window - ids.len)
        };
        let mut next_due: Option<u64> = None;
        if let (Some(p), true) = (period_ns, want > 0) {
            let since = now_ns as f64 - t0 as f64 - offset_ns;
            let due_total = if since >= 0.0 {
                (since / p) as u64 + 1
            } else {
                0
            };
            let due = due_total.saturating_sub(r.sent);
            if due < want {
                want = due;
                if due == 0 {
                    next_due = Some(sched(r.sent));
                }
            }
        }
        let granted = gate.try_reserve(want);
        if granted > 0 {
            blocked_since = None;
            let wbuf = conn.wbuf();
            for _ in 0..granted {
                let seq = r.sent;
                let sched_ns = if period_ns.is_some() {
                    sched(seq)
                } else {
                    now_ns
                };
                Header {
                    run_id: ctx.run_id,
                    publisher: spec.id,
                    seq,
                    sched_ns,
                }
                .write(&mut payload);
                let id = if spec.qos == QoS::AtMostOnce {
                    0
                } else {
                    ids.alloc()
                };
                encode_publish(wbuf, false, spec.qos, false, &spec.topic, id, &payload)
                    .map_err(|e| BenchError::Protocol(format!("encode PUBLISH: {e}")))?;
                r.sent += 1;
            }
            r.last_send_ns = now_ns;
        }
        conn.flush(ctx.deadline).await?;
        if granted > 0 {
            continue;
        }
        let gate_blocked = want > 0;
        let notified = gate.notify().notified();
        tokio::pin!(notified);
        if gate_blocked {
            notified.as_mut().enable();
            if gate.available() > 0 {
                continue;
            }
        }
        let stall_at = *blocked_since.get_or_insert_with(Instant::now) + stall;
        if let (Some(ns), Some(p)) = (next_due, &spec.pacer) {
            if requested != Some(ns) {
                p.wake_at(ns, &wake);
                requested = Some(ns);
            }
        }
        // The tokio timer is the fallback (it wakes up to ~2 ms late; the pacer does not).
        let wake_at = next_due.map(|ns| ctx.at_ns(ns) + TIMER_FALLBACK);
        tokio::select! {
            res = conn.readable() => res?,
            _ = &mut notified, if gate_blocked => {}
            _ = sleep_until(stall_at), if gate_blocked => {
                gate.write_off();
                r.stalls += 1;
                blocked_since = None;
            }
            _ = wake.notified(), if wake_at.is_some() => {}
            _ = sleep_until(wake_at.unwrap_or(ctx.deadline)), if wake_at.is_some() => {}
            _ = sleep_until(ctx.deadline) => {
                return Err(BenchError::Timeout(format!(
                    "publisher {}: {} sent, {} unacknowledged",
                    spec.id, r.sent, ids.len
                )));
            }
        }
        if !gate_blocked {
            blocked_since = None;
        }
    }
}

/// Handles a packet the broker sent a publisher.
fn on_ack(p: Packet, qos: QoS, ids: &mut InFlight, wbuf: &mut BytesMut, r: &mut PubResult) {
    match (p, qos) {
        (Packet::PubAck(PubAck { packet_id: id, .. }), QoS::AtLeastOnce)
            if ids.stage[id as usize] == 1 =>
        {
            ids.free(id)
        }
        (Packet::PubRec(PubRec { packet_id: id, .. }), QoS::ExactlyOnce) => {
            // Answer every PUBREC (the broker may repeat one); only the first moves the stage.
            match ids.stage[id as usize] {
                1 => ids.stage[id as usize] = 2,
                2 => {}
                _ => r.unexpected_acks += 1,
            }
            encode_ack(wbuf, PacketType::PubRel, id);
        }
        (Packet::PubComp(PubComp { packet_id: id, .. }), QoS::ExactlyOnce)
            if ids.stage[id as usize] == 2 =>
        {
            ids.free(id)
        }
        (Packet::PingResp, _) => {}
        _ => r.unexpected_acks += 1,
    }
}

/// Counts and times what one subscriber receives, and answers QoS 1/2 as a strict receiver.
#[derive(Debug)]
pub(crate) struct Receiver {
    run_id: u64,
    pub(crate) tracker: SeqTracker,
    pub(crate) latency: Latency,
    /// PUBLISHes received, duplicates included.
    pub(crate) deliveries: u64,
    pub(crate) foreign: u64,
    pub(crate) last_recv_ns: u64,
    /// QoS 2 packet ids received and awaiting PUBREL (method B of the specification: deliver on
    /// the first PUBLISH, treat a repeat before PUBREL as the same message).
    awaiting_rel: Vec<bool>,
    pub(crate) resent_publishes: u64,
    pub(crate) unknown_pubrels: u64,
}

impl Receiver {
    pub(crate) fn new(run_id: u64, publishers: usize) -> Receiver {
        Receiver {
            run_id,
            tracker: SeqTracker::new(publishers),
            latency: Latency::new(),
            deliveries: 0,
            foreign: 0,
            last_recv_ns: 0,
            awaiting_rel: Vec::new(),
            resent_publishes: 0,
            unknown_pubrels: 0,
        }
    }

    /// Handles one packet received at `now_ns`; acks go to `wbuf`. Returns 1 for a new
    /// message, 0 otherwise.
    pub(crate) fn on_packet(
        &mut self,
        p: Packet,
        now_ns: u64,
        wbuf: &mut BytesMut,
    ) -> Result<u64, BenchError> {
        match p {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => encode_ack(wbuf, PacketType::PubAck, p.packet_id),
                    QoS::ExactlyOnce => {
                        encode_ack(wbuf, PacketType::PubRec, p.packet_id);
                        if self.awaiting_rel.is_empty() {
                            self.awaiting_rel = vec![false; 65536];
                        }
                        let slot = &mut self.awaiting_rel[p.packet_id as usize];
                        if *slot {
                            self.resent_publishes += 1;
                            return Ok(0);
                        }
                        *slot = true;
                    }
                }
                Ok(self.deliver(&p.payload, now_ns))
            }
            Packet::PubRel(PubRel { packet_id: id, .. }) => {
                match self.awaiting_rel.get_mut(id as usize) {
                    Some(slot) if *slot => *slot = false,
                    _ => self.unknown_pubrels += 1,
                }
                encode_ack(wbuf, PacketType::PubComp, id);
                Ok(0)
            }
            Packet::PingResp => Ok(0),
            other => Err(BenchError::Protocol(format!(
                "subscriber got an unexpected {:?}",
                other.packet_type()
            ))),
        }
    }

    fn deliver(&mut self, payload: &[u8], now_ns: u64) -> u64 {
        let Some(h) = Header::read(payload).filter(|h| h.run_id == self.run_id) else {
            self.foreign += 1;
            return 0;
        };
        self.deliveries += 1;
        self.last_recv_ns = now_ns;
        match self.tracker.record(h.publisher, h.seq) {
            Seen::First => {
                self.latency.record_ns(now_ns.saturating_sub(h.sched_ns));
                1
            }
            Seen::Duplicate => 0,
            Seen::Invalid => {
                self.deliveries -= 1;
                self.foreign += 1;
                0
            }
        }
    }

    /// Decodes every whole packet in `conn`'s read buffer, writes the acks, and tells the gate.
    pub(crate) async fn drain(
        &mut self,
        ctx: &Ctx,
        conn: &mut Conn,
        gate: &Gate,
        index: usize,
    ) -> Result<u64, BenchError> {
        let now = ctx.now_ns();
        let mut new = 0;
        while let Some(p) = conn.next_packet()? {
            new += self.on_packet(p, now, conn.wbuf())?;
        }
        conn.flush(ctx.deadline).await?;
        gate.record_received(index, new);
        Ok(new)
    }

    /// Distinct messages from `publishers`.
    pub(crate) fn distinct_from(&self, publishers: &[u32]) -> u64 {
        publishers
            .iter()
            .map(|&p| self.tracker.distinct_from(p))
            .sum()
    }
}

/// What one subscriber does.
#[derive(Debug)]
pub(crate) struct SubSpec {
    /// Index of the subscriber within its gate.
    pub(crate) index: usize,
    pub(crate) gate: Arc<Gate>,
    /// Publishers whose every message this subscriber should get.
    pub(crate) publishers: Vec<u32>,
    pub(crate) filter: String,
}

/// Runs one (clean-session) subscriber until it has everything its publishers sent, or they are
/// done and nothing came for `--drain-idle`, or the deadline.
async fn subscriber(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    spec: SubSpec,
    mut done: watch::Receiver<bool>,
    publishers: usize,
) -> (Receiver, Option<BenchError>) {
    let mut rx = Receiver::new(ctx.run_id, publishers);
    let idle = Duration::from_secs_f64(ctx.args.drain_idle);
    let result: Result<(), BenchError> = async {
        loop {
            rx.drain(&ctx, &mut conn, &spec.gate, spec.index).await?;
            if *done.borrow() && rx.distinct_from(&spec.publishers) >= ctx.sent_by(&spec.publishers)
            {
                return Ok(());
            }
            tokio::select! {
                res = conn.read_some() => { res?; }
                res = done.changed(), if !*done.borrow() => {
                    if res.is_err() { return Ok(()); }
                }
                _ = sleep(idle) => {
                    if *done.borrow() { return Ok(()); }
                }
                _ = sleep_until(ctx.deadline) => {
                    return Err(BenchError::Timeout(format!(
                        "subscriber {}: waiting for messages",
                        spec.index
                    )));
                }
            }
        }
    }
    .await;
    let err = result.err();
    if err.is_none() {
        conn.disconnect(ctx.deadline).await;
    }
    (rx, err)
}

/// The publishers and subscribers of a flow scenario.
struct Plan {
    publishers: Vec<PubSpec>,
    subscribers: Vec<SubSpec>,
}

fn split(total: Option<u64>, parts: usize, i: usize) -> Option<u64> {
    total.map(|t| t / parts as u64 + u64::from((i as u64) < t % parts as u64))
}

impl Plan {
    fn build(ctx: &Ctx, scenario: Scenario) -> Plan {
        let a = &ctx.args;
        let pacer = ctx.pacer();
        let prefix = ctx.prefix();
        let qos = qos_of(a.qos);
        let total = a.total_messages();
        let mut publishers = Vec::new();
        let mut subscribers = Vec::new();
        match scenario {
            Scenario::FanOut => {
                let gate = Arc::new(Gate::new(a.subscribers, a.max_ahead));
                let topic = format!("{prefix}/out");
                publishers.push(PubSpec {
                    id: 0,
                    of: 1,
                    topic: topic.clone(),
                    count: total,
                    qos,
                    gate: gate.clone(),
                    pacer: pacer.clone(),
                });
                for index in 0..a.subscribers {
                    subscribers.push(SubSpec {
                        index,
                        gate: gate.clone(),
                        publishers: vec![0],
                        filter: topic.clone(),
                    });
                }
            }
            Scenario::P2p => {
                for i in 0..a.pairs {
                    let gate = Arc::new(Gate::new(1, a.max_ahead));
                    let topic = format!("{prefix}/p2p/{i}");
                    publishers.push(PubSpec {
                        id: i as u32,
                        of: a.pairs as u32,
                        topic: topic.clone(),
                        count: split(total, a.pairs, i),
                        qos,
                        gate: gate.clone(),
                        pacer: pacer.clone(),
                    });
                    subscribers.push(SubSpec {
                        index: 0,
                        gate,
                        publishers: vec![i as u32],
                        filter: topic,
                    });
                }
            }
            // fan-in (qos2 builds its own plan)
            _ => {
                let gate = Arc::new(Gate::new(1, a.max_ahead));
                for i in 0..a.publishers {
                    publishers.push(PubSpec {
                        id: i as u32,
                        of: a.publishers as u32,
                        topic: format!("{prefix}/in/{i}"),
                        count: split(total, a.publishers, i),
                        qos,
                        gate: gate.clone(),
                        pacer: pacer.clone(),
                    });
                }
                subscribers.push(SubSpec {
                    index: 0,
                    gate,
                    publishers: (0..a.publishers as u32).collect(),
                    filter: a.filter.clone(),
                });
            }
        }
        Plan {
            publishers,
            subscribers,
        }
    }
}

/// Connects `n` clients concurrently; `Err` carries the first failure.
pub(crate) async fn connect_all(
    ctx: &Arc<Ctx>,
    role: &'static str,
    subscriptions: Vec<Option<String>>,
    qos: QoS,
) -> Result<Vec<Conn>, BenchError> {
    let mut set = JoinSet::new();
    for (i, filter) in subscriptions.into_iter().enumerate() {
        let ctx = ctx.clone();
        set.spawn(async move {
            let a = &ctx.args;
            let id = ctx.client_id(role, i);
            // Subscribers (those with a filter) and publishers may be on different nodes.
            let addr = if filter.is_some() {
                a.sub_addr(i)
            } else {
                a.pub_addr()
            };
            let (mut conn, _) =
                Conn::connect(addr, None, &id, true, a.keep_alive, ctx.deadline).await?;
            if let Some(f) = filter {
                conn.subscribe(&[(&f, qos)], 1, ctx.deadline).await?;
            }
            Ok::<_, BenchError>((i, conn))
        });
    }
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut first_err = None;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok((i, c))) => {
                if conns.len() <= i {
                    conns.resize_with(i + 1, || None);
                }
                conns[i] = Some(c);
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(BenchError::Protocol(format!("setup task: {e}")));
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(conns.into_iter().flatten().collect())
}

/// Starts the publishers at t0 and returns their joined results in publisher order.
pub(crate) async fn run_publishers(
    ctx: &Arc<Ctx>,
    conns: Vec<Conn>,
    specs: Vec<PubSpec>,
) -> Vec<PubResult> {
    let mut set = JoinSet::new();
    for (i, (conn, spec)) in conns.into_iter().zip(specs).enumerate() {
        let ctx = ctx.clone();
        set.spawn(async move { (i, publisher(ctx, conn, spec).await) });
    }
    let mut out: Vec<(usize, PubResult)> = Vec::new();
    while let Some(j) = set.join_next().await {
        match j {
            Ok(r) => out.push(r),
            Err(e) => out.push((
                usize::MAX,
                PubResult {
                    error: Some(BenchError::Protocol(format!("publisher task: {e}"))),
                    ..PubResult::default()
                },
            )),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}

/// Folds publisher results into the summary; returns the last send time.
pub(crate) fn add_publishers(s: &mut Summary, results: &mut [PubResult]) -> u64 {
    let mut last = 0;
    for r in results.iter_mut() {
        s.messages_sent += r.sent;
        s.stalls += r.stalls;
        s.unexpected_acks += r.unexpected_acks;
        last = last.max(r.last_send_ns);
        if let Some(e) = r.error.take() {
            record_error(s, &e);
        }
    }
    last
}

/// Folds receivers into the summary: counts against the final sent counts, latency, rates.
pub(crate) fn add_receivers(
    ctx: &Ctx,
    s: &mut Summary,
    receivers: &[(&Receiver, &[u32])],
    last_send_ns: u64,
) {
    let mut counts = Counts::default();
    let mut latency = Latency::new();
    let mut last_recv = 0;
    for (i, (rx, pubs)) in receivers.iter().enumerate() {
        let sent: Vec<(u32, u64)> = pubs.iter().map(|&p| (p, ctx.sent_by(&[p]))).collect();
        s.messages_expected += sent.iter().map(|(_, n)| n).sum::<u64>();
        let c = rx.tracker.counts(&sent);
        if c.lost > 0 && s.lost_ranges.len() < 64 {
            for &(p, n) in &sent {
                for (a, b) in rx.tracker.missing_ranges(p, n, 8) {
                    s.lost_ranges.push(format!("s{i}/p{p}:{a}-{b}"));
                }
            }
        }
        counts += c;
        latency.merge(&rx.latency);
        s.messages_received += rx.deliveries;
        s.foreign += rx.foreign;
        last_recv = last_recv.max(rx.last_recv_ns);
    }
    s.unique_received = counts.unique;
    s.lost = counts.lost;
    s.duplicated = counts.duplicated;
    s.reordered = counts.reordered;
    s.latency_us = latency.summary();
    let t0 = ctx.t0_ns();
    let secs = |ns: u64| ns.saturating_sub(t0) as f64 / 1e9;
    s.duration_s = secs(last_recv);
    if s.duration_s > 0.0 {
        s.throughput_msgs_per_s = counts.unique as f64 / s.duration_s;
    }
    if secs(last_send_ns) > 0.0 {
        s.publish_rate_msgs_per_s = s.messages_sent as f64 / secs(last_send_ns);
    }
}

/// Runs `fan-in`, `fan-out` or `p2p`.
pub(crate) async fn run(args: RunArgs, scenario: Scenario, s: &mut Summary) {
    let publishers = match scenario {
        Scenario::FanOut => 1,
        Scenario::P2p => args.pairs,
        _ => args.publishers,
    };
    let ctx = Arc::new(Ctx::new(args, publishers));
    s.run_id = format!("{:016x}", ctx.run_id);
    let plan = Plan::build(&ctx, scenario);
    s.publishers = plan.publishers.len() as u64;
    let gates: Vec<Arc<Gate>> = plan.publishers.iter().map(|p| p.gate.clone()).collect();
    s.subscribers = plan.subscribers.len() as u64;
    let qos = qos_of(ctx.args.qos);
    eprintln!(
        "[{}] {scenario}: qos {} {} publishers, {} subscribers, run {:016x}",
        ctx.args.label, ctx.args.qos, s.publishers, s.subscribers, ctx.run_id
    );
    let filters = plan
        .subscribers
        .iter()
        .map(|sp| Some(sp.filter.clone()))
        .collect();
    let sub_conns = match connect_all(&ctx, "s", filters, qos).await {
        Ok(c) => c,
        Err(e) => return record_error(s, &e),
    };
    let pub_conns = match connect_all(&ctx, "p", vec![None; plan.publishers.len()], qos).await {
        Ok(c) => c,
        Err(e) => return record_error(s, &e),
    };
    let (done_tx, done_rx) = watch::channel(false);
    ctx.start_clock();
    let mut subs = JoinSet::new();
    let mut sub_pubs = Vec::new();
    for (i, (conn, spec)) in sub_conns.into_iter().zip(plan.subscribers).enumerate() {
        sub_pubs.push(spec.publishers.clone());
        let (ctx, done) = (ctx.clone(), done_rx.clone());
        subs.spawn(async move { (i, subscriber(ctx, conn, spec, done, publishers).await) });
    }
    let progress = spawn_progress(ctx.clone(), plan.publishers.iter().map(|p| p.gate.clone()));
    let mut pub_results = run_publishers(&ctx, pub_conns, plan.publishers).await;
    let _ = done_tx.send(true);
    let mut received: Vec<(usize, Receiver)> = Vec::new();
    while let Some(j) = subs.join_next().await {
        match j {
            Ok((i, (rx, err))) => {
                if let Some(e) = err {
                    record_error(s, &e);
                }
                received.push((i, rx));
            }
            Err(e) => record_error(s, &BenchError::Protocol(format!("subscriber task: {e}"))),
        }
    }
    progress.abort();
    s.peak_outstanding = gates
        .iter()
        .map(|g| g.peak_outstanding())
        .max()
        .unwrap_or(0);
    let last_send = add_publishers(s, &mut pub_results);
    received.sort_by_key(|(i, _)| *i);
    let pairs: Vec<(&Receiver, &[u32])> = received
        .iter()
        .map(|(i, rx)| (rx, sub_pubs[*i].as_slice()))
        .collect();
    add_receivers(&ctx, s, &pairs, last_send);
}

/// Prints the number of messages the publishers have reserved every 5 s on stderr.
pub(crate) fn spawn_progress(
    ctx: Arc<Ctx>,
    gates: impl Iterator<Item = Arc<Gate>>,
) -> tokio::task::JoinHandle<()> {
    let mut gates: Vec<Arc<Gate>> = gates.collect();
    gates.dedup_by(|a, b| Arc::ptr_eq(a, b));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let secs = (ctx.now_ns() - ctx.t0_ns()) as f64 / 1e9;
            let sent: u64 = gates.iter().map(|g| g.reserved()).sum();
            eprintln!(
                "[{}]   {secs:5.1}s: {sent} messages sent ({:.0}/s)",
                ctx.args.label,
                sent as f64 / secs
            );
        }
    })
}
