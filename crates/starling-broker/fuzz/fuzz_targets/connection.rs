//! Fuzz target `connection`: the broker's connection state machine, driven over real TCP by
//! sequences of MQTT packets.
//!
//! One broker runs in this process for the whole fuzzing session (started once, on a background
//! actix System, with every actor the binary has: listener, connection actors on two workers,
//! router shards, session store) over an in-memory log that commits every proposal at once. Each
//! input is a `Vec<Op>` built with `arbitrary`: well-formed packets with random fields
//! (CONNECT with will and credentials, PUBLISH at any QoS, the four acknowledgements,
//! SUBSCRIBE/UNSUBSCRIBE, PINGREQ, DISCONNECT, and server-only packets a client must not send),
//! packets cut at a random byte, raw byte chunks, and pauses. They are written to a fresh
//! connection, followed by a PINGREQ and the end of the stream (a half-close, as a client that
//! leaves without DISCONNECT); the target reads what comes back until the broker closes the
//! connection (it must, at the end of the stream), or 5 s.
//!
//! Asserted after every input: a control client (a persistent connection, reconnected when a
//! fuzzed CONNECT takes its id over) gets a PINGRESP to its PINGREQ within 5 s. A panic on any
//! broker thread aborts the process (libfuzzer-sys's panic hook), so it counts as a crash.
//!
//! Client ids and topics come mostly from small fixed sets so that inputs interact (takeovers,
//! persistent sessions, retained messages, overlapping subscriptions); arbitrary strings are
//! used only where they cannot make the broker's state grow without bound across inputs (clean
//! sessions, non-retained topics).
//!
//! Run from `crates/starling-broker`: `RUSTC_BOOTSTRAP=1 cargo fuzz run connection`
//! (docs/security.md, "Fuzzing").

#![no_main]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix::Recipient;
use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use starling_broker::{
    Broker, BrokerConfig, LogEvent, LogStartError, LogStatus, Metrics, NodeOptions, ProposeError,
    ReplicatedLog,
};
use starling_codec::{
    AckProperties, ConnAck, Connect, ConnectProperties, ConnectReasonCode, Decoder, Disconnect,
    LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish,
    PublishProperties, QoS, SubAck, SubAckReasonCode, Subscribe, SubscribeFilter,
    SubscribeProperties, UnsubAck, Unsubscribe, UnsubscribeProperties,
};

/// The broker's largest packet: small, so that oversized packets are cheap to produce.
const MAX_PACKET: usize = 16 * 1024;

const CLIENT_IDS: &[&str] = &["", "c0", "c1", "c2", "c3"];
const TOPICS: &[&str] = &[
    "a",
    "a/b",
    "a/+",
    "a/#",
    "#",
    "+",
    "+/b",
    "/",
    "a//b",
    "$SYS/#",
    "$SYS/x",
    "",
    "a/b/c",
    "+/+",
    "#/a",
    "a+",
    "sport/tennis/#",
];
const CONTROL_ID: &str = "fuzz-control-1f0c3a9e";

/// A log that commits every proposal at once, in order (a single node without a disk).
#[derive(Default)]
struct MemLog {
    sink: Option<Recipient<LogEvent>>,
    index: u64,
}

impl ReplicatedLog for MemLog {
    fn start(&mut self, sink: Recipient<LogEvent>) -> Result<(), LogStartError> {
        sink.do_send(LogEvent::Recovered);
        self.sink = Some(sink);
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<(), ProposeError> {
        let sink = self
            .sink
            .as_ref()
            .ok_or_else(|| ProposeError::Unavailable("not started".into()))?;
        self.index += 1;
        sink.do_send(LogEvent::Committed(vec![(self.index, data)]));
        Ok(())
    }

    fn save_snapshot(&mut self, _index: u64, _data: Bytes) {}

    fn status(&self) -> LogStatus {
        LogStatus {
            role: "single",
            commit_index: self.index,
            members: vec![1],
            ..LogStatus::default()
        }
    }

    // Nothing to write: dropping `_done` answers it.
    fn shutdown(&mut self, _done: tokio::sync::oneshot::Sender<()>) {}
}

struct Harness {
    addr: SocketAddr,
    control: Mutex<Option<TcpStream>>,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();

fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let config = BrokerConfig {
                    listeners: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
                    workers: 2,
                    max_packet_size: MAX_PACKET,
                    connect_timeout_secs: 2,
                    max_inflight: 5,
                    max_inflight_in: 20,
                    max_queued_messages: 50,
                    max_queued_bytes: 64 * 1024,
                    max_write_buffer: 256 * 1024,
                    sys_interval_secs: 0,
                    commit_timeout_secs: 2,
                    snapshot_entries: 20_000,
                    ..BrokerConfig::default()
                };
                let node = NodeOptions {
                    node_id: 1,
                    forwarder: None,
                    max_entry_bytes: 0,
                    freshness: None,
                };
                let broker = Broker::start(config, node, Box::<MemLog>::default(), Metrics::new())
                    .await
                    .expect("the broker starts");
                tx.send(broker.local_addrs()[0]).expect("harness waits");
                // The broker lives as long as the process.
                std::future::pending::<()>().await;
                drop(broker);
            });
        });
        let addr = rx.recv().expect("the broker thread reports its address");
        Harness {
            addr,
            control: Mutex::new(None),
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

#[derive(Arbitrary, Debug)]
enum Topic {
    Known(u8),
    Any(String),
}

impl Topic {
    /// The topic; `bounded` maps arbitrary strings onto the fixed set (for state that outlives
    /// the connection).
    fn get(&self, bounded: bool) -> String {
        match self {
            Topic::Known(i) => TOPICS[*i as usize % TOPICS.len()].to_string(),
            Topic::Any(s) if bounded => TOPICS[s.len() % TOPICS.len()].to_string(),
            Topic::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Will {
    topic: Topic,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
}

#[derive(Arbitrary, Debug)]
enum FPacket {
    Connect {
        v3_1_1: bool,
        clean: bool,
        keep_alive: u8,
        client: Name,
        will: Option<Will>,
        username: Option<String>,
        password: Option<Vec<u8>>,
    },
    Publish {
        dup: bool,
        qos: u8,
        retain: bool,
        topic: Topic,
        packet_id: u16,
        payload: Vec<u8>,
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        filters: Vec<(Topic, u8)>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<Topic>,
    },
    PingReq,
    Disconnect,
    // Server-to-client packets: a client sending them is a protocol error.
    ConnAck(bool, u8),
    SubAck(u16, Vec<u8>),
    UnsubAck(u16),
    PingResp,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A well-formed packet (if it encodes).
    Packet(FPacket),
    /// A packet cut after `n % len` bytes; the rest never comes unless later bytes complete it.
    Cut(FPacket, u16),
    /// Bytes as they are.
    Raw(Vec<u8>),
    /// The fixed header of a PUBLISH over the size limit, then some of its body.
    Oversized(u32, Vec<u8>),
    /// Wait a little (lets the broker act between writes).
    Pause(u8),
}

fn qos(v: u8) -> QoS {
    QoS::from_u8(v % 3).unwrap_or(QoS::AtMostOnce)
}

fn payload(p: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&p[..p.len().min(512)])
}

/// The packet, with state that would outlive the connection kept bounded (`persistent`: the
/// connection's session is persistent, so its subscriptions outlive it).
fn build(p: &FPacket, persistent: &mut bool) -> Packet {
    match p {
        FPacket::Connect {
            v3_1_1,
            clean,
            keep_alive,
            client,
            will,
            username,
            password,
        } => {
            let client_id = match client {
                Name::Known(i) => CLIENT_IDS[*i as usize % CLIENT_IDS.len()].to_string(),
                Name::Any(s) if *clean => s.clone(),
                Name::Any(s) => CLIENT_IDS[1 + s.len() % (CLIENT_IDS.len() - 1)].to_string(),
            };
            *persistent |= !*clean;
            Packet::Connect(Box::new(Connect {
                protocol: if *v3_1_1 {
                    ProtocolVersion::V3_1_1
                } else {
                    ProtocolVersion::V3_1
                },
                clean_start: *clean,
                keep_alive: u16::from(*keep_alive),
                properties: ConnectProperties::default(),
                client_id: client_id.into(),
                will: will.as_ref().map(|w| {
                    LastWill::new(
                        w.topic.get(w.retain).into(),
                        payload(&w.payload),
                        qos(w.qos),
                        w.retain,
                    )
                }),
                username: username.as_ref().map(|u| u.as_str().into()),
                password: password.as_ref().map(|p| payload(p)),
            }))
        }
        FPacket::Publish {
            dup,
            qos: q,
            retain,
            topic,
            packet_id,
            payload: body,
        } => Packet::Publish(Publish {
            dup: *dup,
            qos: qos(*q),
            retain: *retain,
            topic: topic.get(*retain).into(),
            packet_id: if qos(*q) == QoS::AtMostOnce {
                0
            } else {
                *packet_id
            },
            properties: PublishProperties::default(),
            payload: payload(body),
        }),
        FPacket::PubAck(id) => Packet::PubAck(PubAck::new(*id)),
        FPacket::PubRec(id) => Packet::PubRec(PubRec::new(*id)),
        FPacket::PubRel(id) => Packet::PubRel(PubRel::new(*id)),
        FPacket::PubComp(id) => Packet::PubComp(PubComp::new(*id)),
        FPacket::Subscribe { packet_id, filters } => Packet::Subscribe(Subscribe {
            packet_id: *packet_id,
            properties: SubscribeProperties::default(),
            filters: filters
                .iter()
                .take(8)
                .map(|(t, q)| SubscribeFilter::new(t.get(*persistent).into(), qos(*q)))
                .collect(),
        }),
        FPacket::Unsubscribe { packet_id, filters } => Packet::Unsubscribe(Unsubscribe {
            packet_id: *packet_id,
            properties: UnsubscribeProperties::default(),
            filters: filters
                .iter()
                .take(8)
                .map(|t| t.get(false).into())
                .collect(),
        }),
        FPacket::PingReq => Packet::PingReq,
        FPacket::Disconnect => Packet::Disconnect(Disconnect::default()),
        FPacket::ConnAck(sp, code) => Packet::ConnAck(Box::new(ConnAck::new(
            *sp,
            ConnectReasonCode::from_v3_return_code(code % 6).unwrap_or_default(),
        ))),
        FPacket::SubAck(id, codes) => Packet::SubAck(SubAck {
            packet_id: *id,
            properties: AckProperties::default(),
            reason_codes: codes
                .iter()
                .take(8)
                .map(|c| match c % 4 {
                    3 => SubAckReasonCode::UnspecifiedError,
                    q => SubAckReasonCode::granted(qos(q)),
                })
                .collect(),
        }),
        FPacket::UnsubAck(id) => Packet::UnsubAck(UnsubAck::new(*id)),
        FPacket::PingResp => Packet::PingResp,
    }
}

/// Encodes for 3.1.1 (a 3.1 CONNECT names its own version; the rest is the same on the wire).
fn encode(p: &Packet) -> Option<BytesMut> {
    let mut out = BytesMut::new();
    p.encode(ProtocolVersion::V3_1_1, &mut out).ok()?;
    Some(out)
}

/// Reads until the close, or `timeout`; answers nothing (a client that does not acknowledge is
/// part of what is fuzzed). Everything the broker sends must decode.
fn read_until_closed(s: &mut TcpStream, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut decoder = Decoder::new(usize::MAX >> 4);
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("the broker sent an undecodable packet: {e}"),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the broker kept a connection open {timeout:?} after the client's end of stream"
        );
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // Reset: closed.
            Err(_) => return,
        }
    }
}

impl Harness {
    /// A PINGREQ on the control connection answered within 5 s; reconnects it first when a
    /// fuzzed CONNECT took its client id over (or it is not open yet).
    fn assert_alive(&self) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = control.as_mut() {
            if ping(s) {
                return;
            }
        }
        let mut s = TcpStream::connect(self.addr)
            .unwrap_or_else(|e| panic!("the broker no longer accepts connections: {e}"));
        s.set_nodelay(true).expect("nodelay");
        let connect = Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V3_1_1,
            clean_start: true,
            keep_alive: 0,
            properties: ConnectProperties::default(),
            client_id: CONTROL_ID.into(),
            will: None,
            username: None,
            password: None,
        }));
        s.write_all(&encode(&connect).expect("CONNECT encodes"))
            .expect("send CONNECT");
        assert!(
            ping(&mut s),
            "the broker does not answer a new client's CONNECT + PINGREQ within 5 s"
        );
        *control = Some(s);
    }
}

/// PINGREQ, then waits up to 5 s for PINGRESP (skipping a CONNACK); false if the connection
/// was closed or nothing came.
fn ping(s: &mut TcpStream) -> bool {
    if s.write_all(&[0xC0, 0x00]).is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut decoder = Decoder::new(usize::MAX >> 4);
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 1024];
    loop {
        while let Ok(Some(p)) = decoder.decode(&mut buf) {
            match p {
                Packet::PingResp => return true,
                Packet::ConnAck(a) => assert_eq!(
                    a.code,
                    ConnectReasonCode::Success,
                    "the control client was refused"
                ),
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    if ops.len() > 48 {
        return;
    }
    let h = harness();
    let mut s = TcpStream::connect(h.addr)
        .unwrap_or_else(|e| panic!("the broker no longer accepts connections: {e}"));
    s.set_nodelay(true).expect("nodelay");
    let mut persistent = false;
    let mut pauses = Duration::ZERO;
    for op in &ops {
        let bytes: Vec<u8> = match op {
            Op::Packet(p) => match encode(&build(p, &mut persistent)) {
                Some(b) => b.to_vec(),
                None => continue,
            },
            Op::Cut(p, n) => match encode(&build(p, &mut persistent)) {
                Some(b) if !b.is_empty() => b[..usize::from(*n) % b.len()].to_vec(),
                _ => continue,
            },
            Op::Raw(b) => b[..b.len().min(4096)].to_vec(),
            Op::Oversized(len, body) => {
                let len = MAX_PACKET + (*len as usize % (1 << 27));
                let mut out = BytesMut::new();
                out.extend_from_slice(&[0x30]);
                starling_codec::encode::write_remaining_length(&mut out, len);
                out.extend_from_slice(&body[..body.len().min(1024)]);
                out.to_vec()
            }
            Op::Pause(ms) => {
                let d = Duration::from_millis(u64::from(ms % 8));
                if pauses + d <= Duration::from_millis(20) {
                    pauses += d;
                    std::thread::sleep(d);
                }
                continue;
            }
        };
        // Errors are expected: the broker closes connections that break the protocol.
        if s.write_all(&bytes).is_err() {
            break;
        }
    }
    // A last PINGREQ, then the end of the stream: the broker handles what came before and
    // closes the connection.
    let _ = s.write_all(&[0xC0, 0x00]);
    let _ = s.shutdown(Shutdown::Write);
    read_until_closed(&mut s, Duration::from_secs(5));
    drop(s);
    h.assert_alive();
});
