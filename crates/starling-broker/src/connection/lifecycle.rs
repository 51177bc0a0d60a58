//! How a connection ends: [`CloseReason`], [`Connection::close`] (one log line per reason, then
//! flush what is written and stop), malformed input, DISCONNECT (a persistent session goes
//! offline in the replicated state before the socket closes), the keep-alive deadline, and the
//! store's [`Kick`]. What the store hears at the end is sent from `stopped` (mod.rs).

use std::time::Duration;

use actix::prelude::*;
use starling_codec::{ConnectReasonCode, DecodeError, Disconnect, DisconnectReasonCode, Packet};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Connection, Phase, MQTT_LOG};
use crate::messages::{Kick, KickReason, SessionRequest};
use crate::metrics::{Counters, Limit};

/// Why a connection ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// DISCONNECT received.
    Disconnect,
    /// 5.0 DISCONNECT with reason 0x04: the client leaves and asks for its will.
    DisconnectWithWill,
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
    /// 5.0: a PUBLISH with a Topic Alias the broker did not allow (or an empty topic without
    /// one).
    TopicAliasInvalid,
    /// Another connection took the client id.
    TakenOver,
    /// A connection through another node took the client id (no will: the client reconnected).
    TakenOverElsewhere,
    /// The session was discarded by another connection.
    SessionRemoved,
    /// This node replaced its state with a snapshot (it had fallen behind).
    StateReplaced,
    /// CONNACK with a refusal code was sent.
    Refused(ConnectReasonCode),
    /// A commit did not happen in time.
    Unavailable,
    /// A 3.1 client's subscription was refused (3.1 has no failure return code).
    Denied(&'static str),
    /// The broker is shutting down.
    Shutdown,
}

impl CloseReason {
    /// A will is due: every end but DISCONNECT, a refused CONNECT and a broker shutdown.
    pub(super) fn publishes_will(&self) -> bool {
        !matches!(
            self,
            CloseReason::Disconnect
                | CloseReason::Refused(_)
                | CloseReason::Shutdown
                | CloseReason::TakenOverElsewhere
        )
    }
}

impl Connection {
    /// Starts closing (once): logs the reason, stops reading, flushes what is written, and
    /// stops the actor (at the latest after two seconds).
    pub(super) fn close(&mut self, reason: CloseReason, ctx: &mut Context<Self>) {
        if self.phase == Phase::Closing {
            return;
        }
        let name = self.name().to_string();
        match &reason {
            // Mosquitto's only line for this is "Received DISCONNECT from ...".
            CloseReason::Disconnect | CloseReason::DisconnectWithWill => {
                debug!(client_id = %name, reason = ?reason, "client disconnected")
            }
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
            CloseReason::TopicAliasInvalid => {
                Counters::add(&self.worker.counters.protocol_errors, 1);
                info!(target: MQTT_LOG, client_id = %name, peer = %self.peer, error = "invalid topic alias", "Client {name} disconnected due to protocol error.")
            }
            CloseReason::Protocol(why) => {
                Counters::add(&self.worker.counters.protocol_errors, 1);
                info!(target: MQTT_LOG, client_id = %name, peer = %self.peer, error = why, "Client {name} disconnected due to protocol error.")
            }
            CloseReason::TakenOver => {
                debug!(client_id = %name, "closed: client id taken over")
            }
            CloseReason::TakenOverElsewhere => {
                info!(client_id = %name, "client {name} disconnected: it reconnected through another node, which took its session over (no will)")
            }
            CloseReason::SessionRemoved => {
                info!(client_id = %name, "client {name} disconnected: its session was removed")
            }
            CloseReason::StateReplaced => {
                info!(client_id = %name, "client {name} disconnected: this node caught up by installing a snapshot; the client resumes its session")
            }
            CloseReason::Refused(code) => {
                debug!(client_id = %name, code = code.v3_return_code(), "closed after CONNACK refusal")
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
        if let Some(code) = self.disconnect_code(&reason) {
            let name = self.name().to_string();
            debug!(target: MQTT_LOG, client_id = %name, "Sending DISCONNECT to {name} ({})", code.as_u8());
            self.write_packet(&Packet::Disconnect(Disconnect::with_reason(code)));
        }
        self.close_reason = Some(reason);
        self.phase = Phase::Closing;
        self.wake();
        // A peer that does not read cannot hold the connection open.
        ctx.run_later(Duration::from_secs(2), |_, ctx| ctx.stop());
    }

    /// The reason code of the DISCONNECT an MQTT 5 client gets before the broker closes its
    /// connection for `reason`, where the standard wants one (none before CONNACK 0).
    fn disconnect_code(&self, reason: &CloseReason) -> Option<DisconnectReasonCode> {
        if self.phase != Phase::Active || !self.protocol().is_v5() {
            return None;
        }
        Some(match reason {
            CloseReason::Malformed(DecodeError::PacketTooLarge { .. }) => {
                DisconnectReasonCode::PacketTooLarge
            }
            CloseReason::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            CloseReason::Protocol(_) => DisconnectReasonCode::ProtocolError,
            CloseReason::TopicAliasInvalid => DisconnectReasonCode::TopicAliasInvalid,
            CloseReason::KeepAlive => DisconnectReasonCode::KeepAliveTimeout,
            CloseReason::TakenOver | CloseReason::TakenOverElsewhere => {
                DisconnectReasonCode::SessionTakenOver
            }
            CloseReason::Shutdown => DisconnectReasonCode::ServerShuttingDown,
            CloseReason::SessionRemoved | CloseReason::StateReplaced => {
                DisconnectReasonCode::AdministrativeAction
            }
            CloseReason::Unavailable => DisconnectReasonCode::ServerBusy,
            CloseReason::Denied(_) => DisconnectReasonCode::NotAuthorized,
            CloseReason::Disconnect
            | CloseReason::DisconnectWithWill
            | CloseReason::Eof
            | CloseReason::SocketError(_)
            | CloseReason::ConnectTimeout
            | CloseReason::Refused(_) => return None,
        })
    }

    /// Undecodable input: CONNACK 1 for an unknown protocol level before CONNECT, else close.
    pub(super) fn on_decode_error(&mut self, e: DecodeError, ctx: &mut Context<Self>) {
        if let DecodeError::UnacceptableProtocol { name, level } = &e {
            if self.phase == Phase::AwaitingConnect {
                debug!(peer = %self.peer, protocol = %name, level, "unacceptable protocol");
                self.write_connack(
                    false,
                    ConnectReasonCode::UnsupportedProtocolVersion,
                    "<unknown>",
                );
                self.close(
                    CloseReason::Refused(ConnectReasonCode::UnsupportedProtocolVersion),
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

    /// DISCONNECT: a persistent session goes offline in the replicated state (will discarded)
    /// before the socket closes. 5.0: reason 0x04 keeps the will (the close is then treated as
    /// a lost connection), and a session that ends with its connection cannot be given a
    /// Session Expiry Interval now (protocol error).
    pub(super) fn on_disconnect(&mut self, d: &Disconnect, ctx: &mut Context<Self>) {
        let name = self.name().to_string();
        debug!(target: MQTT_LOG, client_id = %name, "Received DISCONNECT from {name}");
        if self.protocol().is_v5() {
            let ends_with_connection = self
                .session
                .as_ref()
                .is_some_and(|s| !s.flow.is_persistent());
            if ends_with_connection && d.properties.session_expiry_interval.is_some_and(|e| e > 0) {
                return self.close(
                    CloseReason::Protocol(
                        "DISCONNECT sets a Session Expiry Interval on a session that had none",
                    ),
                    ctx,
                );
            }
            if d.reason == DisconnectReasonCode::DisconnectWithWillMessage {
                return self.close(CloseReason::DisconnectWithWill, ctx);
            }
        }
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
        let wait = tokio::time::timeout(self.worker.config.answer_timeout(), rx);
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

    /// Closes the connection once it has been silent for 1.5 x its keep-alive.
    pub(super) fn schedule_keepalive(&self, ctx: &mut Context<Self>) {
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
}

impl Handler<Kick> for Connection {
    type Result = ();

    fn handle(&mut self, msg: Kick, ctx: &mut Self::Context) {
        self.closed_waiters.extend(msg.closed);
        let reason = match msg.reason {
            KickReason::TakenOver => CloseReason::TakenOver,
            KickReason::TakenOverElsewhere => CloseReason::TakenOverElsewhere,
            KickReason::SessionRemoved => CloseReason::SessionRemoved,
            KickReason::Shutdown => CloseReason::Shutdown,
            KickReason::StateReplaced => CloseReason::StateReplaced,
        };
        self.close(reason, ctx);
    }
}
