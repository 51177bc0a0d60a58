//! `starling restore`: a backup exported with `GET /cluster/snapshot` brings a wiped cluster
//! (and a single node) back with its retained messages, persistent sessions, subscriptions and
//! queued messages, each delivered once; a session connected at export time goes offline with
//! its will published once. Damaged backups and occupied data directories are refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use starling_codec::{
    LastWill, Packet, ProtocolVersion, PubAck, PubComp, PubRec, PubRel, Publish, QoS,
    SubAckReasonCode,
};
use starling_testkit::raw::connect_packet;
use starling_testkit::{BrokerBuilder, RawClient, RecvError, TestCluster};

use crate::common::BIN;
use crate::support::*;

/// `GET /cluster/snapshot` of `admin`: the backup's bytes.
fn fetch_backup(admin: SocketAddr) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("admin port");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /cluster/snapshot HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("backup answer");
    let head_end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head")
        + 4;
    let head = String::from_utf8_lossy(&resp[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !head.contains("chunked"),
        "a backup comes with its length: {head}"
    );
    resp[head_end..].to_vec()
}

/// Runs `starling restore --backup FILE` with `args` (without a configuration file).
fn restore(backup: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("restore")
        .arg("--backup")
        .arg(backup)
        .args(args)
        .env_remove("STARLING_CONFIG")
        .output()
        .expect("run starling restore")
}

/// `starling restore` for node `id` of `c` into its data directory.
fn restore_node(c: &TestCluster, id: u64, backup: &Path, extra: &[&str]) -> Output {
    let dir = c.node(id).process().data_dir().to_path_buf();
    let id = id.to_string();
    let mut args = vec![
        "--data-dir",
        dir.to_str().unwrap(),
        "--node-id",
        &id,
        "--peers",
        c.peers(),
    ];
    args.extend_from_slice(extra);
    restore(backup, &args)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes everything in `dir` (a stopped node's data directory).
fn wipe(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// Publishes at QoS 2 and completes the exchange (PUBREC, PUBREL, PUBCOMP).
async fn publish_qos2(c: &mut RawClient, topic: &str, payload: &str, packet_id: u16) {
    c.publish(
        topic,
        payload.as_bytes(),
        QoS::ExactlyOnce,
        false,
        packet_id,
    )
    .await;
    loop {
        match c.recv_within(PROMPT).await {
            Ok(Packet::PubRec(PubRec { packet_id: id, .. })) if id == packet_id => break,
            Ok(_) => {}
            Err(e) => panic!("no PUBREC for {payload}: {e:?}"),
        }
    }
    c.send(&Packet::PubRel(PubRel::new(packet_id))).await;
    loop {
        match c.recv_within(PROMPT).await {
            Ok(Packet::PubComp(PubComp { packet_id: id, .. })) if id == packet_id => return,
            Ok(_) => {}
            Err(e) => panic!("no PUBCOMP for {payload}: {e:?}"),
        }
    }
}

/// What a resumed session received: payload → (QoS, times).
type Received = BTreeMap<String, (QoS, usize)>;

/// Acknowledges `p` as the QoS asks (PUBACK, or PUBREC then PUBCOMP on PUBREL).
async fn take(c: &mut RawClient, p: &Publish, got: &mut Received) {
    match p.qos {
        QoS::AtLeastOnce => c.send(&Packet::PubAck(PubAck::new(p.packet_id))).await,
        QoS::ExactlyOnce => c.send(&Packet::PubRec(PubRec::new(p.packet_id))).await,
        QoS::AtMostOnce => {}
    }
    let e = got
        .entry(String::from_utf8_lossy(&p.payload).into_owned())
        .or_insert((p.qos, 0));
    e.1 += 1;
}

/// Receives on `c` until every payload of `want` arrived, then until nothing comes for a moment;
/// completes QoS 1 and 2 exchanges. Returns what arrived.
async fn receive(c: &mut RawClient, want: &[&str], within: Duration) -> Received {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Received::new();
    loop {
        let missing = want.iter().any(|w| !got.contains_key(*w));
        let wait = if missing {
            deadline.saturating_duration_since(tokio::time::Instant::now())
        } else {
            Duration::from_millis(500)
        };
        match c.recv_within(wait).await {
            Ok(Packet::Publish(p)) => take(c, &p, &mut got).await,
            Ok(Packet::PubRel(PubRel { packet_id: id, .. })) => {
                c.send(&Packet::PubComp(PubComp::new(id))).await
            }
            Ok(_) => {}
            Err(RecvError::Timeout) if !missing => return got,
            Err(e) => panic!("waiting for {want:?}, got {got:?}: {e:?}"),
        }
    }
}

/// The queued messages and the will, each once, at the subscription's QoS.
fn assert_once(got: &Received) {
    let want: Received = [
        ("q1-a", QoS::AtLeastOnce),
        ("q1-b", QoS::AtLeastOnce),
        ("q2-a", QoS::ExactlyOnce),
        ("q2-b", QoS::ExactlyOnce),
        ("will", QoS::AtLeastOnce),
    ]
    .into_iter()
    .map(|(p, q)| (p.to_string(), (q, 1)))
    .collect();
    assert_eq!(got, &want, "every queued message and the will exactly once");
}

/// The state the backup is taken of: a retained message; persistent session `rs-sub` (offline)
/// subscribed to `rs/q/#` at QoS 2 with two QoS 1 and two QoS 2 messages queued; persistent
/// session `rs-will` connected (through node `will_node`) with a QoS 1 will on `rs/q/will`.
/// Returns the connected client (kept open until the nodes are killed).
async fn populate(c: &TestCluster, will_node: u64) -> RawClient {
    let leader = c.leader().expect("a leader");
    let (mut sub, _) = connect(c.addr(leader), "rs-sub", false).await;
    assert_eq!(
        sub.subscribe(1, &[("rs/q/#", QoS::ExactlyOnce)]).await,
        vec![SubAckReasonCode::GrantedQoS2]
    );
    disconnect(sub).await;
    let (mut publ, _) = connect(c.addr(leader), "rs-pub", true).await;
    publish_acked(&mut publ, "rs/retained", "kept", true).await;
    publish_acked(&mut publ, "rs/q/1", "q1-a", false).await;
    publish_acked(&mut publ, "rs/q/1", "q1-b", false).await;
    publish_qos2(&mut publ, "rs/q/2", "q2-a", 2).await;
    publish_qos2(&mut publ, "rs/q/2", "q2-b", 3).await;
    disconnect(publ).await;
    let will = LastWill {
        topic: "rs/q/will".into(),
        payload: bytes::Bytes::from_static(b"will"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let connect = connect_packet("rs-will", false, ProtocolVersion::V3_1_1, 0, Some(will));
    let (w, ack) = RawClient::connect_with(c.addr(will_node), connect).await;
    assert_eq!(ack.code, starling_codec::ConnectReasonCode::Success);
    w
}

fn write_backup(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("starling.backup");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_cluster_comes_back_from_a_backup() {
    let mut c = blocking(|| cluster(3).start());
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let will_node = a_follower(&c, leader);
    let will_client = populate(&c, will_node).await;
    let conv = blocking(|| c.wait_converged(CONVERGE));
    let s = blocking(|| c.status(leader));
    assert_eq!(
        (s["sessions"].as_u64(), s["retained"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );

    let bytes = blocking(|| fetch_backup(c.node(leader).admin_addr()));
    let (_keep, backup) = write_backup(&bytes);
    for id in c.ids() {
        blocking(|| c.kill9(id));
    }
    drop(will_client);
    let mut positions = Vec::new();
    for id in c.ids() {
        wipe(c.node(id).process().data_dir());
        let out = blocking(|| restore_node(&c, id, &backup, &[]));
        assert!(out.status.success(), "restore of node {id}: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        // "... index N term T, ..."
        let at = said.find(": index ").expect("index in the summary") + 2;
        positions.push(said[at..].split(',').next().unwrap().to_string());
    }
    assert!(
        positions.windows(2).all(|w| w[0] == w[1]),
        "every node restored at the same index and term: {positions:?}"
    );
    let restored_index: u64 = positions[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        restored_index >= conv.applied_index,
        "{positions:?} vs {conv:?}"
    );
    for id in c.ids() {
        blocking(|| c.restart(id));
    }
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let after = blocking(|| c.wait_converged(CONVERGE));
    assert!(
        after.applied_index > conv.applied_index,
        "the restored log continues after the backup: {after:?} vs {conv:?}"
    );
    // `rs-will` went offline when its node came back (NodeDown through the log, as after a
    // crash): its will is among what `rs-sub` receives below, once.
    let retained = retained_on(c.addr(leader), "rs/retained", 1).await;
    assert_eq!(&retained[0].payload[..], b"kept");

    let follower = a_follower(&c, leader);
    let (mut sub, present) = connect(c.addr(follower), "rs-sub", false).await;
    assert!(present, "the persistent session was restored");
    let got = receive(&mut sub, &["q1-a", "q1-b", "q2-a", "q2-b", "will"], PROMPT).await;
    assert_once(&got);
    // The subscription is live: a new message reaches the session.
    let (mut publ, _) = connect(c.addr(leader), "rs-pub-2", true).await;
    publish_acked(&mut publ, "rs/q/new", "fresh", false).await;
    disconnect(publ).await;
    let got = receive(&mut sub, &["fresh"], PROMPT).await;
    assert_eq!(got.get("fresh").map(|(_, n)| *n), Some(1), "{got:?}");
    assert_eq!(got.len(), 1, "nothing queued was delivered twice: {got:?}");
    disconnect(sub).await;
    let s = blocking(|| c.status(leader));
    assert_eq!(s["retained"], 1, "{s}");
    blocking(|| c.wait_converged(CONVERGE));

    // The same backup restored into a single node (no peers): every session connected through
    // the old nodes is handed to node 1, which takes them offline at start.
    let mut single = blocking(|| BrokerBuilder::new(BIN).log_level("info").start());
    single.kill9();
    wipe(single.data_dir());
    let dir = single.data_dir().to_str().unwrap().to_string();
    let out = blocking(|| restore(&backup, &["--data-dir", &dir]));
    assert!(out.status.success(), "single-node restore: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("a single node"),
        "{}",
        text(&out)
    );
    blocking(|| single.restart());
    let retained = retained_on(single.addr(), "rs/retained", 1).await;
    assert_eq!(&retained[0].payload[..], b"kept");
    let (mut sub, present) = connect(single.addr(), "rs-sub", false).await;
    assert!(present, "the persistent session was restored");
    let got = receive(&mut sub, &["q1-a", "q1-b", "q2-a", "q2-b", "will"], PROMPT).await;
    assert_once(&got);
    disconnect(sub).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_damaged_backups_and_occupied_directories() {
    let mut c = blocking(|| cluster(1).start());
    blocking(|| c.wait_for_leader(ELECTION));
    let (mut publ, _) = connect(c.addr(1), "neg-pub", true).await;
    publish_acked(&mut publ, "neg/retained", "kept", true).await;
    disconnect(publ).await;
    let bytes = blocking(|| fetch_backup(c.node(1).admin_addr()));
    let (_keep, backup) = write_backup(&bytes);
    let data = c.node(1).process().data_dir().to_path_buf();
    let db = data.join("starling.redb");

    // While the node runs, even --force does not touch its database.
    let out = blocking(|| restore_node(&c, 1, &backup, &["--force"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("still running"), "{}", text(&out));
    blocking(|| c.kill9(1));
    let before = std::fs::read(&db).unwrap();

    // Damaged files: truncated, wrong magic, trailing garbage. Nothing is written.
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = empty.path().to_str().unwrap().to_string();
    let peers = c.peers().to_string();
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() - 3].to_vec()),
        (
            "wrong magic",
            [b"NOT-A-BACKUP....".as_slice(), &bytes[16..]].concat(),
        ),
        ("trailing bytes", [bytes.as_slice(), b"x"].concat()),
        ("empty", Vec::new()),
    ] {
        let (_d, file) = write_backup(&damaged);
        let out = blocking(|| {
            restore(
                &file,
                &[
                    "--data-dir",
                    &empty_dir,
                    "--node-id",
                    "1",
                    "--peers",
                    &peers,
                ],
            )
        });
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        assert!(
            text(&out).contains("not a Starling backup"),
            "{what}: {}",
            text(&out)
        );
        assert_eq!(
            std::fs::read_dir(empty.path()).unwrap().count(),
            0,
            "{what}: nothing written"
        );
    }
    // A missing file.
    let out = blocking(|| {
        restore(
            Path::new("/nonexistent/backup"),
            &["--data-dir", &empty_dir],
        )
    });
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A node that is not among the peers.
    let out = blocking(|| {
        restore(
            &backup,
            &[
                "--data-dir",
                &empty_dir,
                "--node-id",
                "9",
                "--peers",
                &peers,
            ],
        )
    });
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not among"), "{}", text(&out));

    // The node's own data directory holds its database: refused without --force, untouched.
    let out = blocking(|| restore_node(&c, 1, &backup, &[]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(std::fs::read(&db).unwrap(), before, "database untouched");

    // With --force it is replaced, and the node starts from the backup.
    let out = blocking(|| restore_node(&c, 1, &backup, &["--force"]));
    assert!(out.status.success(), "{}", text(&out));
    blocking(|| c.restart(1));
    blocking(|| c.wait_for_leader(ELECTION));
    let retained = retained_on(c.addr(1), "neg/retained", 1).await;
    assert_eq!(&retained[0].payload[..], b"kept");
}
