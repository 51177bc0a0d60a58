//! CONNECT: client id rules, authentication (the certificate's CN or the password, verified off
//! the actor's thread when it is slow), the will against the ACL, the store's verdict, and the
//! accepted session (CONNACK, resumed outbound messages, keep-alive). Any refusal is one
//! CONNACK with its code and one log line.

use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;
use starling_auth::{Authorizer, Verdict};
use starling_codec::{
    ConnAck, ConnAckProperties, Connect, ConnectReasonCode, Packet, ProtocolVersion,
};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::guard::Guard;
use super::lifecycle::CloseReason;
use super::{ClientFlow, ClientSession, Connection, FlowLimits, Phase, MQTT_LOG};
use crate::messages::{ConnectInfo, ConnectOutcome, ConnectRequest, SessionSettings};
use crate::metrics::{Counters, Limit, SecurityEvent};

/// How long a CONNECT may wait for its password verification before CONNACK 3.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest Maximum Packet Size a CONNACK advertises: the largest remaining length, which
/// is what some clients accept for this property (paho-mqtt refuses more).
const MAX_ADVERTISED_PACKET_SIZE: usize = 268_435_455;

/// What a CONNECT left once the password and the store accepted it.
struct Admitted {
    /// The client id (assigned if the client sent none).
    client_id: ByteString,
    /// The effective user name (certificate CN or CONNECT user name).
    username: Option<ByteString>,
    /// The client's ACL, compiled once its user name is known.
    guard: Option<Box<Guard>>,
    /// A stored session was resumed (CONNACK's flag, for 3.1.1).
    session_present: bool,
    /// The epoch of this connection's ownership of the session.
    epoch: u64,
    /// Subscriber key in the router index.
    key: u64,
    /// The client sent no client id and got `client_id` (5.0: CONNACK names it).
    assigned: bool,
    /// The session expiry in force, when the broker lowered the client's (5.0).
    expiry_lowered: Option<u32>,
}

impl Connection {
    /// CONNECT: client id rules, who the client is, then the password check (inline when
    /// cheap, else on the verification threads while reading waits).
    pub(super) fn on_connect(&mut self, c: Connect, ctx: &mut Context<Self>) {
        if let Some(t) = self.connect_timer.take() {
            ctx.cancel_future(t);
        }
        let config = &self.worker.config;
        let mut client_id = c.client_id.clone();
        let mut assigned = false;
        let code = if c.protocol == ProtocolVersion::V3_1 {
            let n = client_id.chars().count();
            if n == 0 || n > 23 {
                ConnectReasonCode::ClientIdentifierNotValid
            } else {
                ConnectReasonCode::Success
            }
        } else if client_id.is_empty() {
            if c.clean_start {
                client_id = ByteString::from(format!("auto-{:016x}", rand::random::<u64>()));
                assigned = true;
                ConnectReasonCode::Success
            } else {
                ConnectReasonCode::ClientIdentifierNotValid
            }
        } else if client_id.len() > config.max_client_id_len {
            ConnectReasonCode::ClientIdentifierNotValid
        } else {
            ConnectReasonCode::Success
        };
        if code != ConnectReasonCode::Success {
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
                ConnectReasonCode::BadUserNameOrPassword,
                &client_id,
                "no client certificate common name to use as user name",
                ctx,
            );
        }
        if username.is_none() && !config.anonymous_allowed() {
            self.worker.counters.security(SecurityEvent::NotAuthorized);
            return self.refuse(
                ConnectReasonCode::NotAuthorized,
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
            return self.on_verdict(v, c, client_id, assigned, username, &auth, generation, ctx);
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
                ConnectReasonCode::ServerUnavailable,
                &client_id,
                "password verification queue full (max_pending_auth)",
                ctx,
            );
        };
        let wait = tokio::time::timeout(AUTH_TIMEOUT, rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| match res {
                Ok(Ok(v)) => {
                    act.on_verdict(v, c, client_id, assigned, username, &auth, generation, ctx)
                }
                _ => act.refuse(
                    ConnectReasonCode::ServerUnavailable,
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
        code: ConnectReasonCode,
        client_id: &str,
        why: &str,
        ctx: &mut Context<Self>,
    ) {
        let name = if client_id.is_empty() {
            "<unknown>"
        } else {
            client_id
        };
        let v3_code = code.v3_return_code();
        info!(client_id = %name, peer = %self.peer, code = v3_code, reason = why, "client {name} refused with CONNACK {v3_code}: {why}");
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
        assigned: bool,
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
                    ConnectReasonCode::BadUserNameOrPassword,
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
                    ConnectReasonCode::NotAuthorized,
                    &client_id,
                    "the ACL does not allow publishing to the will topic",
                    ctx,
                );
            }
        }
        let (session, expiry_lowered) = if c.protocol.is_v5() {
            let (settings, lowered) = session_settings(&c, config.max_session_expiry_secs);
            (Some(settings), lowered)
        } else {
            (None, None)
        };
        let info = ConnectInfo {
            client_id: client_id.clone(),
            clean_session: c.clean_start,
            protocol: c.protocol,
            will: c.will.clone(),
            username: username.clone(),
            peer: self.peer,
            session,
        };
        let (tx, rx) = oneshot::channel();
        self.worker.store.do_send(ConnectRequest {
            target: self.target(ctx),
            info,
            reply: tx,
        });
        let wait = tokio::time::timeout(config.answer_timeout(), rx);
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
                        assigned,
                        expiry_lowered,
                    };
                    act.on_accepted(c, accepted, *resume, ctx);
                }
                Ok(Ok(ConnectOutcome::NotAuthorized)) => {
                    act.worker.counters.security(SecurityEvent::NotAuthorized);
                    act.refuse(
                        ConnectReasonCode::NotAuthorized,
                        &client_id,
                        "the session belongs to another user (bind_session_to_user)",
                        ctx,
                    );
                }
                _ => {
                    let name = client_id.to_string();
                    warn!(client_id = %name, peer = %act.peer, "client {name} refused with CONNACK 3: the replicated state refused the session or did not commit it within commit_timeout_secs (no leader or no quorum?)");
                    act.write_connack(false, ConnectReasonCode::ServerUnavailable, &name);
                    act.session = None;
                    act.close(
                        CloseReason::Refused(ConnectReasonCode::ServerUnavailable),
                        ctx,
                    );
                }
            }),
        );
    }

    /// The store accepted the session: CONNACK 0, the resumed outbound messages, keep-alive.
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
            assigned,
            expiry_lowered,
        } = a;
        let v5 = c.protocol.is_v5();
        // 5.0: the session outlives the connection when its expiry is not 0, and a stored
        // session resumed with expiry 0 is still held in the replicated state until it ends.
        let persistent = if v5 {
            let expiry = expiry_lowered
                .or(c.properties.session_expiry_interval)
                .unwrap_or(0);
            expiry > 0 || (!c.clean_start && session_present)
        } else {
            !c.clean_start
        };
        if let Some(g) = guard.as_deref_mut() {
            // A resumed session's subscriptions are read under this client's ACL (whoever
            // created them).
            for (filter, _) in &resume.subscriptions {
                let coverage = g.classify(filter);
                g.subscribed(filter.clone(), coverage);
            }
        }
        self.session = Some(Box::new(ClientSession {
            flow: ClientFlow::new(client_id.clone(), persistent, epoch, key),
            protocol: c.protocol,
            keep_alive: c.keep_alive,
            will: c.will.map(Box::new),
            filters: None,
            guard,
            rates: None,
        }));
        Counters::add(&self.worker.counters.clients_connected, 1);
        // Logged once the store accepted, so that a takeover's "already connected" line comes
        // first, as in Mosquitto.
        let user = username
            .as_ref()
            .map_or(String::new(), |u| format!(", u{u}"));
        let level = if v5 { "p5, " } else { "" };
        info!(target: MQTT_LOG, client_id = %client_id, peer = %self.peer.ip(), clean_session = c.clean_start,
            keep_alive = c.keep_alive,
            "New client connected from {} as {client_id} ({level}c{}, k{}{user}).",
            self.peer.ip(), u8::from(c.clean_start), c.keep_alive);
        let present = session_present && c.protocol != ProtocolVersion::V3_1;
        if v5 {
            let mut ack = ConnAck::new(present, ConnectReasonCode::Success);
            ack.properties = self.connack_properties();
            if assigned {
                ack.properties.assigned_client_identifier = Some(client_id.clone());
            }
            ack.properties.session_expiry_interval = expiry_lowered;
            debug!(target: MQTT_LOG, client_id = %client_id, "Sending CONNACK to {client_id} (0)");
            self.write_packet(&Packet::ConnAck(Box::new(ack)));
        } else {
            self.write_connack(present, ConnectReasonCode::Success, &client_id);
        }
        self.phase = Phase::Active;
        if !resume.outbound.is_empty() {
            let outbound = self.readable_durable(resume.outbound);
            let mut out = Vec::new();
            if let Some(s) = self.session.as_mut() {
                let limits = FlowLimits::from_shared(&self.worker.limits);
                s.flow.resume(outbound, &limits, &mut out);
            }
            self.write_outgoing(out);
        }
        self.schedule_keepalive(ctx);
    }
}

impl Connection {
    /// The CONNACK properties that describe this broker to an MQTT 5 client.
    fn connack_properties(&self) -> ConnAckProperties {
        let config = &self.worker.config;
        ConnAckProperties {
            receive_maximum: Some(u16::try_from(config.max_inflight_in).unwrap_or(u16::MAX)),
            // At most the largest remaining length (what some clients accept here; a packet of
            // that size is still within `max_packet_size` at its largest).
            maximum_packet_size: Some(
                u32::try_from(config.max_packet_size.min(MAX_ADVERTISED_PACKET_SIZE))
                    .unwrap_or(u32::MAX),
            ),
            topic_alias_maximum: Some(0),
            retain_available: Some(true),
            wildcard_subscription_available: Some(false),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(false),
            ..ConnAckProperties::default()
        }
    }
}

/// What an MQTT 5 CONNECT asks of its session, with the session expiry capped at `max_expiry`
/// (0: no cap); the second value is the expiry in force when the cap lowered the client's.
fn session_settings(c: &Connect, max_expiry: u32) -> (SessionSettings, Option<u32>) {
    let p = &c.properties;
    let asked = p.session_expiry_interval.unwrap_or(0);
    let (expiry_secs, lowered) = if max_expiry > 0 && asked > max_expiry {
        (max_expiry, Some(max_expiry))
    } else {
        (asked, None)
    };
    let will = c.will.as_ref().map(|w| &w.properties);
    let settings = SessionSettings {
        expiry_secs,
        receive_maximum: u32::from(p.receive_maximum.unwrap_or(0)),
        maximum_packet_size: p.maximum_packet_size.unwrap_or(0),
        will_delay_secs: will.and_then(|w| w.will_delay_interval).unwrap_or(0),
        will_expiry_secs: will.and_then(|w| w.message_expiry_interval).unwrap_or(0),
    };
    (settings, lowered)
}
