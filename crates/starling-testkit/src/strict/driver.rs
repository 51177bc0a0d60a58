//! The driver task: one connection at a time, the session state kept across connections, the
//! QoS flows, the stage hooks and the failover through the node list.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use starling_codec::{
    Connect, ConnectReasonCode, Decoder, Disconnect, Packet, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, SubAckReasonCode, Subscribe, SubscribeFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::history::{Delivery, Event, Inner, Record};
use super::{Completion, Held, Release, Stage, StrictConfig};

pub(super) type Reply<T> = oneshot::Sender<Result<T, String>>;

pub(super) enum Cmd {
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        done: Reply<Completion>,
    },
    Subscribe {
        filters: Vec<(String, QoS)>,
        done: Reply<Vec<SubAckReasonCode>>,
    },
    Hold(Option<(Stage, Option<String>)>),
    Release(Release),
    Reconnect {
        start_at: Option<usize>,
        done: Reply<SocketAddr>,
    },
    Disconnect {
        done: Reply<()>,
    },
}

/// An outbound QoS 1/2 message in flight.
struct OutFlight {
    order: u64,
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    /// PUBREC read: PUBREL is what is owed.
    released: bool,
    first_sent: Option<Instant>,
    publish_writes: u32,
    done: Option<Reply<Completion>>,
}

/// A SUBSCRIBE awaiting its SUBACK: its filters (resent on resume) and who waits (nobody for
/// the subscription a clean-mode client renews on a new connection).
type PendingSub = (Vec<(String, QoS)>, Option<Reply<Vec<SubAckReasonCode>>>);

struct Queued {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    done: Reply<Completion>,
}

struct Conn {
    node: SocketAddr,
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    last_recv: Instant,
    last_send: Instant,
    ping_outstanding: bool,
}

/// A pause in progress: where, and the packet owed when it ends with [`Release::Continue`].
struct Paused {
    owed: Option<Packet>,
}

/// Why the driver woke up.
enum Wake {
    Cmd(Option<Cmd>),
    Read(std::io::Result<usize>),
    Timer,
}

pub(super) struct Driver {
    cfg: StrictConfig,
    inner: Arc<Inner>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    /// Commands that arrived during a pause.
    deferred: VecDeque<Cmd>,
    conn: Option<Conn>,
    node_idx: usize,
    connections: u64,
    next_pid: u16,
    next_order: u64,
    out: HashMap<u16, OutFlight>,
    queue: VecDeque<Queued>,
    /// Inbound QoS 2 ids awaiting PUBREL, with their topic.
    inbound: BTreeMap<u16, String>,
    /// SUBSCRIBEs without SUBACK.
    subs: BTreeMap<u16, PendingSub>,
    /// Filters the broker granted, in the order first granted (a later grant of the same
    /// filter updates its QoS): a clean session loses them with its connection, so clean mode
    /// subscribes to them again on every new connection.
    granted: Vec<(String, QoS)>,
    hold: Option<(Stage, Option<String>)>,
    held: Option<Paused>,
    stopped: bool,
}

/// The next packet id after `last` that is not in use: ids cycle through 1..=65535 and an id
/// still in flight is skipped. `None` when all 65535 are in use.
pub fn next_free_packet_id(last: u16, in_use: impl Fn(u16) -> bool) -> Option<u16> {
    let mut pid = last;
    for _ in 0..65535 {
        pid = if pid == 65535 { 1 } else { pid + 1 };
        if !in_use(pid) {
            return Some(pid);
        }
    }
    None
}

impl Driver {
    /// A driver for `cfg` that will connect first to node `first` (an index into the list).
    pub(super) fn new(
        cfg: StrictConfig,
        inner: Arc<Inner>,
        cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        first: usize,
    ) -> Driver {
        let node_idx = first % cfg.nodes.len();
        Driver {
            cfg,
            inner,
            cmd_rx,
            deferred: VecDeque::new(),
            conn: None,
            node_idx,
            connections: 0,
            next_pid: 0,
            next_order: 0,
            out: HashMap::new(),
            queue: VecDeque::new(),
            inbound: BTreeMap::new(),
            subs: BTreeMap::new(),
            granted: Vec::new(),
            hold: None,
            held: None,
            stopped: false,
        }
    }

    fn record(&self, e: Event) {
        self.inner.record(e);
    }

    fn publish_observed(&self) {
        let mut o = self.inner.lock();
        o.outbound = self.out.len() + self.queue.len();
        o.inbound = self.inbound.keys().copied().collect();
        o.connected = self.conn.as_ref().map(|c| c.node);
    }

    fn fatal(&mut self, why: &str) {
        let why = why.to_string();
        self.inner.lock().fatal = Some(why.clone());
        for (_, f) in self.out.drain() {
            if let Some(d) = f.done {
                let _ = d.send(Err(why.clone()));
            }
        }
        for q in self.queue.drain(..) {
            let _ = q.done.send(Err(why.clone()));
        }
        for (_, (_, d)) in std::mem::take(&mut self.subs) {
            if let Some(d) = d {
                let _ = d.send(Err(why.clone()));
            }
        }
        self.stopped = true;
    }

    pub(super) async fn run(mut self) {
        while !self.stopped {
            if self.conn.is_none() {
                let start = self.node_idx + 1;
                if let Err(e) = self.establish(start).await {
                    self.fatal(&e);
                    break;
                }
            }
            if self.held.is_some() {
                match self.cmd_rx.recv().await {
                    None => break,
                    Some(Cmd::Release(how)) => self.release(how).await,
                    Some(Cmd::Hold(h)) => self.hold = h,
                    Some(c) => self.deferred.push_back(c),
                }
                continue;
            }
            if let Some(c) = self.deferred.pop_front() {
                self.on_cmd(c).await;
                continue;
            }
            match self.decode_buffered() {
                Ok(Some(p)) => {
                    self.on_packet(p).await;
                    continue;
                }
                Ok(None) => {}
                Err(why) => {
                    self.lose(why);
                    continue;
                }
            }
            let timer = self.next_timer();
            let wake = {
                let Some(conn) = self.conn.as_mut() else {
                    continue;
                };
                conn.rbuf.reserve(4096);
                tokio::select! {
                    c = self.cmd_rx.recv() => Wake::Cmd(c),
                    r = conn.stream.read_buf(&mut conn.rbuf) => Wake::Read(r),
                    _ = tokio::time::sleep_until(timer.into()) => Wake::Timer,
                }
            };
            match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => self.on_cmd(c).await,
                Wake::Read(Ok(0)) => self.lose("closed by the broker".into()),
                Wake::Read(Ok(_)) => {
                    if let Some(c) = self.conn.as_mut() {
                        c.last_recv = Instant::now();
                    }
                }
                Wake::Read(Err(e)) => self.lose(format!("read: {e}")),
                Wake::Timer => self.on_timer().await,
            }
        }
        self.publish_observed();
    }

    /// Whether the client waits for an answer on the current connection.
    fn expecting(&self) -> bool {
        !self.out.is_empty()
            || !self.subs.is_empty()
            || self.conn.as_ref().is_some_and(|c| c.ping_outstanding)
    }

    fn next_timer(&self) -> Instant {
        let Some(c) = &self.conn else {
            return Instant::now();
        };
        let ping = c.last_send.max(c.last_recv) + self.cfg.ping_interval;
        if self.expecting() {
            ping.min(c.last_recv + self.cfg.response_timeout)
        } else {
            ping
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let Some(c) = &self.conn else { return };
        if self.expecting() && now >= c.last_recv + self.cfg.response_timeout {
            let why = format!("no answer within {:?}", self.cfg.response_timeout);
            return self.lose(why);
        }
        if !c.ping_outstanding
            && now >= c.last_send.max(c.last_recv) + self.cfg.ping_interval
            && self.write(&Packet::PingReq).await
        {
            if let Some(c) = self.conn.as_mut() {
                c.ping_outstanding = true;
            }
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<Packet>, String> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(None);
        };
        c.decoder
            .decode(&mut c.rbuf)
            .map_err(|e| format!("undecodable packet: {e}"))
    }

    /// Drops the connection (the session state stays).
    fn lose(&mut self, why: String) {
        if let Some(c) = self.conn.take() {
            self.record(Event::Lost {
                node: c.node,
                why,
                last_read: c.last_recv,
            });
        }
        self.publish_observed();
    }

    /// Writes a packet; on failure the connection is lost and false returned.
    async fn write(&mut self, p: &Packet) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let mut buf = BytesMut::new();
        if let Err(e) = p.encode(ProtocolVersion::V3_1_1, &mut buf) {
            panic!("strict client cannot encode {p:?}: {e}");
        }
        let r = tokio::time::timeout(self.cfg.response_timeout, c.stream.write_all(&buf)).await;
        match r {
            Ok(Ok(())) => {
                c.last_send = Instant::now();
                if !matches!(p, Packet::PingReq | Packet::Disconnect(_)) {
                    self.record(Event::Sent(p.clone()));
                }
                true
            }
            Ok(Err(e)) => {
                self.lose(format!("write: {e}"));
                false
            }
            Err(_) => {
                self.lose("write timed out".into());
                false
            }
        }
    }

    /// Arms `held` if the armed hold matches.
    fn maybe_pause(&mut self, stage: Stage, packet_id: u16, topic: &str, owed: Option<Packet>) {
        let matches = self
            .hold
            .as_ref()
            .is_some_and(|(s, t)| *s == stage && t.as_deref().is_none_or(|t| t == topic));
        if !matches {
            // Not paused: the caller writes what is owed.
            return;
        }
        let Some(node) = self.conn.as_ref().map(|c| c.node) else {
            return;
        };
        self.hold = None;
        let h = Held {
            stage,
            packet_id,
            topic: topic.to_string(),
            node,
        };
        self.record(Event::Paused(h.clone()));
        self.held = Some(Paused { owed });
        self.inner.held.send_replace(Some(h));
    }

    fn is_paused(&self) -> bool {
        self.held.is_some()
    }

    async fn release(&mut self, how: Release) {
        let Some(p) = self.held.take() else { return };
        self.inner.held.send_replace(None);
        match how {
            Release::Continue => {
                if let Some(owed) = p.owed {
                    let stage_after = match &owed {
                        Packet::PubRel(PubRel { packet_id: pid, .. }) => {
                            Some((Stage::PubRelSent, *pid))
                        }
                        Packet::PubRec(PubRec { packet_id: pid, .. }) => {
                            Some((Stage::PubRecSent, *pid))
                        }
                        _ => None,
                    };
                    if self.write(&owed).await {
                        if let Some((stage, pid)) = stage_after {
                            let topic = self.topic_of(stage, pid);
                            self.maybe_pause(stage, pid, &topic, None);
                        }
                    }
                }
                self.fill_window().await;
            }
            Release::Reconnect => self.lose("abandoned by the test (Release::Reconnect)".into()),
        }
    }

    fn topic_of(&self, stage: Stage, pid: u16) -> String {
        match stage {
            Stage::PublishSent | Stage::PubRecReceived | Stage::PubRelSent => {
                self.out.get(&pid).map(|f| f.topic.clone())
            }
            _ => self.inbound.get(&pid).cloned(),
        }
        .unwrap_or_default()
    }

    /// Tries the nodes from index `start` (rotating) until one accepts or the deadline; then
    /// resumes the session.
    pub(super) async fn establish(&mut self, start: usize) -> Result<(), String> {
        let n = self.cfg.nodes.len();
        let deadline = Instant::now() + self.cfg.failover_deadline;
        let mut i = start % n;
        let mut tried = 0usize;
        let mut pause = self.cfg.retry_pause;
        loop {
            let addr = self.cfg.nodes[i];
            self.record(Event::Connecting(addr));
            match self.try_connect(addr).await {
                Ok((conn, present)) => {
                    self.conn = Some(conn);
                    self.node_idx = i;
                    self.connections += 1;
                    self.record(Event::Connected {
                        node: addr,
                        session_present: present,
                    });
                    if self.connections > 1 && !present && !self.cfg.clean_session {
                        self.record(Event::SessionLost(addr));
                    }
                    if self.connections > 1 && self.cfg.clean_session {
                        self.start_clean_session();
                    }
                    self.publish_observed();
                    self.resume().await;
                    return Ok(());
                }
                Err(why) => self.record(Event::Refused { node: addr, why }),
            }
            i = (i + 1) % n;
            tried += 1;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no node accepted within {:?}",
                    self.cfg.client_id, self.cfg.failover_deadline
                ));
            }
            if tried.is_multiple_of(n) {
                // Every node refused: a retry pause before the next round, longer each time.
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(self.cfg.retry_pause_max.max(self.cfg.retry_pause));
            }
        }
    }

    async fn try_connect(&self, addr: SocketAddr) -> Result<(Conn, bool), String> {
        let cfg = &self.cfg;
        let attempt = async {
            let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let connect = Packet::Connect(Box::new(Connect {
                protocol: ProtocolVersion::V3_1_1,
                clean_start: cfg.clean_session,
                keep_alive: cfg.keep_alive,
                client_id: cfg.client_id.as_str().into(),
                will: None,
                username: None,
                password: None,
                properties: Default::default(),
            }));
            let mut buf = BytesMut::new();
            connect
                .encode(ProtocolVersion::V3_1_1, &mut buf)
                .map_err(|e| e.to_string())?;
            stream.write_all(&buf).await.map_err(|e| e.to_string())?;
            let mut decoder = Decoder::new(usize::MAX >> 4);
            decoder.set_protocol(ProtocolVersion::V3_1_1);
            let mut rbuf = BytesMut::new();
            loop {
                match decoder.decode(&mut rbuf) {
                    Ok(Some(Packet::ConnAck(a))) if a.code == ConnectReasonCode::Success => {
                        let now = Instant::now();
                        let conn = Conn {
                            node: addr,
                            stream,
                            rbuf,
                            decoder,
                            last_recv: now,
                            last_send: now,
                            ping_outstanding: false,
                        };
                        return Ok((conn, a.session_present));
                    }
                    Ok(Some(Packet::ConnAck(a))) => {
                        return Err(format!("CONNACK {}", a.code.v3_return_code()))
                    }
                    Ok(Some(p)) => return Err(format!("expected CONNACK, got {p:?}")),
                    Ok(None) => {}
                    Err(e) => return Err(format!("undecodable answer: {e}")),
                }
                rbuf.reserve(4096);
                match stream.read_buf(&mut rbuf).await {
                    Ok(0) => return Err("closed before CONNACK".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        };
        match tokio::time::timeout(cfg.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no CONNACK within {:?}", cfg.connect_timeout)),
        }
    }

    /// Clean mode, on a new connection: the broker started a new session, so what the old one
    /// held is gone on both sides (MQTT 3.1.1, 3.1.2.4). Messages in flight fail, inbound QoS 2
    /// ids are forgotten, and the granted filters are to be subscribed again: one SUBSCRIBE,
    /// written by [`Driver::resume`] with the application's own pending ones.
    fn start_clean_session(&mut self) {
        let why = "clean session: the connection ended before the message completed";
        for (_, f) in self.out.drain() {
            if let Some(d) = f.done {
                let _ = d.send(Err(why.into()));
            }
        }
        self.inbound.clear();
        // A renewal the last connection did not see acknowledged is replaced by this one.
        self.subs.retain(|_, (_, done)| done.is_some());
        if !self.granted.is_empty() {
            let pid = self.alloc_pid();
            self.subs.insert(pid, (self.granted.clone(), None));
        }
    }

    /// After CONNACK: resend what is unacknowledged, in order, then pending SUBSCRIBEs, then
    /// fill the window.
    async fn resume(&mut self) {
        let mut flights: Vec<(u64, u16)> = self.out.iter().map(|(p, f)| (f.order, *p)).collect();
        flights.sort_unstable();
        for (_, pid) in flights {
            let Some(f) = self.out.get_mut(&pid) else {
                continue;
            };
            let p = if f.released {
                Packet::PubRel(PubRel::new(pid))
            } else {
                f.publish_writes += 1;
                Packet::Publish(Publish {
                    dup: f.first_sent.is_some(),
                    qos: f.qos,
                    retain: f.retain,
                    topic: f.topic.as_str().into(),
                    packet_id: pid,
                    payload: f.payload.clone(),
                    properties: Default::default(),
                })
            };
            if f.first_sent.is_none() {
                f.first_sent = Some(Instant::now());
            }
            if !self.write(&p).await {
                return;
            }
        }
        let subs: Vec<(u16, Vec<(String, QoS)>)> = self
            .subs
            .iter()
            .map(|(pid, (f, _))| (*pid, f.clone()))
            .collect();
        for (pid, filters) in subs {
            if !self.write(&subscribe_packet(pid, &filters)).await {
                return;
            }
        }
        self.fill_window().await;
    }

    fn alloc_pid(&mut self) -> u16 {
        let pid = next_free_packet_id(self.next_pid, |p| {
            self.out.contains_key(&p) || self.subs.contains_key(&p)
        })
        .expect("fewer than 65535 packets in flight");
        self.next_pid = pid;
        pid
    }

    /// Starts queued publishes while the window has room.
    async fn fill_window(&mut self) {
        while self.out.len() < self.cfg.window.max(1) && !self.is_paused() && self.conn.is_some() {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let pid = self.alloc_pid();
            let order = self.next_order;
            self.next_order += 1;
            let p = Packet::Publish(Publish {
                dup: false,
                qos: q.qos,
                retain: q.retain,
                topic: q.topic.as_str().into(),
                packet_id: pid,
                payload: q.payload.clone(),
                properties: Default::default(),
            });
            self.out.insert(
                pid,
                OutFlight {
                    order,
                    topic: q.topic.clone(),
                    payload: q.payload,
                    qos: q.qos,
                    retain: q.retain,
                    released: false,
                    first_sent: Some(Instant::now()),
                    publish_writes: 1,
                    done: Some(q.done),
                },
            );
            self.publish_observed();
            if !self.write(&p).await {
                return;
            }
            self.maybe_pause(Stage::PublishSent, pid, &q.topic, None);
        }
    }

    async fn on_cmd(&mut self, c: Cmd) {
        match c {
            Cmd::Publish {
                topic,
                payload,
                qos,
                retain,
                done,
            } => {
                if qos == QoS::AtMostOnce {
                    let p = Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain,
                        topic: topic.as_str().into(),
                        packet_id: 0,
                        payload,
                        properties: Default::default(),
                    });
                    let now = Instant::now();
                    let r = if self.write(&p).await {
                        Ok(Completion {
                            packet_id: 0,
                            first_sent: Some(now),
                            completed: now,
                            publish_writes: 1,
                        })
                    } else {
                        Err("connection lost writing a QoS 0 PUBLISH".into())
                    };
                    let _ = done.send(r);
                    return;
                }
                self.queue.push_back(Queued {
                    topic,
                    payload,
                    qos,
                    retain,
                    done,
                });
                self.publish_observed();
                self.fill_window().await;
            }
            Cmd::Subscribe { filters, done } => {
                let pid = self.alloc_pid();
                let p = subscribe_packet(pid, &filters);
                self.subs.insert(pid, (filters, Some(done)));
                self.write(&p).await;
            }
            Cmd::Hold(h) => self.hold = h,
            Cmd::Release(how) => self.release(how).await,
            Cmd::Reconnect { start_at, done } => {
                self.write(&Packet::Disconnect(Disconnect::default())).await;
                self.lose("reconnect asked by the test".into());
                let start = start_at.unwrap_or(self.node_idx + 1);
                match self.establish(start).await {
                    Ok(()) => {
                        let node = self.conn.as_ref().map(|c| c.node).expect("connected");
                        let _ = done.send(Ok(node));
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.clone()));
                        self.fatal(&e);
                    }
                }
            }
            Cmd::Disconnect { done } => {
                self.write(&Packet::Disconnect(Disconnect::default())).await;
                if let Some(mut c) = self.conn.take() {
                    let _ = c.stream.shutdown().await;
                    self.record(Event::Lost {
                        node: c.node,
                        why: "DISCONNECT".into(),
                        last_read: c.last_recv,
                    });
                }
                self.stopped = true;
                let _ = done.send(Ok(()));
            }
        }
    }

    async fn on_packet(&mut self, p: Packet) {
        if let Some(c) = self.conn.as_mut() {
            c.last_recv = Instant::now();
        }
        if p != Packet::PingResp {
            self.record(Event::Received(p.clone()));
        }
        match p {
            Packet::PingResp => {
                if let Some(c) = self.conn.as_mut() {
                    c.ping_outstanding = false;
                }
            }
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(PubAck { packet_id: pid, .. }) => {
                if self
                    .out
                    .get(&pid)
                    .is_some_and(|f| f.qos == QoS::AtLeastOnce)
                {
                    self.complete(pid);
                    self.fill_window().await;
                } else {
                    self.record(Event::UnexpectedAck(Packet::PubAck(PubAck::new(pid))));
                }
            }
            Packet::PubRec(PubRec { packet_id: pid, .. }) => {
                let Some(f) = self.out.get_mut(&pid).filter(|f| f.qos == QoS::ExactlyOnce) else {
                    self.record(Event::UnexpectedAck(Packet::PubRec(PubRec::new(pid))));
                    return;
                };
                let first = !f.released;
                f.released = true;
                let topic = f.topic.clone();
                if first {
                    self.maybe_pause(
                        Stage::PubRecReceived,
                        pid,
                        &topic,
                        Some(Packet::PubRel(PubRel::new(pid))),
                    );
                    if self.is_paused() {
                        return;
                    }
                }
                // A repeated PUBREC (after a resent PUBLISH) is answered with PUBREL again.
                if self.write(&Packet::PubRel(PubRel::new(pid))).await && first {
                    self.maybe_pause(Stage::PubRelSent, pid, &topic, None);
                }
            }
            Packet::PubComp(PubComp { packet_id: pid, .. }) => {
                if self.out.get(&pid).is_some_and(|f| f.released) {
                    self.complete(pid);
                    self.fill_window().await;
                } else {
                    self.record(Event::UnexpectedAck(Packet::PubComp(PubComp::new(pid))));
                }
            }
            Packet::PubRel(PubRel { packet_id: pid, .. }) => match self.inbound.remove(&pid) {
                Some(topic) => {
                    self.publish_observed();
                    self.maybe_pause(
                        Stage::PubRelReceived,
                        pid,
                        &topic,
                        Some(Packet::PubComp(PubComp::new(pid))),
                    );
                    if !self.is_paused() {
                        self.write(&Packet::PubComp(PubComp::new(pid))).await;
                    }
                }
                None => {
                    self.record(Event::UnknownPubRel(pid));
                    self.write(&Packet::PubComp(PubComp::new(pid))).await;
                }
            },
            Packet::SubAck(a) => {
                if let Some((filters, done)) = self.subs.remove(&a.packet_id) {
                    self.note_granted(&filters, &a.reason_codes);
                    if let Some(done) = done {
                        let _ = done.send(Ok(a.reason_codes));
                    }
                }
            }
            other => self.lose(format!("unexpected packet from the broker: {other:?}")),
        }
    }

    /// Records the filters of a SUBSCRIBE that `codes` granted.
    fn note_granted(&mut self, filters: &[(String, QoS)], codes: &[SubAckReasonCode]) {
        for ((filter, qos), code) in filters.iter().zip(codes) {
            if *code == SubAckReasonCode::UnspecifiedError {
                continue;
            }
            match self.granted.iter_mut().find(|(f, _)| f == filter) {
                Some(g) => g.1 = *qos,
                None => self.granted.push((filter.clone(), *qos)),
            }
        }
    }

    async fn on_publish(&mut self, p: Publish) {
        let node = self.conn.as_ref().map(|c| c.node);
        let Some(node) = node else { return };
        let topic = p.topic.to_string();
        if p.qos == QoS::ExactlyOnce && self.inbound.contains_key(&p.packet_id) {
            self.record(Event::DuplicateSuppressed(p.packet_id));
            self.write(&Packet::PubRec(PubRec::new(p.packet_id))).await;
            return;
        }
        if p.qos == QoS::ExactlyOnce {
            self.inbound.insert(p.packet_id, topic.clone());
        }
        {
            let mut o = self.inner.lock();
            o.history.push(Record {
                at: Instant::now(),
                event: Event::Delivered {
                    packet_id: p.packet_id,
                    topic: topic.clone(),
                    payload: p.payload.clone(),
                },
            });
            o.deliveries.push(Delivery {
                at: Instant::now(),
                node,
                topic: topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos,
                dup: p.dup,
                retain: p.retain,
                packet_id: p.packet_id,
            });
        }
        self.publish_observed();
        let ack = match p.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(PubAck::new(p.packet_id)),
            QoS::ExactlyOnce => Packet::PubRec(PubRec::new(p.packet_id)),
        };
        self.maybe_pause(
            Stage::PublishReceived,
            p.packet_id,
            &topic,
            Some(ack.clone()),
        );
        if self.is_paused() {
            return;
        }
        if self.write(&ack).await && p.qos == QoS::ExactlyOnce {
            self.maybe_pause(Stage::PubRecSent, p.packet_id, &topic, None);
        }
    }

    fn complete(&mut self, pid: u16) {
        let Some(f) = self.out.remove(&pid) else {
            return;
        };
        self.record(Event::Completed {
            packet_id: pid,
            topic: f.topic.clone(),
            payload: f.payload.clone(),
        });
        if let Some(d) = f.done {
            let _ = d.send(Ok(Completion {
                packet_id: pid,
                first_sent: f.first_sent,
                completed: Instant::now(),
                publish_writes: f.publish_writes,
            }));
        }
        self.publish_observed();
    }
}

fn subscribe_packet(pid: u16, filters: &[(String, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        filters: filters
            .iter()
            .map(|(f, q)| SubscribeFilter::new(f.as_str().into(), *q))
            .collect(),
        properties: Default::default(),
    })
}
