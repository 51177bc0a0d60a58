//! MQTT 5 sessions across a node's death: a session with a Session Expiry Interval outlives the
//! node its client was connected to, keeps what was published to it meanwhile, and resumes on
//! another node with its properties intact.

use std::time::Duration;

use bytes::Bytes;
use starling_codec::{ConnectReasonCode, Packet, ProtocolVersion, Publish, QoS};
use starling_testkit::raw::connect_packet;
use starling_testkit::RawClient;

use crate::support::*;

/// A 5.0 client `id` asking for a session of `expiry` seconds.
async fn connect5(addr: std::net::SocketAddr, id: &str, clean: bool, expiry: u32) -> RawClient {
    let mut p = connect_packet(id, clean, ProtocolVersion::V5, 60, None);
    p.properties.session_expiry_interval = Some(expiry);
    let (c, ack) = RawClient::connect_with(addr, p).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    assert_eq!(ack.session_present, !clean, "session present: {ack:?}");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_with_expiry_resumes_on_another_node_after_a_kill() {
    let mut c = blocking(|| cluster(3).start());
    let pl = place(&c);
    let mut sub = connect5(c.addr(pl.subscriber), "f5-sub", true, 600).await;
    assert_eq!(
        sub.subscribe(1, &[("f5/t", QoS::AtLeastOnce)]).await,
        vec![starling_codec::SubAckReasonCode::granted(QoS::AtLeastOnce)]
    );
    blocking(|| c.wait_converged(CONVERGE));
    blocking(|| c.kill9(pl.subscriber));
    drop(sub);
    // Published while the subscriber's node is dead, from another node.
    let mut publisher = connect5(c.addr(pl.publisher), "f5-pub", true, 0).await;
    let mut p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "f5/t".into(),
        packet_id: 1,
        payload: Bytes::from_static(b"while down"),
        properties: Default::default(),
    };
    p.properties.user_properties = vec![("k".into(), "v".into())];
    publisher.send(&Packet::Publish(p)).await;
    match publisher.recv_within(PROMPT).await {
        Ok(Packet::PubAck(a)) => assert_eq!(a.packet_id, 1),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // The client comes back through the leader's node: its session is there, with the message.
    let mut sub = connect5(c.addr(pl.leader), "f5-sub", false, 600).await;
    let m = tokio::time::timeout(Duration::from_secs(20), sub.next_publish())
        .await
        .expect("the queued message in time")
        .expect("the queued message");
    assert_eq!(m.topic, "f5/t");
    assert_eq!(m.payload, "while down");
    assert_eq!(m.properties.user_properties, vec![("k".into(), "v".into())]);
}
