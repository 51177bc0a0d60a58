//! Hostile input on raw sockets. Every test keeps a normal subscriber and publisher exchanging
//! QoS 1 messages during and after the bad connection ([`Bystanders`]) and checks that they lost
//! nothing, that the bad connection was closed, that the broker logged why (a line naming the
//! malformed packet or protocol error with its `error=` field, or the timeout), and that the broker
//! process is still running.

#[path = "../common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_codec::{Packet, ProtocolVersion, PubRec, Publish, QoS};
use starling_testkit::raw::connect_packet;
use starling_testkit::{BrokerProcess, RawClient, RecvError};

use crate::common::*;

/// How the broker explains a close.
enum Why {
    /// "disconnected due to malformed packet" with this text in its `error=` field.
    Malformed(&'static str),
    /// "disconnected due to protocol error" with this text in its `error=` field.
    Protocol(&'static str),
    /// "has exceeded timeout".
    Timeout,
}

/// A client attacking the broker, connected (CONNECT/CONNACK done) as `attacker`.
async fn attacker(b: &BrokerProcess) -> RawClient {
    let (c, ack) = RawClient::connect(b.addr(), "attacker", true).await;
    assert_eq!(ack.code, starling_codec::ConnectReasonCode::Success);
    c
}

/// Checks the aftermath: the log line, the bystanders, the process.
async fn aftermath(b: &mut BrokerProcess, by: Bystanders, why: Why) {
    let line = match why {
        Why::Malformed(e) => {
            wait_log(b, &format!("malformed-packet line with error {e:?}"), |l| {
                l.contains("disconnected due to malformed packet")
                    && l.contains("error=")
                    && l.contains(e)
            })
            .await
        }
        Why::Protocol(e) => {
            wait_log(b, &format!("protocol-error line with error {e:?}"), |l| {
                l.contains("disconnected due to protocol error")
                    && l.contains("error=")
                    && l.contains(e)
            })
            .await
        }
        Why::Timeout => {
            wait_log(b, "timeout line", |l| {
                l.contains("has exceeded timeout, disconnecting.")
            })
            .await
        }
    };
    assert!(!line.is_empty());
    by.finish(20).await;
    assert!(b.is_running(), "the broker process died");
}

/// Connects an attacker, sends `bytes`, expects the close with no reply, checks the aftermath.
async fn attack_after_connect(tag: &str, bytes: &[u8], why: Why) {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), tag).await;
    let mut c = attacker(&b).await;
    c.send_raw(bytes).await;
    assert_closed_silently(&mut c).await;
    aftermath(&mut b, by, why).await;
}

fn publish_bytes(first: u8, topic: &[u8], rest: &[u8]) -> Vec<u8> {
    packet(first, &[&field(topic)[..], rest].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_packet_not_connect() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "first").await;
    let mut c = RawClient::open(b.addr()).await;
    c.send(&Packet::Subscribe(starling_codec::Subscribe {
        packet_id: 1,
        filters: vec![starling_codec::SubscribeFilter::new(
            "#".into(),
            QoS::AtMostOnce,
        )],
        properties: Default::default(),
    }))
    .await;
    assert_closed_silently(&mut c).await;
    aftermath(&mut b, by, Why::Protocol("first packet is not CONNECT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connect() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "second").await;
    let mut c = attacker(&b).await;
    // Even one that would take over a bystander's client id.
    let again = connect_packet("second-sub", true, ProtocolVersion::V3_1_1, 60, None);
    c.send(&Packet::Connect(Box::new(again))).await;
    assert_closed_silently(&mut c).await;
    aftermath(&mut b, by, Why::Protocol("second CONNECT")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_remaining_length() {
    // Four length bytes all with the continuation bit, and a fifth.
    attack_after_connect(
        "remlen",
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F],
        Why::Malformed("malformed remaining length"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_remaining_length_before_connect() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "remlen0").await;
    let mut c = RawClient::open(b.addr()).await;
    c.send_raw(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01]).await;
    assert_closed_silently(&mut c).await;
    aftermath(&mut b, by, Why::Malformed("malformed remaining length")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_is_refused_at_its_fixed_header() {
    let mut b = broker_env(&[("STARLING_MQTT_MAX_PACKET_SIZE", "1024")]);
    let by = Bystanders::start(b.addr(), "huge").await;
    let mut c = attacker(&b).await;
    // The fixed header of a 200 MB PUBLISH, and not one byte of its body.
    let mut header = vec![0x32];
    let mut n = 200_000_000usize;
    while n > 0 {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        header.push(if n > 0 { byte | 0x80 } else { byte });
    }
    let sent = Instant::now();
    c.send_raw(&header).await;
    // Closed at once: the broker does not wait for (or buffer) the body, nor for a timeout.
    assert_eq!(
        c.recv_within(Duration::from_secs(2)).await,
        Err(RecvError::Closed)
    );
    assert!(sent.elapsed() < Duration::from_secs(2));
    aftermath(&mut b, by, Why::Malformed("exceeds maximum 1024")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_packet_followed_by_silence_is_closed_by_keepalive() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "trunc").await;
    let connect = connect_packet("attacker", true, ProtocolVersion::V3_1_1, 1, None);
    let (mut c, _) = RawClient::connect_with(b.addr(), connect).await;
    // A PUBLISH announcing 100 bytes, of which 10 arrive.
    let sent = Instant::now();
    c.send_raw(&[&[0x32, 100][..], &field(b"trunc/t"), &[0, 1, b'x']].concat())
        .await;
    assert_eq!(
        c.recv_within(Duration::from_secs(5)).await,
        Err(RecvError::Closed)
    );
    let after = sent.elapsed();
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    aftermath(&mut b, by, Why::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_connect_followed_by_silence_is_closed_by_connect_timeout() {
    let mut b = broker_env(&[("STARLING_MQTT_CONNECT_TIMEOUT_SECS", "1")]);
    let by = Bystanders::start(b.addr(), "trunc0").await;
    let mut c = RawClient::open(b.addr()).await;
    let connect = raw_connect(b"MQTT", 4, 0x02, 60, &field(b"attacker"));
    let sent = Instant::now();
    c.send_raw(&connect[..connect.len() - 3]).await;
    assert_eq!(
        c.recv_within(Duration::from_secs(5)).await,
        Err(RecvError::Closed)
    );
    let after = sent.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    aftermath(&mut b, by, Why::Timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_topic() {
    attack_after_connect(
        "utf8",
        &publish_bytes(0x32, &[b'a', b'/', 0xC0, 0xAF], &[0, 1, b'x']),
        Why::Malformed("invalid utf-8"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_character_in_topic() {
    attack_after_connect(
        "nul",
        &publish_bytes(0x30, b"a/\0/b", b"x"),
        Why::Malformed("u+0000"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_in_publish_topic() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "wild").await;
    // The bystanders' own topic, wildcarded: had it been routed, their exact sequence would break.
    for topic in ["bystanders/+", "bystanders/#"] {
        let mut c = attacker(&b).await;
        c.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 1,
            payload: Bytes::from_static(&[0xFF; 8]),
            properties: Default::default(),
        }))
        .await;
        assert_closed_silently(&mut c).await;
    }
    aftermath(&mut b, by, Why::Malformed("wildcard in topic name")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos3_publish() {
    attack_after_connect(
        "qos3",
        &publish_bytes(0x36, b"q/3", &[0, 1, b'x']),
        Why::Malformed("invalid qos 3"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscribe_flags() {
    let body = [&[0, 1][..], &field(b"bystanders/#"), &[1]].concat();
    attack_after_connect(
        "subflags",
        &packet(0x80, &body),
        Why::Malformed("invalid flags"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_requesting_qos3() {
    let body = [&[0, 1][..], &field(b"bystanders/#"), &[3]].concat();
    attack_after_connect(
        "subqos3",
        &packet(0x82, &body),
        Why::Malformed("invalid qos 3"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_unsubscribe_flags() {
    let body = [&[0, 1][..], &field(b"bystanders/#")].concat();
    attack_after_connect(
        "unsubflags",
        &packet(0xA3, &body),
        Why::Malformed("invalid flags"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pubrel_flags() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "relflags").await;
    let mut c = attacker(&b).await;
    c.publish("relflags/t", b"x", QoS::ExactlyOnce, false, 4)
        .await;
    assert_eq!(c.recv().await, Ok(Packet::PubRec(PubRec::new(4))));
    c.send_raw(&packet(0x60, &[0, 4])).await;
    assert_closed_silently(&mut c).await;
    aftermath(&mut b, by, Why::Malformed("invalid flags")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_only_packet_types_sent_by_a_client() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "clientonly").await;
    let server_only = [
        ("CONNACK", packet(0x20, &[0, 0])),
        ("SUBACK", packet(0x90, &[0, 1, 0])),
        ("UNSUBACK", packet(0xB0, &[0, 1])),
        ("PINGRESP", packet(0xD0, &[])),
    ];
    for (what, bytes) in &server_only {
        let mut c = attacker(&b).await;
        c.send_raw(bytes).await;
        match c.recv_within(PROMPT).await {
            Err(RecvError::Closed) => {}
            other => panic!("{what} from a client: expected close, got {other:?}"),
        }
    }
    aftermath(
        &mut b,
        by,
        Why::Protocol("packet type not accepted from a client"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_packet_types() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "reserved").await;
    for first in [0x00, 0xF0] {
        let mut c = attacker(&b).await;
        c.send_raw(&packet(first, &[])).await;
        assert_closed_silently(&mut c).await;
    }
    aftermath(&mut b, by, Why::Malformed("invalid packet type")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_packet_id_and_empty_subscribe() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "zero").await;
    let mut c = attacker(&b).await;
    c.send_raw(&publish_bytes(0x32, b"zero/t", &[0, 0, b'x']))
        .await;
    assert_closed_silently(&mut c).await;
    let mut c = attacker(&b).await;
    c.send_raw(&packet(0x82, &[0, 1])).await;
    assert_closed_silently(&mut c).await;
    wait_log(&b, "zero packet id line", |l| {
        l.contains("malformed packet") && l.contains("packet identifier is 0")
    })
    .await;
    aftermath(&mut b, by, Why::Malformed("no topic filter")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_mqtt() {
    let mut b = broker();
    let by = Bystanders::start(b.addr(), "garbage").await;
    let mut c = RawClient::open(b.addr()).await;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n").await;
    assert_closed_silently(&mut c).await;
    aftermath(&mut b, by, Why::Malformed("invalid flags")).await;
}
