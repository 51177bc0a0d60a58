//! Helpers shared by the integration suites (`#[path]`-included by each `main.rs`): brokers, a
//! rumqttc client driven from a task, raw CONNECT bytes, log lookups, and the bystander pair of
//! clients that the hostile-input tests keep busy.
//!
//! Not every suite uses every helper.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions};
use starling_testkit::{wait_until_async, BrokerBuilder, BrokerProcess, RawClient, RecvError};
use tokio::sync::mpsc;

/// The broker binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_starling");

/// How long a test waits for something that should happen promptly.
pub(crate) const PROMPT: Duration = Duration::from_secs(10);

/// A broker with default settings.
pub(crate) fn broker() -> BrokerProcess {
    BrokerBuilder::new(BIN).start()
}

/// A broker with `STARLING_*` variables set.
pub(crate) fn broker_env(vars: &[(&str, &str)]) -> BrokerProcess {
    vars.iter()
        .fold(BrokerBuilder::new(BIN), |b, (k, v)| b.env(*k, *v))
        .start()
}

/// rumqttc's QoS from the codec's.
pub(crate) fn rq(q: starling_codec::QoS) -> rumqttc::QoS {
    match q {
        starling_codec::QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        starling_codec::QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        starling_codec::QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

/// Options for a rumqttc client of `addr`.
pub(crate) fn options(addr: SocketAddr, id: &str, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_clean_session(clean);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// A rumqttc [`AsyncClient`] whose [`EventLoop`] runs in a task that forwards every event; the
/// task ends at the first connection error (no automatic reconnection in tests).
pub(crate) struct Mqtt {
    /// The client handle.
    pub(crate) client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    /// Incoming PUBLISHes seen while waiting for something else.
    publishes: VecDeque<rumqttc::Publish>,
    /// Acknowledgements of our own publishes (PUBACK / PUBCOMP) seen while waiting.
    acks: VecDeque<u16>,
}

/// Drives `el` until its first error, forwarding events.
async fn drive(mut el: EventLoop, tx: mpsc::UnboundedSender<Result<Event, String>>) {
    loop {
        match el.poll().await {
            Ok(ev) => {
                if tx.send(Ok(ev)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(describe(&e)));
                return;
            }
        }
    }
}

fn describe(e: &ConnectionError) -> String {
    e.to_string()
}

impl Mqtt {
    /// Connects with `opts` and waits for the CONNACK, which must accept.
    pub(crate) async fn connect_with(opts: MqttOptions) -> (Mqtt, rumqttc::ConnAck) {
        let (client, el) = AsyncClient::new(opts, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(drive(el, tx));
        let mut m = Mqtt {
            client,
            events,
            publishes: VecDeque::new(),
            acks: VecDeque::new(),
        };
        loop {
            match m.event().await {
                Ok(Event::Incoming(Incoming::ConnAck(a))) => {
                    assert_eq!(
                        a.code,
                        rumqttc::ConnectReturnCode::Success,
                        "CONNACK refused"
                    );
                    return (m, a);
                }
                Ok(_) => {}
                Err(e) => panic!("connect failed: {e}"),
            }
        }
    }

    /// Connects `id` to `addr` (keep-alive 30 s).
    pub(crate) async fn connect(addr: SocketAddr, id: &str, clean: bool) -> Mqtt {
        Self::connect_with(options(addr, id, clean)).await.0
    }

    /// The next event within [`PROMPT`].
    pub(crate) async fn event(&mut self) -> Result<Event, String> {
        match tokio::time::timeout(PROMPT, self.events.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => Err("event loop ended".into()),
            Err(_) => panic!("no MQTT event within {PROMPT:?}"),
        }
    }

    /// The next event within `d`; `None` on timeout.
    pub(crate) async fn event_within(&mut self, d: Duration) -> Option<Result<Event, String>> {
        match tokio::time::timeout(d, self.events.recv()).await {
            Ok(Some(e)) => Some(e),
            Ok(None) => Some(Err("event loop ended".into())),
            Err(_) => None,
        }
    }

    /// Handles an event seen while waiting for something else.
    fn stash(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Incoming::Publish(p)) => self.publishes.push_back(p),
            Event::Incoming(Incoming::PubAck(a)) => self.acks.push_back(a.pkid),
            Event::Incoming(Incoming::PubComp(c)) => self.acks.push_back(c.pkid),
            _ => {}
        }
    }

    /// SUBSCRIBE one filter; returns the SUBACK's return codes.
    pub(crate) async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("subscribe request");
        loop {
            match self.event().await {
                Ok(Event::Incoming(Incoming::SubAck(a))) => return a.return_codes,
                Ok(ev) => self.stash(ev),
                Err(e) => panic!("no SUBACK: {e}"),
            }
        }
    }

    /// UNSUBSCRIBE one filter and wait for the UNSUBACK.
    pub(crate) async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("unsubscribe request");
        loop {
            match self.event().await {
                Ok(Event::Incoming(Incoming::UnsubAck(_))) => return,
                Ok(ev) => self.stash(ev),
                Err(e) => panic!("no UNSUBACK: {e}"),
            }
        }
    }

    /// Publishes; for QoS 1/2 waits until the broker completed the handshake (PUBACK/PUBCOMP).
    pub(crate) async fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .await
            .expect("publish request");
        if qos == rumqttc::QoS::AtMostOnce {
            // Wait until it is written, so that the order with what follows is the wire order.
            loop {
                match self.event().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Publish(_))) => return,
                    Ok(ev) => self.stash(ev),
                    Err(e) => panic!("publish failed: {e}"),
                }
            }
        }
        self.wait_acks(1).await;
    }

    /// Waits for `n` acknowledgements of our publishes.
    pub(crate) async fn wait_acks(&mut self, n: usize) {
        while self.acks.len() < n {
            match self.event().await {
                Ok(ev) => self.stash(ev),
                Err(e) => panic!("waiting for {n} acknowledgements: {e}"),
            }
        }
        self.acks.drain(..n);
    }

    /// The next PUBLISH received, within [`PROMPT`].
    pub(crate) async fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            if let Some(p) = self.publishes.pop_front() {
                return p;
            }
            match self.event().await {
                Ok(ev) => self.stash(ev),
                Err(e) => panic!("waiting for a PUBLISH: {e}"),
            }
        }
    }

    /// Asserts that no PUBLISH arrives within `d`.
    pub(crate) async fn assert_no_publish(&mut self, d: Duration) {
        if let Some(p) = self.publishes.pop_front() {
            panic!("unexpected PUBLISH {p:?}");
        }
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.event_within(left).await {
                None => return,
                Some(Ok(Event::Incoming(Incoming::Publish(p)))) => {
                    panic!("unexpected PUBLISH {p:?}")
                }
                Some(Ok(ev)) => self.stash(ev),
                Some(Err(e)) => panic!("connection lost while expecting silence: {e}"),
            }
        }
    }

    /// Waits until the event loop reports an error (the broker closed the connection).
    pub(crate) async fn wait_closed(&mut self) -> String {
        loop {
            match self.event().await {
                Ok(ev) => self.stash(ev),
                Err(e) => return e,
            }
        }
    }

    /// Sends DISCONNECT and waits until it is written.
    pub(crate) async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        loop {
            match self.event().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Bytes of a CONNECT with an arbitrary protocol name, level and flags; `payload` is everything
/// after the keep-alive (client id, will, user name, password), already encoded.
pub(crate) fn raw_connect(
    name: &[u8],
    level: u8,
    flags: u8,
    keep_alive: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(payload);
    let mut out = vec![0x10];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
    out
}

/// A length-prefixed field.
pub(crate) fn field(bytes: &[u8]) -> Vec<u8> {
    let mut v = (bytes.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

/// A packet from its first byte and body (remaining length < 128).
pub(crate) fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

/// Asserts that the broker closes `c` within [`PROMPT`] without sending anything first.
pub(crate) async fn assert_closed_silently(c: &mut RawClient) {
    match c.recv_within(PROMPT).await {
        Err(RecvError::Closed) => {}
        other => panic!("expected the broker to close the connection, got {other:?}"),
    }
}

/// Asserts that the broker closes `c` within [`PROMPT`] (skipping packets).
pub(crate) async fn assert_closed(c: &mut RawClient) {
    assert!(
        c.closed_within(PROMPT).await,
        "broker did not close the connection"
    );
}

/// Waits until a log line satisfies `pred`; returns it.
pub(crate) async fn wait_log(b: &BrokerProcess, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut found = None;
    wait_until_async(PROMPT, what, || {
        found = b.log_lines().into_iter().find(|l| pred(l));
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap_or_default()
}

/// Waits until `n` log lines contain `needle`.
pub(crate) async fn wait_log_count(b: &BrokerProcess, needle: &str, n: usize) {
    wait_until_async(
        PROMPT,
        &format!("{n} log lines containing {needle:?}"),
        || std::future::ready(b.log_lines().iter().filter(|l| l.contains(needle)).count() >= n),
    )
    .await;
}

/// Index of the first log line containing `needle`.
pub(crate) fn log_index(b: &BrokerProcess, needle: &str) -> Option<usize> {
    b.log_lines().iter().position(|l| l.contains(needle))
}

/// Strips ANSI escapes (the text format colours fields when it thinks it writes to a terminal).
pub(crate) fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A subscriber and a publisher (both rumqttc, clean sessions) exchanging numbered QoS 1
/// messages on their own topic, paced, in the background, while a test attacks the broker on
/// another connection. [`Bystanders::finish`] keeps them going for a few more messages, stops
/// them and checks that every acknowledged message reached the subscriber exactly once, in order.
pub(crate) struct Bystanders {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<u64>>>,
    sub_error: Arc<Mutex<Option<String>>>,
    publisher: tokio::task::JoinHandle<Result<u64, String>>,
    _sub: AsyncClient,
}

impl Bystanders {
    /// Connects both and starts the exchange on `topic`.
    pub(crate) async fn start(addr: SocketAddr, tag: &str) -> Bystanders {
        let topic = format!("bystanders/{tag}");
        let (mut sub, sub_ack) =
            Mqtt::connect_with(options(addr, &format!("{tag}-sub"), true)).await;
        assert!(!sub_ack.session_present);
        let codes = sub.subscribe(&topic, rumqttc::QoS::AtLeastOnce).await;
        assert_eq!(
            codes,
            vec![rumqttc::SubscribeReasonCode::Success(
                rumqttc::QoS::AtLeastOnce
            )]
        );
        let received = Arc::new(Mutex::new(Vec::new()));
        let sub_error = Arc::new(Mutex::new(None));
        let Mqtt {
            client: sub_client,
            mut events,
            ..
        } = sub;
        {
            let (received, sub_error) = (received.clone(), sub_error.clone());
            tokio::spawn(async move {
                while let Some(ev) = events.recv().await {
                    match ev {
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            let n = u64::from_be_bytes(
                                p.payload[..8].try_into().expect("8-byte payload"),
                            );
                            received.lock().unwrap().push(n);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            *sub_error.lock().unwrap() = Some(e);
                            return;
                        }
                    }
                }
            });
        }
        let (client, el) = AsyncClient::new(options(addr, &format!("{tag}-pub"), true), 16);
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let publisher = {
            let (stop, acked) = (stop.clone(), acked.clone());
            tokio::spawn(publish_loop(client, el, topic, stop, acked))
        };
        let b = Bystanders {
            stop,
            acked,
            received,
            sub_error,
            publisher,
            _sub: sub_client,
        };
        // Running before the attack starts.
        b.wait_acked(3).await;
        b
    }

    async fn wait_acked(&self, n: u64) {
        let acked = self.acked.clone();
        wait_until_async(
            PROMPT,
            &format!("bystander publisher to get {n} PUBACKs"),
            || std::future::ready(acked.load(Ordering::Relaxed) >= n),
        )
        .await;
    }

    /// Lets `more` further messages be acknowledged, stops, and checks the subscriber got every
    /// acknowledged message exactly once and in order.
    pub(crate) async fn finish(self, more: u64) {
        let target = self.acked.load(Ordering::Relaxed) + more;
        self.wait_acked(target).await;
        self.stop.store(true, Ordering::Relaxed);
        let total = match self.publisher.await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("bystander publisher lost its connection: {e}"),
            Err(e) => panic!("bystander publisher panicked: {e}"),
        };
        let received = self.received.clone();
        wait_until_async(
            PROMPT,
            &format!("bystander subscriber to receive {total} messages"),
            || std::future::ready(received.lock().unwrap().len() as u64 >= total),
        )
        .await;
        if let Some(e) = self.sub_error.lock().unwrap().clone() {
            panic!("bystander subscriber lost its connection: {e}");
        }
        let got = self.received.lock().unwrap().clone();
        let want: Vec<u64> = (0..total).collect();
        assert_eq!(
            got, want,
            "bystander subscriber must get every message once, in order"
        );
    }
}

/// Publishes numbered QoS 1 messages one at a time (each waits for its PUBACK), every 5 ms, until
/// `stop`; returns how many were acknowledged.
async fn publish_loop(
    client: AsyncClient,
    mut el: EventLoop,
    topic: String,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) -> Result<u64, String> {
    // CONNACK first.
    loop {
        match el.poll().await.map_err(|e| describe(&e))? {
            Event::Incoming(Incoming::ConnAck(_)) => break,
            _ => continue,
        }
    }
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        client
            .publish(
                topic.as_str(),
                rumqttc::QoS::AtLeastOnce,
                false,
                n.to_be_bytes().to_vec(),
            )
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match tokio::time::timeout(PROMPT, el.poll()).await {
                Err(_) => return Err(format!("no PUBACK for message {n} within {PROMPT:?}")),
                Ok(Err(e)) => return Err(describe(&e)),
                Ok(Ok(Event::Incoming(Incoming::PubAck(_)))) => break,
                Ok(Ok(_)) => {}
            }
        }
        n += 1;
        acked.store(n, Ordering::Relaxed);
    }
    Ok(n)
}

/// A rumqttc blocking [`rumqttc::Client`], driven by the calling thread (tests without a tokio
/// runtime).
pub(crate) struct SyncMqtt {
    /// The client handle.
    pub(crate) client: rumqttc::Client,
    conn: rumqttc::Connection,
    /// PUBLISHes seen while waiting for something else, in order.
    pub(crate) publishes: VecDeque<rumqttc::Publish>,
}

impl SyncMqtt {
    /// Connects and waits for the CONNACK, which must accept.
    pub(crate) fn connect(addr: SocketAddr, id: &str, clean: bool) -> (SyncMqtt, rumqttc::ConnAck) {
        let (client, conn) = rumqttc::Client::new(options(addr, id, clean), 64);
        let mut m = SyncMqtt {
            client,
            conn,
            publishes: VecDeque::new(),
        };
        loop {
            if let Event::Incoming(Incoming::ConnAck(a)) = m.event() {
                assert_eq!(
                    a.code,
                    rumqttc::ConnectReturnCode::Success,
                    "CONNACK refused"
                );
                return (m, a);
            }
        }
    }

    fn event(&mut self) -> Event {
        match self.conn.recv_timeout(PROMPT) {
            Ok(Ok(ev)) => ev,
            Ok(Err(e)) => panic!("connection error: {e}"),
            Err(e) => panic!("no MQTT event within {PROMPT:?}: {e:?}"),
        }
    }

    /// SUBSCRIBE one filter; returns the SUBACK's return codes.
    pub(crate) fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .expect("subscribe request");
        loop {
            match self.event() {
                Event::Incoming(Incoming::SubAck(a)) => return a.return_codes,
                Event::Incoming(Incoming::Publish(p)) => self.publishes.push_back(p),
                _ => {}
            }
        }
    }

    /// Publishes; QoS 1/2: waits for PUBACK/PUBCOMP, QoS 0: until written.
    pub(crate) fn publish(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload.into())
            .expect("publish request");
        loop {
            match self.event() {
                Event::Incoming(Incoming::PubAck(_)) | Event::Incoming(Incoming::PubComp(_))
                    if qos != rumqttc::QoS::AtMostOnce =>
                {
                    return
                }
                Event::Outgoing(rumqttc::Outgoing::Publish(_))
                    if qos == rumqttc::QoS::AtMostOnce =>
                {
                    return
                }
                Event::Incoming(Incoming::Publish(p)) => self.publishes.push_back(p),
                _ => {}
            }
        }
    }

    /// The next PUBLISH within [`PROMPT`].
    pub(crate) fn next_publish(&mut self) -> rumqttc::Publish {
        loop {
            if let Some(p) = self.publishes.pop_front() {
                return p;
            }
            if let Event::Incoming(Incoming::Publish(p)) = self.event() {
                return p;
            }
        }
    }
}
