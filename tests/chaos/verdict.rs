//! The chaos checker: the failover suite's per-subscriber checker
//! (`tests/failover/check.rs`: exactly once at QoS 2, at least once at QoS 1, per-publisher
//! order per topic among first deliveries) over every persistent subscriber; the rule for
//! clean-session subscribers, judged per connection ([`check_clean`]); and the cluster-wide
//! checks of this suite: retained messages equal on every node and equal to the last one
//! published per topic, every acknowledged subscription still delivering, no session lost. It
//! also turns the clients' histories into failover times per fault kind and JSON lines.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use starling_codec::{Packet, PubAck, PubComp, PubRec, PubRel, QoS, SubAckReasonCode};
use starling_testkit::strict::{Delivery, Event, Record};

use crate::check::{check, parse_payload, Published};

/// The topics of the checked workload start with this (`chaos/<k>`).
pub(crate) const WORKLOAD_PREFIX: &str = "chaos/";

/// A subscriber as the checker sees it.
pub(crate) struct SubscriberView {
    /// Client id.
    pub(crate) client: String,
    /// QoS of its `chaos/#` subscription.
    pub(crate) qos: QoS,
    /// Everything delivered to it, in order.
    pub(crate) deliveries: Vec<Delivery>,
    /// Its history (for lost sessions).
    pub(crate) history: Vec<Record>,
}

/// What the checker found.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Messages written by the publishers.
    pub(crate) published: usize,
    /// Of which completed (PUBACK / PUBCOMP).
    pub(crate) completed: usize,
    /// Deliveries that had to happen (completed messages × subscribers).
    pub(crate) expected: usize,
    /// Deliveries seen, duplicates included.
    pub(crate) deliveries: usize,
    /// Allowed QoS 1 redeliveries.
    pub(crate) qos1_redeliveries: usize,
    /// Out-of-order first deliveries of a message its publisher wrote more than once (allowed).
    pub(crate) explained_reorders: usize,
    /// Completed messages a subscriber never got: "subscriber: publisher/seq (QoS n)".
    pub(crate) lost: Vec<String>,
    /// Messages delivered more than once where that is not allowed.
    pub(crate) duplicated: Vec<String>,
    /// First deliveries after a later message of the same publisher and topic, unexplained.
    pub(crate) reordered: Vec<String>,
    /// Deliveries of something nobody published.
    pub(crate) unknown: Vec<String>,
    /// Retained messages that differ between nodes or from the last one published.
    pub(crate) retained: Vec<String>,
    /// Acknowledged subscriptions that no longer deliver.
    pub(crate) subscriptions_lost: Vec<String>,
    /// Sessions a client found gone when it resumed.
    pub(crate) sessions_lost: Vec<String>,
    /// The clean-session subscribers, judged per connection.
    pub(crate) clean: CleanReport,
    /// Replicas that did not converge to one applied index and state digest.
    pub(crate) replicas: Vec<String>,
}

impl Report {
    /// Everything wrong, one line each (empty: the run is clean).
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (what, v) in [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("reordered", &self.reordered),
            ("unknown", &self.unknown),
            ("retained", &self.retained),
            ("subscription lost", &self.subscriptions_lost),
            ("session lost", &self.sessions_lost),
            ("replicas", &self.replicas),
            ("lost (clean)", &self.clean.lost),
            ("duplicated (clean)", &self.clean.duplicated),
            ("reordered (clean)", &self.clean.reordered),
            ("unknown (clean)", &self.clean.unknown),
        ] {
            if !v.is_empty() {
                out.push(format!(
                    "{what}: {} (first: {:?})",
                    v.len(),
                    &v[..v.len().min(10)]
                ));
            }
        }
        out
    }
}

/// Checks the workload: `ledger` (every publisher's messages, from their histories) against
/// each subscriber's `chaos/` deliveries.
pub(crate) fn check_messages(ledger: &[Published], subs: &[SubscriberView]) -> Report {
    let mut r = Report {
        published: ledger.len(),
        completed: ledger.iter().filter(|p| p.completed).count(),
        ..Report::default()
    };
    for s in subs {
        let deliveries: Vec<Delivery> = s
            .deliveries
            .iter()
            .filter(|d| d.topic.starts_with(WORKLOAD_PREFIX))
            .cloned()
            .collect();
        let v = check(ledger, &deliveries, s.qos);
        r.expected += v.expected;
        r.deliveries += v.deliveries;
        r.qos1_redeliveries += v.qos1_redeliveries;
        r.lost.extend(
            v.lost
                .iter()
                .map(|(p, seq, q)| format!("{}: {p}/{seq} (QoS {})", s.client, *q as u8)),
        );
        r.duplicated.extend(
            v.duplicated
                .iter()
                .map(|(p, seq, n)| format!("{}: {p}/{seq} delivered {n} times", s.client)),
        );
        r.unknown
            .extend(v.unknown.iter().map(|u| format!("{}: {u}", s.client)));
        for (topic, seq, later, resent) in &v.out_of_order {
            if *resent {
                r.explained_reorders += 1;
            } else {
                r.reordered
                    .push(format!("{}: {topic} seq {seq} after seq {later}", s.client));
            }
        }
        r.sessions_lost.extend(sessions_lost(&s.client, &s.history));
    }
    r
}

/// A clean-session subscriber as the checker sees it.
pub(crate) struct CleanView {
    /// Client id.
    pub(crate) client: String,
    /// QoS of its subscription to the workload's filter.
    pub(crate) qos: QoS,
    /// Its history: connections, SUBSCRIBE / SUBACK, PUBLISHes read, deliveries.
    pub(crate) history: Vec<Record>,
}

/// When a message was written and acknowledged, from its publisher's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    /// The first PUBLISH written.
    pub(crate) first_write: Instant,
    /// The node of the connection the PUBLISH was last written on (where it was routed).
    pub(crate) node: Option<SocketAddr>,
    /// PUBACK / PUBCOMP read.
    pub(crate) completed: Option<Instant>,
}

/// Every message's [`Timing`] from the publishers' histories, by (publisher, seq).
pub(crate) fn timings<'a>(
    histories: impl IntoIterator<Item = &'a [Record]>,
) -> HashMap<(String, u64), Timing> {
    let mut out: HashMap<(String, u64), Timing> = HashMap::new();
    for h in histories {
        let mut on: Option<SocketAddr> = None;
        for r in h {
            match &r.event {
                Event::Connected { node, .. } => on = Some(*node),
                Event::Lost { .. } => on = None,
                Event::Sent(Packet::Publish(p)) => {
                    let Some(k) = parse_payload(&p.payload) else {
                        continue;
                    };
                    let t = out.entry(k).or_insert(Timing {
                        first_write: r.at,
                        node: on,
                        completed: None,
                    });
                    t.node = on;
                }
                Event::Completed { payload, .. } => {
                    if let Some(t) = parse_payload(payload).and_then(|k| out.get_mut(&k)) {
                        t.completed = Some(r.at);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// One connection of a clean-session subscriber: a session of its own.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    /// The node.
    pub(crate) node: SocketAddr,
    /// CONNACK 0 read.
    pub(crate) connected: Instant,
    /// The SUBACK granting the workload's filter on this connection, if one came.
    pub(crate) subacked: Option<Instant>,
    /// The last packet read on it before it was lost; `None` if it was still open.
    pub(crate) last_read: Option<Instant>,
    /// The messages delivered on it (QoS and DUP as read), in order.
    pub(crate) deliveries: Vec<Delivery>,
}

/// The connections of a clean subscriber, from its history, with the SUBACK of `filter` on
/// each (a SUBSCRIBE written on that connection whose SUBACK granted it).
pub(crate) fn clean_windows(history: &[Record], filter: &str) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    let mut open = false;
    // SUBSCRIBE packet id -> position of `filter` in it, on the open connection.
    let mut asked: HashMap<u16, usize> = HashMap::new();
    let mut last_publish: Option<starling_codec::Publish> = None;
    for r in history {
        match &r.event {
            Event::Connected { node, .. } => {
                out.push(Window {
                    node: *node,
                    connected: r.at,
                    subacked: None,
                    last_read: None,
                    deliveries: Vec::new(),
                });
                open = true;
                asked.clear();
            }
            Event::Lost { last_read, .. } if open => {
                if let Some(w) = out.last_mut() {
                    w.last_read = Some(*last_read);
                }
                open = false;
            }
            Event::Sent(Packet::Subscribe(s)) if open => {
                if let Some(i) = s.filters.iter().position(|f| &*f.filter == filter) {
                    asked.insert(s.packet_id, i);
                }
            }
            Event::Received(Packet::SubAck(a)) if open => {
                let granted = asked.remove(&a.packet_id).is_some_and(|i| {
                    a.reason_codes
                        .get(i)
                        .is_some_and(|c| *c != SubAckReasonCode::UnspecifiedError)
                });
                if let Some(w) = out.last_mut().filter(|w| granted && w.subacked.is_none()) {
                    w.subacked = Some(r.at);
                }
            }
            Event::Received(Packet::Publish(p)) => last_publish = Some(p.clone()),
            Event::Delivered { .. } if open => {
                let (Some(w), Some(p)) = (out.last_mut(), last_publish.as_ref()) else {
                    continue;
                };
                w.deliveries.push(Delivery {
                    at: r.at,
                    node: w.node,
                    topic: p.topic.to_string(),
                    payload: p.payload.clone(),
                    qos: p.qos,
                    dup: p.dup,
                    retain: p.retain,
                    packet_id: p.packet_id,
                });
            }
            _ => {}
        }
    }
    out
}

/// A message is owed on a clean connection only if it was acknowledged at least this long
/// before the last packet read there: a message acknowledged just before the connection died
/// may have been on its way (forwarded, not yet written to the socket) when the node holding
/// the connection was killed, paused or cut off, which the fast path does not survive.
pub(crate) const CLEAN_MARGIN: Duration = Duration::from_millis(500);

/// What [`check_clean`] found.
#[derive(Debug, Default)]
pub(crate) struct CleanReport {
    /// Connections whose subscription was acknowledged (the windows judged).
    pub(crate) windows: usize,
    /// Messages owed on those connections (published after the SUBACK, acknowledged while
    /// the connection worked), summed over the windows.
    pub(crate) owed: usize,
    /// Of which published through a node other than the subscriber's (forwarded).
    pub(crate) crossed: usize,
    /// Deliveries of the workload's messages on the judged connections, repeats included.
    pub(crate) deliveries: usize,
    /// QoS 1 repeats within a connection (allowed).
    pub(crate) qos1_redeliveries: usize,
    /// Out-of-order first deliveries of a message its publisher wrote more than once (allowed).
    pub(crate) explained_reorders: usize,
    /// Owed messages that did not arrive on their connection.
    pub(crate) lost: Vec<String>,
    /// The same, grouped by connection and the node the messages were published through.
    pub(crate) lost_by_route: BTreeMap<(String, Option<SocketAddr>), LostRoute>,
    /// Of [`CleanReport::lost`], those on connections still open at the end: the only ones
    /// that may yet arrive.
    pub(crate) lost_open: usize,
    /// QoS 2 deliveries repeated within one connection.
    pub(crate) duplicated: Vec<String>,
    /// First deliveries within a connection after a later message of the same publisher and
    /// topic, unexplained.
    pub(crate) reordered: Vec<String>,
    /// Deliveries of something nobody published.
    pub(crate) unknown: Vec<String>,
}

/// Messages owed on one clean connection, published through one node, that did not arrive.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LostRoute {
    /// How many.
    pub(crate) count: usize,
    /// The SUBACK on that connection, seconds since the start.
    pub(crate) subacked: f64,
    /// The first and the last of them written, seconds since the start.
    pub(crate) written: (f64, f64),
}

/// The rule for clean-session subscribers, per connection (each is a session of its own): every
/// QoS 1/2 message of `ledger` whose first PUBLISH was written after the connection's SUBACK
/// and which its publisher saw acknowledged at least [`CLEAN_MARGIN`] before the last packet
/// read on that connection (any time, if the connection was still open at the end) must be
/// delivered on that connection; a QoS 2 delivery (as delivered: the lower of the two QoS)
/// never repeats within a connection; first deliveries keep each publisher's order per topic
/// and QoS. `start` dates and `name` names the nodes in the lines of the report.
pub(crate) fn check_clean(
    start: Instant,
    name: &dyn Fn(SocketAddr) -> String,
    ledger: &[Published],
    timings: &HashMap<(String, u64), Timing>,
    subs: &[CleanView],
) -> CleanReport {
    let mut r = CleanReport::default();
    let by_key: HashMap<(String, u64), &Published> = ledger
        .iter()
        .filter(|p| p.topic.starts_with(WORKLOAD_PREFIX))
        .map(|p| ((p.publisher.clone(), p.seq), p))
        .collect();
    // Completed messages by the time of their first write, to find a window's candidates.
    let mut by_first: Vec<(Instant, &Published, &Timing)> = by_key
        .values()
        .filter(|p| p.completed && p.qos != QoS::AtMostOnce)
        .filter_map(|p| {
            let t = timings.get(&(p.publisher.clone(), p.seq))?;
            Some((t.first_write, *p, t))
        })
        .collect();
    by_first.sort_by_key(|(at, p, _)| (*at, p.publisher.clone(), p.seq));
    let rel = |t: Instant| secs(start, t);
    for s in subs {
        for (n, w) in clean_windows(&s.history, crate::workload::WORKLOAD_FILTER)
            .iter()
            .enumerate()
        {
            let Some(subacked) = w.subacked else { continue };
            r.windows += 1;
            let connection = format!("{} connection {} on {}", s.client, n + 1, name(w.node));
            let what = format!(
                "{connection} (CONNACK at +{:.3}s, SUBACK at +{:.3}s, last read at {})",
                rel(w.connected),
                rel(subacked),
                w.last_read
                    .map_or("the end".to_string(), |t| format!("+{:.3}s", rel(t)))
            );
            let mut count: HashMap<(&str, u64), usize> = HashMap::new();
            let mut highest: HashMap<(&str, &str, QoS), u64> = HashMap::new();
            for d in w
                .deliveries
                .iter()
                .filter(|d| d.topic.starts_with(WORKLOAD_PREFIX))
            {
                r.deliveries += 1;
                let Some(p) = parse_payload(&d.payload).and_then(|k| by_key.get(&k).copied())
                else {
                    r.unknown
                        .push(format!("{what}: {}", String::from_utf8_lossy(&d.payload)));
                    continue;
                };
                let key = (p.publisher.as_str(), p.seq);
                let times = count.entry(key).or_default();
                *times += 1;
                if *times > 1 {
                    if p.qos.min(s.qos) == QoS::ExactlyOnce {
                        if *times == 2 {
                            r.duplicated.push(format!(
                                "{what}: {}/{} (QoS 2) delivered again at +{:.3}s",
                                p.publisher,
                                p.seq,
                                rel(d.at)
                            ));
                        }
                    } else {
                        r.qos1_redeliveries += 1;
                    }
                    continue;
                }
                let h = highest.entry((key.0, p.topic.as_str(), p.qos)).or_insert(0);
                if p.seq < *h {
                    if p.writes > 1 {
                        r.explained_reorders += 1;
                    } else {
                        r.reordered.push(format!(
                            "{what}: {} seq {} of {} after seq {}",
                            p.topic, p.seq, p.publisher, *h
                        ));
                    }
                } else {
                    *h = p.seq;
                }
            }
            let from = by_first.partition_point(|(at, _, _)| *at <= subacked);
            for (_, p, t) in &by_first[from..] {
                if w.last_read.is_some_and(|end| t.first_write > end) {
                    break;
                }
                let Some(done) = t.completed else { continue };
                if w.last_read.is_some_and(|end| done + CLEAN_MARGIN > end) {
                    continue;
                }
                r.owed += 1;
                if t.node.is_some_and(|n| n != w.node) {
                    r.crossed += 1;
                }
                if !count.contains_key(&(p.publisher.as_str(), p.seq)) {
                    let through = t.node.map_or("?".to_string(), name);
                    let written = rel(t.first_write);
                    let g = r
                        .lost_by_route
                        .entry((connection.clone(), t.node))
                        .or_insert(LostRoute {
                            count: 0,
                            subacked: rel(subacked),
                            written: (written, written),
                        });
                    g.count += 1;
                    g.written.0 = g.written.0.min(written);
                    g.written.1 = g.written.1.max(written);
                    if w.last_read.is_none() {
                        r.lost_open += 1;
                    }
                    r.lost.push(format!(
                        "{what}: {}/{} (QoS {}, written at +{:.3}s through {}, acknowledged at \
                         +{:.3}s)",
                        p.publisher,
                        p.seq,
                        p.qos.min(s.qos) as u8,
                        written,
                        through,
                        rel(done)
                    ));
                }
            }
        }
    }
    r
}

/// "client: node" for every resumption that found no session.
pub(crate) fn sessions_lost(client: &str, history: &[Record]) -> Vec<String> {
    history
        .iter()
        .filter_map(|r| match &r.event {
            Event::SessionLost(node) => Some(format!("{client}: session gone on {node}")),
            _ => None,
        })
        .collect()
}

/// Retained messages: `expected` (topic → payload of the last message published there) against
/// what a new subscription on each node received (`per_node`: node name, topic → payload).
pub(crate) fn check_retained(
    expected: &BTreeMap<String, String>,
    per_node: &[(String, BTreeMap<String, String>)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (node, got) in per_node {
        for (topic, want) in expected {
            match got.get(topic) {
                Some(have) if have == want => {}
                Some(have) => out.push(format!("{node}: {topic} = {have}, expected {want}")),
                None => out.push(format!("{node}: {topic} missing, expected {want}")),
            }
        }
        for (topic, have) in got {
            if !expected.contains_key(topic) {
                out.push(format!("{node}: unexpected retained {topic} = {have}"));
            }
        }
    }
    out
}

/// Subscriptions: every `(client, topic)` acknowledged (SUBACK) must have delivered the probe
/// published on `topic` at the end.
pub(crate) fn check_subscriptions(
    acked: &[(String, String)],
    deliveries: &BTreeMap<String, Vec<Delivery>>,
) -> Vec<String> {
    acked
        .iter()
        .filter(|(client, topic)| {
            !deliveries
                .get(client)
                .is_some_and(|d| d.iter().any(|d| d.topic == *topic))
        })
        .map(|(client, topic)| format!("{client}: {topic} acknowledged, probe not delivered"))
        .collect()
}

/// Client failovers: for each lost connection, when it was lost and the time to the next
/// CONNACK 0.
pub(crate) fn failover_times(history: &[Record]) -> Vec<(Instant, Duration)> {
    let mut out = Vec::new();
    let mut lost_at: Option<Instant> = None;
    for r in history {
        match &r.event {
            Event::Lost { why, .. } if why != "DISCONNECT" => {
                lost_at.get_or_insert(r.at);
            }
            Event::Connected { .. } => {
                if let Some(t) = lost_at.take() {
                    out.push((t, r.at - t));
                }
            }
            _ => {}
        }
    }
    out
}

/// What [`by_fault`] files a failover under when no fault had been injected yet.
pub(crate) const BEFORE_FAULTS: &str = "(before any fault)";

/// Files each `(when, duration)` under the fault that was active, or injected most recently,
/// at `when`: `faults` are `(injected at, kind)`, in order of injection.
pub(crate) fn by_fault<'a>(
    items: &[(Instant, Duration)],
    faults: &[(Instant, &'a str)],
) -> BTreeMap<&'a str, Vec<Duration>> {
    let mut out: BTreeMap<&'a str, Vec<Duration>> = BTreeMap::new();
    for (at, d) in items {
        let i = faults.partition_point(|(f, _)| f <= at);
        let kind = if i == 0 {
            BEFORE_FAULTS
        } else {
            faults[i - 1].1
        };
        out.entry(kind).or_default().push(*d);
    }
    out
}

/// p50, p99 and max of `v` (sorted here), as text.
pub(crate) fn percentiles(v: &mut [Duration]) -> String {
    if v.is_empty() {
        return "n=0".into();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    format!(
        "n={} p50={:.3}s p99={:.3}s max={:.3}s",
        v.len(),
        at(0.5).as_secs_f64(),
        at(0.99).as_secs_f64(),
        v[v.len() - 1].as_secs_f64()
    )
}

/// One history record as a JSON line's object (`t`: seconds since `start`).
pub(crate) fn record_json(start: Instant, client: &str, r: &Record) -> Value {
    let mut v = event_json(start, &r.event);
    v["t"] = json!(secs(start, r.at));
    v["client"] = json!(client);
    v
}

pub(crate) fn secs(start: Instant, at: Instant) -> f64 {
    (at.saturating_duration_since(start).as_secs_f64() * 1e6).round() / 1e6
}

fn node(n: &SocketAddr) -> String {
    n.to_string()
}

fn event_json(start: Instant, e: &Event) -> Value {
    match e {
        Event::Connecting(n) => json!({"ev": "connecting", "node": node(n)}),
        Event::Connected {
            node: n,
            session_present,
        } => json!({"ev": "connected", "node": node(n), "session_present": session_present}),
        Event::Refused { node: n, why } => json!({"ev": "refused", "node": node(n), "why": why}),
        Event::Lost {
            node: n,
            why,
            last_read,
        } => json!({"ev": "lost", "node": node(n), "why": why,
                    "last_read_t": secs(start, *last_read)}),
        Event::SessionLost(n) => json!({"ev": "session_lost", "node": node(n)}),
        Event::Sent(p) => packet_json("sent", p),
        Event::Received(p) => packet_json("received", p),
        Event::Completed {
            packet_id,
            topic,
            payload,
        } => json!({"ev": "completed", "pid": packet_id, "topic": topic,
                    "payload": String::from_utf8_lossy(payload)}),
        Event::Delivered {
            packet_id,
            topic,
            payload,
        } => json!({"ev": "delivered", "pid": packet_id, "topic": topic,
                    "payload": String::from_utf8_lossy(payload)}),
        Event::DuplicateSuppressed(pid) => json!({"ev": "duplicate_suppressed", "pid": pid}),
        Event::UnknownPubRel(pid) => json!({"ev": "unknown_pubrel", "pid": pid}),
        Event::UnexpectedAck(p) => {
            let mut v = packet_json("unexpected_ack", p);
            v["ev"] = json!("unexpected_ack");
            v
        }
        Event::Paused(h) => json!({"ev": "paused", "stage": format!("{:?}", h.stage),
                                   "pid": h.packet_id, "topic": h.topic, "node": node(&h.node)}),
    }
}

fn packet_json(ev: &str, p: &Packet) -> Value {
    match p {
        Packet::Publish(p) => json!({"ev": ev, "packet": "PUBLISH", "pid": p.packet_id,
            "qos": p.qos as u8, "dup": p.dup, "retain": p.retain, "topic": p.topic.to_string(),
            "payload": String::from_utf8_lossy(&p.payload)}),
        Packet::PubAck(PubAck { packet_id: pid, .. }) => {
            json!({"ev": ev, "packet": "PUBACK", "pid": pid})
        }
        Packet::PubRec(PubRec { packet_id: pid, .. }) => {
            json!({"ev": ev, "packet": "PUBREC", "pid": pid})
        }
        Packet::PubRel(PubRel { packet_id: pid, .. }) => {
            json!({"ev": ev, "packet": "PUBREL", "pid": pid})
        }
        Packet::PubComp(PubComp { packet_id: pid, .. }) => {
            json!({"ev": ev, "packet": "PUBCOMP", "pid": pid})
        }
        Packet::Subscribe(s) => json!({"ev": ev, "packet": "SUBSCRIBE", "pid": s.packet_id,
            "filters": s.filters.iter().map(|f| format!("{} (QoS {})", f.filter, f.options.qos as u8))
                .collect::<Vec<_>>()}),
        Packet::SubAck(a) => json!({"ev": ev, "packet": "SUBACK", "pid": a.packet_id,
            "codes": format!("{:?}", a.reason_codes)}),
        other => json!({"ev": ev, "packet": format!("{other:?}")}),
    }
}

#[cfg(test)]
mod tests {
    //! The checker on hand-made histories: a clean one passes, and loss, duplicates, reorders,
    //! diverging retained messages, lost subscriptions and lost sessions are each reported.

    use super::*;
    use crate::check::ledger_from_history;
    use bytes::Bytes;
    use starling_codec::Publish;

    fn addr() -> SocketAddr {
        "127.0.0.1:18830".parse().unwrap()
    }

    /// A publisher's history: every seq written once, `completed` ones acknowledged.
    fn publisher(seqs: &[(u64, QoS, bool)]) -> Vec<Record> {
        let mut h = Vec::new();
        for (seq, qos, completed) in seqs {
            let payload = Bytes::from(format!("pub/{seq}"));
            let topic = format!("chaos/{}", seq % 2);
            h.push(Record {
                at: Instant::now(),
                event: Event::Sent(Packet::Publish(Publish {
                    dup: false,
                    qos: *qos,
                    retain: false,
                    topic: topic.as_str().into(),
                    packet_id: *seq as u16,
                    payload: payload.clone(),
                    properties: Default::default(),
                })),
            });
            if *completed {
                h.push(Record {
                    at: Instant::now(),
                    event: Event::Completed {
                        packet_id: *seq as u16,
                        topic,
                        payload,
                    },
                });
            }
        }
        h
    }

    fn deliveries(seqs: &[u64], qos: QoS) -> Vec<Delivery> {
        seqs.iter()
            .map(|seq| Delivery {
                at: Instant::now(),
                node: addr(),
                topic: format!("chaos/{}", seq % 2),
                payload: Bytes::from(format!("pub/{seq}")),
                qos,
                dup: false,
                retain: false,
                packet_id: *seq as u16,
            })
            .collect()
    }

    fn sub(deliveries: Vec<Delivery>, qos: QoS, history: Vec<Record>) -> SubscriberView {
        SubscriberView {
            client: "sub".into(),
            qos,
            deliveries,
            history,
        }
    }

    const Q2: QoS = QoS::ExactlyOnce;
    const Q1: QoS = QoS::AtLeastOnce;

    #[test]
    fn a_clean_history_passes() {
        let ledger = ledger_from_history(&publisher(&[
            (1, Q2, true),
            (2, Q1, true),
            (3, Q2, true),
            (4, Q1, true),
            (5, Q2, false),
        ]));
        // QoS 1 message 2 twice (allowed); 5 was never acknowledged (may be missing).
        let subs = [sub(deliveries(&[1, 2, 2, 3, 4], Q2), Q2, Vec::new())];
        let r = check_messages(&ledger, &subs);
        assert!(r.problems().is_empty(), "{:?}", r.problems());
        assert_eq!((r.published, r.completed, r.expected), (5, 4, 4));
        assert_eq!(r.qos1_redeliveries, 1);
    }

    #[test]
    fn loss_duplicate_and_reorder_fail_the_run() {
        let ledger = ledger_from_history(&publisher(&[
            (1, Q2, true),
            (2, Q1, true),
            (3, Q2, true),
            (4, Q1, true),
            (5, Q2, true),
            (7, Q2, true),
        ]));
        // 1 twice at QoS 2 (duplicate), 5 before 3 on topic chaos/1 (reorder), 4 missing (loss).
        let subs = [sub(deliveries(&[1, 1, 2, 5, 3, 7], Q2), Q2, Vec::new())];
        let r = check_messages(&ledger, &subs);
        assert_eq!(r.lost, vec!["sub: pub/4 (QoS 1)".to_string()]);
        assert_eq!(
            r.duplicated,
            vec!["sub: pub/1 delivered 2 times".to_string()]
        );
        assert_eq!(
            r.reordered,
            vec!["sub: chaos/1 seq 3 after seq 5".to_string()]
        );
        assert_eq!(r.problems().len(), 3, "{:?}", r.problems());
    }

    #[test]
    fn a_qos1_subscriber_may_see_repeats_but_not_gaps() {
        let ledger = ledger_from_history(&publisher(&[(1, Q2, true), (2, Q2, true)]));
        let ok = check_messages(&ledger, &[sub(deliveries(&[1, 1, 2], Q1), Q1, Vec::new())]);
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
        let bad = check_messages(&ledger, &[sub(deliveries(&[2], Q1), Q1, Vec::new())]);
        assert_eq!(bad.lost.len(), 1);
    }

    #[test]
    fn a_lost_session_fails_the_run() {
        let ledger = ledger_from_history(&publisher(&[(1, Q2, true)]));
        let history = vec![Record {
            at: Instant::now(),
            event: Event::SessionLost(addr()),
        }];
        let r = check_messages(&ledger, &[sub(deliveries(&[1], Q2), Q2, history)]);
        assert_eq!(r.sessions_lost.len(), 1);
        assert_eq!(r.problems().len(), 1);
    }

    #[test]
    fn diverging_retained_messages_are_reported() {
        let expected: BTreeMap<String, String> = [("r/0".to_string(), "ret/8".to_string())].into();
        let same = vec![("node 1".to_string(), expected.clone())];
        assert!(check_retained(&expected, &same).is_empty());
        let stale = vec![
            ("node 1".to_string(), expected.clone()),
            (
                "node 2".to_string(),
                [
                    ("r/0".to_string(), "ret/6".to_string()),
                    ("r/9".to_string(), "ret/1".to_string()),
                ]
                .into(),
            ),
            ("node 3".to_string(), BTreeMap::new()),
        ];
        let found = check_retained(&expected, &stale);
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn a_subscription_that_stopped_delivering_is_reported() {
        let acked = vec![
            ("sub".to_string(), "chaossub/sub/0".to_string()),
            ("sub".to_string(), "chaossub/sub/1".to_string()),
        ];
        let mut d = deliveries(&[1], Q1);
        d[0].topic = "chaossub/sub/0".into();
        let got: BTreeMap<String, Vec<Delivery>> = [("sub".to_string(), d)].into();
        assert_eq!(
            check_subscriptions(&acked, &got),
            vec!["sub: chaossub/sub/1 acknowledged, probe not delivered".to_string()]
        );
    }

    #[test]
    fn failover_time_is_lost_to_next_connack() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rec = |ms, event| Record { at: at(ms), event };
        let h = vec![
            rec(
                0,
                Event::Connected {
                    node: addr(),
                    session_present: false,
                },
            ),
            rec(
                100,
                Event::Lost {
                    node: addr(),
                    why: "read".into(),
                    last_read: at(50),
                },
            ),
            rec(
                200,
                Event::Refused {
                    node: addr(),
                    why: "CONNACK 3".into(),
                },
            ),
            rec(
                1100,
                Event::Connected {
                    node: addr(),
                    session_present: true,
                },
            ),
        ];
        assert_eq!(
            failover_times(&h),
            vec![(at(100), Duration::from_millis(1000))]
        );
    }

    #[test]
    fn failovers_are_filed_under_the_fault_last_injected() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let d = Duration::from_millis;
        let faults = [(at(1000), "pause"), (at(5000), "kill-leader")];
        let items = [
            (at(500), d(1)),
            (at(1000), d(2)),
            (at(4000), d(3)),
            (at(9000), d(4)),
        ];
        let got = by_fault(&items, &faults);
        assert_eq!(got[BEFORE_FAULTS], vec![d(1)]);
        assert_eq!(got["pause"], vec![d(2), d(3)]);
        assert_eq!(got["kill-leader"], vec![d(4)]);
    }

    fn node(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn publish_packet(pid: u16, seq: u64, qos: QoS) -> starling_codec::Publish {
        starling_codec::Publish {
            dup: false,
            qos,
            retain: false,
            topic: format!("chaos/{}", seq % 2).as_str().into(),
            packet_id: pid,
            payload: Bytes::from(format!("pub/{seq}")),
            properties: Default::default(),
        }
    }

    #[test]
    fn clean_subscribers_are_judged_per_connection() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rec = |ms, event| Record { at: at(ms), event };
        let (a, b) = (node(1), node(2));
        // The publisher on node A: (seq, QoS, written at, acknowledged at).
        let msgs: [(u64, QoS, u64, u64); 8] = [
            (1, Q2, 900, 1200),  // written before the first SUBACK: not owed
            (2, Q2, 1100, 1300), // delivered on connection 1
            (3, Q1, 1200, 1400), // owed on connection 1, never delivered: lost
            (4, Q2, 2600, 2700), // acknowledged within the margin of the last read: not owed
            (5, Q1, 2650, 2750), // likewise, but delivered: fine
            (6, Q2, 4100, 4200), // delivered on connection 2
            (7, Q2, 4150, 4250), // delivered twice on connection 2: duplicated
            (8, Q1, 4200, 4300), // delivered twice on connection 2: a QoS 1 repeat
        ];
        let mut ph = vec![rec(
            0,
            Event::Connected {
                node: a,
                session_present: false,
            },
        )];
        for (seq, qos, w, c) in msgs {
            ph.push(rec(
                w,
                Event::Sent(Packet::Publish(publish_packet(seq as u16, seq, qos))),
            ));
            ph.push(rec(
                c,
                Event::Completed {
                    packet_id: seq as u16,
                    topic: format!("chaos/{}", seq % 2),
                    payload: Bytes::from(format!("pub/{seq}")),
                },
            ));
        }
        ph.sort_by_key(|r| r.at);
        let ledger = ledger_from_history(&ph);
        let times = timings([ph.as_slice()]);

        // The clean subscriber on node B: a SUBACK, then deliveries, then the connection dies.
        let mut sh = Vec::new();
        let mut deliver = |ms: u64, seq: u64, qos: QoS, pid: u16| {
            sh.push(rec(
                ms,
                Event::Received(Packet::Publish(publish_packet(pid, seq, qos))),
            ));
            sh.push(rec(
                ms,
                Event::Delivered {
                    packet_id: pid,
                    topic: format!("chaos/{}", seq % 2),
                    payload: Bytes::from(format!("pub/{seq}")),
                },
            ));
        };
        let subscribe = |pid: u16| {
            Event::Sent(Packet::Subscribe(starling_codec::Subscribe {
                packet_id: pid,
                filters: vec![starling_codec::SubscribeFilter::new("chaos/#".into(), Q2)],
                properties: Default::default(),
            }))
        };
        let suback = |pid: u16| {
            Event::Received(Packet::SubAck(starling_codec::SubAck {
                packet_id: pid,
                reason_codes: vec![SubAckReasonCode::granted(Q2)],
                properties: Default::default(),
            }))
        };
        let mut sh2 = vec![
            rec(
                0,
                Event::Connected {
                    node: b,
                    session_present: false,
                },
            ),
            rec(1, subscribe(1)),
            rec(1000, suback(1)),
        ];
        deliver(1150, 2, Q2, 1);
        deliver(2760, 5, Q1, 2);
        sh2.append(&mut sh);
        sh2.push(rec(
            4000,
            Event::Lost {
                node: b,
                why: "no answer within 3s".into(),
                last_read: at(3000),
            },
        ));
        sh2.push(rec(
            4010,
            Event::Connected {
                node: a,
                session_present: false,
            },
        ));
        sh2.push(rec(4011, subscribe(2)));
        sh2.push(rec(4050, suback(2)));
        let mut sh = Vec::new();
        let mut deliver = |ms: u64, seq: u64, qos: QoS, pid: u16| {
            sh.push(rec(
                ms,
                Event::Received(Packet::Publish(publish_packet(pid, seq, qos))),
            ));
            sh.push(rec(
                ms,
                Event::Delivered {
                    packet_id: pid,
                    topic: format!("chaos/{}", seq % 2),
                    payload: Bytes::from(format!("pub/{seq}")),
                },
            ));
        };
        // Message 2 again: on a new connection it is not a repeat.
        deliver(4060, 2, Q2, 3);
        deliver(4110, 6, Q2, 4);
        deliver(4160, 7, Q2, 5);
        deliver(4170, 7, Q2, 6);
        deliver(4210, 8, Q1, 7);
        deliver(4220, 8, Q1, 7);
        sh2.append(&mut sh);

        let view = CleanView {
            client: "clean".into(),
            qos: Q2,
            history: sh2,
        };
        let r = check_clean(t0, &|a| a.to_string(), &ledger, &times, &[view]);
        assert_eq!(r.windows, 2);
        // Owed: 2 and 3 on the first connection, 6, 7 and 8 on the second.
        assert_eq!((r.owed, r.crossed), (5, 2));
        assert_eq!(r.lost.len(), 1, "{:?}", r.lost);
        assert!(r.lost[0].contains("pub/3 (QoS 1"), "{:?}", r.lost);
        assert!(
            r.lost[0].starts_with("clean connection 1 on 127.0.0.1:2 "),
            "{:?}",
            r.lost
        );
        assert_eq!(
            r.lost_by_route.keys().collect::<Vec<_>>(),
            vec![&("clean connection 1 on 127.0.0.1:2".to_string(), Some(a))]
        );
        assert_eq!(r.lost_open, 0, "the first connection was closed");
        assert_eq!(r.duplicated.len(), 1, "{:?}", r.duplicated);
        assert!(r.duplicated[0].contains("pub/7 (QoS 2)"));
        assert_eq!(r.qos1_redeliveries, 1);
        assert!(r.reordered.is_empty() && r.unknown.is_empty());
        let report = Report {
            clean: r,
            ..Report::default()
        };
        assert_eq!(report.problems().len(), 2, "{:?}", report.problems());
    }

    #[test]
    fn a_clean_reorder_within_a_connection_is_reported() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let rec = |ms, event| Record { at: at(ms), event };
        let ledger = ledger_from_history(&publisher(&[(1, Q1, true), (3, Q1, true)]));
        let mut h = vec![rec(
            0,
            Event::Connected {
                node: node(1),
                session_present: false,
            },
        )];
        for (ms, seq) in [(10, 3), (20, 1)] {
            h.push(rec(
                ms,
                Event::Received(Packet::Publish(publish_packet(seq as u16, seq, Q1))),
            ));
            h.push(rec(
                ms,
                Event::Delivered {
                    packet_id: seq as u16,
                    topic: format!("chaos/{}", seq % 2),
                    payload: Bytes::from(format!("pub/{seq}")),
                },
            ));
        }
        // Without a SUBACK on it the connection is not judged at all.
        let view = |history| CleanView {
            client: "clean".into(),
            qos: Q1,
            history,
        };
        let r = check_clean(
            t0,
            &|a| a.to_string(),
            &ledger,
            &HashMap::new(),
            &[view(h.clone())],
        );
        assert_eq!((r.windows, r.reordered.len()), (0, 0));
        h.insert(
            1,
            rec(
                1,
                Event::Sent(Packet::Subscribe(starling_codec::Subscribe {
                    packet_id: 9,
                    filters: vec![starling_codec::SubscribeFilter::new("chaos/#".into(), Q1)],
                    properties: Default::default(),
                })),
            ),
        );
        h.insert(
            2,
            rec(
                2,
                Event::Received(Packet::SubAck(starling_codec::SubAck {
                    packet_id: 9,
                    reason_codes: vec![SubAckReasonCode::granted(Q1)],
                    properties: Default::default(),
                })),
            ),
        );
        let r = check_clean(t0, &|a| a.to_string(), &ledger, &HashMap::new(), &[view(h)]);
        assert_eq!(r.windows, 1);
        assert_eq!(r.reordered.len(), 1, "{:?}", r.reordered);
    }
}
