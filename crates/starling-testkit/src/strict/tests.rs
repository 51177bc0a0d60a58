//! The client against a scripted server: a listener in the test that plays the broker's
//! side of a packet exchange, closing connections where a node would die.

use super::*;
use bytes::BytesMut;
use starling_codec::{
    ConnAck, ConnectReasonCode, Decoder, Packet, ProtocolVersion, PubAck, PubComp, PubRec, PubRel,
    Publish, SubAck,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

    /// Accepts a connection, checks its CONNECT (clean-session=0) and answers CONNACK `code`.
    async fn accept_connect(&self, present: bool, code: ConnectReasonCode) -> Peer {
        self.accept_connect_as(false, present, code).await
    }

    /// Accepts a connection, checks its CONNECT (clean-session flag `clean`) and answers
    /// CONNACK `code`.
    async fn accept_connect_as(&self, clean: bool, present: bool, code: ConnectReasonCode) -> Peer {
        let mut p = self.accept().await;
        match p.recv().await {
            Packet::Connect(c) => {
                assert_eq!(c.clean_start, clean, "clean-session flag of the CONNECT");
                assert_eq!(c.protocol, ProtocolVersion::V3_1_1);
            }
            other => panic!("expected CONNECT, got {other:?}"),
        }
        p.send(Packet::ConnAck(Box::new(ConnAck::new(present, code))))
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
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
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
        p.encode(ProtocolVersion::V3_1_1, &mut buf).unwrap();
        self.stream.write_all(&buf).await.unwrap();
    }

    /// True if the client closes the connection within [`T`] (skipping packets).
    async fn closed(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            self.rbuf.reserve(4096);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
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
        srv.accept_connect(false, ConnectReasonCode::Success)
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
        properties: Default::default(),
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
        let mut p = srv.accept_connect(true, ConnectReasonCode::Success).await;
        let again = p.recv_publish().await;
        assert!(again.dup, "a resent PUBLISH has DUP=1");
        assert_eq!(again.packet_id, first.packet_id, "and the same packet id");
        assert_eq!((again.payload, again.qos), (first.payload, qos));
        if qos == QoS::AtLeastOnce {
            p.send(Packet::PubAck(PubAck::new(first.packet_id))).await;
        } else {
            p.send(Packet::PubRec(PubRec::new(first.packet_id))).await;
            assert_eq!(p.recv().await, Packet::PubRel(PubRel::new(first.packet_id)));
            p.send(Packet::PubComp(PubComp::new(first.packet_id))).await;
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
    p.send(Packet::PubRec(PubRec::new(first.packet_id))).await;
    assert_eq!(p.recv().await, Packet::PubRel(PubRel::new(first.packet_id)));
    drop(p);
    let mut p = srv.accept_connect(true, ConnectReasonCode::Success).await;
    assert_eq!(
        p.recv().await,
        Packet::PubRel(PubRel::new(first.packet_id)),
        "after PUBREC only PUBREL is resent"
    );
    p.send(Packet::PubComp(PubComp::new(first.packet_id))).await;
    let done = pending.wait(T).await.unwrap();
    assert_eq!(done.publish_writes, 1);
}

#[tokio::test]
async fn resent_publish_awaiting_pubrel_gets_pubrec_and_is_not_delivered_again() {
    let srv = Server::bind().await;
    let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
    p.send(publish(7, QoS::ExactlyOnce, false, "once")).await;
    assert_eq!(p.recv().await, Packet::PubRec(PubRec::new(7)));
    // The node dies before PUBREL; the next one resends the PUBLISH.
    drop(p);
    let mut p = srv.accept_connect(true, ConnectReasonCode::Success).await;
    p.send(publish(7, QoS::ExactlyOnce, true, "once")).await;
    assert_eq!(p.recv().await, Packet::PubRec(PubRec::new(7)));
    assert_eq!(c.inbound_awaiting(), vec![7]);
    p.send(Packet::PubRel(PubRel::new(7))).await;
    assert_eq!(p.recv().await, Packet::PubComp(PubComp::new(7)));
    // Released: the id may now carry a new message, which is delivered.
    p.send(publish(7, QoS::ExactlyOnce, false, "next")).await;
    assert_eq!(p.recv().await, Packet::PubRec(PubRec::new(7)));
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
    p.send(Packet::PubRel(PubRel::new(42))).await;
    assert_eq!(p.recv().await, Packet::PubComp(PubComp::new(42)));
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
    assert_eq!(p.recv().await, Packet::PubAck(PubAck::new(3)));
    p.send(publish(3, QoS::AtLeastOnce, true, "a")).await;
    assert_eq!(p.recv().await, Packet::PubAck(PubAck::new(3)));
    assert_eq!(c.delivered(), 2, "QoS 1 is at least once");
}

#[tokio::test]
async fn rounds_of_refusals_back_off_up_to_the_longest_pause() {
    let srv = Server::bind().await;
    let mut cfg = config(vec![srv.addr]);
    cfg.retry_pause = Duration::from_millis(5);
    cfg.retry_pause_max = Duration::from_millis(40);
    cfg.failover_deadline = Duration::from_millis(500);
    let (c, p) = connected(&srv, cfg).await;
    // The only node goes away for good: every attempt is refused until the deadline.
    drop(srv);
    drop(p);
    crate::wait_until_async(T, "the client gives up", || async { c.fatal().is_some() }).await;
    let attempts: Vec<Instant> = c
        .history()
        .iter()
        .filter(|r| matches!(r.event, Event::Connecting(_)))
        .map(|r| r.at)
        .collect();
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 5, "{gaps:?}");
    assert!(
        gaps[0] < Duration::from_millis(30),
        "starts short: {gaps:?}"
    );
    assert!(
        gaps[4..].iter().all(|g| *g >= Duration::from_millis(39)),
        "grows to the longest pause: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g < Duration::from_millis(150)),
        "and no further: {gaps:?}"
    );
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
        refusing.accept_connect(false, ConnectReasonCode::ServerUnavailable),
        good.accept_connect(false, ConnectReasonCode::Success),
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
        .accept_connect(true, ConnectReasonCode::Success)
        .await;
    let again = p.recv_publish().await;
    assert!(again.dup && again.packet_id == first.packet_id);
    p.send(Packet::PubAck(PubAck::new(first.packet_id))).await;
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
    let mut p2 = srv.accept_connect(true, ConnectReasonCode::Success).await;
    assert!(p.closed().await, "the silent connection is closed");
    let again = p2.recv_publish().await;
    assert!(again.dup && again.packet_id == first.packet_id);
    p2.send(Packet::PubAck(PubAck::new(first.packet_id))).await;
    pending.wait(T).await.unwrap();
}

#[tokio::test]
async fn session_lost_by_the_broker_is_recorded() {
    let srv = Server::bind().await;
    let (c, p) = connected(&srv, config(vec![srv.addr])).await;
    drop(p);
    let _p = srv.accept_connect(false, ConnectReasonCode::Success).await;
    crate::wait_until_async(T, "the resumed connection", || async {
        c.history()
            .iter()
            .any(|r| matches!(r.event, Event::SessionLost(_)))
    })
    .await;
}

#[tokio::test]
async fn clean_mode_starts_a_new_session_and_subscribes_again_on_every_connection() {
    let srv = Server::bind().await;
    let mut cfg = config(vec![srv.addr]);
    cfg.clean_session = true;
    let accepted = ConnectReasonCode::Success;
    let (c, mut p) = tokio::join!(
        StrictClient::connect(cfg),
        srv.accept_connect_as(true, false, accepted)
    );
    let c = c.unwrap();
    let script = async {
        let Packet::Subscribe(s) = p.recv().await else {
            panic!("expected SUBSCRIBE")
        };
        p.send(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reason_codes: vec![
                SubAckReasonCode::GrantedQoS2,
                SubAckReasonCode::UnspecifiedError,
            ],
            properties: Default::default(),
        }))
        .await;
    };
    let (codes, ()) = tokio::join!(
        c.subscribe(&[("a/#", QoS::ExactlyOnce), ("b", QoS::AtLeastOnce)], T),
        script
    );
    assert_eq!(codes.unwrap()[1], SubAckReasonCode::UnspecifiedError);
    // A QoS 2 message awaiting PUBREL, and one of ours in flight.
    p.send(publish(7, QoS::ExactlyOnce, false, "one")).await;
    assert_eq!(p.recv().await, Packet::PubRec(PubRec::new(7)));
    let pending = c.publish_nowait("t/1", "m", QoS::AtLeastOnce, false);
    p.recv_publish().await;
    let read_last = Instant::now();
    drop(p);

    // The next connection is a new session: the granted filter is subscribed again, and
    // nothing of the old session is resent.
    let mut p = srv.accept_connect_as(true, false, accepted).await;
    let Packet::Subscribe(s) = p.recv().await else {
        panic!("expected SUBSCRIBE")
    };
    assert_eq!(s.filters.len(), 1, "only what was granted: {s:?}");
    assert_eq!(
        (&*s.filters[0].filter, s.filters[0].options.qos),
        ("a/#", QoS::ExactlyOnce)
    );
    assert_eq!(p.recv_within(Duration::from_millis(200)).await, None);
    assert!(
        pending.wait(T).await.is_err(),
        "in flight when the session ended"
    );
    assert!(c.inbound_awaiting().is_empty());
    // Lost before the SUBACK: the renewal is replaced, not doubled.
    drop(p);
    let mut p = srv.accept_connect_as(true, false, accepted).await;
    let Packet::Subscribe(s) = p.recv().await else {
        panic!("expected SUBSCRIBE")
    };
    assert_eq!(s.filters.len(), 1);
    assert_eq!(p.recv_within(Duration::from_millis(200)).await, None);
    p.send(Packet::SubAck(SubAck {
        packet_id: s.packet_id,
        reason_codes: vec![SubAckReasonCode::GrantedQoS2],
        properties: Default::default(),
    }))
    .await;
    // Packet id 7 is free again in the new session: a new message, delivered.
    p.send(publish(7, QoS::ExactlyOnce, false, "two")).await;
    assert_eq!(p.recv().await, Packet::PubRec(PubRec::new(7)));
    let payloads: Vec<Bytes> = c.deliveries().into_iter().map(|d| d.payload).collect();
    assert_eq!(payloads, vec![Bytes::from("one"), Bytes::from("two")]);

    let h = c.history();
    assert!(!h.iter().any(|r| matches!(r.event, Event::SessionLost(_))));
    let lost: Vec<Instant> = h
        .iter()
        .filter_map(|r| match r.event {
            Event::Lost { last_read, .. } => Some(last_read),
            _ => None,
        })
        .collect();
    assert_eq!(lost.len(), 2);
    assert!(
        lost[0] <= read_last,
        "last read before the test dropped the connection"
    );
}

#[tokio::test]
async fn hold_after_pubrec_then_reconnect_resends_pubrel_only() {
    let srv = Server::bind().await;
    let (c, mut p) = connected(&srv, config(vec![srv.addr])).await;
    c.hold(Stage::PubRecReceived, Some("t/1")).unwrap();
    let pending = c.publish_nowait("t/1", "m", QoS::ExactlyOnce, false);
    let first = p.recv_publish().await;
    p.send(Packet::PubRec(PubRec::new(first.packet_id))).await;
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
    let mut p = srv.accept_connect(true, ConnectReasonCode::Success).await;
    assert_eq!(p.recv().await, Packet::PubRel(PubRel::new(first.packet_id)));
    p.send(Packet::PubComp(PubComp::new(first.packet_id))).await;
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
    assert_eq!(p.recv().await, Packet::PubRec(PubRec::new(9)));
    p.send(Packet::PubRel(PubRel::new(9))).await;
    let held = c.wait_held(T).await.unwrap();
    assert_eq!(held.stage, Stage::PubRelReceived);
    assert!(c.inbound_awaiting().is_empty(), "PUBREL removed the id");
    c.release(Release::Continue).unwrap();
    assert_eq!(p.recv().await, Packet::PubComp(PubComp::new(9)));
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
    p.send(Packet::PubAck(PubAck::new(b.packet_id))).await;
    let third = p.recv_publish().await;
    assert_ne!(
        third.packet_id, a.packet_id,
        "an id in flight is not reused"
    );
    assert_eq!(&third.payload[..], b"2");
    p.send(Packet::PubAck(PubAck::new(a.packet_id))).await;
    p.send(Packet::PubAck(PubAck::new(third.packet_id))).await;
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
