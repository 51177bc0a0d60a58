//! The connection actor: one per client. It owns the socket, the protocol state machine, the
//! keep-alive timer and the client's outbound flow; sessions' replicated state lives in the
//! session store, subscriptions in the router shards.
//!
//! Lifecycle: `AwaitingConnect` → (CONNECT) `Connecting` (waiting for the store) → `Active` →
//! `Closing` (flush what is written, then stop). Whatever ends it, `stopped` tells the store and,
//! for a clean session whose will is due, publishes the will.

mod acks;
mod io;
mod outbound;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;
use bytestring::ByteString;
use starling_codec::encode::{encode_ack, encode_publish};
use starling_codec::{
    topic, ConnAck, Connect, ConnectReturnCode, DecodeError, Decoder, LastWill, Packet, PacketType,
    ProtocolVersion, Publish, QoS, SubAck, SubscribeReturnCode,
};
use starling_state::Message as AppMessage;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::acks::PendingAcks;
use self::outbound::{AckOutcome, DurableOutbound, LocalOutbound, Offer, Send};
use crate::config::BrokerConfig;
use crate::listener::LiveGuard;
use crate::messages::{
    AckKind, Acked, ConnectInfo, ConnectOutcome, ConnectRequest, ConnectionClosed, Deliver,
    DurableDeliver, Kick, KickReason, ReleaseReady, Route, RoutedPublish, SessionRequest,
    SubscribeOutcome, SubscribeRequest, Target, UnsubscribeRequest,
};
use crate::metrics::Counters;
use crate::router::shard_of;
use crate::Worker;

/// Log target of the lines that mirror Mosquitto's.
pub const MQTT_LOG: &str = "mqtt";

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitingConnect,
    Connecting,
    Active,
    Closing,
}

/// Why a connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// DISCONNECT received.
    Disconnect,
    /// The client closed the socket without DISCONNECT.
    Eof,
    /// Socket error.
    SocketError(std::io::ErrorKind),
    /// Silent for 1.5 x keep-alive.
    KeepAlive,
    /// No CONNECT in time.
    ConnectTimeout,
    /// Malformed packet.
    Malformed(DecodeError),
    /// Protocol violation.
    Protocol(&'static str),
    /// Another connection took the client id.
    TakenOver,
    /// The session was discarded by another connection.
    SessionRemoved,
    /// CONNACK with a refusal code was sent.
    Refused(ConnectReturnCode),
    /// A commit did not happen in time.
    Unavailable,
    /// The broker is shutting down.
    Shutdown,
}

impl CloseReason {
    fn publishes_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::Disconnect | CloseReason::Refused(_) | CloseReason::Shutdown
        )
    }
}

/// Outbound flow by session kind.
enum Flow {
    Local(LocalOutbound),
    Durable(DurableOutbound),
}

/// What exists once CONNECT is accepted.
///
/// Kept small: what an idle client never uses (its QoS flows, its inbound traffic state) is
/// allocated on first use, so that an idle connection costs little memory.
struct ClientSession {
    client_id: ByteString,
    protocol: ProtocolVersion,
    keep_alive: u16,
    persistent: bool,
    /// Persistent sessions: already disconnected in the replicated state (DISCONNECT).
    released: bool,
    will: Option<Box<LastWill>>,
    epoch: u64,
    key: u64,
    /// Outbound QoS 1/2 flow, created with the first message.
    flow: Option<Box<Flow>>,
    /// Inbound traffic state, created with the first PUBLISH or PUBREL.
    traffic: Option<Box<Traffic>>,
    /// Clean sessions: filters subscribed (to remove on close).
    filters: Vec<Arc<str>>,
}

/// A client's inbound traffic state.
#[derive(Default)]
struct Traffic {
    /// Clean sessions: inbound QoS 2 ids awaiting PUBREL.
    inbound_qos2: HashSet<u16>,
    acks: PendingAcks,
    /// PUBLISHes of this read pass, per router shard.
    route: Vec<Vec<RoutedPublish>>,
    /// Last time a limit was logged for this client.
    last_limit_log: Option<Instant>,
}

impl ClientSession {
    fn traffic(&mut self) -> &mut Traffic {
        self.traffic.get_or_insert_with(Box::default)
    }

    /// Acknowledgements owed to the client.
    fn owed_acks(&self) -> usize {
        self.traffic.as_ref().map_or(0, |t| t.acks.len())
    }

    fn flow(&mut self, config: &BrokerConfig) -> &mut Flow {
        let persistent = self.persistent;
        self.flow.get_or_insert_with(|| {
            Box::new(if persistent {
                Flow::Durable(DurableOutbound::new(config.max_inflight))
            } else {
                Flow::Local(LocalOutbound::new(
                    config.max_inflight,
                    config.max_queued_messages,
                    config.max_queued_bytes,
                ))
            })
        })
    }

    /// Highest outbound sequence number written (persistent sessions).
    fn sent_up_to(&self) -> u64 {
        match self.flow.as_deref() {
            Some(Flow::Durable(f)) => f.max_sent_seq(),
            _ => 0,
        }
    }
}

/// The connection actor.
pub struct Connection {
    id: u64,
    worker: Arc<Worker>,
    stream: TcpStream,
    peer: SocketAddr,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    waker: Option<Waker>,
    last_read: Instant,
    phase: Phase,
    close_reason: Option<CloseReason>,
    session: Option<Box<ClientSession>>,
    /// The CONNECT deadline, cancelled when CONNECT arrives (a pending timer costs memory).
    connect_timer: Option<SpawnHandle>,
    _live: LiveGuard,
    /// Senders dropped when the actor is dropped. Declared after `stream`, so (fields drop in
    /// declaration order) their receivers complete only once the socket is closed.
    closed_waiters: Vec<oneshot::Sender<()>>,
}

impl Connection {
    /// A connection on an accepted socket.
    pub(crate) fn new(
        id: u64,
        worker: Arc<Worker>,
        stream: TcpStream,
        peer: SocketAddr,
        live: LiveGuard,
    ) -> Connection {
        let decoder = Decoder::new(worker.config.max_packet_size);
        Connection {
            id,
            worker,
            stream,
            peer,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            decoder,
            waker: None,
            last_read: Instant::now(),
            phase: Phase::AwaitingConnect,
            close_reason: None,
            session: None,
            connect_timer: None,
            _live: live,
            closed_waiters: Vec::new(),
        }
    }

    fn remember_waker(&mut self, cx: &std::task::Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// The client id for log lines.
    fn name(&self) -> &str {
        self.session.as_ref().map_or("<unknown>", |s| &s.client_id)
    }

    fn target(&self, ctx: &Context<Self>) -> Target {
        Target {
            conn_id: self.id,
            addr: ctx.address(),
        }
    }

    fn read_paused(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.owed_acks() >= self.worker.config.max_inflight_in)
    }

    // ---- closing ----

    fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            return;
        }
        let name = self.name().to_string();
        match &reason {
            // Mosquitto's only line for this is "Received DISCONNECT from ...".
            CloseReason::Disconnect => debug!(client_id = %name, "client disconnected"),
            CloseReason::Eof | CloseReason::SocketError(_) => {
                info!(target: MQTT_LOG, client_id = %name, reason = ?reason, "Socket error on client {name}, disconnecting.")
            }
            CloseReason::KeepAlive | CloseReason::ConnectTimeout => {
                info!(target: MQTT_LOG, client_id = %name, "Client {name} has exceeded timeout, disconnecting.")
            }
            CloseReason::Malformed(e) => {
                Counters::add(&self.worker.counters.protocol_errors, 1);
                info!(target: MQTT_LOG, client_id = %name, peer = %self.peer, error = %e, "Client {name} disconnected due to malformed packet.")
            }
            CloseReason::Protocol(why) => {
                Counters::add(&self.worker.counters.protocol_errors, 1);
                info!(target: MQTT_LOG, client_id = %name, peer = %self.peer, error = why, "Client {name} disconnected due to protocol error.")
            }
            CloseReason::TakenOver => {
                debug!(client_id = %name, "closed: client id taken over")
            }
            CloseReason::SessionRemoved => {
                info!(client_id = %name, "client {name} disconnected: its session was removed")
            }
            CloseReason::Refused(code) => {
                debug!(client_id = %name, code = *code as u8, "closed after CONNACK refusal")
            }
            CloseReason::Unavailable => {
                warn!(client_id = %name, "client {name} disconnected: the replicated state refused the request or did not commit it within commit_timeout_secs (no leader or no quorum?)")
            }
            CloseReason::Shutdown => {
                debug!(client_id = %name, "closed: broker shutting down")
            }
        }
        self.close_reason = Some(reason);
        self.phase = Phase::Closing;
        self.wake();
        // A peer that does not read cannot hold the connection open.
        ctx.run_later(Duration::from_secs(2), |_, ctx| ctx.stop());
    }

    fn on_decode_error(&mut self, e: DecodeError, ctx: &mut Context<Self>) {
        if let DecodeError::UnacceptableProtocol { name, level } = &e {
            if self.phase == Phase::AwaitingConnect {
                debug!(peer = %self.peer, protocol = %name, level, "unacceptable protocol");
                self.write_connack(
                    false,
                    ConnectReturnCode::UnacceptableProtocolVersion,
                    "<unknown>",
                );
                self.close(
                    CloseReason::Refused(ConnectReturnCode::UnacceptableProtocolVersion),
                    ctx,
                );
                return;
            }
        }
        self.close(CloseReason::Malformed(e), ctx);
    }

    // ---- writing ----

    fn write_packet(&mut self, packet: &Packet) {
        if self.phase == Phase::Closing && !matches!(packet, Packet::ConnAck(_)) {
            return;
        }
        if packet.encode(&mut self.wbuf).is_ok() {
            Counters::add(&self.worker.counters.packets_sent, 1);
            self.wake();
        }
    }

    fn write_connack(&mut self, session_present: bool, code: ConnectReturnCode, name: &str) {
        debug!(target: MQTT_LOG, client_id = %name, "Sending CONNACK to {name} ({})", code as u8);
        self.write_packet(&Packet::ConnAck(ConnAck {
            session_present,
            code,
        }));
    }

    fn write_ack(&mut self, kind: PacketType, packet_id: u16) {
        if self.phase == Phase::Closing {
            return;
        }
        encode_ack(&mut self.wbuf, kind, packet_id);
        Counters::add(&self.worker.counters.packets_sent, 1);
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            let what = match kind {
                PacketType::PubAck => "PUBACK",
                PacketType::PubRec => "PUBREC",
                PacketType::PubRel => "PUBREL",
                PacketType::PubComp => "PUBCOMP",
                _ => "UNSUBACK",
            };
            if kind == PacketType::UnsubAck {
                debug!(target: MQTT_LOG, client_id = %name, "Sending UNSUBACK to {name}");
            } else {
                debug!(target: MQTT_LOG, client_id = %name, "Sending {what} to {name} (Mid: {packet_id})");
            }
        }
        self.wake();
    }

    fn write_publish(&mut self, packet_id: u16, dup: bool, m: &AppMessage) {
        if self.phase == Phase::Closing {
            return;
        }
        if encode_publish(
            &mut self.wbuf,
            dup,
            m.qos,
            m.retain,
            &m.topic,
            packet_id,
            &m.payload,
        )
        .is_err()
        {
            return;
        }
        let c = &self.worker.counters;
        Counters::add(&c.publish_sent[m.qos as usize], 1);
        Counters::add(&c.packets_sent, 1);
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            debug!(target: MQTT_LOG, client_id = %name,
                "Sending PUBLISH to {name} (d{}, q{}, r{}, m{packet_id}, '{}', ... ({} bytes))",
                u8::from(dup), m.qos as u8, u8::from(m.retain), m.topic, m.payload.len());
        }
        self.wake();
    }

    fn write_sends(&mut self, sends: Vec<Send>) {
        for s in sends {
            match s {
                Send::Publish {
                    packet_id,
                    dup,
                    message,
                } => self.write_publish(packet_id, dup, &message),
                Send::PubRel(pid) => self.write_ack(PacketType::PubRel, pid),
            }
        }
    }

    /// Sends the acknowledgements that are due, in order.
    fn release_acks(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(t) = s.traffic.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        t.acks.ready(|kind, pid| due.push((kind, pid)));
        for (kind, pid) in due {
            let t = match kind {
                AckKind::PubAck => PacketType::PubAck,
                AckKind::PubRec => PacketType::PubRec,
                AckKind::PubComp => PacketType::PubComp,
            };
            self.write_ack(t, pid);
        }
    }

    /// Logs that a limit bit, at most once per ten seconds per client.
    fn limit_bit(&mut self, key: &'static str, what: &str) {
        let now = Instant::now();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let t = s.traffic();
        if t.last_limit_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return;
        }
        t.last_limit_log = Some(now);
        warn!(client_id = %s.client_id, limit = key, "{what} for client {} (limit {key}); dropping messages", s.client_id);
    }

    // ---- packets from the client ----

    fn on_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        Counters::add(&self.worker.counters.packets_received, 1);
        match (self.phase, packet) {
            (Phase::AwaitingConnect, Packet::Connect(c)) => self.on_connect(*c, ctx),
            (Phase::AwaitingConnect, _) => {
                self.close(CloseReason::Protocol("first packet is not CONNECT"), ctx)
            }
            (Phase::Active, Packet::Publish(p)) => self.on_publish(p, ctx),
            (Phase::Active, Packet::PubAck(pid)) => self.on_puback(pid),
            (Phase::Active, Packet::PubRec(pid)) => self.on_pubrec(pid),
            (Phase::Active, Packet::PubRel(pid)) => self.on_pubrel(pid, ctx),
            (Phase::Active, Packet::PubComp(pid)) => self.on_pubcomp(pid),
            (Phase::Active, Packet::Subscribe(s)) => self.on_subscribe(&s, ctx),
            (Phase::Active, Packet::Unsubscribe(u)) => self.on_unsubscribe(&u, ctx),
            (Phase::Active, Packet::PingReq) => {
                let name = self.name().to_string();
                debug!(target: MQTT_LOG, client_id = %name, "Received PINGREQ from {name}");
                self.write_packet(&Packet::PingResp);
                debug!(target: MQTT_LOG, client_id = %name, "Sending PINGRESP to {name}");
            }
            (Phase::Active, Packet::Disconnect) => self.on_disconnect(ctx),
            (Phase::Active, Packet::Connect(_)) => {
                self.close(CloseReason::Protocol("second CONNECT"), ctx)
            }
            (Phase::Active, _) => self.close(
                CloseReason::Protocol("packet type not accepted from a client"),
                ctx,
            ),
            (Phase::Connecting | Phase::Closing, _) => {}
        }
    }

    fn on_disconnect(&mut self, ctx: &mut Context<Self>) {
        let name = self.name().to_string();
        debug!(target: MQTT_LOG, client_id = %name, "Received DISCONNECT from {name}");
        let Some(s) = self.session.as_ref().filter(|s| s.persistent) else {
            return self.close(CloseReason::Disconnect, ctx);
        };
        // The session goes offline (will discarded) before the socket closes, so that a crash
        // in between cannot make the restarted broker publish the will.
        let sent_up_to = s.sent_up_to();
        let (tx, rx) = oneshot::channel();
        self.worker.store.do_send(SessionRequest::Disconnect {
            client_id: s.client_id.clone(),
            epoch: s.epoch,
            sent_up_to,
            reply: tx,
        });
        let wait = tokio::time::timeout(self.worker.config.commit_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(|res, act, ctx| {
                if matches!(res, Ok(Ok(true))) {
                    if let Some(s) = act.session.as_mut() {
                        s.released = true;
                    }
                }
                act.close(CloseReason::Disconnect, ctx);
            }),
        );
    }

    fn on_connect(&mut self, c: Connect, ctx: &mut Context<Self>) {
        if let Some(t) = self.connect_timer.take() {
            ctx.cancel_future(t);
        }
        let config = &self.worker.config;
        let mut client_id = c.client_id.clone();
        let code = if c.protocol == ProtocolVersion::V3_1 {
            let n = client_id.chars().count();
            if n == 0 || n > 23 {
                ConnectReturnCode::IdentifierRejected
            } else {
                ConnectReturnCode::Accepted
            }
        } else if client_id.is_empty() {
            if c.clean_session {
                client_id = ByteString::from(format!("auto-{:016x}", rand::random::<u64>()));
                ConnectReturnCode::Accepted
            } else {
                ConnectReturnCode::IdentifierRejected
            }
        } else if client_id.len() > config.max_client_id_len {
            ConnectReturnCode::IdentifierRejected
        } else {
            ConnectReturnCode::Accepted
        };
        let code = if code == ConnectReturnCode::Accepted
            && !config.allow_anonymous
            && c.username.is_none()
        {
            ConnectReturnCode::NotAuthorized
        } else {
            code
        };
        if code != ConnectReturnCode::Accepted {
            let name = if client_id.is_empty() {
                "<unknown>".to_string()
            } else {
                client_id.to_string()
            };
            info!(client_id = %name, peer = %self.peer, code = code as u8, "client {name} refused with CONNACK {}", code as u8);
            self.write_connack(false, code, &name);
            self.close(CloseReason::Refused(code), ctx);
            return;
        }
        self.decoder.set_protocol(c.protocol);
        self.phase = Phase::Connecting;
        let info = ConnectInfo {
            client_id: client_id.clone(),
            clean_session: c.clean_session,
            protocol: c.protocol,
            will: c.will.clone(),
            username: c.username.clone(),
            peer: self.peer,
        };
        let (tx, rx) = oneshot::channel();
        self.worker.store.do_send(ConnectRequest {
            target: self.target(ctx),
            info,
            reply: tx,
        });
        let wait = tokio::time::timeout(config.commit_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| match res {
                Ok(Ok(ConnectOutcome::Accepted {
                    session_present,
                    epoch,
                    key,
                    resume,
                })) => {
                    act.on_accepted(c, &client_id, session_present, epoch, key, *resume, ctx);
                }
                _ => {
                    let name = client_id.to_string();
                    warn!(client_id = %name, peer = %act.peer, "client {name} refused with CONNACK 3: the replicated state refused the session or did not commit it within commit_timeout_secs (no leader or no quorum?)");
                    act.write_connack(false, ConnectReturnCode::ServerUnavailable, &name);
                    act.session = None;
                    act.close(
                        CloseReason::Refused(ConnectReturnCode::ServerUnavailable),
                        ctx,
                    );
                }
            }),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_accepted(
        &mut self,
        c: Connect,
        client_id: &ByteString,
        session_present: bool,
        epoch: u64,
        key: u64,
        resume: starling_state::Resume,
        ctx: &mut Context<Self>,
    ) {
        let persistent = !c.clean_session;
        self.session = Some(Box::new(ClientSession {
            client_id: client_id.clone(),
            protocol: c.protocol,
            keep_alive: c.keep_alive,
            persistent,
            released: false,
            will: c.will.map(Box::new),
            epoch,
            key,
            flow: None,
            traffic: None,
            filters: Vec::new(),
        }));
        Counters::add(&self.worker.counters.clients_connected, 1);
        // Logged once the store accepted, so that a takeover's "already connected" line comes
        // first, as in Mosquitto.
        let user = c
            .username
            .as_ref()
            .map_or(String::new(), |u| format!(", u{u}"));
        info!(target: MQTT_LOG, client_id = %client_id, peer = %self.peer.ip(), clean_session = c.clean_session,
            keep_alive = c.keep_alive,
            "New client connected from {} as {client_id} (c{}, k{}{user}).",
            self.peer.ip(), u8::from(c.clean_session), c.keep_alive);
        let present = session_present && c.protocol == ProtocolVersion::V3_1_1;
        self.write_connack(present, ConnectReturnCode::Accepted, client_id);
        self.phase = Phase::Active;
        if !resume.outbound.is_empty() {
            let config = &self.worker.config;
            if let Some(Flow::Durable(f)) = self.session.as_mut().map(|s| s.flow(config)) {
                f.extend(resume.outbound);
                let mut out = Vec::new();
                f.refill(&mut out);
                self.write_sends(out);
            }
        }
        self.schedule_keepalive(ctx);
    }

    fn schedule_keepalive(&self, ctx: &mut Context<Self>) {
        let Some(s) = &self.session else { return };
        if s.keep_alive == 0 {
            return;
        }
        let limit = Duration::from_millis(u64::from(s.keep_alive) * 1500);
        let due = (self.last_read + limit).saturating_duration_since(Instant::now());
        ctx.run_later(due + Duration::from_millis(5), move |act, ctx| {
            if act.phase != Phase::Active {
                return;
            }
            if act.last_read.elapsed() >= limit {
                act.close(CloseReason::KeepAlive, ctx);
            } else {
                act.schedule_keepalive(ctx);
            }
        });
    }

    fn on_publish(&mut self, p: Publish, ctx: &mut Context<Self>) {
        let counters = &self.worker.counters;
        Counters::add(&counters.publish_received[p.qos as usize], 1);
        let shards = self.worker.routers.len();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            debug!(target: MQTT_LOG, client_id = %s.client_id,
                "Received PUBLISH from {} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                s.client_id, u8::from(p.dup), p.qos as u8, u8::from(p.retain), p.packet_id, p.topic, p.payload.len());
        }
        let message = AppMessage {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
        };
        let (client_id, epoch, persistent) = (&s.client_id, s.epoch, s.persistent);
        let t = s.traffic.get_or_insert_with(Box::default);
        let token = match p.qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(t.acks.push(AckKind::PubAck, p.packet_id)),
            QoS::ExactlyOnce if persistent => {
                // Exactly once across failover: the state machine accepts the id once.
                let token = t.acks.push(AckKind::PubRec, p.packet_id);
                self.worker.store.do_send(SessionRequest::Publish {
                    from: Target {
                        conn_id: self.id,
                        addr: ctx.address(),
                    },
                    token,
                    client_id: client_id.clone(),
                    epoch,
                    packet_id: p.packet_id,
                    message,
                });
                return;
            }
            QoS::ExactlyOnce => {
                if !t.inbound_qos2.insert(p.packet_id) {
                    t.acks.push_done(AckKind::PubRec, p.packet_id);
                    self.release_acks();
                    return;
                }
                Some(t.acks.push(AckKind::PubRec, p.packet_id))
            }
        };
        if t.route.is_empty() {
            t.route.resize_with(shards, Vec::new);
        }
        let shard = shard_of(&message.topic, shards);
        t.route[shard].push(RoutedPublish { message, token });
    }

    /// Sends this read pass's PUBLISHes to their shards.
    fn flush_routes(&mut self, ctx: &mut Context<Self>) {
        let Some(t) = self.session.as_mut().and_then(|s| s.traffic.as_mut()) else {
            return;
        };
        if t.route.iter().all(Vec::is_empty) {
            return;
        }
        let from = Target {
            conn_id: self.id,
            addr: ctx.address(),
        };
        for (i, batch) in t.route.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let publishes = std::mem::take(batch);
            let msg = Route {
                from: Some(from.clone()),
                publishes,
            };
            if let Err(SendError::Full(msg)) = self.worker.routers[i].try_send(msg) {
                // Backpressure: stop reading until the shard takes it.
                let send = self.worker.routers[i].send(msg);
                ctx.wait(actix::fut::wrap_future::<_, Self>(send).map(|_, _, _| ()));
            }
        }
    }

    fn on_puback(&mut self, pid: u16) {
        self.log_ack_in("PUBACK", pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let Some(flow) = s.flow.as_deref_mut() else {
            return;
        };
        match flow {
            Flow::Local(f) => {
                if f.puback(pid) {
                    f.refill(&mut out);
                }
            }
            Flow::Durable(f) => {
                if let AckOutcome::Commit(seq) = f.puback(pid) {
                    self.worker.store.do_send(SessionRequest::Ack {
                        client_id: s.client_id.clone(),
                        epoch: s.epoch,
                        seq,
                        kind: AckKind::PubAck,
                    });
                    f.refill(&mut out);
                }
            }
        }
        self.write_sends(out);
    }

    fn on_pubrec(&mut self, pid: u16) {
        self.log_ack_in("PUBREC", pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(flow) = s.flow.as_deref_mut() else {
            return;
        };
        match flow {
            Flow::Local(f) => {
                if f.pubrec(pid) {
                    self.write_ack(PacketType::PubRel, pid);
                }
            }
            Flow::Durable(f) => match f.pubrec(pid) {
                AckOutcome::Commit(seq) => self.worker.store.do_send(SessionRequest::Ack {
                    client_id: s.client_id.clone(),
                    epoch: s.epoch,
                    seq,
                    kind: AckKind::PubRec,
                }),
                AckOutcome::ResendPubRel(pid) => self.write_ack(PacketType::PubRel, pid),
                AckOutcome::Ignore => {}
            },
        }
    }

    fn on_pubcomp(&mut self, pid: u16) {
        self.log_ack_in("PUBCOMP", pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let Some(flow) = s.flow.as_deref_mut() else {
            return;
        };
        match flow {
            Flow::Local(f) => {
                if f.pubcomp(pid) {
                    f.refill(&mut out);
                }
            }
            Flow::Durable(f) => {
                if let AckOutcome::Commit(seq) = f.pubcomp(pid) {
                    self.worker.store.do_send(SessionRequest::Ack {
                        client_id: s.client_id.clone(),
                        epoch: s.epoch,
                        seq,
                        kind: AckKind::PubComp,
                    });
                    f.refill(&mut out);
                }
            }
        }
        self.write_sends(out);
    }

    fn on_pubrel(&mut self, pid: u16, ctx: &mut Context<Self>) {
        self.log_ack_in("PUBREL", pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.persistent {
            let token = s.traffic().acks.push(AckKind::PubComp, pid);
            self.worker.store.do_send(SessionRequest::Release {
                from: Target {
                    conn_id: self.id,
                    addr: ctx.address(),
                },
                token,
                client_id: s.client_id.clone(),
                epoch: s.epoch,
                packet_id: pid,
            });
        } else {
            // An unknown PUBREL still gets PUBCOMP.
            let t = s.traffic();
            t.inbound_qos2.remove(&pid);
            t.acks.push_done(AckKind::PubComp, pid);
            self.release_acks();
        }
    }

    fn log_ack_in(&self, what: &str, pid: u16) {
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = self.name();
            debug!(target: MQTT_LOG, client_id = %name, "Received {what} from {name} (Mid: {pid})");
        }
    }

    fn on_subscribe(&mut self, sub: &starling_codec::Subscribe, ctx: &mut Context<Self>) {
        let target = self.target(ctx);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let name = s.client_id.clone();
        debug!(target: MQTT_LOG, client_id = %name, "Received SUBSCRIBE from {name}");
        let mut valid = Vec::with_capacity(sub.filters.len());
        let mut codes: Vec<Option<SubscribeReturnCode>> = Vec::with_capacity(sub.filters.len());
        for f in &sub.filters {
            debug!(target: MQTT_LOG, client_id = %name, "\t{} (QoS {})", f.filter, f.qos as u8);
            if topic::validate_filter(&f.filter).is_ok() {
                valid.push((Arc::<str>::from(&*f.filter), f.qos));
                codes.push(None);
            } else if s.protocol == ProtocolVersion::V3_1 {
                // 3.1 has no failure return code.
                self.close(CloseReason::Protocol("invalid topic filter"), ctx);
                return;
            } else {
                debug!(client_id = %name, filter = %f.filter, "invalid topic filter refused");
                codes.push(Some(SubscribeReturnCode::Failure));
            }
        }
        let (tx, rx) = oneshot::channel();
        // 0 for a clean session outside the replicated state (single node).
        let epoch = s.epoch;
        self.worker.store.do_send(SubscribeRequest {
            target,
            client_id: name.clone(),
            key: s.key,
            epoch,
            filters: valid.clone(),
            reply: tx,
        });
        let packet_id = sub.packet_id;
        let wait = tokio::time::timeout(self.worker.config.commit_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| {
                let (granted, retained) = match res {
                    Ok(Ok(SubscribeOutcome::Done { granted, retained })) => (granted, retained),
                    _ => return act.close(CloseReason::Unavailable, ctx),
                };
                let mut granted = granted.into_iter();
                let return_codes: Vec<SubscribeReturnCode> = codes
                    .into_iter()
                    .map(|c| {
                        c.unwrap_or_else(|| {
                            SubscribeReturnCode::Success(granted.next().unwrap_or(QoS::AtMostOnce))
                        })
                    })
                    .collect();
                for ((filter, _), code) in valid.iter().zip(
                    return_codes
                        .iter()
                        .filter(|c| **c != SubscribeReturnCode::Failure),
                ) {
                    debug!(target: MQTT_LOG, client_id = %name, "{name} {} {filter}", code.as_u8());
                }
                if let Some(s) = act.session.as_mut() {
                    if !s.persistent {
                        for (f, _) in &valid {
                            if !s.filters.contains(f) {
                                s.filters.push(f.clone());
                            }
                        }
                    }
                }
                debug!(target: MQTT_LOG, client_id = %name, "Sending SUBACK to {name}");
                act.write_packet(&Packet::SubAck(SubAck {
                    packet_id,
                    return_codes,
                }));
                act.deliver(retained);
            }),
        );
    }

    fn on_unsubscribe(&mut self, u: &starling_codec::Unsubscribe, ctx: &mut Context<Self>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let name = s.client_id.clone();
        debug!(target: MQTT_LOG, client_id = %name, "Received UNSUBSCRIBE from {name}");
        let filters: Vec<Arc<str>> = u.filters.iter().map(|f| Arc::<str>::from(&**f)).collect();
        if !s.persistent {
            s.filters.retain(|f| !filters.contains(f));
        }
        let (tx, rx) = oneshot::channel();
        let epoch = s.epoch;
        self.worker.store.do_send(UnsubscribeRequest {
            client_id: name,
            key: s.key,
            epoch,
            filters,
            reply: tx,
        });
        let packet_id = u.packet_id;
        let wait = tokio::time::timeout(self.worker.config.commit_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| match res {
                Ok(Ok(true)) => act.write_ack(PacketType::UnsubAck, packet_id),
                _ => act.close(CloseReason::Unavailable, ctx),
            }),
        );
    }

    /// Non-durable deliveries (fast path, or a clean session's retained messages).
    fn deliver(&mut self, messages: Vec<AppMessage>) {
        if self.phase != Phase::Active {
            return;
        }
        let max_wbuf = self.worker.config.max_write_buffer;
        for m in messages {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            let flow = if m.qos == QoS::AtMostOnce {
                None
            } else {
                Some(s.flow(&self.worker.config))
            };
            match (flow, m.qos) {
                (_, QoS::AtMostOnce) | (None | Some(Flow::Durable(_)), _) => {
                    if self.wbuf.len() >= max_wbuf {
                        Counters::add(&self.worker.counters.dropped_qos0, 1);
                        self.limit_bit("max_write_buffer", "write buffer full (slow consumer)");
                        continue;
                    }
                    let m = if m.qos == QoS::AtMostOnce {
                        m
                    } else {
                        m.with(QoS::AtMostOnce, m.retain)
                    };
                    self.write_publish(0, false, &m);
                }
                (Some(Flow::Local(f)), _) => match f.offer(m) {
                    Offer::Send(send) => self.write_sends(vec![send]),
                    Offer::Queued => {}
                    Offer::Dropped(limit) => {
                        Counters::add(&self.worker.counters.dropped_queue_full, 1);
                        self.limit_bit(limit, "session queue full");
                    }
                },
            }
        }
    }
}

impl Actor for Connection {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        Counters::add(&self.worker.counters.connections_opened, 1);
        ctx.spawn(io::Reader);
        ctx.spawn(io::Writer);
        self.connect_timer = Some(ctx.run_later(
            self.worker.config.connect_timeout(),
            |act, ctx| {
                if act.phase == Phase::AwaitingConnect {
                    act.close(CloseReason::ConnectTimeout, ctx);
                }
            },
        ));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        Counters::add(&self.worker.counters.connections_closed, 1);
        let Some(s) = self.session.take() else { return };
        Counters::add(&self.worker.counters.clients_disconnected, 1);
        let reason = self.close_reason.clone().unwrap_or(CloseReason::Eof);
        let publish_will = reason.publishes_will();
        // A session in the replicated state has its will published by the state machine.
        if !s.persistent && s.epoch == 0 && publish_will {
            if let Some(w) = &s.will {
                let message = AppMessage {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: w.qos,
                    retain: w.retain,
                };
                let shard = shard_of(&message.topic, self.worker.routers.len());
                self.worker.routers[shard].do_send(Route {
                    from: None,
                    publishes: vec![RoutedPublish {
                        message,
                        token: None,
                    }],
                });
            }
        }
        let sent_up_to = s.sent_up_to();
        self.worker.store.do_send(ConnectionClosed {
            conn_id: self.id,
            client_id: s.client_id.clone(),
            key: s.key,
            epoch: if s.released { 0 } else { s.epoch },
            persistent: s.persistent,
            publish_will,
            sent_up_to,
            filters: s.filters.clone(),
        });
    }
}

impl Handler<Deliver> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) {
        self.deliver(msg.messages);
    }
}

impl Handler<DurableDeliver> for Connection {
    type Result = ();

    fn handle(&mut self, msg: DurableDeliver, _: &mut Self::Context) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.epoch != msg.epoch || self.phase != Phase::Active {
            return;
        }
        let mut out = Vec::new();
        if let Flow::Durable(f) = s.flow(&self.worker.config) {
            f.extend(msg.items);
            f.refill(&mut out);
        }
        self.write_sends(out);
        for m in msg.qos0 {
            self.write_publish(0, false, &m);
        }
    }
}

impl Handler<ReleaseReady> for Connection {
    type Result = ();

    fn handle(&mut self, msg: ReleaseReady, _: &mut Self::Context) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.epoch != msg.epoch {
            return;
        }
        let Some(Flow::Durable(f)) = s.flow.as_deref_mut() else {
            return;
        };
        let pids: Vec<u16> = msg
            .seqs
            .iter()
            .filter_map(|seq| f.release_ready(*seq))
            .collect();
        for pid in pids {
            self.write_ack(PacketType::PubRel, pid);
        }
    }
}

impl Handler<Acked> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Acked, ctx: &mut Self::Context) {
        if msg.refused {
            return self.close(CloseReason::Unavailable, ctx);
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let was_paused = s.owed_acks() >= self.worker.config.max_inflight_in;
        let Some(traffic) = s.traffic.as_mut() else {
            return;
        };
        for t in msg.tokens {
            traffic.acks.complete(t);
        }
        self.release_acks();
        if was_paused && !self.read_paused() {
            self.wake();
        }
    }
}

impl Handler<Kick> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Self::Context) {
        self.closed_waiters.extend(msg.closed);
        let reason = match msg.reason {
            KickReason::TakenOver => CloseReason::TakenOver,
            KickReason::SessionRemoved => CloseReason::SessionRemoved,
            KickReason::Shutdown => CloseReason::Shutdown,
        };
        self.close(reason, ctx);
    }
}

#[cfg(test)]
mod size_probe {
    #[test]
    fn print_sizes() {
        eprintln!("Connection {} ClientSession {} LocalOutbound {} DurableOutbound {} PendingAcks {} Decoder {} TcpStream {} Context {}",
            std::mem::size_of::<super::Connection>(),
            std::mem::size_of::<super::ClientSession>(),
            std::mem::size_of::<super::outbound::LocalOutbound>(),
            std::mem::size_of::<super::outbound::DurableOutbound>(),
            std::mem::size_of::<super::acks::PendingAcks>(),
            std::mem::size_of::<starling_codec::Decoder>(),
            std::mem::size_of::<tokio::net::TcpStream>(),
            std::mem::size_of::<actix::Context<super::Connection>>(),
        );
    }
}
