//! The connection actor: one per client. It owns the socket, the protocol state machine and the
//! keep-alive timer; the decisions of the client's QoS flows (which acknowledgement is owed and
//! when, which path a PUBLISH takes, what a resumed session resends) are a plain struct,
//! [`ClientFlow`], that the actor feeds and obeys. Sessions' replicated state lives in the
//! session store, subscriptions in the router shards.
//!
//! Files, each an `impl Connection` block for one concern:
//! - `connect.rs`: CONNECT, authentication, the store's verdict, the accepted session.
//! - `publish.rs`: inbound PUBLISH and PUBREL, routing, the owed acknowledgements
//!   ([`Acked`](crate::messages::Acked)).
//! - `deliver.rs`: outbound messages and the client's PUBACK / PUBREC / PUBCOMP.
//! - `subscribe.rs`: SUBSCRIBE and UNSUBSCRIBE.
//! - `write.rs`: packet writers and their log lines.
//! - `limits.rs`: where a limit or the ACL bites (counters, rate-limited log lines).
//! - `lifecycle.rs`: close, DISCONNECT, keep-alive, [`Kick`](crate::messages::Kick).
//! - `io.rs`: the socket's reader and writer futures; `transport.rs`: TCP, TLS, WebSocket.
//! - Plain structs: `flow.rs` ([`ClientFlow`]), `acks.rs` (owed acknowledgements in order),
//!   `outbound.rs` (clean and persistent outbound windows), `guard.rs` (ACL, topic limits,
//!   publish rate).
//!
//! Lifecycle: `AwaitingConnect` → (CONNECT) `Connecting` (password verification, then waiting
//! for the store) → `Active` → `Closing` (flush what is written, then stop). Whatever ends it,
//! `stopped` tells the store and, for a clean session whose will is due, publishes the will.
//!
//! Security (docs/security.md): CONNECT is authenticated (CONNACK 4 / 5) before the store hears
//! of it; the client's ACL lives in its `Guard` (guard.rs): PUBLISH to a topic it may not write is
//! acknowledged and dropped (as Mosquitto does for 3.1.1), SUBSCRIBE to a filter through which
//! nothing is readable gets 0x80, and deliveries are filtered only while a subscription is
//! partially readable. The socket is a `Stream` (transport.rs): plain TCP, TLS or WebSocket.

mod acks;
mod connect;
mod deliver;
mod flow;
mod guard;
mod io;
mod lifecycle;
mod limits;
mod outbound;
mod publish;
mod subscribe;
pub(crate) mod transport;
mod write;

pub use self::flow::{
    AckNote, ClientFlow, Commit, FlowClosed, FlowLimits, Inbound, Offer, Outgoing, Release,
};

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Waker;

use actix::prelude::*;
use bytes::BytesMut;
use bytestring::ByteString;
use starling_codec::{Decoder, LastWill, Packet, ProtocolVersion};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use self::guard::{Guard, TokenBucket};
use self::lifecycle::CloseReason;
use self::transport::Stream;
use crate::listener::LiveGuard;
use crate::messages::{AckKind, ConnectionClosed, Route, RoutedPublish, Target};
use crate::metrics::{Counters, Limit};
use crate::Worker;

/// Log target of the lines that mirror Mosquitto's.
pub const MQTT_LOG: &str = "mqtt";

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepted socket, no CONNECT yet (the connect timer runs).
    AwaitingConnect,
    /// CONNECT received: waiting for the password check and the store; nothing else is read.
    Connecting,
    /// CONNACK 0 sent: packets are handled.
    Active,
    /// Closing: nothing more is read or written but what is queued; then the actor stops.
    Closing,
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
    /// Clean sessions: filters subscribed (to remove from the router on close). Behind a thin
    /// pointer, allocated when the client first subscribes: an idle connection keeps 8 bytes
    /// here instead of a `Vec`'s 24, which holds this struct at 112 bytes.
    #[allow(clippy::box_collection)]
    filters: Option<Box<Vec<Arc<str>>>>,
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
    /// The rate state, created on first use.
    fn rates(&mut self) -> &mut Rates {
        self.rates.get_or_insert_with(Box::default)
    }
}

/// The connection actor.
pub struct Connection {
    /// Unique within the process: tells this connection from a later one of the same client
    /// (the store's registry, router targets, a clean session's router key).
    id: u64,
    /// What every connection on this worker shares: configuration, router shard, store,
    /// counters, security files.
    worker: Arc<Worker>,
    /// The socket (plain TCP, TLS or WebSocket).
    stream: Stream,
    /// The client's address, for log lines and the store's connect record.
    peer: SocketAddr,
    /// On a `use_identity_as_username` listener: the client certificate's CN (`None` inside:
    /// no certificate or no CN). Taken at CONNECT.
    identity: Option<Box<Option<ByteString>>>,
    /// Bytes read and not yet decoded; released while the socket is idle.
    rbuf: BytesMut,
    /// Bytes encoded and not yet written: everything one mailbox pass writes leaves in one
    /// syscall. Its length is what `max_write_buffer` bounds.
    wbuf: BytesMut,
    /// MQTT decoder (knows the protocol level once CONNECT is read, and `max_packet_size`).
    decoder: Decoder,
    /// The IO futures' waker: a handler that writes, or that lifts a read pause, wakes them.
    waker: Option<Waker>,
    /// When bytes last arrived: the keep-alive deadline counts from it.
    last_read: Instant,
    /// Where the connection is in its life; decides which packets are accepted.
    phase: Phase,
    /// Why it is closing, for `stopped` (will or not, what the store is told).
    close_reason: Option<CloseReason>,
    /// The accepted client; `None` before CONNACK 0 (and after a refusal).
    session: Option<Box<ClientSession>>,
    /// The CONNECT deadline, cancelled when CONNECT arrives (a pending timer costs memory).
    connect_timer: Option<SpawnHandle>,
    /// Holds this connection's place in the listener's `max_connections` counts until dropped.
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

    /// Keeps the IO futures' waker (once, unless it changes).
    fn remember_waker(&mut self, cx: &std::task::Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

    /// Wakes the IO futures: something was written, or reading may resume.
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

    /// This connection as the target of deliveries and answers.
    fn target(&self, ctx: &Context<Self>) -> Target {
        Target {
            conn_id: self.id,
            addr: ctx.address(),
        }
    }

    /// Reading waits: `max_inflight_in` entries owed to the client, or the publish rate limit.
    fn read_paused(&self) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.flow.owed_acks() >= self.worker.config.max_inflight_in
                || s.rates.as_ref().is_some_and(|r| r.throttled)
        })
    }

    /// Dispatches a decoded packet by phase and type.
    fn on_packet(&mut self, packet: Packet, ctx: &mut Context<Self>) {
        Counters::add(&self.worker.counters.packets_received, 1);
        match (self.phase, packet) {
            (Phase::AwaitingConnect, Packet::Connect(c)) => self.on_connect(*c, ctx),
            (Phase::AwaitingConnect, _) => {
                self.close(CloseReason::Protocol("first packet is not CONNECT"), ctx)
            }
            (Phase::Active, Packet::Publish(p)) => self.on_publish(p, ctx),
            (Phase::Active, Packet::PubAck(a)) => self.on_ack(AckKind::PubAck, a.packet_id),
            (Phase::Active, Packet::PubRec(a)) => self.on_ack(AckKind::PubRec, a.packet_id),
            (Phase::Active, Packet::PubRel(a)) => self.on_pubrel(a.packet_id, ctx),
            (Phase::Active, Packet::PubComp(a)) => self.on_ack(AckKind::PubComp, a.packet_id),
            (Phase::Active, Packet::Subscribe(s)) => self.on_subscribe(&s, ctx),
            (Phase::Active, Packet::Unsubscribe(u)) => self.on_unsubscribe(&u, ctx),
            (Phase::Active, Packet::PingReq) => {
                let name = self.name().to_string();
                debug!(target: MQTT_LOG, client_id = %name, "Received PINGREQ from {name}");
                self.write_packet(&Packet::PingResp);
                debug!(target: MQTT_LOG, client_id = %name, "Sending PINGRESP to {name}");
            }
            (Phase::Active, Packet::Disconnect(d)) => self.on_disconnect(&d, ctx),
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
                let message = crate::messages::will_message(w);
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
            filters: s.filters.map_or_else(Vec::new, |f| *f),
        });
    }
}
