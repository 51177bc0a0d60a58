//! MQTT over WebSocket (subprotocol `mqtt`), plain and over TLS: a Rust client
//! (tokio-tungstenite), and paho-mqtt for Python with `transport="websockets"`.

use bytes::BytesMut;
use starling_codec::{ConnectReasonCode, Packet, ProtocolVersion, PubAck, QoS, SubAckReasonCode};
use tokio::net::TcpStream;

use crate::common::{wait_log, Mqtt};
use crate::support::{connect, python, tls_connect, ws_open, Pki, Secure, StreamClient};

#[tokio::test]
async fn websocket_with_a_rust_client() {
    let r = Secure::new().listener("ws", "ws", &[]).start();
    let addr = r.port("ws");
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, chosen) = ws_open(Box::new(tcp), addr, "ws", "mqtt")
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    let mut c = StreamClient::ws(ws);
    // CONNECT split over two frames, SUBSCRIBE and PUBLISH in one frame.
    let mut bytes = BytesMut::new();
    Packet::Connect(Box::new(connect("ws-client", true, None)))
        .encode(ProtocolVersion::V3_1_1, &mut bytes)
        .unwrap();
    let (a, b) = bytes.split_at(5);
    c.send_raw(a).await;
    c.send_raw(b).await;
    match c.recv_within(crate::common::PROMPT).await {
        Ok(Packet::ConnAck(a)) => assert_eq!(a.code, ConnectReasonCode::Success),
        other => panic!("no CONNACK: {other:?}"),
    }
    assert_eq!(
        c.subscribe(1, &[("ws/#", QoS::AtLeastOnce)]).await,
        vec![SubAckReasonCode::GrantedQoS1]
    );
    // A TCP client's message reaches the WebSocket client, and the other way round.
    let mut tcp_client = Mqtt::connect(r.addr(), "tcp-client", true).await;
    tcp_client
        .subscribe("back/#", rumqttc::QoS::AtLeastOnce)
        .await;
    tcp_client
        .publish("ws/1", rumqttc::QoS::AtLeastOnce, false, vec![1u8; 70_000])
        .await;
    let p = c.next_publish().await;
    assert_eq!((&*p.topic, p.payload.len()), ("ws/1", 70_000));
    c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await;
    let mut two = BytesMut::new();
    for t in ["back/1", "back/2"] {
        Packet::Publish(starling_codec::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: t.into(),
            packet_id: 0,
            payload: bytes::Bytes::from_static(b"w"),
            properties: Default::default(),
        })
        .encode(ProtocolVersion::V3_1_1, &mut two)
        .unwrap();
    }
    c.send_raw(&two).await;
    assert_eq!(tcp_client.next_publish().await.topic, "back/1");
    assert_eq!(tcp_client.next_publish().await.topic, "back/2");
    wait_log(&r.b, "connect line", |l| l.contains("as ws-client")).await;
    // A client offering other subprotocols only gets none back (and its client fails it).
    let tcp = TcpStream::connect(addr).await.unwrap();
    let res = ws_open(Box::new(tcp), addr, "ws", "chat").await;
    assert!(res.is_err() || res.as_ref().unwrap().1.is_none());
}

#[tokio::test]
async fn websocket_over_tls_with_a_rust_client() {
    let s = Secure::new();
    let pki = Pki::new(s.dir());
    let r = s.listener("wss", "wss", &pki.listener_lines(false)).start();
    let addr = r.port("wss");
    let tls = tls_connect(addr, pki.client_config(&[&rustls::version::TLS13], None))
        .await
        .expect("TLS");
    let (ws, chosen) = ws_open(Box::new(tls), addr, "wss", "mqttv3.1, mqtt")
        .await
        .expect("upgrade");
    assert_eq!(chosen.as_deref(), Some("mqtt"));
    let mut c = StreamClient::ws(ws);
    assert_eq!(
        c.connect("wss-client", None).await.unwrap().code,
        ConnectReasonCode::Success
    );
    c.subscribe(1, &[("s/#", QoS::AtMostOnce)]).await;
    c.publish0("s/1", b"secure socket").await;
    assert_eq!(&c.next_publish().await.payload[..], b"secure socket");
}

#[tokio::test]
async fn plain_http_is_not_a_websocket() {
    let r = Secure::new().listener("ws", "ws", &[]).start();
    let mut raw = starling_testkit::RawClient::open(r.port("ws")).await;
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(raw.closed_within(crate::common::PROMPT).await);
    r.wait_security_events("websocket_handshake_failed", 1)
        .await;
}

#[tokio::test]
async fn paho_over_websockets() {
    let s = Secure::new();
    let pki = Pki::new(s.dir());
    let r = s
        .listener("ws", "ws", &[])
        .listener("wss", "wss", &pki.listener_lines(false))
        .start();
    for (port, ca) in [
        (r.port("ws").port(), String::new()),
        (r.port("wss").port(), pki.ca_file.display().to_string()),
    ] {
        let Some(out) = python(
            "paho_over_websockets",
            "paho_ws.py",
            &[port.to_string(), ca.clone()],
        ) else {
            return;
        };
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("OK"),
            "paho over {} failed:\n{stdout}\n{}",
            if ca.is_empty() { "ws" } else { "wss" },
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_log(&r.b, "paho's connect line", |l| l.contains("as paho-ws")).await;
}
