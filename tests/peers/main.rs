//! Peer authentication (docs/security.md, "Peers"): a three-node cluster sharing a secret, and
//! strangers that try to join it, disturb it, or talk to its peer port directly.
//!
//! What a stranger tries, and what must hold:
//! - a process with the wrong secret, started with `--join`, asks a member to add it
//!   (`starling cluster join`): refused (403); not a member; the state digest is unchanged;
//! - a process with the wrong secret (or none, `insecure`) that lists the members as its own
//!   peers and campaigns: its calls are refused before decoding (and logged with its
//!   address); term, leader, members and digest are unchanged;
//! - a raw gRPC client (tonic, `starling-proto`) sending a crafted `RaftEnvelope`: refused
//!   with UNAUTHENTICATED without credentials, with the wrong secret, and with a replayed
//!   header; with valid credentials the same call reaches the Raft decoder (the control);
//! - clustered mode without a secret does not start (exit code 2) unless `insecure`;
//! - the control: a node with the secret joins the same way and becomes a voter.
//!
//! Figures are printed as `MEASURE ...` lines (`-- --nocapture`).

#[path = "../common/mod.rs"]
mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use starling_cluster::auth::{PeerAuth, AUTH_HEADER};
use starling_proto::cluster::v1::cluster_client::ClusterClient;
use starling_proto::cluster::v1::{ForwardBatch, HelloRequest, RaftEnvelope};
use starling_testkit::cluster::{voters, INSECURE_VAR, SECRET_VAR};
use starling_testkit::{BrokerBuilder, BrokerProcess, ClusterBuilder, TestCluster};
use tonic::metadata::MetadataValue;
use tonic::Code;

use crate::common::BIN;

const ELECTION: Duration = Duration::from_secs(15);
const CONVERGE: Duration = Duration::from_secs(30);

/// A secret that is not the cluster's.
const WRONG_SECRET: &str = "this-is-not-the-cluster-secret-0123456789";

fn blocking<R>(f: impl FnOnce() -> R) -> R {
    tokio::task::block_in_place(f)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// What an observer of the cluster sees; equal before and after an attack means the attack
/// changed nothing.
#[derive(Debug, PartialEq, Eq)]
struct View {
    term: u64,
    leader: u64,
    voters: Vec<u64>,
    applied_index: u64,
    state_digest: String,
}

/// The view once it stops changing (the set-up's last commits, e.g. a client's session
/// removed after its DISCONNECT, have been applied everywhere).
fn settled_view(c: &TestCluster) -> View {
    let deadline = std::time::Instant::now() + CONVERGE;
    let mut last = view(c);
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let now = view(c);
        if now == last {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not settle: {now:?}"
        );
        last = now;
    }
}

fn view(c: &TestCluster) -> View {
    let conv = c.wait_converged(CONVERGE);
    let leader = c.wait_for_leader(ELECTION);
    let s = c.status(leader);
    View {
        term: s["term"].as_u64().unwrap_or_default(),
        leader,
        voters: voters(&s),
        applied_index: conv.applied_index,
        state_digest: conv.state_digest,
    }
}

/// A three-node cluster with a leader and some state (a retained message).
async fn cluster_with_state() -> TestCluster {
    // 100 ms ticks (1 s election timeout): a loaded machine must not cause elections that
    // would pass for a stranger's doing.
    let c = blocking(|| {
        ClusterBuilder::new(BIN, 3)
            .env("STARLING_CLUSTER_TICK_MS", "100")
            .start()
    });
    let leader = blocking(|| c.wait_for_leader(ELECTION));
    let (mut client, ack) =
        starling_testkit::RawClient::connect(c.addr(leader), "peers-pub", true).await;
    assert_eq!(ack.code, starling_codec::ConnectReasonCode::Success);
    client
        .publish(
            "peers/state",
            b"before",
            starling_codec::QoS::AtLeastOnce,
            true,
            1,
        )
        .await;
    match client.recv().await {
        Ok(starling_codec::Packet::PubAck(starling_codec::PubAck { packet_id: 1, .. })) => {}
        other => panic!("no PUBACK: {other:?}"),
    }
    client
        .send(&starling_codec::Packet::Disconnect(Default::default()))
        .await;
    assert!(client.closed_within(Duration::from_secs(10)).await);
    c
}

/// A stranger node: `--node-id id`, its own peer and admin ports, `--peers peers` (where
/// `{self}` is replaced by its own peer address), `secret` (`None`: insecure).
fn stranger(
    id: u64,
    peers: &str,
    join: bool,
    secret: Option<&str>,
) -> (BrokerProcess, SocketAddr, SocketAddr) {
    let raft = free_addr();
    let admin = free_addr();
    let mut b = BrokerBuilder::new(BIN)
        .log_level("info")
        .arg("--node-id")
        .arg(id.to_string())
        .arg("--cluster-listen")
        .arg(raft.to_string())
        .arg("--peers")
        .arg(peers.replace("{self}", &raft.to_string()))
        .arg("--admin-listen")
        .arg(admin.to_string())
        .env("STARLING_CLUSTER_TICK_MS", "100");
    if join {
        b = b.arg("--join");
    }
    b = match secret {
        Some(s) => b.env(SECRET_VAR, s),
        None => b.env(INSECURE_VAR, "true"),
    };
    (b.start(), raft, admin)
}

fn refused_lines(c: &TestCluster, id: u64) -> Vec<String> {
    c.node(id)
        .process()
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("peer call refused"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_with_the_wrong_secret_cannot_join() {
    let c = cluster_with_state().await;
    let before = blocking(|| settled_view(&c));

    // Node 4 with the wrong secret, waiting to be added, its peers the members plus itself.
    let peers = format!("{},4={{self}}", c.peers());
    let (s, raft, _) = blocking(|| stranger(4, &peers, true, Some(WRONG_SECRET)));
    let admin1 = c.node(1).admin_addr().to_string();
    let out = blocking(|| {
        c.cluster_cli(&[
            "join",
            "--admin",
            &admin1,
            "--node-id",
            "4",
            "--raft-address",
            &raft.to_string(),
        ])
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "join of a stranger succeeded: {stderr}"
    );
    assert!(
        stderr.contains("HTTP 403") && stderr.contains("failed authentication"),
        "join refusal does not say why: {stderr}"
    );
    println!("MEASURE peers: join refused: {}", stderr.trim());

    // Nothing changed: same term, leader, voters, applied index and digest.
    let after = blocking(|| view(&c));
    assert_eq!(
        before, after,
        "the cluster changed after a stranger's join attempt"
    );
    // The member's Hello to the stranger was refused by the stranger (it has another secret):
    // the member never sent it anything else.
    assert!(
        s.log_text().contains("peer call refused"),
        "the stranger did not see (and refuse) the member's Hello:\n{}",
        s.log_text()
    );
    assert!(
        c.node(1)
            .process()
            .log_text()
            .contains("join refused: the new node did not prove the cluster secret"),
        "node 1 did not log the refused join"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_pointing_their_peers_at_the_cluster_change_nothing() {
    let c = cluster_with_state().await;
    let before = blocking(|| settled_view(&c));
    // Two strangers that each claim to be node 1 of a cluster whose other members are the real
    // nodes 2 and 3: they bootstrap and campaign (pre-vote, vote) against the real nodes. One has
    // the wrong secret, one none at all.
    let peers = format!(
        "1={{self}},2={},3={}",
        c.node(2).raft_addr(),
        c.node(3).raft_addr()
    );
    let (mut wrong, _, _) = blocking(|| stranger(1, &peers, false, Some(WRONG_SECRET)));
    let (mut none, _, _) = blocking(|| stranger(1, &peers, false, None));
    assert!(
        none.log_text().contains("peers are NOT authenticated"),
        "insecure mode does not warn at start"
    );
    // Long enough for several election timeouts of the strangers (50 ms ticks: 0.5-1 s each).
    blocking(|| {
        c.wait(
            Duration::from_secs(20),
            "nodes 2 and 3 to refuse the strangers' calls",
            || [2, 3].iter().all(|id| !refused_lines(&c, *id).is_empty()),
        )
    });
    let after = blocking(|| settled_view(&c));
    assert_eq!(
        before, after,
        "the cluster changed under strangers' campaigns"
    );
    for id in [2, 3] {
        let lines = refused_lines(&c, id);
        println!(
            "MEASURE peers: node {id} refused-call log line: {}",
            lines[0]
        );
        assert!(
            lines[0].contains("remote=127.0.0.1:"),
            "the refusal does not name the caller's address: {}",
            lines[0]
        );
        // Rate-limited: at most one line per 10 s (plus the count of the others).
        assert!(
            lines.len() <= 3,
            "refusals are not rate-limited: {lines:#?}"
        );
    }
    // The strangers' own view: they never learnt of a leader from the real nodes.
    assert!(wrong.is_running() && none.is_running());
    wrong.kill9();
    none.kill9();
}

/// Credentials for a call to node `to` as node `from` with `secret`.
fn creds(secret: &str, from: u64, to: u64) -> MetadataValue<tonic::metadata::Ascii> {
    MetadataValue::try_from(PeerAuth::new(from, secret.as_bytes()).sign_call(to)).expect("ascii")
}

fn envelope(to: u64) -> RaftEnvelope {
    // Not a Raft message: the decoder refuses it, which shows whether a call reached it.
    RaftEnvelope {
        group_id: 1,
        from: 1,
        to,
        payload: vec![
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x5a,
        ]
        .into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_grpc_client_without_credentials_is_refused_before_decoding() {
    let c = cluster_with_state().await;
    let before = blocking(|| settled_view(&c));
    let secret = c
        .secret()
        .expect("the testkit gives clusters a secret")
        .to_string();
    let target = 2u64;
    let url = format!("http://{}", c.node(target).raft_addr());
    let mut client = ClusterClient::connect(url)
        .await
        .expect("connect to the peer port");

    // No credentials.
    let r = client
        .raft(tokio_stream::iter(vec![envelope(target)]))
        .await
        .expect_err("a call without credentials was accepted");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
    println!(
        "MEASURE peers: no credentials -> {:?}: {}",
        r.code(),
        r.message()
    );
    let r = client
        .forward(tokio_stream::iter(vec![ForwardBatch {
            from: 1,
            messages: vec![],
        }]))
        .await
        .expect_err("a forward without credentials was accepted");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
    let r = client
        .hello(HelloRequest {
            from: 1,
            to: target,
            challenge: vec![0; 16].into(),
        })
        .await
        .expect_err("a Hello without credentials was answered");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");

    // The wrong secret.
    let mut req = tonic::Request::new(tokio_stream::iter(vec![envelope(target)]));
    req.metadata_mut()
        .insert(AUTH_HEADER, creds(WRONG_SECRET, 1, target));
    let r = client
        .raft(req)
        .await
        .expect_err("the wrong secret was accepted");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
    assert!(r.message().contains("bad peer credentials"), "{r:?}");

    // Right secret, but for another node.
    let mut req = tonic::Request::new(tokio_stream::iter(vec![envelope(target)]));
    req.metadata_mut().insert(AUTH_HEADER, creds(&secret, 1, 3));
    let r = client
        .raft(req)
        .await
        .expect_err("credentials for node 3 accepted by node 2");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");

    // The control: valid credentials; the same envelope reaches the Raft decoder, which
    // refuses it (not a Raft message).
    let header = creds(&secret, 1, target);
    let mut req = tonic::Request::new(tokio_stream::iter(vec![envelope(target)]));
    req.metadata_mut().insert(AUTH_HEADER, header.clone());
    let r = client
        .raft(req)
        .await
        .expect_err("a garbage payload was accepted");
    assert_eq!(r.code(), Code::InvalidArgument, "{r:?}");
    assert!(r.message().contains("undecodable raft message"), "{r:?}");
    println!(
        "MEASURE peers: valid credentials -> {:?}: {}",
        r.code(),
        r.message()
    );

    // The same credentials again (a captured header): a replay.
    let mut req = tonic::Request::new(tokio_stream::iter(vec![envelope(target)]));
    req.metadata_mut().insert(AUTH_HEADER, header);
    let r = client
        .raft(req)
        .await
        .expect_err("a replayed header was accepted");
    assert_eq!(r.code(), Code::Unauthenticated, "{r:?}");
    assert!(r.message().contains("replayed"), "{r:?}");

    // A Hello with valid credentials is answered with a proof the caller can check.
    let auth = PeerAuth::new(1, secret.as_bytes());
    let challenge = PeerAuth::challenge();
    let mut req = tonic::Request::new(HelloRequest {
        from: 1,
        to: target,
        challenge: challenge.clone().into(),
    });
    req.metadata_mut()
        .insert(AUTH_HEADER, creds(&secret, 1, target));
    let reply = client
        .hello(req)
        .await
        .expect("Hello with credentials")
        .into_inner();
    assert_eq!(reply.node_id, target);
    assert!(auth.verify_hello(target, &challenge, &reply.proof));

    let after = blocking(|| view(&c));
    assert_eq!(
        before, after,
        "the cluster changed under the raw client's calls"
    );
    assert!(
        !refused_lines(&c, target).is_empty(),
        "node {target} did not log the refusals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_secret_joins_the_same_way() {
    let mut c = cluster_with_state().await;
    blocking(|| c.start_joining(4));
    let admin1 = c.node(1).admin_addr().to_string();
    let raft4 = c.node(4).raft_addr().to_string();
    let out = blocking(|| {
        c.cluster_cli(&[
            "join",
            "--admin",
            &admin1,
            "--node-id",
            "4",
            "--raft-address",
            &raft4,
        ])
    });
    assert!(
        out.status.success(),
        "join with the secret failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    blocking(|| {
        c.wait(
            CONVERGE,
            "node 4 to be a voter with the others' state",
            || {
                c.converged().is_some_and(|v| v.nodes.len() == 4)
                    && c.try_status(4).is_ok_and(|s| voters(&s) == [1, 2, 3, 4])
            },
        )
    });
    let s4 = blocking(|| c.status(4));
    assert_eq!(s4["retained"], 1, "node 4 did not get the state: {s4}");
}

#[test]
fn clustered_mode_without_a_secret_does_not_start() {
    let raft = free_addr();
    let data = tempfile::tempdir().expect("temp dir");
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--node-id",
            "1",
            "--cluster-listen",
        ])
        .arg(raft.to_string())
        .arg("--peers")
        .arg(format!("1={raft}"))
        .arg("--data-dir")
        .arg(data.path())
        .env_remove("STARLING_CONFIG")
        .env_remove(SECRET_VAR)
        .env_remove(INSECURE_VAR);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.output().expect("run starling")
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs a cluster secret"), "{err}");
    let out = run(&[(SECRET_VAR, "short")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("at least 16 are needed"), "{err}");
    let out = run(&[("STARLING_CLUSTER_SECRET_FILE", "/nonexistent/secret")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/secret"), "{err}");
}
