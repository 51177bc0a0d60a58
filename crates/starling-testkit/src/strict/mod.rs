//! A strict MQTT 3.1.1 client for failover tests: it keeps its session across connections and
//! follows the protocol to the letter when it resumes, so that any loss or duplicate a test sees
//! is the broker's.
//!
//! ```text
//!  StrictClient (handle) ──Cmd──▶ driver task ── one TcpStream at a time ──▶ nodes[i]
//!        ▲                            │ session: outbound in flight (stage), inbound QoS 2 ids
//!        └── history, deliveries ─────┘ awaiting PUBREL, queued publishes, pending SUBSCRIBEs
//! ```
//!
//! # Session state kept across connections
//! - Outbound QoS 1/2 messages not yet PUBACK'd / PUBREC'd: resent on resume as PUBLISH with
//!   DUP=1 and the same packet id, in their original order.
//! - Outbound QoS 2 messages PUBREC'd but not PUBCOMP'd: PUBREL resent on resume.
//! - Inbound QoS 2 packet ids received and awaiting PUBREL (delivery is "Method B" of the
//!   specification, 4.3.3: store the id, deliver, send PUBREC): a PUBLISH with such an id is
//!   answered with PUBREC and not delivered again; PUBREL removes the id and is answered with
//!   PUBCOMP; an unknown PUBREL gets PUBCOMP too.
//! - Packet ids are allocated so that an id still in flight is never reused.
//!
//! # Connections
//! [`StrictClient::connect`] tries the nodes in order (rotating, until a deadline) with
//! clean-session=0. Any socket error, a close by the broker, or a connection silent for
//! [`StrictConfig::response_timeout`] while the client waits for something (an acknowledgement,
//! a PINGRESP) makes the client reconnect, starting with the node after the one it lost, and
//! resume.
//!
//! # Clean sessions
//! With [`StrictConfig::clean_session`] the client connects with clean-session=1 and each
//! connection is a session of its own (MQTT 3.1.1, 3.1.2.4): on every new connection after the
//! first, the messages it had in flight fail (their [`Pending`] gets an error), inbound QoS 2
//! ids awaiting PUBREL are forgotten, and every filter the broker granted so far is subscribed
//! again in one SUBSCRIBE, so that the client goes on receiving what it subscribed to. The
//! history holds what a checker needs to judge each connection on its own: the CONNACK, the
//! SUBSCRIBE and its SUBACK, the deliveries, and the [`Event::Lost`] with the last time anything
//! was read on the connection.
//!
//! # Stage hooks
//! [`StrictClient::hold`] arms a one-shot pause at a precise [`Stage`] of a QoS flow; the driver
//! then stops reading and writing until [`StrictClient::release`], so that a test can kill a node
//! with the flow exactly there (from the client's point of view). [`Release::Reconnect`] abandons
//! the connection without sending what was due (as if the node died with it) and resumes
//! through the node list; [`Release::Continue`] sends what was due and goes on.
//!
//! # History
//! Every connection, packet sent or received, completion and delivery is recorded with its
//! time ([`StrictClient::history`], [`StrictClient::deliveries`]) for the tests' checkers.

mod driver;
mod history;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_codec::{QoS, SubAckReasonCode};
use tokio::sync::{mpsc, oneshot, watch};

pub use driver::next_free_packet_id;
use driver::{Cmd, Driver};
use history::Inner;
pub use history::{Delivery, Event, Record};

/// How a [`StrictClient`] connects and when it gives up on a connection.
#[derive(Clone, Debug)]
pub struct StrictConfig {
    /// Client id.
    pub client_id: String,
    /// The nodes, tried in order (rotating).
    pub nodes: Vec<SocketAddr>,
    /// Clean-session flag of every CONNECT (default false: the session is the point). True
    /// starts a new session on every connection and subscribes again to what was granted
    /// (module documentation, "Clean sessions").
    pub clean_session: bool,
    /// Keep-alive sent in CONNECT, seconds (default 30).
    pub keep_alive: u16,
    /// One connection attempt: TCP connect plus CONNACK (default 5 s; more than the broker's
    /// commit timeout, so that a CONNACK 3 is seen rather than a timeout).
    pub connect_timeout: Duration,
    /// How long [`StrictClient::connect`] and every later failover may take before the client
    /// gives up for good (default 60 s).
    pub failover_deadline: Duration,
    /// A connection that sends nothing for this long while the client waits for an answer is
    /// considered dead (default 4 s). Catches a node that is stopped, not killed.
    pub response_timeout: Duration,
    /// PINGREQ after this long without traffic (default 1 s).
    pub ping_interval: Duration,
    /// Most outbound QoS 1/2 messages in flight; further publishes wait (default 10).
    pub window: usize,
    /// Pause between two rounds over every node when none accepted (default 50 ms); it
    /// doubles with every further round that finds no node, up to
    /// [`StrictConfig::retry_pause_max`].
    pub retry_pause: Duration,
    /// Longest pause between two rounds (default 50 ms: no backoff). A short first pause with
    /// a backoff finds a leader elected a few milliseconds after every node refused without
    /// hammering nodes that are down for seconds.
    pub retry_pause_max: Duration,
}

impl StrictConfig {
    /// Defaults for `client_id` over `nodes`.
    pub fn new(client_id: impl Into<String>, nodes: Vec<SocketAddr>) -> StrictConfig {
        StrictConfig {
            client_id: client_id.into(),
            nodes,
            clean_session: false,
            keep_alive: 30,
            connect_timeout: Duration::from_secs(5),
            failover_deadline: Duration::from_secs(60),
            response_timeout: Duration::from_secs(4),
            ping_interval: Duration::from_secs(1),
            window: 10,
            retry_pause: Duration::from_millis(50),
            retry_pause_max: Duration::from_millis(50),
        }
    }
}

/// A point in a QoS 1/2 flow where [`StrictClient::hold`] can pause the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Our PUBLISH (QoS 1/2) is written; its PUBACK/PUBREC has not been read.
    PublishSent,
    /// PUBREC of our QoS 2 PUBLISH read (the PUBLISH is discarded, PUBREL is owed); PUBREL not
    /// yet written.
    PubRecReceived,
    /// Our PUBREL is written; PUBCOMP not yet read.
    PubRelSent,
    /// A QoS 1/2 PUBLISH read, its id stored (QoS 2) and delivered to the application; the
    /// PUBACK/PUBREC not yet written.
    PublishReceived,
    /// Our PUBREC for a delivered QoS 2 PUBLISH is written; its PUBREL has not been read.
    PubRecSent,
    /// PUBREL read and its id removed; PUBCOMP not yet written.
    PubRelReceived,
}

/// Where the client paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// The stage.
    pub stage: Stage,
    /// Packet id of the flow.
    pub packet_id: u16,
    /// Topic of the flow's message.
    pub topic: String,
    /// Node of the connection the flow was on.
    pub node: SocketAddr,
}

/// How a paused client goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Write what was due (the next packet of the flow, if any) and go on.
    Continue,
    /// Drop the connection without writing what was due, reconnect through the node list
    /// (starting with the next node) and resume the session.
    Reconnect,
}

/// The outcome of one of our QoS 1/2 publishes (or the write of a QoS 0 one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Packet id (0 for QoS 0).
    pub packet_id: u16,
    /// First written.
    pub first_sent: Option<Instant>,
    /// PUBACK / PUBCOMP read (or QoS 0 written).
    pub completed: Instant,
    /// Times the PUBLISH was written (1 + resends).
    pub publish_writes: u32,
}

/// A publish handed to the client; [`Pending::wait`] for its completion.
pub struct Pending {
    rx: oneshot::Receiver<Result<Completion, String>>,
}

impl Pending {
    /// Waits up to `timeout` for the PUBACK / PUBCOMP.
    ///
    /// # Errors
    /// Timeout, or the client gave up (its failover deadline passed).
    pub async fn wait(self, timeout: Duration) -> Result<Completion, String> {
        match tokio::time::timeout(timeout, self.rx).await {
            Err(_) => Err(format!("not completed within {timeout:?}")),
            Ok(Err(_)) => Err("client stopped".into()),
            Ok(Ok(r)) => r,
        }
    }
}

/// The strict client (see the module documentation). Dropping it stops the driver and closes
/// the socket without DISCONNECT, as a crashed client would.
pub struct StrictClient {
    client_id: String,
    nodes: Vec<SocketAddr>,
    inner: Arc<Inner>,
    held: watch::Receiver<Option<Held>>,
    cmd: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StrictClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StrictClient {
    /// Connects (trying the nodes in order until [`StrictConfig::failover_deadline`]) and starts
    /// the driver; returns once a CONNACK 0 arrived.
    ///
    /// # Errors
    /// No node accepted before the deadline.
    pub async fn connect(config: StrictConfig) -> Result<StrictClient, String> {
        Self::connect_at(config, 0).await
    }

    /// [`StrictClient::connect`] starting with node `first` (an index into the node list).
    ///
    /// # Errors
    /// No node accepted before the deadline.
    pub async fn connect_at(config: StrictConfig, first: usize) -> Result<StrictClient, String> {
        assert!(!config.nodes.is_empty(), "a strict client needs a node");
        let (held_tx, held_rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            observed: Mutex::default(),
            held: held_tx,
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let mut driver = Driver::new(config.clone(), inner.clone(), cmd_rx, first);
        driver.establish(first).await?;
        let task = tokio::spawn(driver.run());
        Ok(StrictClient {
            client_id: config.client_id,
            nodes: config.nodes,
            inner,
            held: held_rx,
            cmd: cmd_tx,
            task,
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The node list.
    pub fn nodes(&self) -> &[SocketAddr] {
        &self.nodes
    }

    fn send_cmd(&self, c: Cmd) -> Result<(), String> {
        self.cmd.send(c).map_err(|_| self.stopped_why())
    }

    fn stopped_why(&self) -> String {
        self.inner
            .lock()
            .fatal
            .clone()
            .unwrap_or_else(|| "client stopped".into())
    }

    /// Hands a message to the client (queued behind the window) without waiting.
    pub fn publish_nowait(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Pending {
        let (done, rx) = oneshot::channel();
        let _ = self.send_cmd(Cmd::Publish {
            topic: topic.to_string(),
            payload: payload.into(),
            qos,
            retain,
            done,
        });
        Pending { rx }
    }

    /// Publishes and waits for completion (PUBACK / PUBCOMP; QoS 0: written) within `timeout`,
    /// across any number of failovers.
    ///
    /// # Errors
    /// Timeout, or the client gave up.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        timeout: Duration,
    ) -> Result<Completion, String> {
        self.publish_nowait(topic, payload, qos, false)
            .wait(timeout)
            .await
    }

    /// Arms a one-shot pause at `stage` for the next flow of a message on `topic` (any topic if
    /// `None`), then publishes and waits until the client paused there. Returns where it paused
    /// and the publish's completion.
    ///
    /// # Errors
    /// The stage was not reached within `timeout`.
    pub async fn publish_until(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        stage: Stage,
        timeout: Duration,
    ) -> Result<(Held, Pending), String> {
        self.hold(stage, Some(topic))?;
        let pending = self.publish_nowait(topic, payload, qos, false);
        let held = self.wait_held(timeout).await?;
        Ok((held, pending))
    }

    /// Arms a one-shot pause at `stage` for the next flow on `topic` (any if `None`).
    ///
    /// # Errors
    /// The client stopped.
    pub fn hold(&self, stage: Stage, topic: Option<&str>) -> Result<(), String> {
        self.send_cmd(Cmd::Hold(Some((stage, topic.map(str::to_string)))))
    }

    /// Disarms a pause not reached yet.
    ///
    /// # Errors
    /// The client stopped.
    pub fn unhold(&self) -> Result<(), String> {
        self.send_cmd(Cmd::Hold(None))
    }

    /// Waits until the client is paused; returns where.
    ///
    /// # Errors
    /// Not paused within `timeout`, or the client stopped.
    pub async fn wait_held(&self, timeout: Duration) -> Result<Held, String> {
        let mut rx = self.held.clone();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(Option::is_some).await.map(|h| h.clone())
        })
        .await;
        match waited {
            Ok(Ok(h)) => Ok(h.expect("held")),
            Ok(Err(_)) => Err(self.stopped_why()),
            Err(_) => Err(format!(
                "{}: not paused within {timeout:?} (fatal: {:?})",
                self.client_id,
                self.fatal()
            )),
        }
    }

    /// Where the client is paused, if it is.
    pub fn held_at(&self) -> Option<Held> {
        self.held.borrow().clone()
    }

    /// Ends a pause.
    ///
    /// # Errors
    /// The client stopped.
    pub fn release(&self, how: Release) -> Result<(), String> {
        self.send_cmd(Cmd::Release(how))
    }

    /// Subscribes (resent after a failover until the SUBACK arrives); returns the return codes.
    ///
    /// # Errors
    /// No SUBACK within `timeout`, or the client stopped.
    pub async fn subscribe(
        &self,
        filters: &[(&str, QoS)],
        timeout: Duration,
    ) -> Result<Vec<SubAckReasonCode>, String> {
        let (done, rx) = oneshot::channel();
        self.send_cmd(Cmd::Subscribe {
            filters: filters.iter().map(|(f, q)| (f.to_string(), *q)).collect(),
            done,
        })?;
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(format!("no SUBACK within {timeout:?}")),
            Ok(Err(_)) => Err(self.stopped_why()),
            Ok(Ok(r)) => r,
        }
    }

    /// Sends DISCONNECT and reconnects, trying the nodes from index `start_at` (or the next
    /// one); the session state is kept and resumed. Returns the node it connected to.
    ///
    /// # Errors
    /// No node accepted before the failover deadline.
    pub async fn reconnect(&self, start_at: Option<usize>) -> Result<SocketAddr, String> {
        let (done, rx) = oneshot::channel();
        self.send_cmd(Cmd::Reconnect { start_at, done })?;
        rx.await.map_err(|_| self.stopped_why())?
    }

    /// Sends DISCONNECT and stops. Unacknowledged state is dropped with the client.
    ///
    /// # Errors
    /// The client had stopped already.
    pub async fn disconnect(self) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.send_cmd(Cmd::Disconnect { done })?;
        rx.await.map_err(|_| self.stopped_why())?
    }

    /// The node currently connected to.
    pub fn connected_to(&self) -> Option<SocketAddr> {
        self.inner.lock().connected
    }

    /// Why the client gave up, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.inner.lock().fatal.clone()
    }

    /// Outbound messages in flight or queued.
    pub fn outbound_pending(&self) -> usize {
        self.inner.lock().outbound
    }

    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub fn inbound_awaiting(&self) -> Vec<u16> {
        self.inner.lock().inbound.clone()
    }

    /// The history so far.
    pub fn history(&self) -> Vec<Record> {
        self.inner.lock().history.clone()
    }

    /// The history since the latest CONNACK 0 (all of it before the first): what a checker of
    /// the current connection needs, without copying the whole history.
    pub fn connection_history(&self) -> Vec<Record> {
        let o = self.inner.lock();
        let from = o
            .history
            .iter()
            .rposition(|r| matches!(r.event, Event::Connected { .. }))
            .unwrap_or(0);
        o.history[from..].to_vec()
    }

    /// Messages delivered so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().deliveries.clone()
    }

    /// Number of messages delivered so far.
    pub fn delivered(&self) -> usize {
        self.inner.lock().deliveries.len()
    }

    /// Polls `cond` over the deliveries until it holds.
    ///
    /// # Errors
    /// `timeout` passed (the message has the number delivered), or the client stopped.
    pub async fn wait_deliveries(
        &self,
        timeout: Duration,
        what: &str,
        mut cond: impl FnMut(&[Delivery]) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            {
                let o = self.inner.lock();
                if cond(&o.deliveries) {
                    return Ok(());
                }
                if let Some(f) = &o.fatal {
                    return Err(format!("{}: {f}", self.client_id));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{}: timed out after {timeout:?} waiting for {what} ({} delivered)",
                        self.client_id,
                        o.deliveries.len()
                    ));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Waits until no outbound message is in flight or queued.
    ///
    /// # Errors
    /// `timeout` passed, or the client stopped.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let o = self.inner.lock();
                if o.outbound == 0 {
                    return Ok(());
                }
                if let Some(f) = &o.fatal {
                    return Err(format!("{}: {f}", self.client_id));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{}: {} outbound messages still pending after {timeout:?}",
                        self.client_id, o.outbound
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
