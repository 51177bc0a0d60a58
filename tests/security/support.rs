//! Helpers of the security suite: brokers with security files and extra listeners, test PKI,
//! `/metrics` lookups, and an MQTT client over any byte stream (TLS, WebSocket).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use starling_auth::{PasswordFile, PasswordHash};
use starling_codec::{
    ConnAck, Connect, Decoder, Packet, ProtocolVersion, Publish, QoS, SubAckReasonCode, Subscribe,
    SubscribeFilter,
};
use starling_testkit::{wait_until_async, BrokerBuilder, BrokerProcess, RecvError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::{BIN, PROMPT};

/// PBKDF2 iterations of the test users' hashes (cheap; the default is 210 000).
pub(crate) const TEST_ITERATIONS: u32 = 1000;

/// A free loopback port (released before use; the broker binds it right after).
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A broker to be started with security files and listeners.
pub(crate) struct Secure {
    dir: tempfile::TempDir,
    mqtt: Vec<String>,
    tables: Vec<String>,
    env: Vec<(String, String)>,
    ports: HashMap<String, u16>,
    log_level: String,
}

/// A started [`Secure`] broker.
pub(crate) struct Running {
    pub(crate) b: BrokerProcess,
    pub(crate) admin: SocketAddr,
    ports: HashMap<String, u16>,
    dir: tempfile::TempDir,
}

impl Secure {
    pub(crate) fn new() -> Secure {
        Secure {
            dir: tempfile::tempdir().expect("temp dir"),
            mqtt: Vec::new(),
            tables: Vec::new(),
            env: Vec::new(),
            ports: HashMap::new(),
            log_level: "debug".into(),
        }
    }

    /// The directory holding the files of this broker.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A password file with these users (cheap hashes).
    pub(crate) fn users(mut self, users: &[(&str, &str)]) -> Secure {
        let path = self.dir.path().join("passwords");
        write_passwords(&path, users);
        self.mqtt
            .push(format!("password_file = {:?}", path.display().to_string()));
        self
    }

    /// An ACL file with this text.
    pub(crate) fn acl(mut self, text: &str) -> Secure {
        let path = self.dir.path().join("acl");
        std::fs::write(&path, text).expect("write acl");
        self.mqtt
            .push(format!("acl_file = {:?}", path.display().to_string()));
        self
    }

    /// A raw `key = value` line of `[mqtt]`.
    pub(crate) fn mqtt(mut self, line: &str) -> Secure {
        self.mqtt.push(line.to_string());
        self
    }

    /// A `[[mqtt.listener]]` named `name` on a free port; `extra` are more `key = value` lines.
    pub(crate) fn listener(mut self, name: &str, transport: &str, extra: &[String]) -> Secure {
        let port = free_port();
        self.ports.insert(name.to_string(), port);
        self.listener_on(&format!("127.0.0.1:{port}"), transport, extra)
    }

    /// A `[[mqtt.listener]]` on an explicit address.
    pub(crate) fn listener_on(mut self, addr: &str, transport: &str, extra: &[String]) -> Secure {
        let mut t = format!("[[mqtt.listener]]\naddr = {addr:?}\ntransport = {transport:?}\n");
        for l in extra {
            t.push_str(l);
            t.push('\n');
        }
        self.tables.push(t);
        self
    }

    /// A `STARLING_*` variable.
    pub(crate) fn env(mut self, k: &str, v: &str) -> Secure {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Broker log level (default debug).
    pub(crate) fn log_level(mut self, l: &str) -> Secure {
        self.log_level = l.into();
        self
    }

    pub(crate) fn start(self) -> Running {
        let config = self.dir.path().join("starling.toml");
        let mut text = String::from("[mqtt]\n");
        for l in &self.mqtt {
            text.push_str(l);
            text.push('\n');
        }
        for t in &self.tables {
            text.push_str(t);
        }
        std::fs::write(&config, text).expect("write config");
        let admin_port = free_port();
        let mut builder = BrokerBuilder::new(BIN)
            .arg("--config")
            .arg(config.display().to_string())
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin_port}"))
            .log_level(self.log_level.clone());
        for (k, v) in &self.env {
            builder = builder.env(k.clone(), v.clone());
        }
        let b = builder.start();
        Running {
            b,
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            ports: self.ports,
            dir: self.dir,
        }
    }
}

impl Running {
    /// The plain TCP listener.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.b.addr()
    }

    /// A named extra listener.
    pub(crate) fn port(&self, name: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[name]))
    }

    /// The files' directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends SIGHUP and waits for the reload line (`ok`) or the refusal line.
    pub(crate) async fn sighup(&self, ok: bool) {
        let needle = if ok {
            "security files reloaded"
        } else {
            "security files not reloaded"
        };
        let before = self
            .b
            .log_lines()
            .iter()
            .filter(|l| l.contains(needle))
            .count();
        starling_testkit::broker::signal(self.b.pid().expect("running"), "HUP");
        crate::common::wait_log_count(&self.b, needle, before + 1).await;
    }

    /// `starling_limit_hits_total{limit="<key>"}`.
    pub(crate) async fn limit_hits(&self, key: &str) -> u64 {
        metric(
            self.admin,
            "starling_limit_hits_total",
            &format!("limit=\"{key}\""),
        )
        .await
    }

    /// `starling_security_events_total{event="<name>"}`.
    pub(crate) async fn security_events(&self, event: &str) -> u64 {
        metric(
            self.admin,
            "starling_security_events_total",
            &format!("event=\"{event}\""),
        )
        .await
    }

    /// Waits until a limit has bitten at least `n` times.
    pub(crate) async fn wait_limit_hits(&self, key: &str, n: u64) {
        let admin = self.admin;
        wait_until_async(
            PROMPT,
            &format!("limit {key} to bite {n} times"),
            || async move {
                metric(
                    admin,
                    "starling_limit_hits_total",
                    &format!("limit=\"{key}\""),
                )
                .await
                    >= n
            },
        )
        .await;
    }

    /// Waits until a security event was counted at least `n` times.
    pub(crate) async fn wait_security_events(&self, event: &str, n: u64) {
        let admin = self.admin;
        wait_until_async(
            PROMPT,
            &format!("{n} security events {event}"),
            || async move {
                metric(
                    admin,
                    "starling_security_events_total",
                    &format!("event=\"{event}\""),
                )
                .await
                    >= n
            },
        )
        .await;
    }
}

/// Writes a password file (cheap hashes).
pub(crate) fn write_passwords(path: &Path, users: &[(&str, &str)]) {
    let mut f = PasswordFile::default();
    for (u, p) in users {
        f.set(u, PasswordHash::new(p.as_bytes(), TEST_ITERATIONS))
            .expect("valid user name");
    }
    std::fs::write(path, f.to_text()).expect("write passwords");
}

/// Reads one sample of the admin endpoint's `/metrics` (0 when absent).
pub(crate) async fn metric(admin: SocketAddr, name: &str, labels: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(admin).await else {
        return 0;
    };
    let req = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = tokio::time::timeout(PROMPT, s.read_to_string(&mut body)).await;
    let prefix = format!("{name}{{{labels}}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ---- PKI ------------------------------------------------------------------------------------

/// A test CA, a server certificate for 127.0.0.1 / localhost, and PEM files of both.
pub(crate) struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
}

/// A client certificate chain and key.
pub(crate) type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA")
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: Vec<String>,
    cn: Option<&str>,
) -> (String, KeyPair) {
    let mut p = CertificateParams::new(sans).expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, issuer).expect("sign");
    (cert.pem(), key)
}

fn client_cert(issuer: &CertifiedIssuer<'static, KeyPair>, cn: Option<&str>) -> ClientCert {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        p.distinguished_name.push(DnType::CommonName, cn);
    }
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, issuer).expect("sign");
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (vec![cert.der().clone()], key)
}

impl Pki {
    /// Generates the CA and the server certificate into `dir`.
    pub(crate) fn new(dir: &Path) -> Pki {
        let ca = ca("Starling Test CA");
        let (cert_pem, key) = leaf(
            &ca,
            vec!["localhost".into(), "127.0.0.1".into()],
            Some("starling"),
        );
        let (ca_file, cert_file, key_file) = (
            dir.join("ca.pem"),
            dir.join("server.pem"),
            dir.join("server.key"),
        );
        std::fs::write(&ca_file, ca.pem()).expect("write");
        std::fs::write(&cert_file, cert_pem).expect("write");
        std::fs::write(&key_file, key.serialize_pem()).expect("write");
        Pki {
            ca,
            ca_file,
            cert_file,
            key_file,
        }
    }

    /// `cert_file` / `key_file` lines of a listener table (plus `client_ca_file` if asked).
    pub(crate) fn listener_lines(&self, client_ca: bool) -> Vec<String> {
        let mut v = vec![
            format!("cert_file = {:?}", self.cert_file.display().to_string()),
            format!("key_file = {:?}", self.key_file.display().to_string()),
        ];
        if client_ca {
            v.push(format!(
                "client_ca_file = {:?}",
                self.ca_file.display().to_string()
            ));
        }
        v
    }

    /// A client certificate signed by this CA, with this CN (`None`: no CN).
    pub(crate) fn client(&self, cn: Option<&str>) -> ClientCert {
        client_cert(&self.ca, cn)
    }

    /// A client certificate from a CA the broker does not trust.
    pub(crate) fn stranger(&self, cn: &str) -> ClientCert {
        client_cert(&ca("Stranger CA"), Some(cn))
    }

    /// A rustls client configuration trusting this CA, for the given TLS versions.
    pub(crate) fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        cert: Option<ClientCert>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        Arc::new(match cert {
            Some((chain, key)) => b.with_client_auth_cert(chain, key).expect("client cert"),
            None => b.with_no_client_auth(),
        })
    }
}

/// A TLS connection to `addr` (server name 127.0.0.1).
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

// ---- an MQTT client over any stream -----------------------------------------------------------

/// A byte stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

enum Wire {
    Bytes(Box<dyn Io>),
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

/// A client speaking packets (not sessions) over TCP, TLS or WebSocket.
pub(crate) struct StreamClient {
    wire: Wire,
    buf: BytesMut,
    decoder: Decoder,
}

/// Opens a WebSocket on `stream` (`addr` names the host), offering `protocols`; returns the
/// stream and the subprotocol the server chose.
pub(crate) async fn ws_open(
    stream: Box<dyn Io>,
    addr: SocketAddr,
    scheme: &str,
    protocols: &str,
) -> Result<(WebSocketStream<Box<dyn Io>>, Option<String>), String> {
    let mut req = format!("{scheme}://{addr}/mqtt")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocols).expect("header"),
        );
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| e.to_string())?;
    let chosen = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, chosen))
}

impl StreamClient {
    /// A client over a byte stream.
    pub(crate) fn bytes(s: Box<dyn Io>) -> StreamClient {
        StreamClient {
            wire: Wire::Bytes(s),
            buf: BytesMut::new(),
            decoder: Decoder::new(1 << 24),
        }
    }

    /// A client over a WebSocket (one binary frame per send).
    pub(crate) fn ws(ws: WebSocketStream<Box<dyn Io>>) -> StreamClient {
        StreamClient {
            wire: Wire::Ws(Box::new(ws)),
            buf: BytesMut::new(),
            decoder: Decoder::new(1 << 24),
        }
    }

    /// Sends bytes (over WebSocket: as one binary frame).
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.wire {
            Wire::Bytes(s) => {
                let _ = s.write_all(bytes).await;
                let _ = s.flush().await;
            }
            Wire::Ws(ws) => {
                let _ = ws.send(Message::Binary(bytes.to_vec().into())).await;
            }
        }
    }

    /// Sends a packet.
    pub(crate) async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        p.encode(ProtocolVersion::V3_1_1, &mut out)
            .expect("encodable");
        self.send_raw(&out).await;
    }

    async fn fill(&mut self) -> Result<(), RecvError> {
        match &mut self.wire {
            Wire::Bytes(s) => {
                self.buf.reserve(4096);
                match s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => Err(RecvError::Closed),
                    Ok(_) => Ok(()),
                }
            }
            Wire::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        self.buf.extend_from_slice(&b);
                        return Ok(());
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        return Err(RecvError::Closed)
                    }
                    Some(Ok(_)) => {}
                }
            },
        }
    }

    /// The next packet within `d`.
    pub(crate) async fn recv_within(&mut self, d: Duration) -> Result<Packet, RecvError> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(RecvError::Decode(e.to_string())),
            }
            match tokio::time::timeout_at(deadline, self.fill()).await {
                Err(_) => return Err(RecvError::Timeout),
                Ok(r) => r?,
            }
        }
    }

    /// CONNECT (3.1.1, clean) with optional credentials; returns the CONNACK.
    pub(crate) async fn connect(
        &mut self,
        client_id: &str,
        user: Option<(&str, &str)>,
    ) -> Result<ConnAck, RecvError> {
        let c = connect(client_id, true, user);
        self.send(&Packet::Connect(Box::new(c))).await;
        match self.recv_within(PROMPT).await? {
            Packet::ConnAck(a) => Ok(*a),
            other => Err(RecvError::Decode(format!(
                "expected CONNACK, got {other:?}"
            ))),
        }
    }

    /// SUBSCRIBE; returns the SUBACK's codes.
    pub(crate) async fn subscribe(
        &mut self,
        pid: u16,
        filters: &[(&str, QoS)],
    ) -> Vec<SubAckReasonCode> {
        let filters = filters
            .iter()
            .map(|(f, q)| SubscribeFilter::new((*f).into(), *q))
            .collect();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid,
            filters,
            properties: Default::default(),
        }))
        .await;
        loop {
            match self.recv_within(PROMPT).await {
                Ok(Packet::SubAck(a)) if a.packet_id == pid => return a.reason_codes,
                Ok(_) => {}
                Err(e) => panic!("no SUBACK: {e:?}"),
            }
        }
    }

    /// PUBLISH at QoS 0.
    pub(crate) async fn publish0(&mut self, topic: &str, payload: &[u8]) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: 0,
            payload: bytes::Bytes::copy_from_slice(payload),
            properties: Default::default(),
        }))
        .await;
    }

    /// The next PUBLISH within [`PROMPT`].
    pub(crate) async fn next_publish(&mut self) -> Publish {
        loop {
            match self.recv_within(PROMPT).await {
                Ok(Packet::Publish(p)) => return p,
                Ok(_) => {}
                Err(e) => panic!("no PUBLISH: {e:?}"),
            }
        }
    }
}

/// Connects over TCP and returns the CONNACK's code, waiting up to [`PROMPT`] (password
/// verification can be slow in debug builds).
pub(crate) async fn connack(
    addr: SocketAddr,
    client_id: &str,
    user: Option<(&str, &str)>,
) -> starling_codec::ConnectReasonCode {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let mut c = StreamClient::bytes(Box::new(tcp));
    c.connect(client_id, user).await.expect("CONNACK").code
}

/// A 3.1.1 CONNECT, keep-alive 60.
pub(crate) fn connect(client_id: &str, clean: bool, user: Option<(&str, &str)>) -> Connect {
    Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: user.map(|(u, _)| u.into()),
        password: user.map(|(_, p)| bytes::Bytes::copy_from_slice(p.as_bytes())),
        properties: Default::default(),
    }
}

/// Runs a Python script from this directory; `None` if python3 or paho is missing (and the
/// missing-tool policy allows skipping).
pub(crate) fn python(test: &str, script: &str, args: &[String]) -> Option<std::process::Output> {
    let available = std::process::Command::new("python3")
        .args(["-c", "import paho.mqtt.client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        let what = "python3 with paho-mqtt (pip install paho-mqtt)";
        if std::env::var("STARLING_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
            panic!("{test}: required tool missing: {what} (STARLING_REQUIRE_INTEROP=1)");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\n******** SKIPPED (tool missing): {test}: {what}; set STARLING_REQUIRE_INTEROP=1 to fail instead ********"
        );
        return None;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/security")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .expect("run python3");
    Some(out)
}
