//! TLS listeners: TLS 1.2 and 1.3 accepted, older versions refused, client certificates
//! (required, optional, untrusted), the certificate CN as user name, and a real client (rumqttc
//! over rustls).

use std::time::Duration;

use starling_codec::{ConnectReasonCode, QoS, SubAckReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{options, wait_log, Mqtt, PROMPT};
use crate::support::{tls_connect, Pki, Secure, StreamClient};

const V12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const V13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[tokio::test]
async fn tls_1_2_and_1_3_serve_mqtt_and_a_real_client_works() {
    let s = Secure::new();
    let pki = Pki::new(s.dir());
    let r = s.listener("tls", "tls", &pki.listener_lines(false)).start();
    for versions in [V12, V13] {
        let tls = tls_connect(r.port("tls"), pki.client_config(versions, None))
            .await
            .expect("handshake");
        let version = tls.get_ref().1.protocol_version();
        assert_eq!(version, Some(versions[0].version));
        let mut c = StreamClient::bytes(Box::new(tls));
        let ack = c.connect("tls-raw", None).await.expect("CONNACK");
        assert_eq!(ack.code, ConnectReasonCode::Success);
        assert_eq!(
            c.subscribe(1, &[("t/#", QoS::AtMostOnce)]).await,
            vec![SubAckReasonCode::GrantedQoS0]
        );
        c.publish0("t/1", b"over tls").await;
        let p = c.next_publish().await;
        assert_eq!(&p.payload[..], b"over tls");
    }
    // rumqttc over TLS, talking to a plain TCP client through the broker.
    let mut o = options(r.port("tls"), "rumqttc-tls", true);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(V13, None)),
    ));
    let mut secure = Mqtt::connect_with(o).await.0;
    secure.subscribe("x/#", rumqttc::QoS::AtLeastOnce).await;
    let mut plain = Mqtt::connect(r.addr(), "plain", true).await;
    plain
        .publish("x/1", rumqttc::QoS::AtLeastOnce, false, "hello")
        .await;
    let p = secure.next_publish().await;
    assert_eq!(&p.payload[..], b"hello");
    secure
        .publish("x/2", rumqttc::QoS::ExactlyOnce, false, vec![7u8; 100_000])
        .await;
    let p = secure.next_publish().await;
    assert_eq!(
        p.payload.len(),
        100_000,
        "a large message across many TLS records"
    );
}

/// A TLS 1.1 ClientHello (no supported_versions extension): the broker must answer with an
/// alert or close, never a ServerHello.
#[tokio::test]
async fn tls_1_1_and_older_are_refused() {
    let s = Secure::new();
    let pki = Pki::new(s.dir());
    let r = s.listener("tls", "tls", &pki.listener_lines(false)).start();
    for version in [[3u8, 2u8], [3, 1]] {
        let mut hello = Vec::new();
        hello.extend_from_slice(&version); // client_version
        hello.extend_from_slice(&[0x42; 32]); // random
        hello.push(0); // session id
        hello.extend_from_slice(&[0, 4, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
        hello.extend_from_slice(&[1, 0]); // null compression
        let mut hs = vec![1, 0, 0, hello.len() as u8];
        hs.extend_from_slice(&hello);
        let mut record = vec![0x16, 3, 1, 0, hs.len() as u8];
        record.extend_from_slice(&hs);
        let mut tcp = TcpStream::connect(r.port("tls")).await.unwrap();
        tcp.write_all(&record).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(PROMPT, tcp.read_to_end(&mut reply)).await;
        // An alert record (content type 21), or nothing; a handshake record (22) would be a
        // ServerHello.
        assert!(
            reply.first().is_none_or(|t| *t == 21),
            "TLS {version:?}: unexpected reply {reply:?}"
        );
    }
    r.wait_security_events("tls_handshake_failed", 2).await;
}

#[tokio::test]
async fn required_client_certificates() {
    let s = Secure::new();
    let pki = Pki::new(s.dir());
    let r = s.listener("mtls", "tls", &pki.listener_lines(true)).start();
    let addr = r.port("mtls");
    // No certificate: the handshake (or the first read after it, in TLS 1.3) fails.
    let refused = |res: std::io::Result<tokio_rustls::client::TlsStream<TcpStream>>| async move {
        match res {
            Err(_) => true,
            Ok(tls) => {
                let mut c = StreamClient::bytes(Box::new(tls));
                c.connect("x", None).await.is_err()
            }
        }
    };
    assert!(
        refused(tls_connect(addr, pki.client_config(V13, None)).await).await,
        "no cert"
    );
    assert!(
        refused(tls_connect(addr, pki.client_config(V12, Some(pki.stranger("eve")))).await).await,
        "untrusted cert"
    );
    let tls = tls_connect(
        addr,
        pki.client_config(V13, Some(pki.client(Some("alice")))),
    )
    .await
    .expect("trusted cert");
    let mut c = StreamClient::bytes(Box::new(tls));
    let ack = c.connect("alice-dev", None).await.expect("CONNACK");
    assert_eq!(ack.code, ConnectReasonCode::Success);
    r.wait_security_events("tls_handshake_failed", 2).await;
    wait_log(&r.b, "handshake failure line", |l| {
        l.contains("TLS handshake failed")
    })
    .await;
}

#[tokio::test]
async fn certificate_common_name_is_the_user_name() {
    let s = Secure::new()
        .users(&[("alice", "not-used-with-certificates")])
        .acl("user alice\ntopic readwrite alice/#\nuser admin\ntopic #\n")
        .mqtt("allow_anonymous = false");
    let pki = Pki::new(s.dir());
    let mut lines = pki.listener_lines(true);
    lines.push("use_identity_as_username = true".into());
    let mut optional = lines.clone();
    optional.push("require_client_cert = false".into());
    let r = s
        .listener("id", "tls", &lines)
        .listener("opt", "tls", &optional)
        .start();
    let mut admin_cfg = options(r.port("id"), "admin", true);
    admin_cfg.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(pki.client_config(V13, Some(pki.client(Some("admin"))))),
    ));
    let mut admin = Mqtt::connect_with(admin_cfg).await.0;
    admin.subscribe("#", rumqttc::QoS::AtLeastOnce).await;
    // alice: no user name, no password in CONNECT; the certificate says who she is. A user
    // name in CONNECT is ignored (it cannot impersonate admin).
    let tls = tls_connect(
        r.port("id"),
        pki.client_config(V13, Some(pki.client(Some("alice")))),
    )
    .await
    .unwrap();
    let mut alice = StreamClient::bytes(Box::new(tls));
    let ack = alice
        .connect("alice-dev", Some(("admin", "x")))
        .await
        .unwrap();
    assert_eq!(ack.code, ConnectReasonCode::Success);
    wait_log(&r.b, "connect line with the CN", |l| {
        l.contains("as alice-dev") && l.contains("ualice")
    })
    .await;
    alice.publish0("other/x", b"no").await;
    alice.publish0("alice/x", b"yes").await;
    let p = admin.next_publish().await;
    assert_eq!(p.topic, "alice/x", "the ACL of alice applies");
    // A certificate without CN on the required listener, no certificate on the optional one:
    // CONNACK 4.
    let tls = tls_connect(r.port("id"), pki.client_config(V13, Some(pki.client(None))))
        .await
        .unwrap();
    let mut nocn = StreamClient::bytes(Box::new(tls));
    assert_eq!(
        nocn.connect("nocn", None).await.unwrap().code,
        ConnectReasonCode::BadUserNameOrPassword
    );
    let tls = tls_connect(r.port("opt"), pki.client_config(V13, None))
        .await
        .unwrap();
    let mut nocert = StreamClient::bytes(Box::new(tls));
    assert_eq!(
        nocert
            .connect("nocert", Some(("alice", "not-used-with-certificates")))
            .await
            .unwrap()
            .code,
        ConnectReasonCode::BadUserNameOrPassword
    );
    admin.assert_no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_certificate_files_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "[[mqtt.listener]]\naddr = \"127.0.0.1:0\"\ntransport = \"tls\"\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::common::BIN)
        .args(["--config", cfg.to_str().unwrap(), "--in-memory"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent.pem"), "{err}");
}
