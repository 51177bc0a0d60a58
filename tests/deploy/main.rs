//! Deployment tests.
//!
//! - [`manifests`]: the Kubernetes and compose manifests render the right node ids and peers
//!   (pure, always runs).
//! - `compose_cluster`: builds the FROM-scratch image with `deploy/docker/build.sh`, starts the
//!   three-node compose cluster under a unique project name, waits for `/readyz` on all nodes,
//!   runs a cross-node publish/subscribe smoke test from the host with rumqttc, restarts every
//!   node in turn while a persistent QoS 1 publisher and subscriber run with client-side failover
//!   (asserting that no acknowledged message is lost), and tears everything down with its
//!   volumes. It needs a Docker engine, so it runs only with `STARLING_RUN_DOCKER_TESTS=1` (CI
//!   sets it) and prints a loud SKIPPED line otherwise.

mod manifests;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event, MqttOptions, Packet, QoS};
use starling_testkit::wait_until;

const GATE: &str = "STARLING_RUN_DOCKER_TESTS";
const NODES: usize = 3;
/// From `docker compose up` to every node answering `/readyz` with 200.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// For one node to be ready again after its restart.
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);
/// For a client to see a CONNACK, SUBACK, PUBACK or an expected message.
const PROMPT: Duration = Duration::from_secs(15);
/// For the subscriber to receive everything acknowledged once the restarts are over.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Prints past the test harness's capture (the figures are the point of this test).
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "deploy: {msg}");
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `GET http://127.0.0.1:{port}{path}` → (status, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not HTTP: {head:?}"))?;
    Ok((code, body.to_string()))
}

fn ready(port: u16) -> bool {
    matches!(http_get(port, "/readyz"), Ok((200, _)))
}

/// A compose project; `down -v` when dropped, so a failing test leaves nothing behind.
struct Compose {
    cmd: Vec<String>,
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    mqtt: Vec<u16>,
    admin: Vec<u16>,
}

impl Compose {
    fn new(image: &str) -> Compose {
        let v2 = Command::new("docker")
            .args(["compose", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let cmd = if v2 {
            vec!["docker".to_string(), "compose".to_string()]
        } else {
            vec!["docker-compose".to_string()]
        };
        let mqtt: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let admin: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let mut env = vec![
            ("STARLING_IMAGE".to_string(), image.to_string()),
            // Peer authentication: the compose file requires a cluster secret.
            (
                "STARLING_CLUSTER_SECRET".to_string(),
                starling_testkit::cluster::random_secret(),
            ),
        ];
        for i in 0..NODES {
            env.push((format!("STARLING_MQTT_PORT_{i}"), mqtt[i].to_string()));
            env.push((format!("STARLING_ADMIN_PORT_{i}"), admin[i].to_string()));
        }
        Compose {
            cmd,
            project: format!("starlingdeploy{}", std::process::id()),
            file: repo().join("deploy/compose/docker-compose.yml"),
            env,
            mqtt,
            admin,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.cmd[0]);
        c.args(&self.cmd[1..])
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(&self.file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    fn logs(&self, service: &str) -> String {
        let out = self
            .command(&["logs", "--no-color", service])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        out
    }

    fn volumes(&self) -> Vec<String> {
        let out = run(Command::new("docker").args([
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ]));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn all_ready(&self) -> bool {
        self.admin.iter().all(|p| ready(*p))
    }

    fn status(&self, i: usize) -> serde_json::Value {
        let (code, body) = http_get(self.admin[i], "/cluster/status").expect("status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    fn leader(&self) -> Option<u64> {
        (0..NODES).find_map(|i| {
            http_get(self.admin[i], "/cluster/status")
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
                .and_then(|v| v["leader"].as_u64())
        })
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..NODES {
                say(&format!(
                    "--- logs of starling-{i} ---\n{}",
                    self.logs(&format!("starling-{i}"))
                ));
            }
        }
        let _ = self
            .command(&["down", "-v", "--remove-orphans", "-t", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn options(id: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    o
}

/// Waits for the next incoming packet `want` accepts, failing on a connection error.
fn expect(
    conn: &mut Connection,
    what: &str,
    mut want: impl FnMut(&Packet) -> bool,
) -> Result<Packet, String> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out waiting for {what}"));
        }
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(p))) if want(&p) => return Ok(p),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{what}: {e}")),
            Err(_) => return Err(format!("timed out waiting for {what}")),
        }
    }
}

/// Connects a persistent session; `Ok` once CONNACK 0 arrived.
fn connect(id: &str, port: u16) -> Result<(Client, Connection), String> {
    let (client, mut conn) = Client::new(options(id, port), 64);
    match expect(&mut conn, "CONNACK", |p| matches!(p, Packet::ConnAck(_)))? {
        Packet::ConnAck(a) if a.code == rumqttc::ConnectReturnCode::Success => Ok((client, conn)),
        other => Err(format!("refused: {other:?}")),
    }
}

fn publish_acked(
    client: &Client,
    conn: &mut Connection,
    topic: &str,
    payload: Vec<u8>,
    retain: bool,
) -> Result<(), String> {
    client
        .publish(topic, QoS::AtLeastOnce, retain, payload)
        .map_err(|e| e.to_string())?;
    expect(conn, "PUBACK", |p| matches!(p, Packet::PubAck(_))).map(|_| ())
}

fn subscribe(client: &Client, conn: &mut Connection, filter: &str) -> Result<(), String> {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .map_err(|e| e.to_string())?;
    expect(conn, "SUBACK", |p| matches!(p, Packet::SubAck(_))).map(|_| ())
}

/// Cross-node: a persistent subscriber on node 0 gets a QoS 1 message published on node 1, and
/// a retained message published on node 1 is delivered to a new subscription on node 2.
fn smoke(c: &Compose) {
    let (sub, mut sub_conn) = connect("deploy-smoke-sub", c.mqtt[0]).expect("subscriber");
    subscribe(&sub, &mut sub_conn, "smoke/live").expect("subscribe");
    let (publ, mut pub_conn) = connect("deploy-smoke-pub", c.mqtt[1]).expect("publisher");
    publish_acked(&publ, &mut pub_conn, "smoke/live", b"hello".to_vec(), false).expect("publish");
    let got = expect(
        &mut sub_conn,
        "the message published on node 1",
        |p| matches!(p, Packet::Publish(m) if m.topic == "smoke/live"),
    )
    .expect("cross-node delivery");
    let Packet::Publish(m) = got else {
        unreachable!()
    };
    assert_eq!(&m.payload[..], b"hello");

    publish_acked(
        &publ,
        &mut pub_conn,
        "smoke/retained",
        b"kept".to_vec(),
        true,
    )
    .expect("retained publish");
    let (late, mut late_conn) = connect("deploy-smoke-late", c.mqtt[2]).expect("late subscriber");
    subscribe(&late, &mut late_conn, "smoke/retained").expect("subscribe");
    let got = expect(
        &mut late_conn,
        "the retained message on node 2",
        |p| matches!(p, Packet::Publish(m) if m.topic == "smoke/retained"),
    )
    .expect("retained message across nodes");
    let Packet::Publish(m) = got else {
        unreachable!()
    };
    assert!(m.retain && &m.payload[..] == b"kept", "{m:?}");
    for cl in [sub, publ, late] {
        let _ = cl.disconnect();
    }
    say("smoke test passed: persistent QoS 1 node 1 -> node 0, retained node 1 -> node 2");
}

/// What the background clients share.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    /// The test has collected its figures: the subscriber leaves.
    done: AtomicBool,
    /// Sequence numbers the broker acknowledged (PUBACK).
    acked: Mutex<BTreeSet<u64>>,
    /// Sequence numbers the subscriber received.
    received: Mutex<BTreeSet<u64>>,
    /// Deliveries, duplicates included.
    deliveries: AtomicU64,
    publisher_failovers: AtomicU64,
    subscriber_failovers: AtomicU64,
}

const TOPIC: &str = "deploy/rolling";

/// Publishes 1, 2, 3, ... at QoS 1 on a persistent session, each after the previous one was
/// acknowledged; on any error it moves to the next node and publishes the unacknowledged number
/// again.
fn publisher(ports: Vec<u16>, t: Arc<Traffic>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut node = 1;
        let mut next = 1u64;
        while !t.stop.load(Ordering::Relaxed) {
            let (client, mut conn) = match connect("deploy-rolling-pub", ports[node]) {
                Ok(c) => c,
                Err(_) => {
                    node = (node + 1) % ports.len();
                    t.publisher_failovers.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            while !t.stop.load(Ordering::Relaxed) {
                match publish_acked(
                    &client,
                    &mut conn,
                    TOPIC,
                    next.to_be_bytes().to_vec(),
                    false,
                ) {
                    Ok(()) => {
                        t.acked.lock().unwrap().insert(next);
                        next += 1;
                    }
                    Err(_) => break,
                }
            }
            if !t.stop.load(Ordering::Relaxed) {
                node = (node + 1) % ports.len();
                t.publisher_failovers.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = client.disconnect();
            }
        }
    })
}

/// A persistent QoS 1 subscriber that moves to the next node whenever its connection fails.
fn subscriber(ports: Vec<u16>, t: Arc<Traffic>, subscribed: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut node = 0;
        while !t.done.load(Ordering::Relaxed) {
            let (client, mut conn) = match connect("deploy-rolling-sub", ports[node]) {
                Ok(c) => c,
                Err(_) => {
                    node = (node + 1) % ports.len();
                    t.subscriber_failovers.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            if !subscribed.load(Ordering::Relaxed) {
                if subscribe(&client, &mut conn, TOPIC).is_err() {
                    continue;
                }
                subscribed.store(true, Ordering::Relaxed);
            }
            loop {
                if t.done.load(Ordering::Relaxed) {
                    let _ = client.disconnect();
                    return;
                }
                match conn.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        if let Ok(b) = <[u8; 8]>::try_from(&p.payload[..]) {
                            t.received.lock().unwrap().insert(u64::from_be_bytes(b));
                            t.deliveries.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => break,
                }
            }
            node = (node + 1) % ports.len();
            t.subscriber_failovers.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[test]
fn compose_cluster() {
    if std::env::var(GATE).as_deref() != Ok("1") {
        say(&format!(
            "SKIPPED compose_cluster: set {GATE}=1 to build the image and run the compose cluster \
             (needs a Docker engine)"
        ));
        return;
    }
    let image = format!("starling:deploy-test-{}", std::process::id());

    // ---- image
    let t0 = Instant::now();
    run(Command::new(repo().join("deploy/docker/build.sh")).arg(&image));
    let size: u64 = String::from_utf8_lossy(
        &run(Command::new("docker").args(["image", "inspect", "-f", "{{.Size}}", &image])).stdout,
    )
    .trim()
    .parse()
    .expect("image size");
    say(&format!(
        "image {image}: {size} bytes ({:.1} MB), built in {:.0?}",
        size as f64 / 1e6,
        t0.elapsed()
    ));
    assert!(
        size < 30_000_000,
        "image is {size} bytes, over the 30 MB budget"
    );
    let user =
        run(Command::new("docker").args(["image", "inspect", "-f", "{{.Config.User}}", &image]));
    assert_eq!(String::from_utf8_lossy(&user.stdout).trim(), "10001:10001");

    // ---- cluster start
    let c = Compose::new(&image);
    let t0 = Instant::now();
    c.run(&["up", "-d"]);
    wait_until(START_TIMEOUT, "/readyz 200 on all three nodes", || {
        c.all_ready()
    });
    let start = t0.elapsed();
    say(&format!(
        "cluster start (compose up -> /readyz 200 on all three): {start:.1?}"
    ));
    let leader = c.leader().expect("a leader");
    say(&format!("leader after start: node {leader}"));
    for i in 0..NODES {
        let s = c.status(i);
        assert_eq!(s["node_id"].as_u64(), Some(i as u64 + 1), "{s}");
        assert_eq!(s["members"].as_array().map(Vec::len), Some(NODES), "{s}");
    }
    let (code, metrics) = http_get(c.admin[0], "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("# TYPE starling_raft_term gauge"),
        "{metrics}"
    );

    // ---- smoke test across nodes
    smoke(&c);

    // ---- rolling restart under persistent QoS 1 traffic
    let traffic = Arc::new(Traffic::default());
    let subscribed = Arc::new(AtomicBool::new(false));
    let sub = subscriber(c.mqtt.clone(), traffic.clone(), subscribed.clone());
    wait_until(PROMPT, "the rolling-restart subscriber subscribed", || {
        subscribed.load(Ordering::Relaxed)
    });
    let publ = publisher(c.mqtt.clone(), traffic.clone());
    wait_until(PROMPT, "traffic flowing", || {
        traffic.received.lock().unwrap().len() >= 50
    });
    let rolling = Instant::now();
    let mut per_node = Vec::new();
    for i in 0..NODES {
        let service = format!("starling-{i}");
        let leader_before = c.leader();
        let acked_before = traffic.acked.lock().unwrap().len();
        let t = Instant::now();
        c.run(&["restart", "-t", "30", &service]);
        let stopped = t.elapsed();
        wait_until(
            RESTART_TIMEOUT,
            &format!("{service} and the rest ready after restart"),
            || c.all_ready(),
        );
        let took = t.elapsed();
        let transferred = c
            .logs(&service)
            .lines()
            .filter(|l| l.contains("leadership transferred"))
            .count();
        let acked_during = traffic.acked.lock().unwrap().len() - acked_before;
        say(&format!(
            "restarted {service} (node {}; leader before: {leader_before:?}, after: {:?}): \
             stop+start {stopped:.1?}, ready again after {took:.1?}, {acked_during} messages \
             acknowledged meanwhile, 'leadership transferred' lines in its log: {transferred}",
            i + 1,
            c.leader()
        ));
        if stopped > Duration::from_secs(5) {
            // Evidence for a slow stop: the newest lines of the run before the restart (the log
            // is read backwards from the new run's "starting" line).
            let logs = c.logs(&service);
            let last_stop: Vec<&str> = logs
                .lines()
                .rev()
                .skip_while(|l| !l.contains("starting"))
                .skip(1)
                .take_while(|l| !l.contains("starting"))
                .filter(|l| !l.contains("DEBUG"))
                .collect();
            say(&format!(
                "slow stop of {service}; its last run's final log lines:\n{}",
                last_stop
                    .iter()
                    .take(30)
                    .rev()
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        if leader_before == Some(i as u64 + 1) {
            assert!(
                transferred > 0,
                "the leader {service} did not transfer leadership on SIGTERM"
            );
        }
        per_node.push(took);
    }
    let rolling_took = rolling.elapsed();
    traffic.stop.store(true, Ordering::Relaxed);
    publ.join().expect("publisher");
    let acked = traffic.acked.lock().unwrap().clone();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while Instant::now() < deadline && !acked.is_subset(&traffic.received.lock().unwrap()) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = traffic.received.lock().unwrap().clone();
    let lost: Vec<u64> = acked.difference(&received).copied().collect();
    let deliveries = traffic.deliveries.load(Ordering::Relaxed);
    say(&format!(
        "rolling restart: {rolling_took:.1?} for {NODES} nodes ({per_node:.1?}); {} messages \
         acknowledged, {} received ({} deliveries, {} duplicates), lost: {}{}; failovers: \
         publisher {}, subscriber {}",
        acked.len(),
        received.len(),
        deliveries,
        deliveries.saturating_sub(received.len() as u64),
        lost.len(),
        if lost.is_empty() {
            String::new()
        } else {
            format!(" {:?}", &lost[..lost.len().min(20)])
        },
        traffic.publisher_failovers.load(Ordering::Relaxed),
        traffic.subscriber_failovers.load(Ordering::Relaxed),
    ));
    traffic.done.store(true, Ordering::Relaxed);
    sub.join().expect("subscriber");
    assert!(acked.len() > 100, "too little traffic: {}", acked.len());
    assert!(lost.is_empty(), "{} acknowledged messages lost", lost.len());

    // ---- teardown, volumes included
    assert_eq!(c.volumes().len(), NODES, "one named volume per node");
    c.run(&["down", "-v", "--remove-orphans", "-t", "30"]);
    assert!(c.volumes().is_empty(), "volumes left: {:?}", c.volumes());
    let _ = Command::new("docker")
        .args(["image", "rm", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    say("compose project and its volumes removed");
}
