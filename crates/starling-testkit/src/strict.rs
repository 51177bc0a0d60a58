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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use starling_codec::{
    Connect, ConnectReturnCode, Decoder, Packet, ProtocolVersion, Publish, QoS, Subscribe,
    SubscribeFilter, SubscribeReturnCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

/// How a [`StrictClient`] connects and when it gives up on a connection.
#[derive(Clone, Debug)]
pub struct StrictConfig {
    /// Client id.
    pub client_id: String,
    /// The nodes, tried in order (rotating).
    pub nodes: Vec<SocketAddr>,
    /// Clean-session flag of every CONNECT (default false: the session is the point).
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
    /// Pause between two rounds over every node when none accepted (default 50 ms).
    pub retry_pause: Duration,
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

/// A message handed to the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// When.
    pub at: Instant,
    /// Node of the connection it arrived on.
    pub node: SocketAddr,
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// QoS as received.
    pub qos: QoS,
    /// DUP flag as received.
    pub dup: bool,
    /// RETAIN flag as received.
    pub retain: bool,
    /// Packet id (0 for QoS 0).
    pub packet_id: u16,
}

/// One entry of the client's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// When.
    pub at: Instant,
    /// What.
    pub event: Event,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connection attempt to a node.
    Connecting(SocketAddr),
    /// CONNACK 0 from a node.
    Connected {
        /// The node.
        node: SocketAddr,
        /// Session-present flag.
        session_present: bool,
    },
    /// A node refused or did not answer in time.
    Refused {
        /// The node.
        node: SocketAddr,
        /// CONNACK code, IO error or timeout.
        why: String,
    },
    /// The connection ended (socket error, close, silence, or [`Release::Reconnect`]).
    Lost {
        /// The node.
        node: SocketAddr,
        /// Why.
        why: String,
    },
    /// A resumed session (not the first connection) was not present on the broker: the broker
    /// lost it. Never expected in a cluster with a majority up.
    SessionLost(SocketAddr),
    /// A packet written (PUBLISH, PUBREL, PUBACK, PUBREC, PUBCOMP, SUBSCRIBE; not PINGREQ).
    Sent(Packet),
    /// A packet read (not PINGRESP).
    Received(Packet),
    /// One of our publishes completed.
    Completed {
        /// Packet id.
        packet_id: u16,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// A message delivered to the application.
    Delivered {
        /// Packet id.
        packet_id: u16,
        /// Topic.
        topic: String,
        /// Payload.
        payload: Bytes,
    },
    /// A QoS 2 PUBLISH whose id awaits PUBREL: answered with PUBREC, not delivered again.
    DuplicateSuppressed(u16),
    /// PUBREL for an id not awaiting one: answered with PUBCOMP.
    UnknownPubRel(u16),
    /// An acknowledgement for nothing we have in flight (ignored).
    UnexpectedAck(Packet),
    /// The client paused at a stage.
    Paused(Held),
}

/// What the test side and the driver share.
#[derive(Default)]
struct Observed {
    history: Vec<Record>,
    deliveries: Vec<Delivery>,
    connected: Option<SocketAddr>,
    /// Outbound messages in flight or queued.
    outbound: usize,
    /// Inbound QoS 2 ids awaiting PUBREL.
    inbound: Vec<u16>,
    fatal: Option<String>,
}

struct Inner {
    observed: Mutex<Observed>,
    held: watch::Sender<Option<Held>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, event: Event) {
        self.lock().history.push(Record {
            at: Instant::now(),
            event,
        });
    }
}

type Reply<T> = oneshot::Sender<Result<T, String>>;

enum Cmd {
    Publish {
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        done: Reply<Completion>,
    },
    Subscribe {
        filters: Vec<(String, QoS)>,
        done: Reply<Vec<SubscribeReturnCode>>,
    },
    Hold(Option<(Stage, Option<String>)>),
    Release(Release),
    Reconnect {
        start_at: Option<usize>,
        done: Reply<SocketAddr>,
    },
    Disconnect {
        done: Reply<()>,
    },
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
        let mut driver = Driver {
            cfg: config.clone(),
            inner: inner.clone(),
            cmd_rx,
            deferred: VecDeque::new(),
            conn: None,
            node_idx: first % config.nodes.len(),
            connections: 0,
            next_pid: 0,
            next_order: 0,
            out: HashMap::new(),
            queue: VecDeque::new(),
            inbound: BTreeMap::new(),
            subs: BTreeMap::new(),
            hold: None,
            held: None,
            stopped: false,
        };
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
    ) -> Result<Vec<SubscribeReturnCode>, String> {
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

/// An outbound QoS 1/2 message in flight.
struct OutFlight {
    order: u64,
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    /// PUBREC read: PUBREL is what is owed.
    released: bool,
    first_sent: Option<Instant>,
    publish_writes: u32,
    done: Option<Reply<Completion>>,
}

/// A SUBSCRIBE awaiting its SUBACK: its filters (resent on resume) and who waits.
type PendingSub = (Vec<(String, QoS)>, Reply<Vec<SubscribeReturnCode>>);

struct Queued {
    topic: String,
    payload: Bytes,
    qos: QoS,
    retain: bool,
    done: Reply<Completion>,
}

struct Conn {
    node: SocketAddr,
    stream: TcpStream,
    rbuf: BytesMut,
    decoder: Decoder,
    last_recv: Instant,
    last_send: Instant,
    ping_outstanding: bool,
}

/// A pause in progress: where, and the packet owed when it ends with [`Release::Continue`].
struct Paused {
    owed: Option<Packet>,
}

/// Why the driver woke up.
enum Wake {
    Cmd(Option<Cmd>),
    Read(std::io::Result<usize>),
    Timer,
}

struct Driver {
    cfg: StrictConfig,
    inner: Arc<Inner>,
    cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    /// Commands that arrived during a pause.
    deferred: VecDeque<Cmd>,
    conn: Option<Conn>,
    node_idx: usize,
    connections: u64,
    next_pid: u16,
    next_order: u64,
    out: HashMap<u16, OutFlight>,
    queue: VecDeque<Queued>,
    /// Inbound QoS 2 ids awaiting PUBREL, with their topic.
    inbound: BTreeMap<u16, String>,
    /// SUBSCRIBEs without SUBACK.
    subs: BTreeMap<u16, PendingSub>,
    hold: Option<(Stage, Option<String>)>,
    held: Option<Paused>,
    stopped: bool,
}

/// The next packet id after `last` that is not in use: ids cycle through 1..=65535 and an id
/// still in flight is skipped. `None` when all 65535 are in use.
pub fn next_free_packet_id(last: u16, in_use: impl Fn(u16) -> bool) -> Option<u16> {
    let mut pid = last;
    for _ in 0..65535 {
        pid = if pid == 65535 { 1 } else { pid + 1 };
        if !in_use(pid) {
            return Some(pid);
        }
    }
    None
}

impl Driver {
    fn record(&self, e: Event) {
        self.inner.record(e);
    }

    fn publish_observed(&self) {
        let mut o = self.inner.lock();
        o.outbound = self.out.len() + self.queue.len();
        o.inbound = self.inbound.keys().copied().collect();
        o.connected = self.conn.as_ref().map(|c| c.node);
    }

    fn fatal(&mut self, why: &str) {
        let why = why.to_string();
        self.inner.lock().fatal = Some(why.clone());
        for (_, f) in self.out.drain() {
            if let Some(d) = f.done {
                let _ = d.send(Err(why.clone()));
            }
        }
        for q in self.queue.drain(..) {
            let _ = q.done.send(Err(why.clone()));
        }
        for (_, (_, d)) in std::mem::take(&mut self.subs) {
            let _ = d.send(Err(why.clone()));
        }
        self.stopped = true;
    }

    async fn run(mut self) {
        while !self.stopped {
            if self.conn.is_none() {
                let start = self.node_idx + 1;
                if let Err(e) = self.establish(start).await {
                    self.fatal(&e);
                    break;
                }
            }
            if self.held.is_some() {
                match self.cmd_rx.recv().await {
                    None => break,
                    Some(Cmd::Release(how)) => self.release(how).await,
                    Some(Cmd::Hold(h)) => self.hold = h,
                    Some(c) => self.deferred.push_back(c),
                }
                continue;
            }
            if let Some(c) = self.deferred.pop_front() {
                self.on_cmd(c).await;
                continue;
            }
            match self.decode_buffered() {
                Ok(Some(p)) => {
                    self.on_packet(p).await;
                    continue;
                }
                Ok(None) => {}
                Err(why) => {
                    self.lose(why);
                    continue;
                }
            }
            let timer = self.next_timer();
            let wake = {
                let Some(conn) = self.conn.as_mut() else {
                    continue;
                };
                conn.rbuf.reserve(4096);
                tokio::select! {
                    c = self.cmd_rx.recv() => Wake::Cmd(c),
                    r = conn.stream.read_buf(&mut conn.rbuf) => Wake::Read(r),
                    _ = tokio::time::sleep_until(timer.into()) => Wake::Timer,
                }
            };
            match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) => self.on_cmd(c).await,
                Wake::Read(Ok(0)) => self.lose("closed by the broker".into()),
                Wake::Read(Ok(_)) => {
                    if let Some(c) = self.conn.as_mut() {
                        c.last_recv = Instant::now();
                    }
                }
                Wake::Read(Err(e)) => self.lose(format!("read: {e}")),
                Wake::Timer => self.on_timer().await,
            }
        }
        self.publish_observed();
    }

    /// Whether the client waits for an answer on the current connection.
    fn expecting(&self) -> bool {
        !self.out.is_empty()
            || !self.subs.is_empty()
            || self.conn.as_ref().is_some_and(|c| c.ping_outstanding)
    }

    fn next_timer(&self) -> Instant {
        let Some(c) = &self.conn else {
            return Instant::now();
        };
        let ping = c.last_send.max(c.last_recv) + self.cfg.ping_interval;
        if self.expecting() {
            ping.min(c.last_recv + self.cfg.response_timeout)
        } else {
            ping
        }
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        let Some(c) = &self.conn else { return };
        if self.expecting() && now >= c.last_recv + self.cfg.response_timeout {
            let why = format!("no answer within {:?}", self.cfg.response_timeout);
            return self.lose(why);
        }
        if !c.ping_outstanding
            && now >= c.last_send.max(c.last_recv) + self.cfg.ping_interval
            && self.write(&Packet::PingReq).await
        {
            if let Some(c) = self.conn.as_mut() {
                c.ping_outstanding = true;
            }
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<Packet>, String> {
        let Some(c) = self.conn.as_mut() else {
            return Ok(None);
        };
        c.decoder
            .decode(&mut c.rbuf)
            .map_err(|e| format!("undecodable packet: {e}"))
    }

    /// Drops the connection (the session state stays).
    fn lose(&mut self, why: String) {
        if let Some(c) = self.conn.take() {
            self.record(Event::Lost { node: c.node, why });
        }
        self.publish_observed();
    }

    /// Writes a packet; on failure the connection is lost and false returned.
    async fn write(&mut self, p: &Packet) -> bool {
        let Some(c) = self.conn.as_mut() else {
            return false;
        };
        let mut buf = BytesMut::new();
        if let Err(e) = p.encode(&mut buf) {
            panic!("strict client cannot encode {p:?}: {e}");
        }
        let r = tokio::time::timeout(self.cfg.response_timeout, c.stream.write_all(&buf)).await;
        match r {
            Ok(Ok(())) => {
                c.last_send = Instant::now();
                if !matches!(p, Packet::PingReq | Packet::Disconnect) {
                    self.record(Event::Sent(p.clone()));
                }
                true
            }
            Ok(Err(e)) => {
                self.lose(format!("write: {e}"));
                false
            }
            Err(_) => {
                self.lose("write timed out".into());
                false
            }
        }
    }

    /// Arms `held` if the armed hold matches.
    fn maybe_pause(&mut self, stage: Stage, packet_id: u16, topic: &str, owed: Option<Packet>) {
        let matches = self
            .hold
            .as_ref()
            .is_some_and(|(s, t)| *s == stage && t.as_deref().is_none_or(|t| t == topic));
        if !matches {
            // Not paused: the caller writes what is owed.
            return;
        }
        let Some(node) = self.conn.as_ref().map(|c| c.node) else {
            return;
        };
        self.hold = None;
        let h = Held {
            stage,
            packet_id,
            topic: topic.to_string(),
            node,
        };
        self.record(Event::Paused(h.clone()));
        self.held = Some(Paused { owed });
        self.inner.held.send_replace(Some(h));
    }

    fn is_paused(&self) -> bool {
        self.held.is_some()
    }

    async fn release(&mut self, how: Release) {
        let Some(p) = self.held.take() else { return };
        self.inner.held.send_replace(None);
        match how {
            Release::Continue => {
                if let Some(owed) = p.owed {
                    let stage_after = match &owed {
                        Packet::PubRel(pid) => Some((Stage::PubRelSent, *pid)),
                        Packet::PubRec(pid) => Some((Stage::PubRecSent, *pid)),
                        _ => None,
                    };
                    if self.write(&owed).await {
                        if let Some((stage, pid)) = stage_after {
                            let topic = self.topic_of(stage, pid);
                            self.maybe_pause(stage, pid, &topic, None);
                        }
                    }
                }
                self.fill_window().await;
            }
            Release::Reconnect => self.lose("abandoned by the test (Release::Reconnect)".into()),
        }
    }

    fn topic_of(&self, stage: Stage, pid: u16) -> String {
        match stage {
            Stage::PublishSent | Stage::PubRecReceived | Stage::PubRelSent => {
                self.out.get(&pid).map(|f| f.topic.clone())
            }
            _ => self.inbound.get(&pid).cloned(),
        }
        .unwrap_or_default()
    }

    /// Tries the nodes from index `start` (rotating) until one accepts or the deadline; then
    /// resumes the session.
    async fn establish(&mut self, start: usize) -> Result<(), String> {
        let n = self.cfg.nodes.len();
        let deadline = Instant::now() + self.cfg.failover_deadline;
        let mut i = start % n;
        let mut tried = 0usize;
        loop {
            let addr = self.cfg.nodes[i];
            self.record(Event::Connecting(addr));
            match self.try_connect(addr).await {
                Ok((conn, present)) => {
                    self.conn = Some(conn);
                    self.node_idx = i;
                    self.connections += 1;
                    self.record(Event::Connected {
                        node: addr,
                        session_present: present,
                    });
                    if self.connections > 1 && !present && !self.cfg.clean_session {
                        self.record(Event::SessionLost(addr));
                    }
                    self.publish_observed();
                    self.resume().await;
                    return Ok(());
                }
                Err(why) => self.record(Event::Refused { node: addr, why }),
            }
            i = (i + 1) % n;
            tried += 1;
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: no node accepted within {:?}",
                    self.cfg.client_id, self.cfg.failover_deadline
                ));
            }
            if tried.is_multiple_of(n) {
                // Every node refused: a retry pause before the next round.
                tokio::time::sleep(self.cfg.retry_pause).await;
            }
        }
    }

    async fn try_connect(&self, addr: SocketAddr) -> Result<(Conn, bool), String> {
        let cfg = &self.cfg;
        let attempt = async {
            let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let connect = Packet::Connect(Box::new(Connect {
                protocol: ProtocolVersion::V3_1_1,
                clean_session: cfg.clean_session,
                keep_alive: cfg.keep_alive,
                client_id: cfg.client_id.as_str().into(),
                will: None,
                username: None,
                password: None,
            }));
            let mut buf = BytesMut::new();
            connect.encode(&mut buf).map_err(|e| e.to_string())?;
            stream.write_all(&buf).await.map_err(|e| e.to_string())?;
            let mut decoder = Decoder::new(usize::MAX >> 4);
            decoder.set_protocol(ProtocolVersion::V3_1_1);
            let mut rbuf = BytesMut::new();
            loop {
                match decoder.decode(&mut rbuf) {
                    Ok(Some(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Accepted => {
                        let now = Instant::now();
                        let conn = Conn {
                            node: addr,
                            stream,
                            rbuf,
                            decoder,
                            last_recv: now,
                            last_send: now,
                            ping_outstanding: false,
                        };
                        return Ok((conn, a.session_present));
                    }
                    Ok(Some(Packet::ConnAck(a))) => {
                        return Err(format!("CONNACK {}", a.code as u8))
                    }
                    Ok(Some(p)) => return Err(format!("expected CONNACK, got {p:?}")),
                    Ok(None) => {}
                    Err(e) => return Err(format!("undecodable answer: {e}")),
                }
                rbuf.reserve(4096);
                match stream.read_buf(&mut rbuf).await {
                    Ok(0) => return Err("closed before CONNACK".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        };
        match tokio::time::timeout(cfg.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no CONNACK within {:?}", cfg.connect_timeout)),
        }
    }

    /// After CONNACK: resend what is unacknowledged, in order, then pending SUBSCRIBEs, then
    /// fill the window.
    async fn resume(&mut self) {
        let mut flights: Vec<(u64, u16)> = self.out.iter().map(|(p, f)| (f.order, *p)).collect();
        flights.sort_unstable();
        for (_, pid) in flights {
            let Some(f) = self.out.get_mut(&pid) else {
                continue;
            };
            let p = if f.released {
                Packet::PubRel(pid)
            } else {
                f.publish_writes += 1;
                Packet::Publish(Publish {
                    dup: f.first_sent.is_some(),
                    qos: f.qos,
                    retain: f.retain,
                    topic: f.topic.as_str().into(),
                    packet_id: pid,
                    payload: f.payload.clone(),
                })
            };
            if f.first_sent.is_none() {
                f.first_sent = Some(Instant::now());
            }
            if !self.write(&p).await {
                return;
            }
        }
        let subs: Vec<(u16, Vec<(String, QoS)>)> = self
            .subs
            .iter()
            .map(|(pid, (f, _))| (*pid, f.clone()))
            .collect();
        for (pid, filters) in subs {
            if !self.write(&subscribe_packet(pid, &filters)).await {
                return;
            }
        }
        self.fill_window().await;
    }

    fn alloc_pid(&mut self) -> u16 {
        let pid = next_free_packet_id(self.next_pid, |p| {
            self.out.contains_key(&p) || self.subs.contains_key(&p)
        })
        .expect("fewer than 65535 packets in flight");
        self.next_pid = pid;
        pid
    }

    /// Starts queued publishes while the window has room.
    async fn fill_window(&mut self) {
        while self.out.len() < self.cfg.window.max(1) && !self.is_paused() && self.conn.is_some() {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let pid = self.alloc_pid();
            let order = self.next_order;
            self.next_order += 1;
            let p = Packet::Publish(Publish {
                dup: false,
                qos: q.qos,
                retain: q.retain,
                topic: q.topic.as_str().into(),
                packet_id: pid,
                payload: q.payload.clone(),
            });
            self.out.insert(
                pid,
                OutFlight {
                    order,
                    topic: q.topic.clone(),
                    payload: q.payload,
                    qos: q.qos,
                    retain: q.retain,
                    released: false,
                    first_sent: Some(Instant::now()),
                    publish_writes: 1,
                    done: Some(q.done),
                },
            );
            self.publish_observed();
            if !self.write(&p).await {
                return;
            }
            self.maybe_pause(Stage::PublishSent, pid, &q.topic, None);
        }
    }

    async fn on_cmd(&mut self, c: Cmd) {
        match c {
            Cmd::Publish {
                topic,
                payload,
                qos,
                retain,
                done,
            } => {
                if qos == QoS::AtMostOnce {
                    let p = Packet::Publish(Publish {
                        dup: false,
                        qos,
                        retain,
                        topic: topic.as_str().into(),
                        packet_id: 0,
                        payload,
                    });
                    let now = Instant::now();
                    let r = if self.write(&p).await {
                        Ok(Completion {
                            packet_id: 0,
                            first_sent: Some(now),
                            completed: now,
                            publish_writes: 1,
                        })
                    } else {
                        Err("connection lost writing a QoS 0 PUBLISH".into())
                    };
                    let _ = done.send(r);
                    return;
                }
                self.queue.push_back(Queued {
                    topic,
                    payload,
                    qos,
                    retain,
                    done,
                });
                self.publish_observed();
                self.fill_window().await;
            }
            Cmd::Subscribe { filters, done } => {
                let pid = self.alloc_pid();
                let p = subscribe_packet(pid, &filters);
                self.subs.insert(pid, (filters, done));
                self.write(&p).await;
            }
            Cmd::Hold(h) => self.hold = h,
            Cmd::Release(how) => self.release(how).await,
            Cmd::Reconnect { start_at, done } => {
                self.write(&Packet::Disconnect).await;
                self.lose("reconnect asked by the test".into());
                let start = start_at.unwrap_or(self.node_idx + 1);
                match self.establish(start).await {
                    Ok(()) => {
                        let node = self.conn.as_ref().map(|c| c.node).expect("connected");
                        let _ = done.send(Ok(node));
                    }
                    Err(e) => {
                        let _ = done.send(Err(e.clone()));
                        self.fatal(&e);
                    }
                }
            }
            Cmd::Disconnect { done } => {
                self.write(&Packet::Disconnect).await;
                if let Some(mut c) = self.conn.take() {
                    let _ = c.stream.shutdown().await;
                    self.record(Event::Lost {
                        node: c.node,
                        why: "DISCONNECT".into(),
                    });
                }
                self.stopped = true;
                let _ = done.send(Ok(()));
            }
        }
    }

    async fn on_packet(&mut self, p: Packet) {
        if let Some(c) = self.conn.as_mut() {
            c.last_recv = Instant::now();
        }
        if p != Packet::PingResp {
            self.record(Event::Received(p.clone()));
        }
        match p {
            Packet::PingResp => {
                if let Some(c) = self.conn.as_mut() {
                    c.ping_outstanding = false;
                }
            }
            Packet::Publish(p) => self.on_publish(p).await,
            Packet::PubAck(pid) => {
                if self
                    .out
                    .get(&pid)
                    .is_some_and(|f| f.qos == QoS::AtLeastOnce)
                {
                    self.complete(pid);
                    self.fill_window().await;
                } else {
                    self.record(Event::UnexpectedAck(Packet::PubAck(pid)));
                }
            }
            Packet::PubRec(pid) => {
                let Some(f) = self.out.get_mut(&pid).filter(|f| f.qos == QoS::ExactlyOnce) else {
                    self.record(Event::UnexpectedAck(Packet::PubRec(pid)));
                    return;
                };
                let first = !f.released;
                f.released = true;
                let topic = f.topic.clone();
                if first {
                    self.maybe_pause(
                        Stage::PubRecReceived,
                        pid,
                        &topic,
                        Some(Packet::PubRel(pid)),
                    );
                    if self.is_paused() {
                        return;
                    }
                }
                // A repeated PUBREC (after a resent PUBLISH) is answered with PUBREL again.
                if self.write(&Packet::PubRel(pid)).await && first {
                    self.maybe_pause(Stage::PubRelSent, pid, &topic, None);
                }
            }
            Packet::PubComp(pid) => {
                if self.out.get(&pid).is_some_and(|f| f.released) {
                    self.complete(pid);
                    self.fill_window().await;
                } else {
                    self.record(Event::UnexpectedAck(Packet::PubComp(pid)));
                }
            }
            Packet::PubRel(pid) => match self.inbound.remove(&pid) {
                Some(topic) => {
                    self.publish_observed();
                    self.maybe_pause(
                        Stage::PubRelReceived,
                        pid,
                        &topic,
                        Some(Packet::PubComp(pid)),
                    );
                    if !self.is_paused() {
                        self.write(&Packet::PubComp(pid)).await;
                    }
                }
                None => {
                    self.record(Event::UnknownPubRel(pid));
                    self.write(&Packet::PubComp(pid)).await;
                }
            },
            Packet::SubAck(a) => {
                if let Some((_, done)) = self.subs.remove(&a.packet_id) {
                    let _ = done.send(Ok(a.return_codes));
                }
            }
            other => self.lose(format!("unexpected packet from the broker: {other:?}")),
        }
    }

    async fn on_publish(&mut self, p: Publish) {
        let node = self.conn.as_ref().map(|c| c.node);
        let Some(node) = node else { return };
        let topic = p.topic.to_string();
        if p.qos == QoS::ExactlyOnce && self.inbound.contains_key(&p.packet_id) {
            self.record(Event::DuplicateSuppressed(p.packet_id));
            self.write(&Packet::PubRec(p.packet_id)).await;
            return;
        }
        if p.qos == QoS::ExactlyOnce {
            self.inbound.insert(p.packet_id, topic.clone());
        }
        {
            let mut o = self.inner.lock();
            o.history.push(Record {
                at: Instant::now(),
                event: Event::Delivered {
                    packet_id: p.packet_id,
                    topic: topic.clone(),
                    payload: p.payload.clone(),
                },
            });
            o.deliveries.push(Delivery {
                at: Instant::now(),
                node,
                topic: topic.clone(),
                payload: p.payload.clone(),
                qos: p.qos,
                dup: p.dup,
                retain: p.retain,
                packet_id: p.packet_id,
            });
        }
        self.publish_observed();
        let ack = match p.qos {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => Packet::PubAck(p.packet_id),
            QoS::ExactlyOnce => Packet::PubRec(p.packet_id),
        };
        self.maybe_pause(
            Stage::PublishReceived,
            p.packet_id,
            &topic,
            Some(ack.clone()),
        );
        if self.is_paused() {
            return;
        }
        if self.write(&ack).await && p.qos == QoS::ExactlyOnce {
            self.maybe_pause(Stage::PubRecSent, p.packet_id, &topic, None);
        }
    }

    fn complete(&mut self, pid: u16) {
        let Some(f) = self.out.remove(&pid) else {
            return;
        };
        self.record(Event::Completed {
            packet_id: pid,
            topic: f.topic.clone(),
            payload: f.payload.clone(),
        });
        if let Some(d) = f.done {
            let _ = d.send(Ok(Completion {
                packet_id: pid,
                first_sent: f.first_sent,
                completed: Instant::now(),
                publish_writes: f.publish_writes,
            }));
        }
        self.publish_observed();
    }
}

fn subscribe_packet(pid: u16, filters: &[(String, QoS)]) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: pid,
        filters: filters
            .iter()
            .map(|(f, q)| SubscribeFilter {
                filter: f.as_str().into(),
                qos: *q,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    //! The client against a scripted server: a listener in the test that plays the broker's
    //! side of a packet exchange, closing connections where a node would die.

    use super::*;
    use starling_codec::ConnAck;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    struct Server {
        listener: TcpListener,
        addr: SocketAddr,
    }

    impl Server {
        async fn bind() -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            Server { listener, addr }
        }

        async fn accept(&self) -> Peer {
            let (stream, _) = tokio::time::timeout(T, self.listener.accept())
                .await
                .expect("the client connects")
                .unwrap();
            Peer {
                stream,
                rbuf: BytesMut::new(),
                decoder: Decoder::new(1 << 20),
            }
        }

        /// Accepts a connection, checks its CONNECT and answers CONNACK `code`.
        async fn accept_connect(&self, present: bool, code: ConnectReturnCode) -> Peer {
            let mut p = self.accept().await;
            match p.recv().await {
                Packet::Connect(c) => {
                    assert!(!c.clean_session, "a strict client resumes its session");
                    assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
                }
                other => panic!("expected CONNECT, got {other:?}"),
            }
            p.send(Packet::ConnAck(ConnAck {
                session_present: present,
                code,
            }))
            .await;
            p
        }
    }

    struct Peer {
        stream: TcpStream,
        rbuf: BytesMut,
        decoder: Decoder,
    }

    impl Peer {
        /// The next packet (PINGREQ answered and skipped); panics after [`T`].
        async fn recv(&mut self) -> Packet {
            self.recv_within(T)
                .await
                .unwrap_or_else(|| panic!("nothing from the client within {T:?}"))
        }

        async fn recv_within(&mut self, within: Duration) -> Option<Packet> {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                match self.decoder.decode(&mut self.rbuf).unwrap() {
                    Some(Packet::PingReq) => {
                        self.send(Packet::PingResp).await;
                        continue;
                    }
                    Some(p) => return Some(p),
                    None => {}
                }
                self.rbuf.reserve(4096);
                match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await
                {
                    Err(_) => return None,
                    Ok(Ok(0)) => panic!("the client closed the connection"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("read: {e}"),
                }
            }
        }

        async fn recv_publish(&mut self) -> Publish {
            match self.recv().await {
                Packet::Publish(p) => p,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }

        async fn send(&mut self, p: Packet) {
            let mut buf = BytesMut::new();
            p.encode(&mut buf).unwrap();
            self.stream.write_all(&buf).await.unwrap();
        }

        /// True if the client closes the connection within [`T`] (skipping packets).
        async fn closed(&mut self) -> bool {
            let deadline = tokio::time::Instant::now() + T;
            loop {
                self.rbuf.reserve(4096);
                match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await
                {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => self.rbuf.clear(),
                }
            }
        }
    }

    fn config(nodes: Vec<SocketAddr>) -> StrictConfig {
        let mut c = StrictConfig::new("strict-test", nodes);
        c.connect_timeout = Duration::from_secs(2);
        c.failover_deadline = Duration::from_secs(10);
        // No PINGREQ in the scripts unless a test wants one.
        c.ping_interval = Duration::from_secs(60);
        c.retry_pause = Duration::from_millis(10);
        c
    }

    /// Connects a client to `srv`; returns it with the server's side of the connection.
    async fn connected(srv: &Server, cfg: StrictConfig) -> (StrictClient, Peer) {
        let (c, p) = tokio::join!(
            StrictClient::connect(cfg),
            srv.accept_connect(false, ConnectReturnCode::Accepted)
        );
        (c.expect("connected"), p)
    }

    fn publish(pid: u16, qos: QoS, dup: bool, payload: &'static str) -> Packet {
        Packet::Publish(Publish {
            dup,
            qos,
            retain: false,
            topic: "t/1".into(),
            packet_id: pid,
            payload: Bytes::from_static(payload.as_bytes()),
        })
    }

    #[tokio::test]
    async fn unacknowledged_publish_is_resent_with_dup_and_the_same_id() {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let srv = Server::bind().await;
            let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
            let pending = c.publish_nowait("t/1", "m1", qos, false);
            let first = p.recv_publish().await;
            assert!(!first.dup && first.qos == qos && first.packet_id != 0);
            // The node dies before acknowledging.
            drop(p);
            let mut p = srv.accept_connect(true, ConnectReturnCode::Accepted).await;
            let again = p.recv_publish().await;
            assert!(again.dup, "a resent PUBLISH has DUP=1");
            assert_eq!(again.packet_id, first.packet_id, "and the same packet id");
            assert_eq!((again.payload, again.qos), (first.payload, qos));
            if qos == QoS::AtLeastOnce {
                p.send(Packet::PubAck(first.packet_id)).await;
            } else {
                p.send(Packet::PubRec(first.packet_id)).await;
                assert_eq!(p.recv().await, Packet::PubRel(first.packet_id));
                p.send(Packet::PubComp(first.packet_id)).await;
            }
            let done = pending.wait(T).await.unwrap();
            assert_eq!(done.publish_writes, 2);
            assert_eq!(c.outbound_pending(), 0);
        }
    }

    #[tokio::test]
    async fn pubrel_not_completed_is_resent_on_resume_not_the_publish() {
        let srv = Server::bind().await;
        let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
        let pending = c.publish_nowait("t/1", "m1", QoS::ExactlyOnce, false);
        let first = p.recv_publish().await;
        p.send(Packet::PubRec(first.packet_id)).await;
        assert_eq!(p.recv().await, Packet::PubRel(first.packet_id));
        drop(p);
        let mut p = srv.accept_connect(true, ConnectReturnCode::Accepted).await;
        assert_eq!(
            p.recv().await,
            Packet::PubRel(first.packet_id),
            "after PUBREC only PUBREL is resent"
        );
        p.send(Packet::PubComp(first.packet_id)).await;
        let done = pending.wait(T).await.unwrap();
        assert_eq!(done.publish_writes, 1);
    }

    #[tokio::test]
    async fn resent_publish_awaiting_pubrel_gets_pubrec_and_is_not_delivered_again() {
        let srv = Server::bind().await;
        let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
        p.send(publish(7, QoS::ExactlyOnce, false, "once")).await;
        assert_eq!(p.recv().await, Packet::PubRec(7));
        // The node dies before PUBREL; the next one resends the PUBLISH.
        drop(p);
        let mut p = srv.accept_connect(true, ConnectReturnCode::Accepted).await;
        p.send(publish(7, QoS::ExactlyOnce, true, "once")).await;
        assert_eq!(p.recv().await, Packet::PubRec(7));
        assert_eq!(c.inbound_awaiting(), vec![7]);
        p.send(Packet::PubRel(7)).await;
        assert_eq!(p.recv().await, Packet::PubComp(7));
        // Released: the id may now carry a new message, which is delivered.
        p.send(publish(7, QoS::ExactlyOnce, false, "next")).await;
        assert_eq!(p.recv().await, Packet::PubRec(7));
        let d = c.deliveries();
        let payloads: Vec<&[u8]> = d.iter().map(|d| &d.payload[..]).collect();
        assert_eq!(payloads, vec![&b"once"[..], &b"next"[..]]);
        assert!(c
            .history()
            .iter()
            .any(|r| r.event == Event::DuplicateSuppressed(7)));
    }

    #[tokio::test]
    async fn unknown_pubrel_gets_pubcomp() {
        let srv = Server::bind().await;
        let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
        p.send(Packet::PubRel(42)).await;
        assert_eq!(p.recv().await, Packet::PubComp(42));
        assert!(c.deliveries().is_empty());
        assert!(c
            .history()
            .iter()
            .any(|r| r.event == Event::UnknownPubRel(42)));
    }

    #[tokio::test]
    async fn qos1_deliveries_are_acknowledged_and_may_repeat() {
        let srv = Server::bind().await;
        let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
        p.send(publish(3, QoS::AtLeastOnce, false, "a")).await;
        assert_eq!(p.recv().await, Packet::PubAck(3));
        p.send(publish(3, QoS::AtLeastOnce, true, "a")).await;
        assert_eq!(p.recv().await, Packet::PubAck(3));
        assert_eq!(c.delivered(), 2, "QoS 1 is at least once");
    }

    #[tokio::test]
    async fn fails_over_to_the_next_node_when_the_first_refuses() {
        let refusing = Server::bind().await;
        let nothing = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let good = Server::bind().await;
        let cfg = config(vec![refusing.addr, nothing, good.addr]);
        let (c, _refused, mut p) = tokio::join!(
            StrictClient::connect(cfg),
            refusing.accept_connect(false, ConnectReturnCode::ServerUnavailable),
            good.accept_connect(false, ConnectReturnCode::Accepted),
        );
        let c = c.unwrap();
        assert_eq!(c.connected_to(), Some(good.addr));
        let tried: Vec<SocketAddr> = c
            .history()
            .iter()
            .filter_map(|r| match &r.event {
                Event::Connecting(a) => Some(*a),
                _ => None,
            })
            .collect();
        assert_eq!(tried, vec![refusing.addr, nothing, good.addr]);
        let refusals: Vec<String> = c
            .history()
            .iter()
            .filter_map(|r| match &r.event {
                Event::Refused { why, .. } => Some(why.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(refusals.len(), 2);
        assert_eq!(refusals[0], "CONNACK 3");

        // Losing that node, it rotates on: the first node again (which now accepts), with the
        // unacknowledged message resent there.
        let pending = c.publish_nowait("t/1", "m", QoS::AtLeastOnce, false);
        let first = p.recv_publish().await;
        drop(p);
        let mut p = refusing
            .accept_connect(true, ConnectReturnCode::Accepted)
            .await;
        let again = p.recv_publish().await;
        assert!(again.dup && again.packet_id == first.packet_id);
        p.send(Packet::PubAck(first.packet_id)).await;
        pending.wait(T).await.unwrap();
        assert_eq!(c.connected_to(), Some(refusing.addr));
    }

    #[tokio::test]
    async fn a_silent_connection_is_abandoned_after_the_response_timeout() {
        let srv = Server::bind().await;
        let mut cfg = config(vec![srv.addr]);
        cfg.response_timeout = Duration::from_millis(300);
        let (c, mut p) = connected(&srv, cfg).await;
        let pending = c.publish_nowait("t/1", "m", QoS::AtLeastOnce, false);
        let first = p.recv_publish().await;
        // A stopped node: the socket stays open, nothing comes back.
        let mut p2 = srv.accept_connect(true, ConnectReturnCode::Accepted).await;
        assert!(p.closed().await, "the silent connection is closed");
        let again = p2.recv_publish().await;
        assert!(again.dup && again.packet_id == first.packet_id);
        p2.send(Packet::PubAck(first.packet_id)).await;
        pending.wait(T).await.unwrap();
    }

    #[tokio::test]
    async fn session_lost_by_the_broker_is_recorded() {
        let srv = Server::bind().await;
        let (c, p) = connected(&srv, config(vec![srv.addr])).await;
        drop(p);
        let _p = srv.accept_connect(false, ConnectReturnCode::Accepted).await;
        crate::wait_until_async(T, "the resumed connection", || async {
            c.history()
                .iter()
                .any(|r| matches!(r.event, Event::SessionLost(_)))
        })
        .await;
    }

    #[tokio::test]
    async fn hold_after_pubrec_then_reconnect_resends_pubrel_only() {
        let srv = Server::bind().await;
        let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
        c.hold(Stage::PubRecReceived, Some("t/1")).unwrap();
        let pending = c.publish_nowait("t/1", "m", QoS::ExactlyOnce, false);
        let first = p.recv_publish().await;
        p.send(Packet::PubRec(first.packet_id)).await;
        let held = c.wait_held(T).await.unwrap();
        assert_eq!(held.stage, Stage::PubRecReceived);
        assert_eq!(held.packet_id, first.packet_id);
        assert_eq!(held.node, srv.addr);
        assert_eq!(
            p.recv_within(Duration::from_millis(200)).await,
            None,
            "paused: PUBREL not written"
        );
        c.release(Release::Reconnect).unwrap();
        assert!(p.closed().await);
        let mut p = srv.accept_connect(true, ConnectReturnCode::Accepted).await;
        assert_eq!(p.recv().await, Packet::PubRel(first.packet_id));
        p.send(Packet::PubComp(first.packet_id)).await;
        pending.wait(T).await.unwrap();
        assert_eq!(c.held_at(), None);
    }

    #[tokio::test]
    async fn hold_on_the_subscriber_side_then_continue() {
        let srv = Server::bind().await;
        let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
        c.hold(Stage::PublishReceived, None).unwrap();
        p.send(publish(9, QoS::ExactlyOnce, false, "x")).await;
        let held = c.wait_held(T).await.unwrap();
        assert_eq!((held.stage, held.packet_id), (Stage::PublishReceived, 9));
        assert_eq!(c.delivered(), 1, "Method B: delivered on receipt");
        assert_eq!(p.recv_within(Duration::from_millis(200)).await, None);
        c.hold(Stage::PubRelReceived, None).unwrap();
        c.release(Release::Continue).unwrap();
        assert_eq!(p.recv().await, Packet::PubRec(9));
        p.send(Packet::PubRel(9)).await;
        let held = c.wait_held(T).await.unwrap();
        assert_eq!(held.stage, Stage::PubRelReceived);
        assert!(c.inbound_awaiting().is_empty(), "PUBREL removed the id");
        c.release(Release::Continue).unwrap();
        assert_eq!(p.recv().await, Packet::PubComp(9));
    }

    #[tokio::test]
    async fn window_bounds_what_is_in_flight_and_queued_messages_follow() {
        let srv = Server::bind().await;
        let mut cfg = config(vec![srv.addr]);
        cfg.window = 2;
        let (c, mut p) = connected(&srv, cfg).await;
        let pend: Vec<Pending> = (0..3)
            .map(|i| c.publish_nowait("t/1", format!("{i}"), QoS::AtLeastOnce, false))
            .collect();
        let a = p.recv_publish().await;
        let b = p.recv_publish().await;
        assert_eq!(p.recv_within(Duration::from_millis(200)).await, None);
        p.send(Packet::PubAck(b.packet_id)).await;
        let third = p.recv_publish().await;
        assert_ne!(
            third.packet_id, a.packet_id,
            "an id in flight is not reused"
        );
        assert_eq!(&third.payload[..], b"2");
        p.send(Packet::PubAck(a.packet_id)).await;
        p.send(Packet::PubAck(third.packet_id)).await;
        for x in pend {
            x.wait(T).await.unwrap();
        }
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        assert_eq!(next_free_packet_id(0, |_| false), Some(1));
        assert_eq!(next_free_packet_id(1, |p| p == 2 || p == 3), Some(4));
        assert_eq!(next_free_packet_id(65535, |_| false), Some(1));
        assert_eq!(
            next_free_packet_id(65534, |p| p == 65535 || p == 1),
            Some(2)
        );
        assert_eq!(next_free_packet_id(5, |_| true), None);
    }
}
