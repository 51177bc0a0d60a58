//! ACLs with real clients: publish, subscribe (SUBACK 0x80), deliveries through partially
//! readable subscriptions, retained messages, wills, patterns, anonymous rules, SIGHUP reload.

use std::time::Duration;

use rumqttc::QoS as Q;
use starling_codec::{ConnectReasonCode, LastWill, Packet, QoS, SubAckReasonCode};
use starling_testkit::RawClient;

use crate::common::{options, wait_log, Mqtt};
use crate::support::{connect, write_passwords, Running, Secure};

const ACL: &str = "\
# Anonymous clients: the public tree, read only.
topic read public/#

user admin
topic readwrite #
topic read $SYS/#

user alice
topic readwrite alice/#
topic deny alice/private/#
topic read public/#
topic write inbox/+

user bob
topic read alice/news
topic write public/bob

# Everyone: their own client subtree, and their user inbox.
pattern readwrite clients/%c/#
pattern read users/%u/#
";

const USERS: &[(&str, &str)] = &[("admin", "adm"), ("alice", "ali"), ("bob", "bo")];

fn broker() -> Running {
    Secure::new().users(USERS).acl(ACL).start()
}

async fn login(r: &Running, user: &str, id: &str, clean: bool) -> Mqtt {
    let pass = USERS.iter().find(|(u, _)| *u == user).expect("user").1;
    let mut o = options(r.addr(), id, clean);
    o.set_credentials(user, pass);
    Mqtt::connect_with(o).await.0
}

async fn raw_login(r: &Running, user: &str, id: &str) -> RawClient {
    let pass = USERS.iter().find(|(u, _)| *u == user).expect("user").1;
    let (c, ack) = RawClient::connect_with(r.addr(), connect(id, true, Some((user, pass)))).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    c
}

/// Topics of the PUBLISHes `m` receives until one on `end` (which is not included).
async fn topics_until(m: &mut Mqtt, end: &str) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let p = m.next_publish().await;
        if p.topic == end {
            return got;
        }
        got.push(p.topic.clone());
    }
}

#[tokio::test]
async fn publish_matrix() {
    let r = broker();
    let mut admin = login(&r, "admin", "admin", true).await;
    admin.subscribe("#", Q::AtLeastOnce).await;
    let mut alice = login(&r, "alice", "alice-dev", true).await;
    let attempts = [
        ("alice/x", true),                 // readwrite
        ("public/x", false),               // read only
        ("inbox/bob", true),               // write only
        ("inbox/bob/deeper", false),       // `+` is one level
        ("alice/private/diary", false),    // deny wins over alice/#
        ("clients/alice-dev/state", true), // pattern %c
        ("clients/other/state", false),
        ("users/alice/x", false), // %u pattern is read only
        ("bob/x", false),
    ];
    for (topic, _) in attempts {
        // QoS 1: the broker acknowledges even what it drops (Mosquitto's 3.1.1 behaviour).
        alice.publish(topic, Q::AtLeastOnce, false, "m").await;
    }
    alice
        .publish("alice/end", Q::AtLeastOnce, false, "end")
        .await;
    let got = topics_until(&mut admin, "alice/end").await;
    let want: Vec<&str> = attempts
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(got, want);
    r.wait_security_events("publish_denied", 6).await;
    wait_log(&r.b, "Mosquitto's denial line", |l| {
        l.contains("Denied PUBLISH from alice-dev") && l.contains("'public/x'")
    })
    .await;
    wait_log(&r.b, "rate-limited info line", |l| {
        l.contains("PUBLISH dropped: the ACL does not allow writing") && l.contains("alice-dev")
    })
    .await;
}

#[tokio::test]
async fn subscribe_matrix_suback_0x80_for_what_cannot_be_read() {
    let r = broker();
    let mut alice = raw_login(&r, "alice", "alice-dev").await;
    let ok = |q| SubAckReasonCode::granted(q);
    let f = SubAckReasonCode::UnspecifiedError;
    let cases = [
        ("alice/#", ok(QoS::AtLeastOnce)),  // partial: alice/private inside
        ("public/+", ok(QoS::AtLeastOnce)), // full
        ("bob/#", f),                       // nothing readable
        ("inbox/+", f),                     // write only
        ("alice/private/#", f),             // denied
        ("users/alice/#", ok(QoS::AtLeastOnce)), // %u pattern
        ("users/bob/#", f),
        ("clients/alice-dev/+", ok(QoS::AtLeastOnce)), // %c pattern
        ("#", ok(QoS::AtLeastOnce)),                   // partial
        ("$SYS/#", f),                                 // `#` rules never reach $ topics
    ];
    let filters: Vec<(&str, QoS)> = cases.iter().map(|(f, _)| (*f, QoS::AtLeastOnce)).collect();
    let codes = alice.subscribe(1, &filters).await;
    let want: Vec<SubAckReasonCode> = cases.iter().map(|(_, c)| *c).collect();
    assert_eq!(codes, want);
    let admin = raw_login(&r, "admin", "admin").await;
    drop(admin);
    let mut admin = raw_login(&r, "admin", "admin2").await;
    assert_eq!(
        admin.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]).await,
        vec![ok(QoS::AtMostOnce)],
        "an explicit $SYS rule"
    );
    r.wait_security_events("subscribe_denied", 5).await;
}

#[tokio::test]
async fn partially_readable_subscriptions_are_filtered_per_message() {
    let r = broker();
    let mut alice = login(&r, "alice", "alice-dev", true).await;
    alice.subscribe("#", Q::AtLeastOnce).await;
    let mut admin = login(&r, "admin", "admin", true).await;
    for t in [
        "alice/a",
        "alice/private/z",
        "public/p",
        "other/x",
        "users/alice/1",
        "users/bob/1",
        "clients/alice-dev/1",
    ] {
        admin.publish(t, Q::AtLeastOnce, false, "x").await;
    }
    admin
        .publish("alice/end", Q::AtLeastOnce, false, "end")
        .await;
    let got = topics_until(&mut alice, "alice/end").await;
    assert_eq!(
        got,
        vec![
            "alice/a",
            "public/p",
            "users/alice/1",
            "clients/alice-dev/1"
        ]
    );
    r.wait_security_events("delivery_denied", 3).await;
}

#[tokio::test]
async fn retained_messages_are_filtered_for_clean_and_persistent_sessions() {
    let r = broker();
    let mut admin = login(&r, "admin", "admin", true).await;
    for t in ["public/r", "alice/private/r", "secret/r", "alice/r"] {
        admin.publish(t, Q::AtLeastOnce, true, "kept").await;
    }
    for clean in [true, false] {
        let id = if clean {
            "alice-clean"
        } else {
            "alice-persistent"
        };
        let mut alice = login(&r, "alice", id, clean).await;
        alice.subscribe("#", Q::AtLeastOnce).await;
        let mut got = Vec::new();
        for _ in 0..2 {
            let p = alice.next_publish().await;
            assert!(p.retain);
            got.push(p.topic.clone());
        }
        got.sort();
        assert_eq!(got, vec!["alice/r", "public/r"], "clean = {clean}");
        alice.assert_no_publish(Duration::from_millis(500)).await;
    }
    // Anonymous clients get the rules before the first `user` line.
    let mut anon = Mqtt::connect(r.addr(), "anon", true).await;
    anon.subscribe("#", Q::AtMostOnce).await;
    let p = anon.next_publish().await;
    assert_eq!(p.topic, "public/r");
    anon.assert_no_publish(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn wills_need_write_access_and_reach_only_readers() {
    let r = broker();
    let pass = |u: &str| USERS.iter().find(|(n, _)| *n == u).unwrap().1;
    // A will on a topic alice may not write: CONNACK 5.
    let mut c = connect("alice-w1", true, Some(("alice", pass("alice"))));
    c.will = Some(LastWill {
        topic: "public/will".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_c, ack) = RawClient::connect_with(r.addr(), c).await;
    assert_eq!(ack.code, ConnectReasonCode::NotAuthorized);
    wait_log(&r.b, "will refusal", |l| l.contains("will topic")).await;
    // Readers of the will's topic get it, others do not.
    let mut admin = login(&r, "admin", "admin", true).await;
    admin.subscribe("alice/#", Q::AtLeastOnce).await;
    let mut bob = login(&r, "bob", "bob", true).await;
    assert_eq!(
        bob.subscribe("alice/#", Q::AtLeastOnce).await,
        vec![rumqttc::SubscribeReasonCode::Success(Q::AtLeastOnce)],
        "partially readable (alice/news)"
    );
    let mut c = connect("alice-w2", true, Some(("alice", pass("alice"))));
    c.will = Some(LastWill {
        topic: "alice/status".into(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (alice, ack) = RawClient::connect_with(r.addr(), c).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    drop(alice); // no DISCONNECT: the will is due
    let p = admin.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("alice/status", &b"gone"[..])
    );
    admin
        .publish("alice/news", Q::AtLeastOnce, false, "n")
        .await;
    let p = bob.next_publish().await;
    assert_eq!(
        p.topic, "alice/news",
        "bob gets his topic, not the will before it"
    );
}

#[tokio::test]
async fn sighup_reloads_acl_and_passwords() {
    let r = broker();
    let mut bob = login(&r, "bob", "bob", true).await;
    bob.subscribe("alice/#", Q::AtLeastOnce).await;
    let mut admin = login(&r, "admin", "admin", true).await;
    admin
        .publish("alice/diary", Q::AtLeastOnce, false, "1")
        .await;
    admin
        .publish("alice/news", Q::AtLeastOnce, false, "2")
        .await;
    assert_eq!(bob.next_publish().await.topic, "alice/news");
    // New rules: bob may read all of alice/#, and a new user appears.
    let acl = ACL.replace("topic read alice/news", "topic read alice/#");
    std::fs::write(r.dir().join("acl"), acl).unwrap();
    let mut users = USERS.to_vec();
    users.push(("carol", "ca"));
    write_passwords(&r.dir().join("passwords"), &users);
    r.sighup(true).await;
    admin
        .publish("alice/diary", Q::AtLeastOnce, false, "3")
        .await;
    let p = bob.next_publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("alice/diary", &b"3"[..]),
        "same connection, new rules"
    );
    let (_c, ack) =
        RawClient::connect_with(r.addr(), connect("carol", true, Some(("carol", "ca")))).await;
    assert_eq!(
        ack.code,
        ConnectReasonCode::Success,
        "new user after reload"
    );
    // A broken file is refused; the rules in force stay.
    std::fs::write(r.dir().join("acl"), "user bob\ntopic sometimes alice/#\n").unwrap();
    r.sighup(false).await;
    admin
        .publish("alice/diary", Q::AtLeastOnce, false, "4")
        .await;
    assert_eq!(bob.next_publish().await.payload, &b"4"[..]);
    let (_c, ack) =
        RawClient::connect_with(r.addr(), connect("carol2", true, Some(("carol", "ca")))).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    // Reading with the packet decoder: the SUBACK path too uses the new rules.
    let mut raw = raw_login(&r, "bob", "bob-raw").await;
    let codes = raw.subscribe(1, &[("alice/diary", QoS::AtMostOnce)]).await;
    assert_eq!(codes, vec![SubAckReasonCode::GrantedQoS0]);
    let _ = Packet::PingReq;
}

/// An MQTT 5 client's PUBLISH that the ACL refuses is answered with reason code 0x87 (QoS 1:
/// PUBACK, QoS 2: PUBREC, which ends the exchange), as Mosquitto does; an allowed one with
/// success, and the refused one reaches nobody.
#[tokio::test]
async fn mqtt5_publish_refused_by_the_acl_gets_0x87() {
    use starling_codec::{ProtocolVersion, PubAck, PubAckReasonCode, PubRec, PubRecReasonCode};
    let r = broker();
    let mut admin = login(&r, "admin", "admin-87", true).await;
    admin.subscribe("#", Q::AtLeastOnce).await;
    let mut connect = connect("alice-87", true, Some(("alice", "ali")));
    connect.protocol = ProtocolVersion::V5;
    let (mut c, ack) = RawClient::connect_with(r.addr(), connect).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    c.publish("public/x", b"no", QoS::AtLeastOnce, false, 1)
        .await;
    assert_eq!(
        c.recv().await,
        Ok(Packet::PubAck(PubAck::with_reason(
            1,
            PubAckReasonCode::NotAuthorized
        )))
    );
    c.publish("public/x", b"no", QoS::ExactlyOnce, false, 2)
        .await;
    assert_eq!(
        c.recv().await,
        Ok(Packet::PubRec(PubRec::with_reason(
            2,
            PubRecReasonCode::NotAuthorized
        )))
    );
    c.publish("alice/x", b"yes", QoS::AtLeastOnce, false, 3)
        .await;
    assert_eq!(c.recv().await, Ok(Packet::PubAck(PubAck::new(3))));
    let p = admin.next_publish().await;
    assert_eq!(p.topic, "alice/x");
}
