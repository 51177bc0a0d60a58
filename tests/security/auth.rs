//! Authentication: password file, CONNACK 4 / 5, anonymous access and its default.

use std::time::{Duration, Instant};

use starling_codec::{ConnectReasonCode, PubAck, QoS, SubAckReasonCode};
use starling_testkit::RawClient;

use crate::common::{options, wait_log, Mqtt};
use crate::support::{connack, connect, free_port, Secure};

#[tokio::test]
async fn password_file_matrix_connack_4_for_bad_credentials() {
    let r = Secure::new()
        .users(&[("alice", "wonderland"), ("bob", "builder")])
        .start();
    let a = r.addr();
    assert_eq!(
        connack(a, "a1", Some(("alice", "wonderland"))).await,
        ConnectReasonCode::Success
    );
    assert_eq!(
        connack(a, "b1", Some(("bob", "builder"))).await,
        ConnectReasonCode::Success
    );
    assert_eq!(
        connack(a, "a2", Some(("alice", "builder"))).await,
        ConnectReasonCode::BadUserNameOrPassword,
        "another user's password"
    );
    assert_eq!(
        connack(a, "a3", Some(("alice", ""))).await,
        ConnectReasonCode::BadUserNameOrPassword,
        "empty password"
    );
    assert_eq!(
        connack(a, "m1", Some(("mallory", "wonderland"))).await,
        ConnectReasonCode::BadUserNameOrPassword,
        "unknown user"
    );
    // A user name without the password flag.
    let mut c = connect("a4", true, None);
    c.username = Some("alice".into());
    let (_c, ack) = RawClient::connect_with(a, c).await;
    assert_eq!(
        ack.code,
        ConnectReasonCode::BadUserNameOrPassword,
        "no password"
    );
    // Anonymous: allowed, the only listener being on loopback (the "auto" default).
    assert_eq!(connack(a, "anon", None).await, ConnectReasonCode::Success);
    r.wait_security_events("bad_credentials", 4).await;
    let line = wait_log(&r.b, "refusal line", |l| {
        l.contains("refused with CONNACK 4") && l.contains("m1") && l.contains("unknown user name")
    })
    .await;
    assert!(
        !line.contains("wonderland"),
        "passwords never reach the log: {line}"
    );
    assert!(!r.b.log_text().contains("wonderland"));
    // A real client sees the refusal too.
    let mut o = options(a, "rq", true);
    o.set_credentials("alice", "wrong");
    let (client, mut el) = rumqttc::AsyncClient::new(o, 10);
    let err = loop {
        match el.poll().await {
            Ok(_) => continue,
            Err(e) => break e.to_string(),
        }
    };
    drop(client);
    assert!(
        err.to_lowercase().contains("bad") || err.contains("BadUserNamePassword"),
        "{err}"
    );
}

#[tokio::test]
async fn anonymous_refused_with_connack_5_when_disallowed() {
    let r = Secure::new()
        .users(&[("alice", "wonderland")])
        .mqtt("allow_anonymous = false")
        .start();
    assert_eq!(
        connack(r.addr(), "anon", None).await,
        ConnectReasonCode::NotAuthorized
    );
    assert_eq!(
        connack(r.addr(), "a", Some(("alice", "wonderland"))).await,
        ConnectReasonCode::Success
    );
    r.wait_security_events("not_authorized", 1).await;
    wait_log(&r.b, "anonymous refusal", |l| {
        l.contains("refused with CONNACK 5") && l.contains("allow_anonymous")
    })
    .await;
}

#[tokio::test]
async fn anonymous_is_off_by_default_once_a_listener_is_not_on_loopback() {
    // A second listener on all addresses: "auto" turns anonymous access off everywhere, as
    // Mosquitto 2 does; the loopback listener refuses anonymous clients too.
    let wide = format!("0.0.0.0:{}", free_port());
    let r = Secure::new()
        .users(&[("alice", "wonderland")])
        .listener_on(&wide, "tcp", &[])
        .start();
    wait_log(&r.b, "startup line", |l| {
        l.contains("anonymous clients refused")
    })
    .await;
    assert_eq!(
        connack(r.addr(), "anon", None).await,
        ConnectReasonCode::NotAuthorized
    );
    let wide_local: std::net::SocketAddr = wide.replace("0.0.0.0", "127.0.0.1").parse().unwrap();
    assert_eq!(
        connack(wide_local, "anon2", None).await,
        ConnectReasonCode::NotAuthorized
    );
    assert_eq!(
        connack(wide_local, "a", Some(("alice", "wonderland"))).await,
        ConnectReasonCode::Success
    );
    drop(r);
    // Explicitly allowed: accepted again.
    let wide = format!("0.0.0.0:{}", free_port());
    let r = Secure::new()
        .listener_on(&wide, "tcp", &[])
        .mqtt("allow_anonymous = true")
        .start();
    assert_eq!(
        connack(r.addr(), "anon", None).await,
        ConnectReasonCode::Success
    );
}

#[tokio::test]
async fn without_a_password_file_user_names_are_not_checked() {
    let r = Secure::new().start();
    assert_eq!(
        connack(r.addr(), "x", Some(("anyone", "anything"))).await,
        ConnectReasonCode::Success
    );
}

#[tokio::test]
async fn authenticated_user_without_acl_rules_can_do_nothing() {
    let r = Secure::new()
        .users(&[("admin", "a"), ("carol", "c")])
        .acl("user admin\ntopic readwrite #\n")
        .start();
    let mut admin = Mqtt::connect_with({
        let mut o = options(r.addr(), "admin", true);
        o.set_credentials("admin", "a");
        o
    })
    .await
    .0;
    admin.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    // carol connects (CONNACK 0: authentication is not authorization) ...
    let (mut carol, ack) =
        RawClient::connect_with(r.addr(), connect("carol", true, Some(("carol", "c")))).await;
    assert_eq!(ack.code, ConnectReasonCode::Success);
    // ... but may neither subscribe ...
    let codes = carol
        .subscribe(1, &[("#", QoS::AtMostOnce), ("a/b", QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        codes,
        vec![
            SubAckReasonCode::UnspecifiedError,
            SubAckReasonCode::UnspecifiedError
        ]
    );
    // ... nor publish (acknowledged, dropped).
    carol.publish("a/b", b"x", QoS::AtLeastOnce, false, 7).await;
    match carol.recv().await {
        Ok(starling_codec::Packet::PubAck(PubAck { packet_id: 7, .. })) => {}
        other => panic!("expected PUBACK 7, got {other:?}"),
    }
    admin.assert_no_publish(Duration::from_millis(500)).await;
    r.wait_security_events("publish_denied", 1).await;
    r.wait_security_events("subscribe_denied", 2).await;
}

#[tokio::test]
async fn reconnect_storm_costs_one_slow_verification() {
    // A costly hash written by `starling passwd` (100 000 iterations; about a second in a debug
    // build): 40 reconnects with the same password must not pay it 40 times.
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    let out = std::process::Command::new(crate::common::BIN)
        .args([
            "passwd",
            pw.to_str().unwrap(),
            "add",
            "alice",
            "--iterations",
            "100000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"wonderland\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let r = Secure::new()
        .mqtt(&format!("password_file = {:?}", pw.display().to_string()))
        .mqtt("auth_threads = 1")
        .start();
    let started = Instant::now();
    assert_eq!(
        connack(r.addr(), "s0", Some(("alice", "wonderland"))).await,
        ConnectReasonCode::Success
    );
    let first = started.elapsed();
    let started = Instant::now();
    for i in 1..=40 {
        assert_eq!(
            connack(r.addr(), &format!("s{i}"), Some(("alice", "wonderland"))).await,
            ConnectReasonCode::Success
        );
    }
    let storm = started.elapsed();
    assert!(
        storm < first * 10,
        "40 cached reconnects took {storm:?}, one verification {first:?}"
    );
    // A wrong password is never cached as good.
    assert_eq!(
        connack(r.addr(), "bad", Some(("alice", "wonderlanD"))).await,
        ConnectReasonCode::BadUserNameOrPassword
    );
}
