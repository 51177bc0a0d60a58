//! The connection actor: one per client. It owns the socket, the protocol state machine, the
//! keep-alive timer and the client's outbound flow; sessions' replicated state lives in the
//! session store, subscriptions in the router shards.
//!
//! Lifecycle: `AwaitingConnect` → (CONNECT) `Connecting` (password verification, then waiting
//! for the store) → `Active` → `Closing` (flush what is written, then stop). Whatever ends it,
//! `stopped` tells the store and, for a clean session whose will is due, publishes the will.
//!
//! Security (docs/security.md): CONNECT is authenticated (CONNACK 4 / 5) before the store hears
//! of it; the client's ACL lives in its [`guard::Guard`]: PUBLISH to a topic it may not write is
//! acknowledged and dropped (as Mosquitto does for 3.1.1), SUBSCRIBE to a filter through which
//! nothing is readable gets 0x80, and deliveries are filtered only while a subscription is
//! partially readable. The socket is a [`transport::Stream`]: plain TCP, TLS or WebSocket.

mod acks;
mod flow;
mod guard;
mod io;
mod outbound;
pub(crate) mod transport;

pub use self::flow::{
    ClientFlow, Commit, FlowClosed, FlowLimits, Inbound, Offer, Outgoing, Release,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use actix::prelude::*;
use bytes::BytesMut;
use bytestring::ByteString;
use starling_auth::{Authorizer, Coverage, Verdict};
use starling_codec::encode::{encode_ack, encode_publish};
use starling_codec::{
    topic, ConnAck, Connect, ConnectReturnCode, DecodeError, Decoder, LastWill, Packet, PacketType,
    ProtocolVersion, Publish, QoS, SubAck, SubscribeReturnCode,
};
use starling_state::{Message as AppMessage, Outbound};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::guard::{topic_limit, Guard, Refusal, TokenBucket};
use self::transport::Stream;
use crate::listener::LiveGuard;
use crate::messages::{
    AckKind, Acked, ConnectInfo, ConnectOutcome, ConnectRequest, ConnectionClosed, Deliver,
    DurableDeliver, Kick, KickReason, ReleaseReady, Route, RoutedPublish, SessionRequest,
    SubscribeOutcome, SubscribeRequest, Target, UnsubscribeRequest,
};
use crate::metrics::{Counters, Limit, SecurityEvent};
use crate::Worker;

/// How long a CONNECT may wait for its password verification before CONNACK 3.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A 3.1 client's subscription was refused (3.1 has no failure return code).
    Denied(&'static str),
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

/// What exists once CONNECT is accepted.
///
/// Kept small: what an idle client never uses (its QoS flows, its inbound state, its rate
/// state) is allocated on first use, so that an idle connection costs little memory.
struct ClientSession {
    /// The session's identity, QoS flows and owed acknowledgements: every exactly-once
    /// decision is the flow's.
    flow: ClientFlow,
    /// Protocol level: 3.1 has no SUBACK failure code, and no session-present flag.
    protocol: ProtocolVersion,
    /// Keep-alive in seconds (0: none); the connection closes after 1.5 x this of silence.
    keep_alive: u16,
    /// The will, published by this connection on an abnormal close when the session is not in
    /// the replicated state (which otherwise publishes it).
    will: Option<Box<LastWill>>,
    /// Clean sessions: filters subscribed (to remove on close).
    filters: Vec<Arc<str>>,
    /// ACL and subscription bookkeeping; only with an ACL file or `max_subscriptions`.
    guard: Option<Box<Guard>>,
    /// Publish rate and log-line rate state, created when first needed.
    rates: Option<Box<Rates>>,
}

/// A client's rate state: the publish token bucket and the pause it causes, and when a limit
/// line was last logged for it.
#[derive(Default)]
struct Rates {
    /// Last time a limit was logged for this client (one line per ten seconds).
    last_limit_log: Option<Instant>,
    /// `max_publish_rate`: created with the first PUBLISH when configured.
    bucket: Option<TokenBucket>,
    /// Reading paused by the rate limit until a timer clears this.
    throttled: bool,
}

impl ClientSession {
    fn rates(&mut self) -> &mut Rates {
        self.rates.get_or_insert_with(Box::default)
    }
}

/// What a CONNECT left once the password and the store accepted it.
struct Admitted {
    client_id: ByteString,
    /// The effective user name (certificate CN or CONNECT user name).
    username: Option<ByteString>,
    guard: Option<Box<Guard>>,
    session_present: bool,
    epoch: u64,
    key: u64,
}

/// The connection actor.
pub struct Connection {
    id: u64,
    worker: Arc<Worker>,
    stream: Stream,
    peer: SocketAddr,
    /// On a `use_identity_as_username` listener: the client certificate's CN (`None` inside:
    /// no certificate or no CN). Taken at CONNECT.
    identity: Option<Box<Option<ByteString>>>,
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
        stream: Stream,
        peer: SocketAddr,
        live: LiveGuard,
        identity: Option<Option<ByteString>>,
    ) -> Connection {
        let decoder = Decoder::new(worker.config.max_packet_size);
        Connection {
            id,
            worker,
            stream,
            peer,
            identity: identity.map(Box::new),
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
        self.session
            .as_ref()
            .map_or("<unknown>", |s| &**s.flow.client_id())
    }

    fn target(&self, ctx: &Context<Self>) -> Target {
        Target {
            conn_id: self.id,
            addr: ctx.address(),
        }
    }

    fn read_paused(&self) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.flow.owed_acks() >= self.worker.config.max_inflight_in
                || s.rates.as_ref().is_some_and(|r| r.throttled)
        })
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
            CloseReason::Denied(why) => {
                info!(client_id = %name, peer = %self.peer, reason = why, "client {name} disconnected: {why}")
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
        if let DecodeError::PacketTooLarge { size, max } = &e {
            self.worker.counters.limit(Limit::MaxPacketSize);
            warn!(client_id = %self.name(), peer = %self.peer, size, limit = "max_packet_size",
                "packet of {size} bytes from client {} exceeds max_packet_size ({max}); disconnecting", self.name());
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

    fn write_outgoing(&mut self, sends: Vec<Outgoing>) {
        for s in sends {
            match s {
                Outgoing::Publish {
                    packet_id,
                    dup,
                    message,
                } => self.write_publish(packet_id, dup, &message),
                Outgoing::PubRel(pid) => self.write_ack(PacketType::PubRel, pid),
            }
        }
    }

    /// Sends the acknowledgements that are due, in order.
    fn release_acks(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        s.flow.due_acks(|kind, pid| due.push((kind, pid)));
        for (kind, pid) in due {
            let t = match kind {
                AckKind::PubAck => PacketType::PubAck,
                AckKind::PubRec => PacketType::PubRec,
                AckKind::PubComp => PacketType::PubComp,
            };
            self.write_ack(t, pid);
        }
    }

    /// Counts that a limit bit and logs it, at most once per ten seconds per client:
    /// `<what> for client <id> (limit <key>); <then>`.
    fn limit_bit(&mut self, limit: Limit, what: &str, then: &str) {
        self.worker.counters.limit(limit);
        if !self.may_log() {
            return;
        }
        let key = limit.key();
        let name = self.name();
        warn!(client_id = %name, limit = key, "{what} for client {name} (limit {key}); {then}");
    }

    /// Counts `n` ACL refusals and logs them, at most once per ten seconds per client.
    fn denied(&mut self, event: SecurityEvent, n: u64, what: &str, topic: &str) {
        Counters::add(&self.worker.counters.security[event as usize], n);
        if !self.may_log() {
            return;
        }
        let name = self.name();
        info!(client_id = %name, topic, event = event.name(), "{what} for client {name}: '{topic}' (acl_file)");
    }

    /// True at most once per ten seconds per client (for limit and ACL log lines).
    fn may_log(&mut self) -> bool {
        let now = Instant::now();
        let Some(s) = self.session.as_mut() else {
            return true;
        };
        let r = s.rates();
        if r.last_limit_log
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(10))
        {
            return false;
        }
        r.last_limit_log = Some(now);
        true
    }

    /// Recompiles the client's ACL if the security files were reloaded since.
    fn refresh_guard(&mut self) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let Some(g) = s.guard.as_deref_mut() else {
            return;
        };
        let security = &self.worker.security;
        let generation = security.generation();
        if g.is_stale(generation) {
            let acl = security
                .authorizer()
                .client_acl(g.username(), s.flow.client_id());
            g.refresh(acl, generation);
        }
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
            (Phase::Active, Packet::PubAck(pid)) => self.on_ack(AckKind::PubAck, pid),
            (Phase::Active, Packet::PubRec(pid)) => self.on_ack(AckKind::PubRec, pid),
            (Phase::Active, Packet::PubRel(pid)) => self.on_pubrel(pid, ctx),
            (Phase::Active, Packet::PubComp(pid)) => self.on_ack(AckKind::PubComp, pid),
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
        let Some(s) = self.session.as_ref().filter(|s| s.flow.is_persistent()) else {
            return self.close(CloseReason::Disconnect, ctx);
        };
        // The session goes offline (will discarded) before the socket closes, so that a crash
        // in between cannot make the restarted broker publish the will.
        let (tx, rx) = oneshot::channel();
        self.worker.store.do_send(SessionRequest::Disconnect {
            client_id: s.flow.client_id().clone(),
            epoch: s.flow.epoch(),
            sent_up_to: s.flow.sent_up_to(),
            reply: tx,
        });
        let wait = tokio::time::timeout(self.worker.config.commit_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(|res, act, ctx| {
                if matches!(res, Ok(Ok(true))) {
                    if let Some(s) = act.session.as_mut() {
                        s.flow.on_released();
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
        if code != ConnectReturnCode::Accepted {
            return self.refuse(code, &client_id, "client id rejected", ctx);
        }
        // Who the client is: the certificate's CN on a `use_identity_as_username` listener (the
        // CONNECT user name and password are then ignored), else the CONNECT user name.
        let from_cert = self.identity.take().map(|b| *b);
        let username = match &from_cert {
            Some(cn) => cn.clone(),
            None => c.username.clone(),
        };
        if from_cert.as_ref().is_some_and(Option::is_none) {
            self.worker.counters.security(SecurityEvent::BadCredentials);
            return self.refuse(
                ConnectReturnCode::BadUserNameOrPassword,
                &client_id,
                "no client certificate common name to use as user name",
                ctx,
            );
        }
        if username.is_none() && !config.anonymous_allowed() {
            self.worker.counters.security(SecurityEvent::NotAuthorized);
            return self.refuse(
                ConnectReturnCode::NotAuthorized,
                &client_id,
                "anonymous clients are not allowed (allow_anonymous)",
                ctx,
            );
        }
        self.decoder.set_protocol(c.protocol);
        self.phase = Phase::Connecting;
        let security = self.worker.security.clone();
        // Generation first: a reload in between makes the ACL look stale, never fresh.
        let generation = security.generation();
        let auth = security.authorizer();
        let verdict = match &username {
            Some(user) if from_cert.is_none() => auth.quick_verify(user, c.password.as_deref()),
            _ => Some(Verdict::Accepted),
        };
        if let Some(v) = verdict {
            return self.on_verdict(v, c, client_id, username, &auth, generation, ctx);
        }
        // PBKDF2 runs on the verification threads; reading from this client waits meanwhile.
        let user = username.clone().unwrap_or_default();
        let password = c.password.clone().unwrap_or_default();
        let Some(rx) = security.verify(auth.clone(), user, password) else {
            self.limit_bit(
                Limit::MaxPendingAuth,
                "too many password verifications waiting",
                "connection refused",
            );
            return self.refuse(
                ConnectReturnCode::ServerUnavailable,
                &client_id,
                "password verification queue full (max_pending_auth)",
                ctx,
            );
        };
        let wait = tokio::time::timeout(AUTH_TIMEOUT, rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| match res {
                Ok(Ok(v)) => act.on_verdict(v, c, client_id, username, &auth, generation, ctx),
                _ => act.refuse(
                    ConnectReturnCode::ServerUnavailable,
                    &client_id,
                    "password verification did not complete",
                    ctx,
                ),
            }),
        );
    }

    /// Sends a refusing CONNACK and closes.
    fn refuse(
        &mut self,
        code: ConnectReturnCode,
        client_id: &str,
        why: &str,
        ctx: &mut Context<Self>,
    ) {
        let name = if client_id.is_empty() {
            "<unknown>"
        } else {
            client_id
        };
        info!(client_id = %name, peer = %self.peer, code = code as u8, reason = why, "client {name} refused with CONNACK {}: {why}", code as u8);
        self.write_connack(false, code, name);
        self.session = None;
        self.close(CloseReason::Refused(code), ctx);
    }

    /// The password check is done: check the will against the ACL, then ask the store.
    #[allow(clippy::too_many_arguments)]
    fn on_verdict(
        &mut self,
        verdict: Verdict,
        c: Connect,
        client_id: ByteString,
        username: Option<ByteString>,
        auth: &Authorizer,
        generation: u64,
        ctx: &mut Context<Self>,
    ) {
        if self.phase == Phase::Closing {
            return;
        }
        match verdict {
            Verdict::Accepted => {}
            Verdict::UnknownUser | Verdict::BadPassword => {
                self.worker.counters.security(SecurityEvent::BadCredentials);
                let why = if verdict == Verdict::UnknownUser {
                    "unknown user name"
                } else if c.password.is_none() {
                    "no password"
                } else {
                    "wrong password"
                };
                return self.refuse(
                    ConnectReturnCode::BadUserNameOrPassword,
                    &client_id,
                    why,
                    ctx,
                );
            }
        }
        let config = &self.worker.config;
        let guard = (self.worker.security.has_acl() || config.max_subscriptions > 0).then(|| {
            let acl = auth.client_acl(username.as_deref(), &client_id);
            Box::new(Guard::new(username.clone(), acl, generation))
        });
        if let (Some(g), Some(w)) = (&guard, &c.will) {
            if !g.can_write_will(&w.topic) {
                self.worker.counters.security(SecurityEvent::NotAuthorized);
                return self.refuse(
                    ConnectReturnCode::NotAuthorized,
                    &client_id,
                    "the ACL does not allow publishing to the will topic",
                    ctx,
                );
            }
        }
        let info = ConnectInfo {
            client_id: client_id.clone(),
            clean_session: c.clean_session,
            protocol: c.protocol,
            will: c.will.clone(),
            username: username.clone(),
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
                    let accepted = Admitted {
                        client_id,
                        username,
                        guard,
                        session_present,
                        epoch,
                        key,
                    };
                    act.on_accepted(c, accepted, *resume, ctx);
                }
                Ok(Ok(ConnectOutcome::NotAuthorized)) => {
                    act.worker.counters.security(SecurityEvent::NotAuthorized);
                    act.refuse(
                        ConnectReturnCode::NotAuthorized,
                        &client_id,
                        "the session belongs to another user (bind_session_to_user)",
                        ctx,
                    );
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

    fn on_accepted(
        &mut self,
        c: Connect,
        a: Admitted,
        resume: starling_state::Resume,
        ctx: &mut Context<Self>,
    ) {
        let Admitted {
            client_id,
            username,
            mut guard,
            session_present,
            epoch,
            key,
        } = a;
        let persistent = !c.clean_session;
        if let Some(g) = guard.as_deref_mut() {
            // A resumed session's subscriptions are read under this client's ACL (whoever
            // created them).
            for (filter, _) in &resume.subscriptions {
                let coverage = g.classify(filter);
                g.subscribed(filter.clone(), coverage);
            }
        }
        let limits = FlowLimits::from_config(&self.worker.config);
        self.session = Some(Box::new(ClientSession {
            flow: ClientFlow::new(client_id.clone(), persistent, epoch, key, limits),
            protocol: c.protocol,
            keep_alive: c.keep_alive,
            will: c.will.map(Box::new),
            filters: Vec::new(),
            guard,
            rates: None,
        }));
        Counters::add(&self.worker.counters.clients_connected, 1);
        // Logged once the store accepted, so that a takeover's "already connected" line comes
        // first, as in Mosquitto.
        let user = username
            .as_ref()
            .map_or(String::new(), |u| format!(", u{u}"));
        info!(target: MQTT_LOG, client_id = %client_id, peer = %self.peer.ip(), clean_session = c.clean_session,
            keep_alive = c.keep_alive,
            "New client connected from {} as {client_id} (c{}, k{}{user}).",
            self.peer.ip(), u8::from(c.clean_session), c.keep_alive);
        let present = session_present && c.protocol == ProtocolVersion::V3_1_1;
        self.write_connack(present, ConnectReturnCode::Accepted, &client_id);
        self.phase = Phase::Active;
        if !resume.outbound.is_empty() {
            let outbound = self.readable_durable(resume.outbound);
            let mut out = Vec::new();
            if let Some(s) = self.session.as_mut() {
                s.flow.resume(outbound, &mut out);
            }
            self.write_outgoing(out);
        }
        self.schedule_keepalive(ctx);
    }

    /// Keeps the persistent-session messages this client may read; the others are acknowledged
    /// in the replicated state without being sent (they leave the session's queue).
    fn readable_durable(&mut self, items: Vec<Outbound>) -> Vec<Outbound> {
        self.refresh_guard();
        let Some(s) = self.session.as_mut() else {
            return items;
        };
        let Some(g) = s.guard.as_deref_mut() else {
            return items;
        };
        let mut keep = Vec::with_capacity(items.len());
        let mut denied = None;
        let mut n = 0;
        for o in items {
            let skip = if g.can_read(&o.message.topic) {
                None
            } else {
                ClientFlow::skip(&o)
            };
            let Some(commits) = skip else {
                keep.push(o);
                continue;
            };
            for c in commits {
                self.worker.store.do_send(SessionRequest::Ack {
                    client_id: s.flow.client_id().clone(),
                    epoch: s.flow.epoch(),
                    seq: c.seq,
                    kind: c.kind,
                });
            }
            denied = Some(o.message.topic);
            n += 1;
        }
        if let Some(topic) = denied {
            self.denied(
                SecurityEvent::DeliveryDenied,
                n,
                "message not delivered: the ACL does not allow reading it",
                &topic,
            );
        }
        keep
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
        if self.worker.config.max_publish_rate > 0 {
            // Every PUBLISH costs a token, refused or not.
            self.take_publish_token(ctx);
        }
        self.refresh_guard();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
            let name = s.flow.client_id();
            debug!(target: MQTT_LOG, client_id = %name,
                "Received PUBLISH from {name} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                u8::from(p.dup), p.qos as u8, u8::from(p.retain), p.packet_id, p.topic, p.payload.len());
        }
        if let Some(limit) = topic_limit(&self.worker.config, &p.topic) {
            return self.drop_publish(&p, Refusal::Limit(limit));
        }
        if let Some(g) = s.guard.as_deref_mut() {
            if !g.can_write(&p.topic) {
                return self.drop_publish(&p, Refusal::Acl);
            }
        }
        let message = AppMessage {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
        };
        match s.flow.on_publish(p.packet_id, message) {
            Inbound::Routed { token } => {
                if token.is_some() {
                    self.note_inflight_in();
                }
            }
            Inbound::Store {
                token,
                packet_id,
                message,
            } => {
                let request = SessionRequest::Publish {
                    from: Target {
                        conn_id: self.id,
                        addr: ctx.address(),
                    },
                    token,
                    client_id: s.flow.client_id().clone(),
                    epoch: s.flow.epoch(),
                    packet_id,
                    message,
                };
                self.worker.store.do_send(request);
                self.note_inflight_in();
            }
            Inbound::Repeated => self.release_acks(),
        }
    }

    /// A PUBLISH refused by a topic limit or the ACL: acknowledged as if routed (so that the
    /// client moves on), and dropped.
    fn drop_publish(&mut self, p: &Publish, why: Refusal) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        s.flow.on_refused_publish(p.qos, p.packet_id);
        self.release_acks();
        match why {
            Refusal::Acl => {
                if tracing::enabled!(target: MQTT_LOG, tracing::Level::DEBUG) {
                    let name = self.name();
                    debug!(target: MQTT_LOG, client_id = %name,
                        "Denied PUBLISH from {name} (d{}, q{}, r{}, m{}, '{}', ... ({} bytes))",
                        u8::from(p.dup), p.qos as u8, u8::from(p.retain), p.packet_id, p.topic, p.payload.len());
                }
                self.denied(
                    SecurityEvent::PublishDenied,
                    1,
                    "PUBLISH dropped: the ACL does not allow writing",
                    &p.topic,
                );
            }
            Refusal::Limit(limit) => {
                let what = if limit == Limit::MaxTopicLevels {
                    "topic name with too many levels"
                } else {
                    "topic name too long"
                };
                self.limit_bit(limit, what, "PUBLISH dropped");
            }
        }
    }

    /// Counts and logs the moment owed acknowledgements reach `max_inflight_in` (reading stops).
    fn note_inflight_in(&mut self) {
        let max = self.worker.config.max_inflight_in;
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.flow.owed_acks() == max)
        {
            self.limit_bit(
                Limit::MaxInflightIn,
                "unacknowledged QoS 1/2 PUBLISHes at the limit",
                "reading paused",
            );
        }
    }

    /// Takes a `max_publish_rate` token; with the bucket empty, stops reading from the client
    /// until the next token is due.
    fn take_publish_token(&mut self, ctx: &mut Context<Self>) {
        let config = &self.worker.config;
        let (rate, burst) = (config.max_publish_rate, config.publish_burst);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let now = Instant::now();
        let r = s.rates();
        let bucket = r
            .bucket
            .get_or_insert_with(|| TokenBucket::new(rate, burst, now));
        let Some(pause) = bucket.take(now) else {
            return;
        };
        r.throttled = true;
        ctx.run_later(pause, |act, _| {
            if let Some(r) = act.session.as_mut().and_then(|s| s.rates.as_mut()) {
                r.throttled = false;
            }
            act.wake();
        });
        self.limit_bit(
            Limit::MaxPublishRate,
            "PUBLISH rate above the limit",
            "reading paused",
        );
    }

    /// Sends this read pass's PUBLISHes to their shards.
    fn flush_routes(&mut self, ctx: &mut Context<Self>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let publishes = s.flow.take_routes();
        if publishes.is_empty() {
            return;
        }
        let from = Target {
            conn_id: self.id,
            addr: ctx.address(),
        };
        // This worker's own shard: a client's PUBLISHes all take the same path, which keeps
        // their order (MQTT orders per publisher), and routing needs no thread hop.
        let msg = Route {
            from: Some(from),
            publishes,
        };
        if let Err(SendError::Full(msg)) = self.worker.router.try_send(msg) {
            // Backpressure: stop reading until the shard takes it.
            let send = self.worker.router.send(msg);
            ctx.wait(actix::fut::wrap_future::<_, Self>(send).map(|_, _, _| ()));
        }
    }

    /// PUBACK, PUBREC or PUBCOMP from the client, for a message sent to it.
    fn on_ack(&mut self, kind: AckKind, pid: u16) {
        let what = match kind {
            AckKind::PubAck => "PUBACK",
            AckKind::PubRec => "PUBREC",
            AckKind::PubComp => "PUBCOMP",
        };
        self.log_ack_in(what, pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let commit = match kind {
            AckKind::PubAck => s.flow.on_puback(pid, &mut out),
            AckKind::PubRec => s.flow.on_pubrec(pid, &mut out),
            AckKind::PubComp => s.flow.on_pubcomp(pid, &mut out),
        };
        if let Some(c) = commit {
            self.worker.store.do_send(SessionRequest::Ack {
                client_id: s.flow.client_id().clone(),
                epoch: s.flow.epoch(),
                seq: c.seq,
                kind: c.kind,
            });
        }
        self.write_outgoing(out);
    }

    fn on_pubrel(&mut self, pid: u16, ctx: &mut Context<Self>) {
        self.log_ack_in("PUBREL", pid);
        let Some(s) = self.session.as_mut() else {
            return;
        };
        match s.flow.on_pubrel(pid) {
            Release::Store { token } => {
                let request = SessionRequest::Release {
                    from: Target {
                        conn_id: self.id,
                        addr: ctx.address(),
                    },
                    token,
                    client_id: s.flow.client_id().clone(),
                    epoch: s.flow.epoch(),
                    packet_id: pid,
                };
                self.worker.store.do_send(request);
            }
            Release::Complete => self.release_acks(),
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
        self.refresh_guard();
        let config = self.worker.config.clone();
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let name = s.flow.client_id().clone();
        debug!(target: MQTT_LOG, client_id = %name, "Received SUBSCRIBE from {name}");
        let mut valid = Vec::with_capacity(sub.filters.len());
        let mut coverages = Vec::with_capacity(sub.filters.len());
        let mut codes: Vec<Option<SubscribeReturnCode>> = Vec::with_capacity(sub.filters.len());
        // Refusals to count and log once the session is no longer borrowed.
        let mut refused: Vec<(Refusal, Arc<str>)> = Vec::new();
        let mut held = s.guard.as_deref().map_or(0, Guard::count);
        for f in &sub.filters {
            debug!(target: MQTT_LOG, client_id = %name, "\t{} (QoS {})", f.filter, f.qos as u8);
            if topic::validate_filter(&f.filter).is_err() {
                if s.protocol == ProtocolVersion::V3_1 {
                    // 3.1 has no failure return code.
                    self.close(CloseReason::Protocol("invalid topic filter"), ctx);
                    return;
                }
                debug!(client_id = %name, filter = %f.filter, "invalid topic filter refused");
                codes.push(Some(SubscribeReturnCode::Failure));
                continue;
            }
            let filter = Arc::<str>::from(&*f.filter);
            let coverage = s
                .guard
                .as_deref()
                .map_or(Coverage::Full, |g| g.classify(&filter));
            let is_new = s.guard.as_deref().is_some_and(|g| !g.has(&filter))
                && !valid.iter().any(|(v, _)| *v == filter);
            let refusal = if let Some(limit) = topic_limit(&config, &filter) {
                Some(Refusal::Limit(limit))
            } else if coverage == Coverage::None {
                Some(Refusal::Acl)
            } else if config.max_subscriptions > 0 && is_new && held >= config.max_subscriptions {
                Some(Refusal::Limit(Limit::MaxSubscriptions))
            } else {
                None
            };
            match refusal {
                None => {
                    held += usize::from(is_new);
                    valid.push((filter, f.qos));
                    coverages.push(coverage);
                    codes.push(None);
                }
                Some(r) => {
                    refused.push((r, filter));
                    codes.push(Some(SubscribeReturnCode::Failure));
                }
            }
        }
        let v31 = s.protocol == ProtocolVersion::V3_1;
        for (r, filter) in &refused {
            match r {
                Refusal::Limit(limit) => {
                    self.limit_bit(*limit, "subscription refused", "SUBACK 0x80")
                }
                Refusal::Acl => self.denied(
                    SecurityEvent::SubscribeDenied,
                    1,
                    "subscription refused: the ACL allows reading nothing it matches",
                    filter,
                ),
            }
        }
        if v31 && !refused.is_empty() {
            // 3.1 has no failure return code.
            return self.close(CloseReason::Denied("subscription refused"), ctx);
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let (tx, rx) = oneshot::channel();
        // 0 for a clean session outside the replicated state (single node).
        let epoch = s.flow.epoch();
        self.worker.store.do_send(SubscribeRequest {
            target,
            client_id: name.clone(),
            key: s.flow.key(),
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
                    if !s.flow.is_persistent() {
                        for (f, _) in &valid {
                            if !s.filters.contains(f) {
                                s.filters.push(f.clone());
                            }
                        }
                    }
                    if let Some(g) = s.guard.as_deref_mut() {
                        for ((f, _), c) in valid.iter().zip(coverages) {
                            g.subscribed(f.clone(), c);
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
        let name = s.flow.client_id().clone();
        debug!(target: MQTT_LOG, client_id = %name, "Received UNSUBSCRIBE from {name}");
        let filters: Vec<Arc<str>> = u.filters.iter().map(|f| Arc::<str>::from(&**f)).collect();
        if !s.flow.is_persistent() {
            s.filters.retain(|f| !filters.contains(f));
        }
        if let Some(g) = s.guard.as_deref_mut() {
            for f in &filters {
                g.unsubscribed(f);
            }
        }
        let (tx, rx) = oneshot::channel();
        let epoch = s.flow.epoch();
        self.worker.store.do_send(UnsubscribeRequest {
            client_id: name,
            key: s.flow.key(),
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
        self.refresh_guard();
        let max_wbuf = self.worker.config.max_write_buffer;
        for m in messages {
            let Some(s) = self.session.as_mut() else {
                return;
            };
            if let Some(g) = s.guard.as_deref_mut() {
                if !g.can_read(&m.topic) {
                    self.denied(
                        SecurityEvent::DeliveryDenied,
                        1,
                        "message not delivered: the ACL does not allow reading it",
                        &m.topic,
                    );
                    continue;
                }
            }
            match s.flow.offer(m) {
                Offer::AtMostOnce(m) => {
                    if self.wbuf.len() >= max_wbuf {
                        Counters::add(&self.worker.counters.dropped_qos0, 1);
                        self.limit_bit(
                            Limit::MaxWriteBuffer,
                            "write buffer full (slow consumer)",
                            "dropping messages",
                        );
                        continue;
                    }
                    self.write_publish(0, false, &m);
                }
                Offer::Send(o) => self.write_outgoing(vec![o]),
                Offer::Queued => {}
                Offer::Dropped(limit) => {
                    Counters::add(&self.worker.counters.dropped_queue_full, 1);
                    self.limit_bit(limit, "session queue full", "dropping messages");
                }
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
                    act.worker.counters.limit(Limit::ConnectTimeout);
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
        let closed = s.flow.closed();
        // A session in the replicated state has its will published by the state machine.
        if closed.publishes_own_will && publish_will {
            if let Some(w) = &s.will {
                let message = AppMessage {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: w.qos,
                    retain: w.retain,
                };
                self.worker.router.do_send(Route {
                    from: None,
                    publishes: vec![RoutedPublish {
                        message,
                        token: None,
                    }],
                });
            }
        }
        self.worker.store.do_send(ConnectionClosed {
            conn_id: self.id,
            client_id: closed.client_id,
            key: closed.key,
            epoch: closed.epoch,
            persistent: closed.persistent,
            publish_will,
            sent_up_to: closed.sent_up_to,
            filters: s.filters,
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
        let Some(s) = self.session.as_ref() else {
            return;
        };
        if s.flow.epoch() != msg.epoch || self.phase != Phase::Active {
            return;
        }
        let items = if s.guard.is_some() {
            self.readable_durable(msg.items)
        } else {
            msg.items
        };
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        s.flow.durable_deliver(items, &mut out);
        self.write_outgoing(out);
        for m in msg.qos0 {
            let allowed = self
                .session
                .as_mut()
                .and_then(|s| s.guard.as_deref_mut())
                .is_none_or(|g| g.can_read(&m.topic));
            if allowed {
                self.write_publish(0, false, &m);
            } else {
                self.denied(
                    SecurityEvent::DeliveryDenied,
                    1,
                    "message not delivered: the ACL does not allow reading it",
                    &m.topic,
                );
            }
        }
    }
}

impl Handler<ReleaseReady> for Connection {
    type Result = ();

    fn handle(&mut self, msg: ReleaseReady, _: &mut Self::Context) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        if s.flow.epoch() != msg.epoch {
            return;
        }
        for pid in s.flow.release_ready(&msg.seqs) {
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
        let was_paused = s.flow.owed_acks() >= self.worker.config.max_inflight_in;
        s.flow.complete(msg.tokens);
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
