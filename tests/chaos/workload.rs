//! The workload: persistent-session (clean-session=0) strict clients spread over the three
//! nodes, each failing over through the node list on its own.
//!
//! - `chaos-pub-{0,1,2}`: sequence-numbered messages `<publisher>/<seq>` at a steady rate,
//!   message `seq` on topic `chaos/<seq % 6>`, QoS 2 on the even topics and QoS 1 on the odd
//!   ones, at most 16 in flight.
//! - `chaos-sub-{0,1,2}`: `chaos/#`, at QoS 2, QoS 2 and QoS 1 (the QoS 2 messages downgraded).
//!   Each also subscribes, every few seconds during the run, to a topic of its own
//!   (`chaossub/<client>/<k>`); the acknowledged ones are probed at the end.
//! - `chaos-clean-{0,1}`: clean sessions (clean-session=1) with `chaos/#` at QoS 2 and QoS 1,
//!   starting on nodes 1 and 2. Their deliveries take the fast path (forwarded once to the node
//!   a clean session is on, no Raft); a clean session dies with its connection, so each new
//!   connection subscribes again and the checker judges each connection on its own.
//! - `chaos-ret`: retained messages on `chaosret/<k>` (three topics, QoS 1 and 2 in turn), one at
//!   a time, compared on every node at the end; it also publishes the probes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use starling_codec::QoS;
use starling_testkit::{StrictClient, StrictConfig};
use tokio::task::JoinHandle;

use crate::compose::Cluster;

/// Topics of the publishers (`chaos/0..5`).
pub(crate) const TOPICS: u64 = 6;
/// Topics of the retained messages (`chaosret/0..2`).
pub(crate) const RETAINED_TOPICS: u64 = 3;
/// Publishers and subscribers.
pub(crate) const CLIENTS: usize = 3;
/// The filter every subscriber of the checked workload holds.
pub(crate) const WORKLOAD_FILTER: &str = "chaos/#";
/// The clean-session subscribers' QoS (one subscriber each).
const CLEAN_QOS: [QoS; 2] = [QoS::ExactlyOnce, QoS::AtLeastOnce];
/// Most messages a publisher holds (in flight and queued); beyond it the feeder skips a beat
/// rather than queueing without bound while the cluster is unavailable.
const BACKLOG: usize = 256;

/// QoS of the message `seq` of a publisher.
pub(crate) fn qos_of(seq: u64) -> QoS {
    if (seq % TOPICS).is_multiple_of(2) {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Strict-client settings: a node silent for 3 s is given up, while connected or while the
/// client waits for its CONNACK; a failover may take 3 minutes (a restart of every node at
/// once included) before the client gives up for good.
pub(crate) fn config(c: &Cluster, client_id: &str, window: usize) -> StrictConfig {
    let nodes = (0..crate::compose::NODES).map(|i| c.mqtt_addr(i)).collect();
    let mut cfg = StrictConfig::new(client_id, nodes);
    // Longer than an election (1 to 2 s, during which a node holds a CONNECT), shorter than
    // the broker's commit timeout (5 s): a paused node (whose port Docker still accepts) or one
    // that cannot commit is left for the next instead of being waited for. With 8 s, a client
    // that failed over onto a paused node waited up to the unpause (4.6 s in a soak).
    cfg.connect_timeout = Duration::from_secs(3);
    cfg.response_timeout = Duration::from_secs(3);
    cfg.ping_interval = Duration::from_millis(500);
    cfg.failover_deadline = Duration::from_secs(180);
    cfg.window = window;
    // Every node refused (an election under way, or every node down): try again soon, then
    // less and less often.
    cfg.retry_pause = Duration::from_millis(10);
    cfg.retry_pause_max = Duration::from_millis(200);
    cfg
}

/// The clients and the tasks that feed them.
pub(crate) struct Workload {
    /// The publishers.
    pub(crate) publishers: Vec<Arc<StrictClient>>,
    /// The subscribers with the QoS of their `chaos/#` subscription.
    pub(crate) subscribers: Vec<(Arc<StrictClient>, QoS)>,
    /// The clean-session subscribers with the QoS of their `chaos/#` subscription.
    pub(crate) clean: Vec<(Arc<StrictClient>, QoS)>,
    /// The retained-message publisher (and prober).
    pub(crate) retainer: Arc<StrictClient>,
    /// Subscriptions acknowledged during the run: (client, topic).
    pub(crate) acked_subscriptions: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Connects every client (client `i` first to node `i`, the publishers one node further),
    /// subscribes, and starts feeding `rate` messages a second to each publisher.
    pub(crate) async fn start(c: &Cluster, rate: f64) -> Workload {
        let mut subscribers = Vec::new();
        for i in 0..CLIENTS {
            let id = format!("chaos-sub-{i}");
            let qos = if i == 2 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            let s = StrictClient::connect_at(config(c, &id, 16), i)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            s.subscribe(&[(WORKLOAD_FILTER, qos)], Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{id} subscribe: {e}"));
            subscribers.push((Arc::new(s), qos));
        }
        let mut clean = Vec::new();
        for (i, qos) in CLEAN_QOS.into_iter().enumerate() {
            let id = format!("chaos-clean-{i}");
            let mut cfg = config(c, &id, 16);
            cfg.clean_session = true;
            let s = StrictClient::connect_at(cfg, i)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            // Subscribed again by the client on every later connection.
            s.subscribe(&[(WORKLOAD_FILTER, qos)], Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("{id} subscribe: {e}"));
            clean.push((Arc::new(s), qos));
        }
        let mut publishers = Vec::new();
        for i in 0..CLIENTS {
            let id = format!("chaos-pub-{i}");
            let p = StrictClient::connect_at(config(c, &id, 16), (i + 1) % CLIENTS)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            publishers.push(Arc::new(p));
        }
        let retainer = Arc::new(
            StrictClient::connect_at(config(c, "chaos-ret", 1), 2)
                .await
                .unwrap_or_else(|e| panic!("chaos-ret: {e}")),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let acked_subscriptions = Arc::new(Mutex::new(Vec::new()));
        let tasks = vec![
            tokio::spawn(feed(publishers.clone(), rate, stop.clone())),
            tokio::spawn(feed_retained(retainer.clone(), stop.clone())),
            tokio::spawn(churn(
                subscribers.iter().map(|(s, _)| s.clone()).collect(),
                acked_subscriptions.clone(),
                stop.clone(),
            )),
        ];
        Workload {
            publishers,
            subscribers,
            clean,
            retainer,
            acked_subscriptions,
            stop,
            tasks,
        }
    }

    /// Every client, for diagnostics and the history.
    pub(crate) fn clients(&self) -> Vec<Arc<StrictClient>> {
        let mut all: Vec<Arc<StrictClient>> = self.publishers.clone();
        all.extend(self.subscribers.iter().map(|(s, _)| s.clone()));
        all.extend(self.clean.iter().map(|(s, _)| s.clone()));
        all.push(self.retainer.clone());
        all
    }

    /// A client that gave up, with its reason.
    pub(crate) fn fatal(&self) -> Option<String> {
        self.clients()
            .iter()
            .find_map(|c| c.fatal().map(|f| format!("{}: {f}", c.client_id())))
    }

    /// Stops handing out new messages and subscriptions (what was handed out goes on).
    pub(crate) async fn stop_feeding(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Hands `rate` messages a second to each publisher (a pace, not a synchronisation).
async fn feed(publishers: Vec<Arc<StrictClient>>, rate: f64, stop: Arc<AtomicBool>) {
    let mut seq = vec![0u64; publishers.len()];
    let mut credit = vec![0f64; publishers.len()];
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        for (i, p) in publishers.iter().enumerate() {
            credit[i] += rate * dt;
            while credit[i] >= 1.0 && p.outbound_pending() < BACKLOG {
                credit[i] -= 1.0;
                seq[i] += 1;
                let s = seq[i];
                let body = format!("{}/{s}", p.client_id());
                // Completion is read from the history; the handle is not needed.
                drop(p.publish_nowait(&format!("chaos/{}", s % TOPICS), body, qos_of(s), false));
            }
            if p.outbound_pending() >= BACKLOG {
                credit[i] = 0.0;
            }
        }
    }
}

/// Retained messages, one at a time, two a second.
async fn feed_retained(retainer: Arc<StrictClient>, stop: Arc<AtomicBool>) {
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if retainer.outbound_pending() > 0 {
            continue;
        }
        seq += 1;
        let qos = if (seq / RETAINED_TOPICS).is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        drop(retainer.publish_nowait(
            &format!("chaosret/{}", seq % RETAINED_TOPICS),
            format!("chaos-ret/{seq}"),
            qos,
            true,
        ));
    }
}

/// Each subscriber in turn subscribes to a new topic of its own every 1.5 s; those whose SUBACK
/// arrives in time are recorded as acknowledged.
async fn churn(
    subscribers: Vec<Arc<StrictClient>>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
) {
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let s = &subscribers[(k % subscribers.len() as u64) as usize];
        let topic = format!("chaossub/{}/{k}", s.client_id());
        k += 1;
        if s.subscribe(
            &[(topic.as_str(), QoS::AtLeastOnce)],
            Duration::from_secs(20),
        )
        .await
        .is_ok()
        {
            acked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((s.client_id().to_string(), topic));
        }
    }
}
