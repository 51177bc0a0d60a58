//! Session hijack: `bind_session_to_user` keeps a persistent session for the user who created
//! it; without it, another user can resume the session, but reads it through their own ACL.

use std::time::Duration;

use rumqttc::QoS as Q;
use starling_codec::ConnectReasonCode;
use starling_testkit::RawClient;

use crate::common::{options, wait_log, Mqtt};
use crate::support::{connect, Secure};

const USERS: &[(&str, &str)] = &[("alice", "a"), ("bob", "b"), ("admin", "x")];
const ACL: &str = "user alice\ntopic alice/#\nuser bob\ntopic bob/#\nuser admin\ntopic #\n";

async fn login(
    addr: std::net::SocketAddr,
    user: &str,
    id: &str,
    clean: bool,
) -> (Mqtt, rumqttc::ConnAck) {
    let pass = USERS.iter().find(|(u, _)| *u == user).unwrap().1;
    let mut o = options(addr, id, clean);
    o.set_credentials(user, pass);
    Mqtt::connect_with(o).await
}

#[tokio::test]
async fn bound_sessions_refuse_other_users() {
    let r = Secure::new()
        .users(USERS)
        .acl(ACL)
        .mqtt("bind_session_to_user = true")
        .start();
    let (mut alice, _) = login(r.addr(), "alice", "shared-id", false).await;
    alice.subscribe("alice/#", Q::AtLeastOnce).await;
    alice.disconnect().await;
    for clean in [false, true] {
        let (_c, ack) =
            RawClient::connect_with(r.addr(), connect("shared-id", clean, Some(("bob", "b"))))
                .await;
        assert_eq!(
            ack.code,
            ConnectReasonCode::NotAuthorized,
            "clean = {clean}"
        );
    }
    wait_log(&r.b, "binding refusal", |l| {
        l.contains("bind_session_to_user")
    })
    .await;
    // Anonymous clients neither.
    let (_c, ack) = RawClient::connect_with(r.addr(), connect("shared-id", false, None)).await;
    assert_eq!(ack.code, ConnectReasonCode::NotAuthorized);
    // The owner still resumes it, with its queued messages.
    let (mut admin, _) = login(r.addr(), "admin", "admin", true).await;
    admin
        .publish("alice/q", Q::AtLeastOnce, false, "queued")
        .await;
    let (mut alice, ack) = login(r.addr(), "alice", "shared-id", false).await;
    assert!(ack.session_present);
    assert_eq!(&alice.next_publish().await.payload[..], b"queued");
    r.wait_security_events("not_authorized", 3).await;
}

#[tokio::test]
async fn unbound_sessions_are_read_through_the_resuming_users_acl() {
    let r = Secure::new().users(USERS).acl(ACL).start();
    let (mut alice, _) = login(r.addr(), "alice", "shared-id", false).await;
    alice.subscribe("alice/#", Q::AtLeastOnce).await;
    alice.disconnect().await;
    let (mut admin, _) = login(r.addr(), "admin", "admin", true).await;
    admin
        .publish("alice/secret", Q::AtLeastOnce, false, "for alice")
        .await;
    // Mosquitto's default: anyone may resume a session by its client id ...
    let (mut bob, ack) = login(r.addr(), "bob", "shared-id", false).await;
    assert!(ack.session_present);
    // ... but bob cannot read alice's topics, queued or live.
    bob.assert_no_publish(Duration::from_millis(500)).await;
    admin
        .publish("alice/more", Q::AtLeastOnce, false, "live")
        .await;
    bob.assert_no_publish(Duration::from_millis(500)).await;
    r.wait_security_events("delivery_denied", 2).await;
}
