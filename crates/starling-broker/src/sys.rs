//! `$SYS` topics, published at an interval as Mosquitto does (QoS 0, retained, node-local).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use starling_codec::QoS;
use starling_state::Message as AppMessage;

use crate::metrics::{Metrics, Totals};
use crate::router::RouterShard;
use crate::store::{GetStats, SessionStore, SysPublish};

/// Counts subscriptions in a shard's index.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CountSubscriptions;

/// An exponentially weighted per-minute rate, like Mosquitto's `load/...` topics.
#[derive(Default, Clone, Copy)]
struct Load {
    m1: f64,
    m5: f64,
    m15: f64,
}

impl Load {
    fn update(&mut self, per_minute: f64, dt: f64) {
        for (v, period) in [
            (&mut self.m1, 60.0),
            (&mut self.m5, 300.0),
            (&mut self.m15, 900.0),
        ] {
            let k = (-dt / period).exp();
            *v = *v * k + per_minute * (1.0 - k);
        }
    }
}

/// Publishes `$SYS/broker/...` and `$SYS/cluster/...` every interval.
pub struct SysPublisher {
    store: Addr<SessionStore>,
    router: Addr<RouterShard>,
    metrics: Arc<Metrics>,
    interval: Duration,
    started: Instant,
    last: Option<(Instant, Totals)>,
    loads: [Load; 6],
}

impl SysPublisher {
    /// A publisher reading `metrics` and the store's counts.
    pub fn new(
        store: Addr<SessionStore>,
        router: Addr<RouterShard>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> Self {
        SysPublisher {
            store,
            router,
            metrics,
            interval,
            started: Instant::now(),
            last: None,
            loads: [Load::default(); 6],
        }
    }

    fn publish(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let router = self.router.clone();
        let fut = async move {
            (
                store.send(GetStats { digest: false }).await,
                router.send(CountSubscriptions).await,
            )
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(fut).map(|(stats, subs), act, _| {
                let (Ok(stats), Ok(subs)) = (stats, subs) else {
                    return;
                };
                let t = act.metrics.totals();
                let now = Instant::now();
                if let Some((then, prev)) = act.last {
                    let dt = now.duration_since(then).as_secs_f64().max(0.001);
                    let per_min = |a: u64, b: u64| a.saturating_sub(b) as f64 * 60.0 / dt;
                    let rx: u64 = t.publish_received.iter().sum();
                    let tx: u64 = t.publish_sent.iter().sum();
                    let prx: u64 = prev.publish_received.iter().sum();
                    let ptx: u64 = prev.publish_sent.iter().sum();
                    let rates = [
                        per_min(t.packets_received, prev.packets_received),
                        per_min(t.packets_sent, prev.packets_sent),
                        per_min(rx, prx),
                        per_min(tx, ptx),
                        per_min(t.bytes_received, prev.bytes_received),
                        per_min(t.bytes_sent, prev.bytes_sent),
                    ];
                    for (l, r) in act.loads.iter_mut().zip(rates) {
                        l.update(r, dt);
                    }
                }
                act.last = Some((now, t));
                let online = t.clients_online();
                let offline =
                    (stats.state.sessions - stats.state.connected.min(stats.state.sessions)) as u64;
                let mut topics: Vec<(String, String)> = vec![
                    (
                        "$SYS/broker/version".into(),
                        format!("starling {}", env!("CARGO_PKG_VERSION")),
                    ),
                    (
                        "$SYS/broker/uptime".into(),
                        format!("{} seconds", act.started.elapsed().as_secs()),
                    ),
                    ("$SYS/broker/clients/connected".into(), online.to_string()),
                    (
                        "$SYS/broker/clients/disconnected".into(),
                        offline.to_string(),
                    ),
                    (
                        "$SYS/broker/clients/total".into(),
                        (online + offline).to_string(),
                    ),
                    (
                        "$SYS/broker/messages/received".into(),
                        t.packets_received.to_string(),
                    ),
                    (
                        "$SYS/broker/messages/sent".into(),
                        t.packets_sent.to_string(),
                    ),
                    (
                        "$SYS/broker/publish/messages/received".into(),
                        t.publish_received.iter().sum::<u64>().to_string(),
                    ),
                    (
                        "$SYS/broker/publish/messages/sent".into(),
                        t.publish_sent.iter().sum::<u64>().to_string(),
                    ),
                    (
                        "$SYS/broker/publish/messages/dropped".into(),
                        (t.dropped_qos0
                            + t.dropped_queue_full
                            + t.dropped_mailbox_full
                            + stats.state.dropped_messages)
                            .to_string(),
                    ),
                    (
                        "$SYS/broker/bytes/received".into(),
                        t.bytes_received.to_string(),
                    ),
                    ("$SYS/broker/bytes/sent".into(), t.bytes_sent.to_string()),
                    ("$SYS/broker/subscriptions/count".into(), subs.to_string()),
                    (
                        "$SYS/broker/retained messages/count".into(),
                        stats.state.retained_messages.to_string(),
                    ),
                    (
                        "$SYS/broker/store/messages/count".into(),
                        stats.state.queued_messages.to_string(),
                    ),
                    ("$SYS/cluster/nodes".into(), {
                        let m = &stats.log.members;
                        if m.is_empty() {
                            "1".into()
                        } else {
                            m.len().to_string()
                        }
                    }),
                    (
                        "$SYS/cluster/leader".into(),
                        stats.log.leader.map_or("none".into(), |l| l.to_string()),
                    ),
                    ("$SYS/cluster/term".into(), stats.log.term.to_string()),
                    ("$SYS/cluster/role".into(), stats.log.role.to_string()),
                ];
                let names = [
                    "messages/received",
                    "messages/sent",
                    "publish/received",
                    "publish/sent",
                    "bytes/received",
                    "bytes/sent",
                ];
                for (name, l) in names.iter().zip(act.loads.iter()) {
                    for (w, v) in [("1min", l.m1), ("5min", l.m5), ("15min", l.m15)] {
                        topics.push((format!("$SYS/broker/load/{name}/{w}"), format!("{v:.2}")));
                    }
                }
                let messages = topics
                    .into_iter()
                    .map(|(topic, value)| AppMessage {
                        topic: topic.into(),
                        payload: Bytes::from(value),
                        qos: QoS::AtMostOnce,
                        retain: true,
                        ..AppMessage::default()
                    })
                    .collect();
                act.store.do_send(SysPublish { messages });
            }),
        );
    }
}

impl Actor for SysPublisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish(ctx);
        ctx.run_interval(self.interval, |act, ctx| act.publish(ctx));
    }
}
