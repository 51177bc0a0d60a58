//! SUBSCRIBE and UNSUBSCRIBE: filter validation, topic limits, `max_subscriptions` and the ACL
//! decide each filter's return code; the store applies the rest and answers before SUBACK /
//! UNSUBACK is written; a clean session's retained messages follow its SUBACK.

use std::sync::Arc;

use actix::prelude::*;
use starling_auth::Coverage;
use starling_codec::{
    topic, AckProperties, Packet, PacketType, ProtocolVersion, QoS, SubAck, SubAckReasonCode,
    Subscribe, UnsubAck, UnsubAckReasonCode, Unsubscribe,
};
use tokio::sync::oneshot;
use tracing::debug;

use super::guard::{topic_limit, Guard, Refusal};
use super::lifecycle::CloseReason;
use super::{Connection, MQTT_LOG};
use crate::messages::{SubscribeOutcome, SubscribeRequest, UnsubscribeRequest};
use crate::metrics::{Limit, SecurityEvent};

impl Connection {
    /// SUBSCRIBE: each filter's return code, the store's answer, then SUBACK and (clean
    /// sessions) the retained messages.
    pub(super) fn on_subscribe(&mut self, sub: &Subscribe, ctx: &mut Context<Self>) {
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
        let mut codes: Vec<Option<SubAckReasonCode>> = Vec::with_capacity(sub.filters.len());
        // Refusals to count and log once the session is no longer borrowed.
        let mut refused: Vec<(Refusal, Arc<str>)> = Vec::new();
        let mut held = s.guard.as_deref().map_or(0, Guard::count);
        for f in &sub.filters {
            debug!(target: MQTT_LOG, client_id = %name, "\t{} (QoS {})", f.filter, f.options.qos as u8);
            if topic::validate_filter(&f.filter).is_err() {
                if s.protocol == ProtocolVersion::V3_1 {
                    // 3.1 has no failure return code.
                    self.close(CloseReason::Protocol("invalid topic filter"), ctx);
                    return;
                }
                debug!(client_id = %name, filter = %f.filter, "invalid topic filter refused");
                codes.push(Some(SubAckReasonCode::UnspecifiedError));
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
                    valid.push((filter, f.options.qos));
                    coverages.push(coverage);
                    codes.push(None);
                }
                Some(r) => {
                    refused.push((r, filter));
                    codes.push(Some(SubAckReasonCode::UnspecifiedError));
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
        let wait = tokio::time::timeout(self.worker.config.answer_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| {
                let (granted, retained) = match res {
                    Ok(Ok(SubscribeOutcome::Done { granted, retained })) => (granted, retained),
                    _ => return act.close(CloseReason::Unavailable, ctx),
                };
                let mut granted = granted.into_iter();
                let reason_codes: Vec<SubAckReasonCode> = codes
                    .into_iter()
                    .map(|c| {
                        c.unwrap_or_else(|| {
                            SubAckReasonCode::granted(granted.next().unwrap_or(QoS::AtMostOnce))
                        })
                    })
                    .collect();
                for ((filter, _), code) in valid
                    .iter()
                    .zip(reason_codes.iter().filter(|c| !c.is_error()))
                {
                    debug!(target: MQTT_LOG, client_id = %name, "{name} {} {filter}", code.as_u8());
                }
                if let Some(s) = act.session.as_mut() {
                    if !s.flow.is_persistent() && !valid.is_empty() {
                        let filters = s.filters.get_or_insert_with(Box::default);
                        for (f, _) in &valid {
                            if !filters.contains(f) {
                                filters.push(f.clone());
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
                    properties: AckProperties::default(),
                    reason_codes,
                }));
                act.deliver(retained);
            }),
        );
    }

    /// UNSUBSCRIBE: UNSUBACK once the store applied it.
    pub(super) fn on_unsubscribe(&mut self, u: &Unsubscribe, ctx: &mut Context<Self>) {
        let Some(s) = self.session.as_mut() else {
            return;
        };
        let name = s.flow.client_id().clone();
        debug!(target: MQTT_LOG, client_id = %name, "Received UNSUBSCRIBE from {name}");
        let filters: Vec<Arc<str>> = u.filters.iter().map(|f| Arc::<str>::from(&**f)).collect();
        // 5.0: one reason code per filter. A clean session's filters are known here, so a filter
        // it does not hold gets 0x11; a persistent session's live in the replicated state.
        let codes: Vec<UnsubAckReasonCode> = if s.protocol.is_v5() {
            let persistent = s.flow.is_persistent();
            let held = s.filters.as_deref();
            filters
                .iter()
                .map(|f| {
                    if persistent || held.is_some_and(|h| h.contains(f)) {
                        UnsubAckReasonCode::Success
                    } else {
                        UnsubAckReasonCode::NoSubscriptionExisted
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        if let Some(held) = s.filters.as_deref_mut() {
            held.retain(|f| !filters.contains(f));
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
        let wait = tokio::time::timeout(self.worker.config.answer_timeout(), rx);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(wait).map(move |res, act, ctx| match res {
                Ok(Ok(true)) if codes.is_empty() => act.write_ack(PacketType::UnsubAck, packet_id),
                Ok(Ok(true)) => {
                    let name = act.name().to_string();
                    debug!(target: MQTT_LOG, client_id = %name, "Sending UNSUBACK to {name}");
                    act.write_packet(&Packet::UnsubAck(UnsubAck {
                        packet_id,
                        properties: AckProperties::default(),
                        reason_codes: codes,
                    }));
                }
                _ => act.close(CloseReason::Unavailable, ctx),
            }),
        );
    }
}
