//! A client's connection on a simulated node: what the broker's connection actor does, on the
//! same decision code ([`ClientFlow`]), without sockets, codec bytes, authentication, ACLs or
//! limits (which the simulation does not exercise). It turns packets and actor messages into
//! [`ConnOut`]s the node delivers.
//!
//! Like the actor, it waits for the store's answer to CONNECT, SUBSCRIBE, UNSUBSCRIBE and a
//! persistent session's DISCONNECT without handling anything else meanwhile (the actor's
//! `ctx.wait`): what arrives is held and handled afterwards, in order.

use std::collections::VecDeque;

use bytestring::ByteString;
use starling_broker::connection::{ClientFlow, FlowLimits, Inbound, Offer, Outgoing, Release};
use starling_broker::messages::{
    AckKind, ConnectInfo, ConnectOutcome, ConnectRequest, ConnectionClosed, KickReason, Route,
    RoutedPublish, SessionRequest, SessionSettings, SubscribeOutcome, SubscribeRequest, Target,
};
use starling_broker::store::output::ConnMessage;
use starling_codec::{
    ConnAck, Connect, ConnectReasonCode, LastWill, Packet, ProtocolVersion, PubAck, PubComp,
    PubRec, PubRel, Publish, QoS, SubAck, SubAckReasonCode,
};
use starling_state::Message as AppMessage;
use tokio::sync::oneshot;

use crate::client::ClientIdx;

/// An input of a connection, in mailbox order.
pub enum ConnInput {
    /// A packet from the client.
    Packet(Packet),
    /// Non-durable deliveries from a router shard.
    Deliver(Vec<AppMessage>),
    /// A message from the store.
    Store(ConnMessage),
    /// The router completed these tokens.
    Acked(Vec<u64>),
    /// The client closed its socket (read after everything it sent before).
    Eof,
}

/// What a connection asks its node to do.
#[derive(Default)]
pub struct ConnOut {
    /// Packets for the client, in order.
    pub to_client: Vec<Packet>,
    /// Requests for the store, in order.
    pub to_store: Vec<StoreRequest>,
    /// PUBLISHes for the connection's router shard.
    pub to_router: Vec<Route<()>>,
    /// The connection ended: why, and whether a will is due.
    pub closed: Option<Closed>,
    /// It now waits for an answer of the store (the node polls it).
    pub waits: bool,
    /// Its session was accepted: the keep-alive timer starts.
    pub accepted: bool,
}

/// A request from a connection to the store.
pub enum StoreRequest {
    /// CONNECT.
    Connect(ConnectRequest<()>),
    /// SUBSCRIBE.
    Subscribe(SubscribeRequest<()>),
    /// PUBLISH QoS 2 / PUBREL / acknowledgements / DISCONNECT of a persistent session.
    Session(SessionRequest<()>),
    /// The connection ended.
    Closed(ConnectionClosed),
}

/// How a connection ended.
#[derive(Clone, Debug)]
pub struct Closed {
    /// Why (for the history).
    pub reason: &'static str,
    /// A will is due: every end but DISCONNECT, a refused CONNECT and a broker shutdown.
    pub will_due: bool,
}

/// What the connection waits for.
enum Wait {
    /// The store's answer to CONNECT.
    Connect {
        rx: oneshot::Receiver<ConnectOutcome>,
        connect: Box<Connect>,
    },
    /// The store's answer to SUBSCRIBE.
    Subscribe {
        rx: oneshot::Receiver<SubscribeOutcome>,
        packet_id: u16,
        n: usize,
    },
    /// A persistent session's DISCONNECT committing.
    Disconnect { rx: oneshot::Receiver<bool> },
}

/// A connection on a simulated node.
pub struct SimConn {
    /// Its id (what the replicated state records as the owner's connection).
    pub id: u64,
    /// The client at the other end.
    pub client: ClientIdx,
    /// The client's connection generation.
    pub gen: u64,
    /// Flow limits (the node's configuration).
    limits: FlowLimits,
    /// The session once accepted.
    flow: Option<ClientFlow>,
    /// The will of the CONNECT (a clean session outside the replicated state publishes it).
    will: Option<LastWill>,
    /// CONNECT received (a second one is a protocol violation).
    connected: bool,
    /// What it waits for.
    wait: Option<Wait>,
    /// Inputs that arrived while it waited.
    held: VecDeque<ConnInput>,
    /// Closed: nothing more is handled.
    closed: bool,
    /// Counts waits, so that a timer of an earlier wait does not end a later one.
    wait_seq: u64,
    /// The CONNECT's keep-alive, seconds (0: none).
    pub keep_alive: u16,
    /// When the last packet arrived (µs of simulated time).
    pub last_read: u64,
    /// The MQTT 5 session settings its client's CONNECT carries (the simulated packets are
    /// 3.1.1 ones; these travel beside them).
    session: Option<SessionSettings>,
}

fn target(conn_id: u64) -> Target<()> {
    Target { conn_id, addr: () }
}

impl SimConn {
    /// A new connection from `client`'s connection `gen`, whose CONNECT will carry `session`.
    pub fn new(
        id: u64,
        client: ClientIdx,
        gen: u64,
        limits: FlowLimits,
        session: Option<SessionSettings>,
    ) -> SimConn {
        SimConn {
            id,
            client,
            gen,
            limits,
            session,
            flow: None,
            will: None,
            connected: false,
            wait: None,
            held: VecDeque::new(),
            closed: false,
            wait_seq: 0,
            keep_alive: 0,
            last_read: 0,
        }
    }

    /// The keep-alive timer fired at `now`: silent for 1.5 x keep-alive closes the connection
    /// (a will is due), as the actor does. Returns when to check again, if at all.
    pub fn keep_alive_due(&mut self, now: u64, out: &mut ConnOut) -> Option<u64> {
        if self.closed || self.keep_alive == 0 || self.flow.is_none() {
            return None;
        }
        let limit = u64::from(self.keep_alive) * 1_500_000;
        if now >= self.last_read + limit {
            self.close("keep-alive exceeded", true, out);
            return None;
        }
        Some(self.last_read + limit)
    }

    /// The number of the current (or last) wait.
    pub fn wait_seq(&self) -> u64 {
        self.wait_seq
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether it serves an accepted session (CONNACK 0 sent and not closed).
    pub fn is_active(&self) -> bool {
        !self.closed && self.flow.is_some()
    }

    /// Whether it waits for the store.
    pub fn waiting(&self) -> bool {
        self.wait.is_some()
    }

    /// An input; held while it waits for the store.
    pub fn input(&mut self, input: ConnInput, out: &mut ConnOut) {
        if self.closed {
            return;
        }
        if self.wait.is_some() {
            self.held.push_back(input);
            return;
        }
        self.handle(input, out);
    }

    /// Checks whether the store answered what it waits for; handles the answer and what was
    /// held meanwhile. True if it did anything.
    pub fn poll(&mut self, out: &mut ConnOut) -> bool {
        let Some(wait) = self.wait.take() else {
            return false;
        };
        match wait {
            Wait::Connect { mut rx, connect } => match rx.try_recv() {
                Ok(outcome) => self.on_connect_outcome(outcome, &connect, out),
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.wait = Some(Wait::Connect { rx, connect });
                    return false;
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.refuse(ConnectReasonCode::ServerUnavailable, out)
                }
            },
            Wait::Subscribe {
                mut rx,
                packet_id,
                n,
            } => match rx.try_recv() {
                Ok(SubscribeOutcome::Done { granted, retained }) => {
                    let mut granted = granted.into_iter();
                    let reason_codes = (0..n)
                        .map(|_| {
                            SubAckReasonCode::granted(granted.next().unwrap_or(QoS::AtMostOnce))
                        })
                        .collect();
                    out.to_client.push(Packet::SubAck(SubAck {
                        packet_id,
                        reason_codes,
                        properties: Default::default(),
                    }));
                    self.deliver(retained, out);
                }
                Ok(SubscribeOutcome::Unavailable) | Err(oneshot::error::TryRecvError::Closed) => {
                    self.close("unavailable", true, out)
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.wait = Some(Wait::Subscribe { rx, packet_id, n });
                    return false;
                }
            },
            Wait::Disconnect { mut rx } => match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => {
                    self.wait = Some(Wait::Disconnect { rx });
                    return false;
                }
                Ok(released) => {
                    if released {
                        if let Some(f) = self.flow.as_mut() {
                            f.on_released();
                        }
                    }
                    self.close("disconnect", false, out);
                }
                Err(_) => self.close("disconnect", false, out),
            },
        }
        while self.wait.is_none() && !self.closed {
            let Some(input) = self.held.pop_front() else {
                break;
            };
            self.handle(input, out);
        }
        true
    }

    /// The wait took longer than the commit timeout: what the actor's timeout does.
    pub fn wait_timed_out(&mut self, out: &mut ConnOut) {
        match self.wait.take() {
            Some(Wait::Connect { .. }) => self.refuse(ConnectReasonCode::ServerUnavailable, out),
            Some(Wait::Subscribe { .. }) => self.close("unavailable", true, out),
            Some(Wait::Disconnect { .. }) => self.close("disconnect", false, out),
            None => {}
        }
    }

    fn handle(&mut self, input: ConnInput, out: &mut ConnOut) {
        match input {
            ConnInput::Packet(p) => self.on_packet(p, out),
            ConnInput::Deliver(messages) => self.deliver(messages, out),
            ConnInput::Eof => self.close("end of stream", true, out),
            ConnInput::Acked(tokens) => {
                if let Some(f) = self.flow.as_mut() {
                    f.complete(tokens);
                    release_acks(f, out);
                }
            }
            ConnInput::Store(m) => match m {
                ConnMessage::Durable(d) => {
                    let Some(f) = self.flow.as_mut() else { return };
                    if f.epoch() != d.epoch {
                        return;
                    }
                    let mut sends = Vec::new();
                    f.durable_deliver(d.items, &self.limits, &mut sends);
                    write_outgoing(sends, out);
                    for m in d.qos0 {
                        out.to_client.push(publish(0, false, &m));
                    }
                }
                ConnMessage::Release(r) => {
                    let Some(f) = self.flow.as_mut() else { return };
                    if f.epoch() != r.epoch {
                        return;
                    }
                    for pid in f.release_ready(&r.seqs) {
                        out.to_client.push(Packet::PubRel(PubRel::new(pid)));
                    }
                }
                ConnMessage::Acked(a) => {
                    if a.refused {
                        return self.close("unavailable", true, out);
                    }
                    if let Some(f) = self.flow.as_mut() {
                        f.complete(a.tokens);
                        release_acks(f, out);
                    }
                }
                ConnMessage::Kick(reason) => {
                    let (why, will) = match reason {
                        KickReason::TakenOver => ("taken over", true),
                        // The client reconnected through another node: no will.
                        KickReason::TakenOverElsewhere => {
                            ("taken over through another node", false)
                        }
                        KickReason::SessionRemoved => ("session removed", true),
                        KickReason::Shutdown => ("shutdown", false),
                        KickReason::StateReplaced => ("state replaced by a snapshot", true),
                    };
                    self.close(why, will, out);
                }
            },
        }
    }

    fn on_packet(&mut self, p: Packet, out: &mut ConnOut) {
        match p {
            Packet::Connect(c) if !self.connected => {
                self.connected = true;
                self.will = c.will.clone();
                self.keep_alive = c.keep_alive;
                let (tx, rx) = oneshot::channel();
                out.to_store.push(StoreRequest::Connect(ConnectRequest {
                    target: target(self.id),
                    info: ConnectInfo {
                        client_id: c.client_id.clone(),
                        clean_session: c.clean_start,
                        protocol: c.protocol,
                        will: c.will.clone(),
                        username: None,
                        peer: ([127, 0, 0, 1], 1).into(),
                        session: self.session,
                    },
                    reply: tx,
                }));
                self.wait = Some(Wait::Connect { rx, connect: c });
                self.wait_seq += 1;
                out.waits = true;
            }
            Packet::Connect(_) => self.close("second CONNECT", true, out),
            _ if self.flow.is_none() => self.close("first packet is not CONNECT", true, out),
            Packet::Publish(p) => self.on_publish(p, out),
            Packet::PubRel(PubRel { packet_id: pid, .. }) => {
                let Some(f) = self.flow.as_mut() else { return };
                match f.on_pubrel(pid) {
                    Release::Store { token } => {
                        out.to_store
                            .push(StoreRequest::Session(SessionRequest::Release {
                                from: target(self.id),
                                token,
                                client_id: f.client_id().clone(),
                                epoch: f.epoch(),
                                packet_id: pid,
                            }))
                    }
                    Release::Complete => release_acks(f, out),
                }
            }
            Packet::PingReq => out.to_client.push(Packet::PingResp),
            Packet::PubAck(PubAck { packet_id: pid, .. }) => self.on_ack(AckKind::PubAck, pid, out),
            Packet::PubRec(PubRec { packet_id: pid, .. }) => self.on_ack(AckKind::PubRec, pid, out),
            Packet::PubComp(PubComp { packet_id: pid, .. }) => {
                self.on_ack(AckKind::PubComp, pid, out)
            }
            Packet::Subscribe(s) => {
                let Some(f) = self.flow.as_ref() else { return };
                let filters: Vec<(std::sync::Arc<str>, QoS)> = s
                    .filters
                    .iter()
                    .map(|f| (std::sync::Arc::from(&*f.filter), f.options.qos))
                    .collect();
                let (tx, rx) = oneshot::channel();
                out.to_store.push(StoreRequest::Subscribe(SubscribeRequest {
                    target: target(self.id),
                    client_id: f.client_id().clone(),
                    key: f.key(),
                    epoch: f.epoch(),
                    filters,
                    reply: tx,
                }));
                self.wait = Some(Wait::Subscribe {
                    rx,
                    packet_id: s.packet_id,
                    n: s.filters.len(),
                });
                self.wait_seq += 1;
                out.waits = true;
            }
            Packet::Disconnect(_) => {
                let Some(f) = self.flow.as_ref() else { return };
                if !f.is_persistent() {
                    return self.close("disconnect", false, out);
                }
                let (tx, rx) = oneshot::channel();
                out.to_store
                    .push(StoreRequest::Session(SessionRequest::Disconnect {
                        client_id: f.client_id().clone(),
                        epoch: f.epoch(),
                        sent_up_to: f.sent_up_to(),
                        reply: tx,
                    }));
                self.wait = Some(Wait::Disconnect { rx });
                self.wait_seq += 1;
                out.waits = true;
            }
            _ => self.close("packet type not accepted from a client", true, out),
        }
    }

    fn on_publish(&mut self, p: Publish, out: &mut ConnOut) {
        let Some(f) = self.flow.as_mut() else { return };
        let message = AppMessage {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            ..AppMessage::default()
        };
        match f.on_publish(p.packet_id, message) {
            Inbound::Routed { .. } => {
                // One read pass per packet here: route at once.
                let publishes: Vec<RoutedPublish> = f.take_routes();
                out.to_router.push(Route {
                    from: Some(target(self.id)),
                    publishes,
                });
            }
            Inbound::Store {
                token,
                packet_id,
                message,
            } => out
                .to_store
                .push(StoreRequest::Session(SessionRequest::Publish {
                    from: target(self.id),
                    token,
                    client_id: f.client_id().clone(),
                    epoch: f.epoch(),
                    packet_id,
                    message,
                })),
            Inbound::Repeated => release_acks(f, out),
        }
    }

    fn on_ack(&mut self, kind: AckKind, pid: u16, out: &mut ConnOut) {
        let Some(f) = self.flow.as_mut() else { return };
        let mut sends = Vec::new();
        let commit = match kind {
            AckKind::PubAck => f.on_puback(pid, &mut sends),
            AckKind::PubRec => f.on_pubrec(pid, &mut sends),
            AckKind::PubComp => f.on_pubcomp(pid, &mut sends),
        };
        if let Some(c) = commit {
            out.to_store
                .push(StoreRequest::Session(SessionRequest::Ack {
                    client_id: f.client_id().clone(),
                    epoch: f.epoch(),
                    seq: c.seq,
                    kind: c.kind,
                }));
        }
        write_outgoing(sends, out);
    }

    fn on_connect_outcome(&mut self, outcome: ConnectOutcome, c: &Connect, out: &mut ConnOut) {
        match outcome {
            ConnectOutcome::Accepted {
                session_present,
                epoch,
                key,
                resume,
            } => {
                let id: ByteString = c.client_id.clone();
                let mut flow = ClientFlow::new(id, !c.clean_start, epoch, key);
                let present = session_present && c.protocol == ProtocolVersion::V3_1_1;
                out.to_client.push(Packet::ConnAck(Box::new(ConnAck::new(
                    present,
                    ConnectReasonCode::Success,
                ))));
                let mut sends = Vec::new();
                flow.resume(resume.outbound, &self.limits, &mut sends);
                write_outgoing(sends, out);
                self.flow = Some(flow);
                out.accepted = true;
            }
            ConnectOutcome::NotAuthorized => self.refuse(ConnectReasonCode::NotAuthorized, out),
            ConnectOutcome::Unavailable => self.refuse(ConnectReasonCode::ServerUnavailable, out),
        }
    }

    fn refuse(&mut self, code: ConnectReasonCode, out: &mut ConnOut) {
        out.to_client
            .push(Packet::ConnAck(Box::new(ConnAck::new(false, code))));
        self.flow = None;
        self.close("refused", false, out);
    }

    /// Non-durable deliveries (fast path, or a clean session's retained messages).
    fn deliver(&mut self, messages: Vec<AppMessage>, out: &mut ConnOut) {
        let Some(f) = self.flow.as_mut() else { return };
        for m in messages {
            match f.offer(m, &self.limits) {
                Offer::AtMostOnce(m) => out.to_client.push(publish(0, false, &m)),
                Offer::Send(o) => write_outgoing(vec![o], out),
                Offer::Queued | Offer::Dropped(_) => {}
            }
        }
    }

    /// Closes the connection (once): what the actor's `close` and `stopped` do.
    pub fn close(&mut self, reason: &'static str, will_due: bool, out: &mut ConnOut) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.wait = None;
        self.held.clear();
        out.closed = Some(Closed { reason, will_due });
        let Some(f) = self.flow.take() else { return };
        let closed = f.closed();
        if closed.publishes_own_will && will_due {
            if let Some(w) = &self.will {
                out.to_router.push(Route {
                    from: None,
                    publishes: vec![RoutedPublish {
                        message: AppMessage {
                            topic: w.topic.clone(),
                            payload: w.payload.clone(),
                            qos: w.qos,
                            retain: w.retain,
                            ..AppMessage::default()
                        },
                        token: None,
                    }],
                });
            }
        }
        out.to_store.push(StoreRequest::Closed(ConnectionClosed {
            conn_id: self.id,
            client_id: closed.client_id,
            key: closed.key,
            epoch: closed.epoch,
            persistent: closed.persistent,
            publish_will: will_due,
            sent_up_to: closed.sent_up_to,
            filters: Vec::new(),
        }));
    }
}

/// The acknowledgements that are due, in order.
fn release_acks(f: &mut ClientFlow, out: &mut ConnOut) {
    f.due_acks(|kind, pid| {
        out.to_client.push(match kind {
            AckKind::PubAck => Packet::PubAck(PubAck::new(pid)),
            AckKind::PubRec => Packet::PubRec(PubRec::new(pid)),
            AckKind::PubComp => Packet::PubComp(PubComp::new(pid)),
        })
    });
}

fn write_outgoing(sends: Vec<Outgoing>, out: &mut ConnOut) {
    for s in sends {
        out.to_client.push(match s {
            Outgoing::Publish {
                packet_id,
                dup,
                message,
            } => publish(packet_id, dup, &message),
            Outgoing::PubRel(pid) => Packet::PubRel(PubRel::new(pid)),
        });
    }
}

fn publish(packet_id: u16, dup: bool, m: &AppMessage) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id,
        payload: m.payload.clone(),
        properties: Default::default(),
    })
}
