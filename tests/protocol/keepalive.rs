//! Keep-alive: 1.5 x the client's keep-alive of silence closes the connection (will published);
//! 0 disables it; PINGREQ gets PINGRESP at once; any packet from the client counts as activity.

use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_codec::{
    ConnAck, ConnectReasonCode, Disconnect, LastWill, Packet, ProtocolVersion, QoS,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::{RawClient, RecvError};

use crate::common::*;

fn accepted() -> ConnAck {
    ConnAck::new(false, ConnectReasonCode::Success)
}

#[tokio::test]
async fn keepalive_timeout_at_one_and_a_half_times_publishes_will() {
    let b = broker();
    let mut watcher = Mqtt::connect(b.addr(), "watcher", true).await;
    watcher
        .subscribe("will/ka", rumqttc::QoS::ExactlyOnce)
        .await;
    let will = LastWill {
        topic: "will/ka".into(),
        payload: Bytes::from_static(b"timed out"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let mut c = RawClient::open(b.addr()).await;
    // The broker's clock starts when it reads CONNECT, which is after this instant.
    let started = Instant::now();
    c.send(&Packet::Connect(Box::new(connect_packet(
        "ka",
        true,
        ProtocolVersion::V3_1_1,
        1,
        Some(will),
    ))))
    .await;
    assert_eq!(c.recv().await, Ok(Packet::ConnAck(Box::new(accepted()))));
    assert_eq!(
        c.recv_within(Duration::from_secs(5)).await,
        Err(RecvError::Closed)
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "closed after {after:?}, before 1.5 x keep-alive"
    );
    assert!(
        after < Duration::from_secs(3),
        "closed after {after:?}, well past 1.5 x keep-alive"
    );
    let w = watcher.next_publish().await;
    assert_eq!(
        (w.topic.as_str(), &w.payload[..], w.qos, w.retain),
        (
            "will/ka",
            &b"timed out"[..],
            rumqttc::QoS::AtLeastOnce,
            false
        )
    );
    wait_log(&b, "timeout log line", |l| {
        l.contains("Client ka has exceeded timeout, disconnecting.")
    })
    .await;
}

#[tokio::test]
async fn keepalive_zero_disables_timeout() {
    let b = broker();
    let connect = connect_packet("ka0", true, ProtocolVersion::V3_1_1, 0, None);
    let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, accepted());
    // Twice the timeout a keep-alive of 1 s would have: still open.
    assert_eq!(
        c.recv_within(Duration::from_secs(3)).await,
        Err(RecvError::Timeout)
    );
    c.send(&Packet::PingReq).await;
    assert_eq!(c.recv().await, Ok(Packet::PingResp));
}

#[tokio::test]
async fn keepalive_is_reset_by_client_traffic() {
    let b = broker();
    let connect = connect_packet("ka-busy", true, ProtocolVersion::V3_1_1, 1, None);
    let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
    assert_eq!(ack, accepted());
    // A client that speaks every 0.6 s for 3.6 s (over twice 1.5 x keep-alive) stays connected.
    let mut tick = tokio::time::interval(Duration::from_millis(600));
    for _ in 0..6 {
        tick.tick().await;
        c.send(&Packet::PingReq).await;
        assert_eq!(
            c.recv_within(Duration::from_millis(500)).await,
            Ok(Packet::PingResp)
        );
    }
}

#[tokio::test]
async fn pingreq_gets_pingresp() {
    let b = broker();
    for protocol in [ProtocolVersion::V3_1_1, ProtocolVersion::V3_1] {
        let connect = connect_packet("pinger", true, protocol, 60, None);
        let (mut c, ack) = RawClient::connect_with(b.addr(), connect).await;
        assert_eq!(ack, accepted());
        for _ in 0..3 {
            let sent = Instant::now();
            c.send(&Packet::PingReq).await;
            assert_eq!(
                c.recv_within(Duration::from_secs(1)).await,
                Ok(Packet::PingResp)
            );
            assert!(
                sent.elapsed() < Duration::from_millis(500),
                "PINGRESP took {:?}",
                sent.elapsed()
            );
        }
        c.send(&Packet::Disconnect(Disconnect::default())).await;
        assert_closed_silently(&mut c).await;
    }
    wait_log(&b, "PINGREQ log line", |l| {
        l.contains("Received PINGREQ from pinger")
    })
    .await;
    wait_log(&b, "PINGRESP log line", |l| {
        l.contains("Sending PINGRESP to pinger")
    })
    .await;
}
