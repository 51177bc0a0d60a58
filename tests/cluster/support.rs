//! What the cluster tests share: cluster defaults, MQTT clients that report failures instead of
//! panicking (nodes die under them), a background publisher that records what was
//! acknowledged, a persistent subscriber that drains its queue, and a seeded random source.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, Packet, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::{ClusterBuilder, RawClient, RecvError, TestCluster};

use crate::common::BIN;

/// How long a test waits for a leader.
pub(crate) const ELECTION: Duration = Duration::from_secs(15);

/// How long a test waits for the nodes to converge.
pub(crate) const CONVERGE: Duration = Duration::from_secs(30);

/// How long a test waits for a PUBACK, a SUBACK or an expected PUBLISH.
pub(crate) const PROMPT: Duration = Duration::from_secs(10);

/// A cluster of `n` nodes with the suite's defaults (50 ms Raft ticks, see the testkit).
pub(crate) fn cluster(n: u64) -> ClusterBuilder {
    ClusterBuilder::new(BIN, n)
}

/// Runs cluster operations (process start/stop, admin HTTP, polling) without stalling the
/// runtime's other tasks.
pub(crate) fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

/// Connects without panicking: `Err` when nothing listens, or the connection is closed
/// before the CONNACK (a node killed or starting).
pub(crate) async fn try_connect(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> Result<(RawClient, ConnAck), String> {
    // RawClient::open panics when nothing listens: probe first, and keep the panic of a node
    // dying in between inside a task.
    tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut c = tokio::spawn(RawClient::open(addr))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let connect = connect_packet(id, clean, ProtocolVersion::V3_1_1, 60, None);
    c.send(&Packet::Connect(Box::new(connect))).await;
    match c.recv().await {
        Ok(Packet::ConnAck(a)) => Ok((c, *a)),
        other => Err(format!("{addr}: no CONNACK: {other:?}")),
    }
}

/// Connects and requires CONNACK 0.
pub(crate) async fn connect(addr: SocketAddr, id: &str, clean: bool) -> (RawClient, bool) {
    let (c, ack) = RawClient::connect(addr, id, clean).await;
    assert_eq!(
        ack.code,
        ConnectReasonCode::Success,
        "CONNACK of {id} at {addr}"
    );
    (c, ack.session_present)
}

/// Sends DISCONNECT and waits until the broker closed the socket.
pub(crate) async fn disconnect(mut c: RawClient) {
    c.send(&Packet::Disconnect(Disconnect::default())).await;
    assert!(
        c.closed_within(PROMPT).await,
        "broker did not close after DISCONNECT"
    );
}

/// A QoS 1 PUBLISH.
pub(crate) fn publish_packet(topic: &str, payload: &str, retain: bool, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id,
        payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
        properties: Default::default(),
    })
}

/// Waits for the PUBACK of `packet_id`, skipping other packets.
pub(crate) async fn wait_puback(
    c: &mut RawClient,
    packet_id: u16,
    within: Duration,
) -> Result<(), RecvError> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.recv_within(left).await? {
            Packet::PubAck(PubAck { packet_id: id, .. }) if id == packet_id => return Ok(()),
            _ => {}
        }
    }
}

/// Publishes at QoS 1 and requires the PUBACK (which, for a retained message or a persistent
/// subscriber's topic, means the message is committed).
pub(crate) async fn publish_acked(c: &mut RawClient, topic: &str, payload: &str, retain: bool) {
    c.send(&publish_packet(topic, payload, retain, 1)).await;
    if let Err(e) = wait_puback(c, 1, PROMPT).await {
        panic!("no PUBACK for {topic} {payload:?}: {e:?}");
    }
}

/// Publishes `messages` at QoS 1 with up to 32 in flight; requires every PUBACK.
pub(crate) async fn publish_all(c: &mut RawClient, messages: &[(String, String)], retain: bool) {
    for chunk in messages.chunks(32) {
        for (i, (topic, payload)) in chunk.iter().enumerate() {
            c.send(&publish_packet(topic, payload, retain, i as u16 + 1))
                .await;
        }
        let mut open: BTreeSet<u16> = (1..=chunk.len() as u16).collect();
        while !open.is_empty() {
            match c.recv_within(PROMPT).await {
                Ok(Packet::PubAck(PubAck { packet_id: id, .. })) => {
                    assert!(open.remove(&id), "unexpected PUBACK {id}")
                }
                Ok(_) => {}
                Err(e) => panic!("PUBACKs missing for packet ids {open:?}: {e:?}"),
            }
        }
    }
}

/// Subscribes `id` as a persistent session (clean = 0) to `filter` at QoS 1 through `addr`
/// and disconnects: from then on, QoS 1 messages matching `filter` queue in the replicated
/// state, and their PUBACK to the publisher waits for that commit.
pub(crate) async fn park_persistent_subscriber(addr: SocketAddr, id: &str, filter: &str) {
    let (mut c, _) = connect(addr, id, false).await;
    assert_eq!(
        c.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await,
        vec![starling_codec::SubAckReasonCode::granted(QoS::AtLeastOnce)]
    );
    disconnect(c).await;
}

/// The sequence number a load message carries.
pub(crate) fn seq_of(p: &Publish) -> u64 {
    std::str::from_utf8(&p.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a sequence number: {:?}", p.payload))
}

/// Resumes persistent session `id` (CONNACK must say the session is present) through `addr`,
/// acknowledges every QoS 1 PUBLISH, and collects the sequence numbers until all of `want`
/// arrived; then waits until nothing more comes for a moment. Returns them in arrival order.
pub(crate) async fn drain_session(
    addr: SocketAddr,
    id: &str,
    want: &BTreeSet<u64>,
    timeout: Duration,
) -> Vec<u64> {
    let (mut c, present) = connect(addr, id, false).await;
    assert!(present, "session {id} must be present at {addr}");
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::new();
    let mut missing = want.clone();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let within = if missing.is_empty() {
            Duration::from_millis(300)
        } else {
            left
        };
        match c.recv_within(within).await {
            Ok(Packet::Publish(p)) => {
                if p.qos != QoS::AtMostOnce {
                    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                }
                let s = seq_of(&p);
                missing.remove(&s);
                got.push(s);
            }
            Ok(_) => {}
            Err(RecvError::Timeout) if missing.is_empty() => break,
            Err(e) => panic!(
                "session {id} at {addr}: {} of {} acknowledged messages missing ({e:?}); \
                 first missing: {:?}",
                missing.len(),
                want.len(),
                missing.iter().take(10).collect::<Vec<_>>()
            ),
        }
    }
    disconnect(c).await;
    got
}

/// Subscribes a fresh clean session to `filter` through `addr` and returns the `n` retained
/// messages it gets (RETAIN set), sorted by topic; fails on anything else within a moment.
pub(crate) async fn retained_on(addr: SocketAddr, filter: &str, n: usize) -> Vec<Publish> {
    let (mut c, _) = connect(addr, "retained-reader", true).await;
    c.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await;
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv_within(PROMPT).await {
            Ok(Packet::Publish(p)) => {
                assert!(
                    p.retain,
                    "{addr}: a retained message must arrive with RETAIN=1"
                );
                if p.qos != QoS::AtMostOnce {
                    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
                }
                got.push(p);
            }
            Ok(other) => panic!("{addr}: unexpected {other:?}"),
            Err(e) => panic!(
                "{addr}: {} of {n} retained messages for {filter}: {e:?}",
                got.len()
            ),
        }
    }
    match c.recv_within(Duration::from_millis(300)).await {
        Err(RecvError::Timeout) => {}
        other => panic!("{addr}: more than {n} retained messages for {filter}: {other:?}"),
    }
    disconnect(c).await;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    got
}

/// A publisher in the background: sequence-numbered QoS 1 messages (payload = the number), one
/// at a time, to `<name>/t/<seq % topics>`, through whichever node of `targets` accepts it
/// (moving to the next on any failure). Records every number that got its PUBACK.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    acked: Shared<u64>,
    failures: Shared<String>,
    task: tokio::task::JoinHandle<LoadReport>,
}

/// A list the publisher task appends to and the test reads.
type Shared<T> = Arc<Mutex<Vec<T>>>;

/// What a [`Load`] did.
#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// Acknowledged sequence numbers.
    pub(crate) acked: Vec<u64>,
    /// Messages sent (acknowledged or not).
    pub(crate) sent: u64,
    /// Why messages went unacknowledged (connection closed, timeout), in order.
    pub(crate) failures: Vec<String>,
}

impl Load {
    /// Starts publishing; `retain` sets RETAIN on every message. `puback_wait` bounds the
    /// wait for each PUBACK (the broker's commit timeout plus slack).
    pub(crate) fn start(
        targets: Vec<SocketAddr>,
        name: &str,
        topics: u64,
        retain: bool,
        puback_wait: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(load_loop(
            targets,
            name.to_string(),
            topics,
            retain,
            puback_wait,
            stop.clone(),
            (acked.clone(), failures.clone()),
        ));
        Load {
            stop,
            acked,
            failures,
            task,
        }
    }

    /// Messages acknowledged so far.
    pub(crate) fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` further messages are acknowledged; on timeout, fails with the
    /// publisher's last failures and the state of every node of `c`.
    pub(crate) async fn wait_more(&self, c: &TestCluster, more: usize, timeout: Duration) {
        let target = self.acked() + more;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acked() < target {
            if tokio::time::Instant::now() >= deadline {
                let failures = self.failures.lock().unwrap().clone();
                let tail = &failures[failures.len().saturating_sub(10)..];
                panic!(
                    "timed out after {timeout:?} waiting for the publisher to have {target} \
                     messages acknowledged ({} are); its last failures: {tail:?}\n{}\n{}",
                    self.acked(),
                    blocking(|| c.describe()),
                    blocking(|| c.log_tails(15)),
                );
            }
            // The poll interval of a deadline wait.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops after the message in flight and returns the report.
    pub(crate) async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("publisher task")
    }
}

/// Topic of load message `seq`.
pub(crate) fn load_topic(name: &str, topics: u64, seq: u64) -> String {
    format!("{name}/t/{}", seq % topics)
}

async fn load_loop(
    targets: Vec<SocketAddr>,
    name: String,
    topics: u64,
    retain: bool,
    puback_wait: Duration,
    stop: Arc<AtomicBool>,
    (acked, failures): (Shared<u64>, Shared<String>),
) -> LoadReport {
    let mut report = LoadReport::default();
    let fail = |why: String| failures.lock().unwrap().push(why);
    let mut seq = 0u64;
    let mut target = 0usize;
    let mut refused_in_a_row = 0;
    let client_id = format!("{name}-pub");
    while !stop.load(Ordering::Relaxed) {
        if refused_in_a_row >= targets.len() {
            // No node takes a connection now (killed, or no leader to commit the CONNECT):
            // a retry pause, not a synchronisation point.
            tokio::time::sleep(Duration::from_millis(20)).await;
            refused_in_a_row = 0;
        }
        let addr = targets[target % targets.len()];
        target += 1;
        let mut c = match try_connect(addr, &client_id, true).await {
            Ok((c, ack)) if ack.code == ConnectReasonCode::Success => c,
            Ok((_, ack)) => {
                fail(format!("{addr}: CONNACK {:?}", ack.code));
                refused_in_a_row += 1;
                continue;
            }
            // Nothing listens there (killed): the next node is tried at once.
            Err(e) => {
                fail(e);
                refused_in_a_row += 1;
                continue;
            }
        };
        refused_in_a_row = 0;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let pid = (seq % 65535) as u16 + 1;
            c.send(&publish_packet(
                &load_topic(&name, topics, seq),
                &seq.to_string(),
                retain,
                pid,
            ))
            .await;
            report.sent += 1;
            match wait_puback(&mut c, pid, puback_wait).await {
                Ok(()) => {
                    acked.lock().unwrap().push(seq);
                    report.acked.push(seq);
                }
                Err(e) => {
                    fail(format!("{addr}: message {seq}: {e:?}"));
                    break;
                }
            }
        }
    }
    report.failures = failures.lock().unwrap().clone();
    report
}

pub(crate) use starling_testkit::Rng;

/// A node that is not the leader.
pub(crate) fn a_follower(c: &TestCluster, leader: u64) -> u64 {
    c.running()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower")
}

/// Prints a measured figure in a form the report can collect (`cargo test -- --nocapture`).
pub(crate) fn measure(what: &str, value: impl std::fmt::Display) {
    println!("MEASURE {what}: {value}");
}

/// A subscriber reading in the background: it acknowledges every QoS 1/2 PUBLISH (the QoS 2
/// flow up to PUBCOMP) and records what arrived, so that a test can publish elsewhere and
/// then wait for a particular message.
pub(crate) struct Collector {
    got: Shared<Publish>,
    closed: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// Client id, for messages.
    pub(crate) id: String,
}

impl Collector {
    /// Connects `id` (CONNACK 0 required) through `addr`, subscribes to `filter` at QoS 1
    /// (SUBACK required: for a tracked clean session or a persistent one, the subscription
    /// is committed then) and starts reading.
    pub(crate) async fn start(addr: SocketAddr, id: &str, clean: bool, filter: &str) -> Collector {
        let (mut c, _) = connect_when_ready(addr, id, clean).await;
        assert_eq!(
            c.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await,
            vec![starling_codec::SubAckReasonCode::granted(QoS::AtLeastOnce)],
            "SUBACK of {id} at {addr}"
        );
        Self::reading(c, id)
    }

    /// Resumes persistent session `id` through `addr` (the session must be present) and
    /// starts reading what it had queued and what comes next.
    pub(crate) async fn resume(addr: SocketAddr, id: &str) -> Collector {
        let (c, present) = connect_when_ready(addr, id, false).await;
        assert!(present, "session {id} must be present at {addr}");
        Self::reading(c, id)
    }

    fn reading(mut c: RawClient, id: &str) -> Collector {
        let got: Shared<Publish> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (g, cl) = (got.clone(), closed.clone());
        let task = tokio::spawn(async move {
            loop {
                match c.recv_within(Duration::from_secs(3600)).await {
                    Ok(Packet::Publish(p)) => {
                        match p.qos {
                            QoS::AtMostOnce => {}
                            QoS::AtLeastOnce => {
                                c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await
                            }
                            QoS::ExactlyOnce => {
                                c.send(&Packet::PubRec(PubRec::new(p.packet_id))).await
                            }
                        }
                        g.lock().unwrap().push(p);
                    }
                    Ok(Packet::PubRel(PubRel { packet_id: id, .. })) => {
                        c.send(&Packet::PubComp(PubComp::new(id))).await
                    }
                    Ok(_) | Err(RecvError::Timeout) => {}
                    Err(RecvError::Closed) | Err(RecvError::Decode(_)) => {
                        cl.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
        Collector {
            got,
            closed,
            task,
            id: id.to_string(),
        }
    }

    /// Every PUBLISH received so far.
    pub(crate) fn received(&self) -> Vec<Publish> {
        self.got.lock().unwrap().clone()
    }

    /// How many PUBLISHes received so far carry `payload`.
    pub(crate) fn count_payload(&self, payload: &str) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|p| &p.payload[..] == payload.as_bytes())
            .count()
    }

    /// True once the broker closed the connection.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Waits until `cond` holds for what was received; `Err` names `what` and says whether
    /// the connection is still open.
    pub(crate) async fn wait(
        &self,
        within: Duration,
        what: &str,
        cond: impl Fn(&[Publish]) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if cond(&self.got.lock().unwrap()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let got = self.got.lock().unwrap();
                let last: Vec<String> = got[got.len().saturating_sub(5)..]
                    .iter()
                    .map(|p| format!("{} {:?}", p.topic, String::from_utf8_lossy(&p.payload)))
                    .collect();
                return Err(format!(
                    "{}: no {what} within {within:?} ({} PUBLISHes received, the last: {last:?}; \
                     connection {})",
                    self.id,
                    got.len(),
                    if self.is_closed() {
                        "closed by the broker"
                    } else {
                        "open"
                    }
                ));
            }
            // The poll interval of a deadline wait.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for a PUBLISH carrying `payload`.
    pub(crate) async fn wait_payload(&self, payload: &str, within: Duration) -> Result<(), String> {
        self.wait(within, &format!("message {payload:?}"), |got| {
            got.iter().any(|p| &p.payload[..] == payload.as_bytes())
        })
        .await
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes one QoS 1 message through `addr` from a fresh clean client `id` and requires its
/// PUBACK (so the node accepted responsibility for it).
pub(crate) async fn publish_once(addr: SocketAddr, id: &str, topic: &str, payload: &str) {
    let (mut p, _) = connect_when_ready(addr, id, true).await;
    publish_acked(&mut p, topic, payload, false).await;
    disconnect(p).await;
}

/// Publishes one QoS 0 message through `addr` from a fresh clean client `id` (nothing
/// confirms it: the test waits for it at the subscriber).
pub(crate) async fn publish_qos0_once(addr: SocketAddr, id: &str, topic: &str, payload: &str) {
    let (mut p, _) = connect_when_ready(addr, id, true).await;
    p.publish(topic, payload.as_bytes(), QoS::AtMostOnce, false, 0)
        .await;
    disconnect(p).await;
}

/// The log line of node `id` (since its last start) that says it installed a snapshot from
/// the leader, if any.
pub(crate) fn snapshot_install_line(c: &TestCluster, id: u64) -> Option<String> {
    c.node(id)
        .log_since_start()
        .into_iter()
        .find(|l| l.contains("installing snapshot from the leader"))
}

/// Waits until every running node has applied up to the leader's commit index (taken now);
/// returns, per node, its applied index and state digest. Unlike
/// [`TestCluster::wait_converged`] it does not require equal digests, so a test can say
/// which node diverged.
pub(crate) fn applied_everywhere(c: &TestCluster) -> Vec<(u64, u64, String)> {
    let leader = c.wait_for_leader(ELECTION);
    let target = c.status(leader)["commit_index"].as_u64().unwrap_or(0);
    let mut out = Vec::new();
    c.wait(
        CONVERGE,
        &format!("every running node to apply up to the commit index {target}"),
        || {
            out.clear();
            for id in c.running() {
                let Ok(s) = c.try_status(id) else {
                    return false;
                };
                let applied = s["applied_index"].as_u64().unwrap_or(0);
                let digest = s["state_digest"].as_str().unwrap_or("").to_string();
                out.push((id, applied, digest));
            }
            let first = out.first().map(|(_, a, _)| *a);
            first.is_some_and(|a| a >= target) && out.iter().all(|(_, a, _)| Some(*a) == first)
        },
    );
    out
}

/// The number after `key` in a log line (`index=57 ...`), if any.
pub(crate) fn log_field(line: &str, key: &str) -> Option<u64> {
    let plain = crate::common::plain(line);
    let from = plain.find(key)? + key.len();
    plain[from..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// Connects like [`connect`], but retries (within [`ELECTION`]) while the node refuses with
/// CONNACK 3 or closes the connection: right after a kill or a restart, a leader the nodes
/// agreed on may still be replaced, and a CONNECT proposed in between fails. The test's
/// subject is what happens after the setup, not this.
pub(crate) async fn connect_when_ready(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> (RawClient, bool) {
    connect_packet_when_ready(
        addr,
        connect_packet(id, clean, ProtocolVersion::V3_1_1, 60, None),
    )
    .await
}

/// [`connect_when_ready`] with a CONNECT of the caller's (e.g. with a will).
pub(crate) async fn connect_packet_when_ready(
    addr: SocketAddr,
    connect: starling_codec::Connect,
) -> (RawClient, bool) {
    let deadline = tokio::time::Instant::now() + ELECTION;
    loop {
        let why = match try_connect_with(addr, connect.clone()).await {
            Ok((c, ack)) if ack.code == ConnectReasonCode::Success => {
                return (c, ack.session_present)
            }
            Ok((_, ack)) => format!("CONNACK {:?}", ack.code),
            Err(e) => e,
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} could not connect to {addr} within {ELECTION:?}: {why}",
            connect.client_id
        );
        // A retry pause, not a synchronisation point.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`try_connect`] with a CONNECT of the caller's.
async fn try_connect_with(
    addr: SocketAddr,
    connect: starling_codec::Connect,
) -> Result<(RawClient, ConnAck), String> {
    tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut c = tokio::spawn(RawClient::open(addr))
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    c.send(&Packet::Connect(Box::new(connect))).await;
    match c.recv().await {
        Ok(Packet::ConnAck(a)) => Ok((c, *a)),
        other => Err(format!("{addr}: no CONNACK: {other:?}")),
    }
}

/// Like [`park_persistent_subscriber`], retrying the CONNECT as [`connect_when_ready`] does.
pub(crate) async fn park_when_ready(addr: SocketAddr, id: &str, filter: &str) {
    let (mut c, _) = connect_when_ready(addr, id, false).await;
    assert_eq!(
        c.subscribe(1, &[(filter, QoS::AtLeastOnce)]).await,
        vec![starling_codec::SubAckReasonCode::granted(QoS::AtLeastOnce)],
        "SUBACK of {id} at {addr}"
    );
    disconnect(c).await;
}

/// Polls `cond` (blocking) until it holds or `within` passed; true if it held. For waits whose
/// failure message the caller writes itself.
pub(crate) fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        // The poll interval of a deadline wait.
        std::thread::sleep(Duration::from_millis(20));
    }
}
