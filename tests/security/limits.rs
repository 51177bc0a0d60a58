//! Limits against hostile clients: each bites, logs one line naming its config key, and counts
//! in `starling_limit_hits_total{limit="<key>"}`.

use std::time::{Duration, Instant};

use starling_auth::{PasswordFile, PasswordHash};
use starling_codec::{ConnectReasonCode, Packet, PubAck, QoS, SubAckReasonCode, UnsubAck};
use starling_testkit::RawClient;

use crate::common::{wait_log, Mqtt, PROMPT};
use crate::support::{connack, Pki, Secure};

/// True if the broker closes `c` within a short while without answering.
async fn closed_soon(c: &mut RawClient) -> bool {
    c.closed_within(Duration::from_secs(3)).await
}

/// True if `c` is still open after a short while.
async fn still_open(c: &mut RawClient) -> bool {
    !c.closed_within(Duration::from_millis(300)).await
}

#[tokio::test]
async fn max_connections_per_ip() {
    let r = Secure::new().mqtt("max_connections_per_ip = 2").start();
    let mut a = RawClient::open(r.addr()).await;
    let mut b = RawClient::open(r.addr()).await;
    let mut c = RawClient::open(r.addr()).await;
    assert!(closed_soon(&mut c).await, "third connection from 127.0.0.1");
    assert!(still_open(&mut a).await && still_open(&mut b).await);
    drop(a);
    // The freed place is usable again (once the broker saw the close).
    let mut ok = false;
    for _ in 0..50 {
        let mut d = RawClient::open(r.addr()).await;
        if still_open(&mut d).await {
            ok = true;
            break;
        }
    }
    assert!(ok, "a place freed by a closed connection is reused");
    r.wait_limit_hits("max_connections_per_ip", 1).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("max_connections_per_ip (2) reached")
    })
    .await;
}

#[tokio::test]
async fn max_connections() {
    let r = Secure::new().mqtt("max_connections = 2").start();
    let mut a = RawClient::open(r.addr()).await;
    let mut b = RawClient::open(r.addr()).await;
    assert!(still_open(&mut a).await && still_open(&mut b).await);
    let mut c = RawClient::open(r.addr()).await;
    assert!(closed_soon(&mut c).await);
    r.wait_limit_hits("max_connections", 1).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("max_connections (2) reached")
    })
    .await;
}

#[tokio::test]
async fn connect_timeout_also_bounds_tls_handshakes() {
    let s = Secure::new().mqtt("connect_timeout_secs = 1");
    let pki = Pki::new(s.dir());
    let r = s.listener("tls", "tls", &pki.listener_lines(false)).start();
    let started = Instant::now();
    let mut silent = RawClient::open(r.addr()).await;
    assert!(silent.closed_within(PROMPT).await);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut tls_silent = RawClient::open(r.port("tls")).await;
    assert!(tls_silent.closed_within(PROMPT).await, "no ClientHello");
    r.wait_limit_hits("connect_timeout_secs", 2).await;
    wait_log(&r.b, "timeout line", |l| l.contains("has exceeded timeout")).await;
    wait_log(&r.b, "handshake timeout line", |l| {
        l.contains("handshake not done within connect_timeout_secs")
    })
    .await;
}

#[tokio::test]
async fn max_packet_size() {
    let r = Secure::new().mqtt("max_packet_size = 1024").start();
    let (mut c, _) = RawClient::connect(r.addr(), "big", true).await;
    c.publish("t", &[0u8; 2000], QoS::AtMostOnce, false, 0)
        .await;
    assert!(c.closed_within(PROMPT).await);
    r.wait_limit_hits("max_packet_size", 1).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("exceeds max_packet_size (1024)")
    })
    .await;
}

#[tokio::test]
async fn max_topic_length_and_levels() {
    let r = Secure::new()
        .mqtt("max_topic_length = 20")
        .mqtt("max_topic_levels = 3")
        .start();
    let mut sub = Mqtt::connect(r.addr(), "sub", true).await;
    sub.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    let (mut c, _) = RawClient::connect(r.addr(), "pub", true).await;
    let long = "x".repeat(21);
    for (i, t) in ["a/b/c/d", long.as_str(), "a/b/c"].iter().enumerate() {
        let pid = i as u16 + 1;
        c.publish(t, b"m", QoS::AtLeastOnce, false, pid).await;
        match c.recv().await {
            Ok(Packet::PubAck(PubAck { packet_id: p, .. })) => {
                assert_eq!(p, pid, "acknowledged even when dropped")
            }
            other => panic!("no PUBACK: {other:?}"),
        }
    }
    assert_eq!(
        sub.next_publish().await.topic,
        "a/b/c",
        "only the one within the limits"
    );
    let codes = c
        .subscribe(
            9,
            &[
                ("a/b/c/#", QoS::AtMostOnce),
                (&long, QoS::AtMostOnce),
                ("a/+/#", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(
        codes,
        vec![
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::GrantedQoS0
        ]
    );
    r.wait_limit_hits("max_topic_levels", 2).await;
    r.wait_limit_hits("max_topic_length", 2).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("(limit max_topic_levels)")
    })
    .await;
}

#[tokio::test]
async fn max_subscriptions_per_client() {
    let r = Secure::new().mqtt("max_subscriptions = 2").start();
    let (mut c, _) = RawClient::connect(r.addr(), "subs", false).await;
    let ok = SubAckReasonCode::GrantedQoS0;
    let f = SubAckReasonCode::UnspecifiedError;
    assert_eq!(
        c.subscribe(1, &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)])
            .await,
        vec![ok, ok]
    );
    assert_eq!(c.subscribe(2, &[("c", QoS::AtMostOnce)]).await, vec![f]);
    assert_eq!(
        c.subscribe(3, &[("a", QoS::AtMostOnce)]).await,
        vec![ok],
        "replacing is not adding"
    );
    c.send(&Packet::Unsubscribe(starling_codec::Unsubscribe {
        packet_id: 4,
        filters: vec!["a".into()],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(
        c.recv().await,
        Ok(Packet::UnsubAck(UnsubAck { packet_id: 4, .. }))
    ));
    assert_eq!(
        c.subscribe(5, &[("c", QoS::AtMostOnce), ("d", QoS::AtMostOnce)])
            .await,
        vec![ok, f]
    );
    drop(c);
    // A resumed persistent session counts its stored subscriptions (b, c).
    let (mut c, ack) = RawClient::connect(r.addr(), "subs", false).await;
    assert!(ack.session_present);
    assert_eq!(c.subscribe(6, &[("e", QoS::AtMostOnce)]).await, vec![f]);
    r.wait_limit_hits("max_subscriptions", 3).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("subscription refused") && l.contains("max_subscriptions")
    })
    .await;
}

#[tokio::test]
async fn publish_rate_limit_pauses_reading_without_dropping() {
    let r = Secure::new()
        .mqtt("max_publish_rate = 20")
        .mqtt("publish_burst = 5")
        .start();
    let mut sub = Mqtt::connect(r.addr(), "sub", true).await;
    sub.subscribe("rate/#", rumqttc::QoS::AtMostOnce).await;
    let (mut c, _) = RawClient::connect(r.addr(), "flood", true).await;
    let n = 45;
    let started = Instant::now();
    for i in 0..n {
        c.publish(
            "rate/x",
            format!("{i}").as_bytes(),
            QoS::AtMostOnce,
            false,
            0,
        )
        .await;
    }
    for i in 0..n {
        let p = sub.next_publish().await;
        assert_eq!(
            p.payload,
            format!("{i}").into_bytes(),
            "nothing dropped, in order"
        );
    }
    let took = started.elapsed();
    // 5 at once, then 20 per second: (45 - 5) / 20 = 2 s.
    assert!(
        took >= Duration::from_millis(1700),
        "45 messages in {took:?}"
    );
    r.wait_limit_hits("max_publish_rate", 1).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("(limit max_publish_rate)")
    })
    .await;
    // The connection lives on.
    c.send(&Packet::PingReq).await;
    assert!(matches!(c.recv().await, Ok(Packet::PingResp)));
}

#[tokio::test]
async fn a_slow_consumer_fills_only_its_own_queue() {
    let r = Secure::new()
        .mqtt("max_inflight = 1")
        .mqtt("max_queued_messages = 2")
        .start();
    // Never acknowledges: one message in flight, two queued, the rest dropped (for it only).
    let (mut slow, _) = RawClient::connect(r.addr(), "slow", true).await;
    slow.subscribe(1, &[("q/#", QoS::AtLeastOnce)]).await;
    // (At QoS 0: no window, so the tiny limits above cannot bite for it.)
    let mut fast = Mqtt::connect(r.addr(), "fast", true).await;
    fast.subscribe("q/#", rumqttc::QoS::AtMostOnce).await;
    let mut publisher = Mqtt::connect(r.addr(), "pub", true).await;
    for i in 0..10 {
        publisher
            .publish("q/x", rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..10 {
        assert_eq!(
            fast.next_publish().await.payload,
            format!("{i}").into_bytes()
        );
    }
    r.wait_limit_hits("max_queued_messages", 7).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("session queue full") && l.contains("slow")
    })
    .await;
    let p = slow.next_publish().await.unwrap();
    assert_eq!(&p.payload[..], b"0");
}

#[tokio::test]
async fn max_pending_auth_refuses_with_connack_3() {
    // One verification thread, one queued job, an expensive hash: a burst of logins with
    // uncached passwords overflows the queue.
    let s = Secure::new()
        .mqtt("auth_threads = 1")
        .mqtt("max_pending_auth = 1");
    let path = s.dir().join("slow-passwords");
    let mut f = PasswordFile::default();
    f.set("alice", PasswordHash::new(b"wonderland", 100_000))
        .unwrap();
    std::fs::write(&path, f.to_text()).unwrap();
    let r = s
        .mqtt(&format!("password_file = {:?}", path.display().to_string()))
        .start();
    let addr = r.addr();
    let attempts = (0..6).map(|i| async move {
        let guess = format!("guess-{i}");
        connack(addr, &format!("c{i}"), Some(("alice", &guess))).await
    });
    let codes = futures_util::future::join_all(attempts).await;
    assert!(
        codes.contains(&ConnectReasonCode::ServerUnavailable),
        "some refused for the full queue: {codes:?}"
    );
    assert!(
        codes.contains(&ConnectReasonCode::BadUserNameOrPassword),
        "{codes:?}"
    );
    r.wait_limit_hits("max_pending_auth", 1).await;
    wait_log(&r.b, "limit line", |l| {
        l.contains("(limit max_pending_auth)")
    })
    .await;
}
