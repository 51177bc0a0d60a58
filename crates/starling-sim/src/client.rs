//! Simulated strict MQTT clients: they follow the protocol to the letter, keep their session
//! state across connections (persistent sessions), fail over to other nodes on their own, and
//! record every packet that matters in the `History`.
//!
//! A client is a state machine: the world hands it packets, connection losses and its turn to
//! act; it answers with [`ClientOut`]s (open a connection, send a packet, close, abandon).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use bytestring::ByteString;
use starling_broker::messages::SessionSettings;
use starling_codec::{
    ConnectReasonCode, Disconnect, LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec,
    PubRel, Publish, QoS, Subscribe, SubscribeFilter,
};

use crate::history::{Ev, History, MsgId};
use crate::rng::SimRng;

/// Index of a client in the world.
pub type ClientIdx = usize;

/// What a client publishes.
#[derive(Clone, Debug)]
pub struct PublishSpec {
    /// Topics it picks from.
    pub topics: Vec<String>,
    /// QoS levels it picks from.
    pub qos: Vec<QoS>,
    /// Publish with RETAIN (on its own topic `r/<client>`, one at a time).
    pub retain: bool,
    /// Messages it publishes before it stops.
    pub quota: u64,
    /// Unacknowledged publishes it keeps in flight at most.
    pub window: usize,
}

/// Who a client is and what it does.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// Client id.
    pub name: String,
    /// Clean session.
    pub clean: bool,
    /// Filters it subscribes to (a clean session on every connection, a persistent one once).
    pub subscriptions: Vec<(String, QoS)>,
    /// What it publishes, if anything.
    pub publishes: Option<PublishSpec>,
    /// Its connections carry a will (`will/<client>`, QoS 2, payload naming the connection).
    pub will: bool,
    /// When it dies (ms): from then on it sends nothing, answers nothing, never reconnects; its
    /// broker finds out by the keep-alive (a device that lost power).
    pub dies_at: Option<u64>,
    /// MQTT 5: the session settings its CONNECTs carry (Session Expiry Interval, Will Delay
    /// Interval); `None`: a 3.1.1 client.
    pub session: Option<SessionSettings>,
}

/// The keep-alive every client asks for, seconds.
pub const KEEP_ALIVE_SECS: u16 = 5;

/// No client is kept from its session this long in a run (faults stop after 40 s, and no
/// outage lasts long): an MQTT 5 session with at least this expiry must never be lost.
pub const NEVER_EXPIRES_IN_A_RUN_SECS: u32 = 60;

impl ClientSpec {
    /// Its MQTT 5 session may expire while it is away in a run: a CONNACK without a session is
    /// then no violation.
    pub fn session_may_expire(&self) -> bool {
        self.session
            .is_some_and(|s| s.expiry_secs < NEVER_EXPIRES_IN_A_RUN_SECS)
    }

    /// Its wills wait for a delay: a will its client cancelled by reconnecting is not owed.
    pub fn will_delayed(&self) -> bool {
        self.session.is_some_and(|s| s.will_delay_secs > 0)
    }
}

/// What a client asks the world to do.
// Most are packets (as large as a 5.0 PUBLISH with its properties): boxing them would cost an
// allocation each and save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOut {
    /// Open a new connection (generation `gen`) to a node the world picks.
    Open {
        /// The connection's generation.
        gen: u64,
    },
    /// Send a packet on the current connection.
    Send(Packet),
    /// Close the current connection (after a DISCONNECT it sent).
    Close,
    /// Stop using the current connection without closing it: the broker only learns of it when
    /// the session is taken over (a half-open connection).
    Abandon,
}

/// An outgoing PUBLISH not yet completed.
#[derive(Clone, Debug)]
struct Pending {
    /// Which message.
    msg: MsgId,
    /// Topic.
    topic: String,
    /// QoS.
    qos: QoS,
    /// RETAIN.
    retain: bool,
    /// QoS 2: PUBREC received, PUBREL is what is owed.
    released: bool,
}

/// Where the client's connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No connection; may open one.
    Down,
    /// CONNECT sent, waiting for CONNACK.
    Connecting,
    /// Connected.
    Up,
    /// DISCONNECT sent, closing.
    Leaving,
    /// Dead: does nothing any more.
    Dead,
}

/// A simulated strict client.
pub struct SimClient {
    /// Its index.
    pub idx: ClientIdx,
    /// Who it is.
    pub spec: ClientSpec,
    /// Current connection generation (0: never connected).
    gen: u64,
    /// Where the connection is.
    phase: Phase,
    /// When the current connection attempt began (ms), for a stuck CONNECT.
    since: u64,
    /// A CONNACK 0 was received once: a persistent client's later CONNACKs must say its
    /// session is present.
    had_session: bool,
    /// A persistent client's subscriptions were acknowledged once (they live in its session).
    subscribed: bool,
    /// This connection's SUBSCRIBE, waiting for its SUBACK.
    sub_pid: Option<u16>,
    /// This connection's subscriptions are acknowledged.
    subacked: bool,
    /// Last packet id handed out.
    next_pid: u16,
    /// Outgoing PUBLISHes not completed, by packet id (kept across connections when persistent).
    outgoing: BTreeMap<u16, Pending>,
    /// Inbound QoS 2 packet ids received and not yet released (kept across connections when
    /// persistent): a PUBLISH with such an id is a duplicate, not delivered again.
    inbound_q2: BTreeSet<u16>,
    /// Next message sequence number.
    next_seq: u64,
    /// Stop publishing new messages; finish what is outstanding.
    finishing: bool,
    /// When it last sent a packet (ms): a PINGREQ keeps an idle connection alive.
    last_sent: u64,
    /// A persistent subscriber's later SUBSCRIBE, waiting for its SUBACK: (packet id, filter,
    /// QoS). Subscriptions made while nodes are down or behind must reach them.
    adding: Option<(u16, String, QoS)>,
    /// The filters it added later (acknowledged).
    added: Vec<String>,
}

impl SimClient {
    /// A client that has not connected yet.
    pub fn new(idx: ClientIdx, spec: ClientSpec) -> SimClient {
        SimClient {
            idx,
            spec,
            gen: 0,
            phase: Phase::Down,
            since: 0,
            had_session: false,
            subscribed: false,
            sub_pid: None,
            subacked: false,
            next_pid: 0,
            outgoing: BTreeMap::new(),
            inbound_q2: BTreeSet::new(),
            next_seq: 0,
            finishing: false,
            last_sent: 0,
            adding: None,
            added: Vec::new(),
        }
    }

    /// Dies now (it shared its node's power supply, say).
    pub fn die(&mut self, now: u64, h: &mut History) {
        if self.phase != Phase::Dead {
            h.push(
                now,
                Ev::Node {
                    node: 0,
                    what: format!("client {} dies with its node", self.spec.name),
                },
            );
            self.phase = Phase::Dead;
        }
    }

    /// Dead (it died: nothing more is expected of it).
    pub fn is_dead(&self) -> bool {
        self.phase == Phase::Dead
    }

    /// The current connection generation.
    pub fn gen(&self) -> u64 {
        self.gen
    }

    /// Connected (CONNACK 0 received on the current connection).
    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }

    /// In the middle of a QoS 2 flow: a PUBREL owed or awaited on either side.
    pub fn mid_qos2(&self) -> bool {
        self.phase == Phase::Up
            && (self.outgoing.values().any(|p| p.qos == QoS::ExactlyOnce)
                || !self.inbound_q2.is_empty())
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.next_seq
    }

    /// From now on publish nothing new; complete what is outstanding.
    pub fn finish(&mut self) {
        self.finishing = true;
    }

    /// Nothing is outstanding: connected, subscriptions acknowledged, every publish completed.
    pub fn settled(&self) -> bool {
        self.phase == Phase::Dead
            || self.phase == Phase::Up
                && self.outgoing.is_empty()
                && (self.spec.subscriptions.is_empty() || self.subacked || self.subscribed)
    }

    /// What is outstanding, for a report.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}): phase {:?} gen {}, {} publishes outstanding {:?}, subscribed {}",
            self.spec.name,
            if self.spec.clean {
                "clean"
            } else {
                "persistent"
            },
            self.phase,
            self.gen,
            self.outgoing.len(),
            self.outgoing.values().map(|p| p.msg).collect::<Vec<_>>(),
            self.subacked || self.subscribed
        )
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0
                && !self.outgoing.contains_key(&self.next_pid)
                && self.sub_pid != Some(self.next_pid)
                && self
                    .adding
                    .as_ref()
                    .is_none_or(|(p, ..)| *p != self.next_pid)
            {
                return self.next_pid;
            }
        }
    }

    fn connect_packet(&self) -> Packet {
        let will = self.spec.will.then(|| LastWill {
            topic: ByteString::from(format!("will/{}", self.spec.name)),
            payload: Bytes::from(format!("will:{}:{}", self.idx, self.gen)),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Default::default(),
        });
        Packet::Connect(Box::new(starling_codec::Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: self.spec.clean,
            keep_alive: KEEP_ALIVE_SECS,
            client_id: ByteString::from(self.spec.name.as_str()),
            will,
            username: None,
            password: None,
            properties: Default::default(),
        }))
    }

    /// The client's turn to act (the world calls it every few hundred simulated ms).
    pub fn step(&mut self, now: u64, rng: &mut SimRng, h: &mut History) -> Vec<ClientOut> {
        let mut out = Vec::new();
        if self.spec.dies_at.is_some_and(|t| now >= t) && self.phase != Phase::Dead {
            h.push(
                now,
                Ev::Node {
                    node: 0,
                    what: format!(
                        "client {} dies (connection #{} left as it is)",
                        self.spec.name, self.gen
                    ),
                },
            );
            self.phase = Phase::Dead;
            return vec![ClientOut::Abandon];
        }
        let out_len =
            |o: &Vec<ClientOut>| o.iter().filter(|x| matches!(x, ClientOut::Send(_))).count();
        match self.phase {
            Phase::Dead => {}
            Phase::Down => {
                self.gen += 1;
                self.phase = Phase::Connecting;
                self.since = now;
                h.push(
                    now,
                    Ev::Connecting {
                        client: self.idx,
                        gen: self.gen,
                    },
                );
                out.push(ClientOut::Open { gen: self.gen });
                out.push(ClientOut::Send(self.connect_packet()));
            }
            Phase::Connecting | Phase::Leaving => {
                // A node that accepted the socket but never answers (it died, or no leader):
                // give up on it after a while, as a real client's timeout would.
                if now.saturating_sub(self.since) > 8_000 {
                    self.lost(now, h);
                    out.push(ClientOut::Abandon);
                }
            }
            Phase::Up => {
                if !self.finishing {
                    let r = rng.below(1000);
                    if r < 8 {
                        return self.leave(now, h);
                    }
                    if r < 14 {
                        // Half-open: the broker learns of it from the takeover by the next
                        // connection.
                        h.push(
                            now,
                            Ev::Abandoned {
                                client: self.idx,
                                gen: self.gen,
                            },
                        );
                        self.lost(now, h);
                        return vec![ClientOut::Abandon];
                    }
                }
                self.publish_more(now, rng, h, &mut out);
                self.subscribe_more(rng, &mut out);
                if out_len(&out) == 0
                    && now.saturating_sub(self.last_sent) >= u64::from(KEEP_ALIVE_SECS) * 400
                {
                    out.push(ClientOut::Send(Packet::PingReq));
                }
            }
        }
        if out_len(&out) > 0 {
            self.last_sent = now;
        }
        out
    }

    /// Sends DISCONNECT and closes.
    fn leave(&mut self, now: u64, h: &mut History) -> Vec<ClientOut> {
        h.push(
            now,
            Ev::Disconnecting {
                client: self.idx,
                gen: self.gen,
            },
        );
        self.phase = Phase::Leaving;
        self.since = now;
        vec![
            ClientOut::Send(Packet::Disconnect(Disconnect::default())),
            ClientOut::Close,
        ]
    }

    fn publish_more(
        &mut self,
        now: u64,
        rng: &mut SimRng,
        h: &mut History,
        out: &mut Vec<ClientOut>,
    ) {
        let Some(spec) = self.spec.publishes.clone() else {
            return;
        };
        if self.finishing || self.next_seq >= spec.quota {
            return;
        }
        if !(self.spec.subscriptions.is_empty() || self.subacked || self.subscribed) {
            return;
        }
        let window = if spec.retain { 1 } else { spec.window };
        let in_flight = self.outgoing.len();
        if in_flight >= window {
            return;
        }
        let n = 1 + rng.below((window - in_flight) as u64) as usize;
        for _ in 0..n {
            if self.next_seq >= spec.quota {
                break;
            }
            self.next_seq += 1;
            let msg = MsgId {
                client: self.idx,
                seq: self.next_seq,
            };
            let topic = if spec.retain {
                format!("r/{}", self.spec.name)
            } else {
                spec.topics[rng.below(spec.topics.len() as u64) as usize].clone()
            };
            let qos = spec.qos[rng.below(spec.qos.len() as u64) as usize];
            h.push(
                now,
                Ev::Published {
                    msg,
                    topic: topic.clone(),
                    qos,
                    retain: spec.retain,
                    gen: self.gen,
                },
            );
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                let pid = self.alloc_pid();
                self.outgoing.insert(
                    pid,
                    Pending {
                        msg,
                        topic: topic.clone(),
                        qos,
                        retain: spec.retain,
                        released: false,
                    },
                );
                pid
            };
            out.push(ClientOut::Send(Packet::Publish(Publish {
                dup: false,
                qos,
                retain: spec.retain,
                topic: topic.into(),
                packet_id,
                payload: msg.payload(),
                properties: Default::default(),
            })));
        }
    }

    /// A persistent subscriber now and then subscribes to one more filter.
    fn subscribe_more(&mut self, rng: &mut SimRng, out: &mut Vec<ClientOut>) {
        const MORE: [&str; 7] = ["t/0", "t/1", "t/2", "t/3", "t/+", "t/#", "#"];
        if self.finishing
            || self.spec.clean
            || self.spec.subscriptions.is_empty()
            || self.sub_pid.is_some()
            || self.adding.is_some()
            || !self.subscribed
            || !rng.chance(30)
        {
            return;
        }
        let filter = rng.pick(&MORE).to_string();
        if self.added.contains(&filter) || self.spec.subscriptions.iter().any(|(f, _)| *f == filter)
        {
            return;
        }
        let qos = if rng.chance(500) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let pid = self.alloc_pid();
        self.adding = Some((pid, filter.clone(), qos));
        out.push(ClientOut::Send(Packet::Subscribe(Subscribe {
            packet_id: pid,
            filters: vec![SubscribeFilter::new(filter.into(), qos)],
            properties: Default::default(),
        })));
    }

    fn subscribe(&mut self, out: &mut Vec<ClientOut>) {
        if self.spec.subscriptions.is_empty() || (!self.spec.clean && self.subscribed) {
            return;
        }
        let pid = self.alloc_pid();
        self.sub_pid = Some(pid);
        out.push(ClientOut::Send(Packet::Subscribe(Subscribe {
            packet_id: pid,
            filters: self
                .spec
                .subscriptions
                .iter()
                .map(|(f, q)| SubscribeFilter::new(f.as_str().into(), *q))
                .collect(),
            properties: Default::default(),
        })));
    }

    /// The connection opened for `gen` could not be opened (node down).
    pub fn open_failed(&mut self, gen: u64, now: u64, h: &mut History) {
        if gen == self.gen && self.phase == Phase::Connecting {
            h.push(
                now,
                Ev::Refused {
                    client: self.idx,
                    gen,
                    code: None,
                },
            );
            self.phase = Phase::Down;
        }
    }

    /// The connection `gen` is gone (closed by the broker, or its node died).
    pub fn connection_lost(&mut self, gen: u64, now: u64, h: &mut History) {
        if gen != self.gen || self.phase == Phase::Down {
            return;
        }
        if self.phase == Phase::Leaving {
            self.phase = Phase::Down;
            return;
        }
        self.lost(now, h);
    }

    fn lost(&mut self, now: u64, h: &mut History) {
        h.push(
            now,
            Ev::Lost {
                client: self.idx,
                gen: self.gen,
            },
        );
        self.phase = Phase::Down;
        self.sub_pid = None;
        self.subacked = false;
        self.adding = None;
    }

    /// A packet from the broker on connection `gen`.
    pub fn on_packet(
        &mut self,
        gen: u64,
        packet: Packet,
        now: u64,
        h: &mut History,
    ) -> Vec<ClientOut> {
        let mut out = Vec::new();
        if gen != self.gen || matches!(self.phase, Phase::Down | Phase::Dead) {
            return out;
        }
        if let Some(o) = self.on_packet_inner(gen, packet, now, h, &mut out) {
            return o;
        }
        if !out.is_empty() {
            self.last_sent = now;
        }
        out
    }

    fn on_packet_inner(
        &mut self,
        gen: u64,
        packet: Packet,
        now: u64,
        h: &mut History,
        out: &mut Vec<ClientOut>,
    ) -> Option<Vec<ClientOut>> {
        match packet {
            Packet::ConnAck(a) => {
                if self.phase != Phase::Connecting {
                    h.violation(now, format!("client {}: CONNACK twice", self.spec.name));
                    return None;
                }
                if a.code != ConnectReasonCode::Success {
                    h.push(
                        now,
                        Ev::Refused {
                            client: self.idx,
                            gen,
                            code: Some(a.code.v3_return_code()),
                        },
                    );
                    self.phase = Phase::Down;
                    out.push(ClientOut::Abandon);
                    return None;
                }
                h.push(
                    now,
                    Ev::Connected {
                        client: self.idx,
                        gen,
                        present: a.session_present,
                    },
                );
                self.phase = Phase::Up;
                if self.spec.clean {
                    // A new session: nothing of the previous one is kept.
                    self.outgoing.clear();
                    self.inbound_q2.clear();
                } else {
                    if self.had_session && !a.session_present {
                        h.push(
                            now,
                            Ev::SessionLost {
                                client: self.idx,
                                gen,
                            },
                        );
                        if !self.spec.session_may_expire() {
                            h.violation(
                                now,
                                format!("client {}: persistent session lost (CONNACK without session present)", self.spec.name),
                            );
                        }
                        self.subscribed = false;
                        self.inbound_q2.clear();
                    }
                    self.had_session = true;
                    // Resume: every unacknowledged PUBLISH again (DUP), PUBREL for the released.
                    let resend: Vec<(u16, Pending)> =
                        self.outgoing.iter().map(|(p, m)| (*p, m.clone())).collect();
                    for (pid, p) in resend {
                        if p.released {
                            out.push(ClientOut::Send(Packet::PubRel(PubRel::new(pid))));
                        } else {
                            h.push(now, Ev::Resent { msg: p.msg, gen });
                            out.push(ClientOut::Send(Packet::Publish(Publish {
                                dup: true,
                                qos: p.qos,
                                retain: p.retain,
                                topic: p.topic.clone().into(),
                                packet_id: pid,
                                payload: p.msg.payload(),
                                properties: Default::default(),
                            })));
                        }
                    }
                }
                self.subscribe(out);
            }
            Packet::SubAck(a)
                if self
                    .adding
                    .as_ref()
                    .is_some_and(|(p, ..)| *p == a.packet_id) =>
            {
                let (_, filter, _) = self.adding.take()?;
                match a.reason_codes.first().and_then(|c| c.granted_qos()) {
                    Some(q) => {
                        h.push(
                            now,
                            Ev::Subscribed {
                                client: self.idx,
                                gen,
                                filter: filter.clone(),
                                qos: q,
                            },
                        );
                        self.added.push(filter);
                    }
                    _ => h.violation(
                        now,
                        format!("client {}: subscription {filter} refused", self.spec.name),
                    ),
                }
            }
            Packet::SubAck(a) => {
                if self.sub_pid != Some(a.packet_id) {
                    return None;
                }
                self.sub_pid = None;
                self.subacked = true;
                self.subscribed = true;
                for ((filter, _), code) in self.spec.subscriptions.iter().zip(&a.reason_codes) {
                    match code.granted_qos() {
                        Some(q) => h.push(
                            now,
                            Ev::Subscribed {
                                client: self.idx,
                                gen,
                                filter: filter.clone(),
                                qos: q,
                            },
                        ),
                        None => h.violation(
                            now,
                            format!("client {}: subscription {filter} refused", self.spec.name),
                        ),
                    }
                }
            }
            Packet::Publish(p) => self.on_publish(gen, &p, now, h, out),
            Packet::PingResp => {}
            Packet::PubRel(PubRel { packet_id: pid, .. }) => {
                self.inbound_q2.remove(&pid);
                out.push(ClientOut::Send(Packet::PubComp(PubComp::new(pid))));
            }
            Packet::PubAck(PubAck { packet_id: pid, .. }) => {
                if let Some(p) = self.outgoing.get(&pid) {
                    if p.qos == QoS::AtLeastOnce {
                        h.push(now, Ev::Completed { msg: p.msg });
                        self.outgoing.remove(&pid);
                    }
                }
            }
            Packet::PubRec(PubRec { packet_id: pid, .. }) => {
                if let Some(p) = self.outgoing.get_mut(&pid) {
                    if p.qos == QoS::ExactlyOnce {
                        p.released = true;
                        out.push(ClientOut::Send(Packet::PubRel(PubRel::new(pid))));
                    }
                }
            }
            Packet::PubComp(PubComp { packet_id: pid, .. }) => {
                if let Some(p) = self.outgoing.get(&pid) {
                    if p.released {
                        h.push(now, Ev::Completed { msg: p.msg });
                        self.outgoing.remove(&pid);
                    }
                }
            }
            other => h.violation(
                now,
                format!("client {}: unexpected packet {other:?}", self.spec.name),
            ),
        }
        None
    }

    fn on_publish(
        &mut self,
        gen: u64,
        p: &Publish,
        now: u64,
        h: &mut History,
        out: &mut Vec<ClientOut>,
    ) {
        let what = MsgId::parse(&p.payload);
        let record = |h: &mut History| match what {
            Some(Parsed::Message(msg)) => h.push(
                now,
                Ev::Delivered {
                    client: self.idx,
                    gen,
                    msg,
                    qos: p.qos,
                    dup: p.dup,
                    retain: p.retain,
                    topic: p.topic.to_string(),
                },
            ),
            Some(Parsed::Will {
                client,
                gen: will_gen,
            }) => h.push(
                now,
                Ev::WillDelivered {
                    client: self.idx,
                    of: client,
                    of_gen: will_gen,
                    qos: p.qos,
                },
            ),
            None => h.violation(
                now,
                format!("client {}: unknown payload {:?}", self.spec.name, p.payload),
            ),
        };
        match p.qos {
            QoS::AtMostOnce => record(h),
            QoS::AtLeastOnce => {
                record(h);
                out.push(ClientOut::Send(Packet::PubAck(PubAck::new(p.packet_id))));
            }
            QoS::ExactlyOnce => {
                if self.inbound_q2.insert(p.packet_id) {
                    record(h);
                } else {
                    h.push(
                        now,
                        Ev::DuplicateSuppressed {
                            client: self.idx,
                            gen,
                            packet_id: p.packet_id,
                        },
                    );
                }
                out.push(ClientOut::Send(Packet::PubRec(PubRec::new(p.packet_id))));
            }
        }
    }
}

/// What a payload names.
pub(crate) enum Parsed {
    /// A published message.
    Message(MsgId),
    /// The will of a client's connection.
    Will {
        /// The client.
        client: ClientIdx,
        /// Its connection.
        gen: u64,
    },
}

impl MsgId {
    /// The payload that names this message.
    pub fn payload(&self) -> Bytes {
        Bytes::from(format!("m:{}:{}", self.client, self.seq))
    }

    pub(crate) fn parse(payload: &[u8]) -> Option<Parsed> {
        let s = std::str::from_utf8(payload).ok()?;
        let mut parts = s.split(':');
        let kind = parts.next()?;
        let a: u64 = parts.next()?.parse().ok()?;
        let b: u64 = parts.next()?.parse().ok()?;
        match kind {
            "m" => Some(Parsed::Message(MsgId {
                client: a as usize,
                seq: b,
            })),
            "will" => Some(Parsed::Will {
                client: a as usize,
                gen: b,
            }),
            _ => None,
        }
    }
}
