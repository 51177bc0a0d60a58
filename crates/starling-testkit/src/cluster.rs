//! A cluster of real `starling` processes on loopback, each with its own MQTT, peer (Raft) and
//! admin port and its own data directory, and the admin endpoint as the way to observe it.
//!
//! ```text
//!  ClusterBuilder::new(bin, 3).env(..).start()
//!        │ reserves 2 free ports per node (peer, admin), builds --peers 1=..,2=..,3=..,
//!        │ gives every node the same fresh cluster secret (STARLING_CLUSTER_SECRET)
//!        ▼
//!  TestCluster ── node(id): ClusterNode ── BrokerProcess (MQTT port, data dir, log)
//!        │ kill9 / restart / start_joining
//!        └ status(id) = GET /cluster/status (JSON); leader(), wait_for_leader(), wait_converged()
//! ```
//! Node ids start at 1; every method takes a node id, not an index.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::broker::{BrokerBuilder, BrokerProcess};
use crate::wait::wait_until;

/// Raft tick used unless [`ClusterBuilder::env`] sets `STARLING_CLUSTER_TICK_MS`: with the
/// default 10 election ticks a leader is elected about half a second after it is missed.
pub const DEFAULT_TICK_MS: u64 = 50;

/// The variable that gives a node the cluster secret.
pub const SECRET_VAR: &str = "STARLING_CLUSTER_SECRET";

/// The variable that lets a node run clustered without a secret.
pub const INSECURE_VAR: &str = "STARLING_CLUSTER_INSECURE";

/// 32 random bytes as hex (std's randomly keyed SipHash as the source: test use only).
pub fn random_secret() -> String {
    use std::hash::{BuildHasher, Hasher};
    (0..4)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// How long a node may take to answer on its admin port after its MQTT port opened.
const ADMIN_UP: Duration = Duration::from_secs(10);

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    bin: PathBuf,
    size: u64,
    env: Vec<(String, String)>,
    log_level: String,
}

impl ClusterBuilder {
    /// A cluster of `size` nodes of the binary at `bin` (in tests:
    /// `env!("CARGO_BIN_EXE_starling")`), sharing a fresh random cluster secret (see
    /// [`ClusterBuilder::secret`]).
    pub fn new(bin: impl Into<PathBuf>, size: u64) -> ClusterBuilder {
        ClusterBuilder {
            bin: bin.into(),
            size,
            env: vec![
                (
                    "STARLING_CLUSTER_TICK_MS".into(),
                    DEFAULT_TICK_MS.to_string(),
                ),
                (SECRET_VAR.into(), random_secret()),
            ],
            log_level: "info".into(),
        }
    }

    /// Gives every node this cluster secret (`None`: none, and `cluster.insecure = true`).
    pub fn secret(self, secret: Option<&str>) -> Self {
        match secret {
            Some(s) => self.env(SECRET_VAR, s).env(INSECURE_VAR, "false"),
            None => {
                let mut b = self.env(INSECURE_VAR, "true");
                b.env.retain(|(k, _)| k != SECRET_VAR);
                b
            }
        }
    }

    /// The cluster secret the nodes get, if any.
    pub fn cluster_secret(&self) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == SECRET_VAR)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an environment variable on every node (e.g. `STARLING_MQTT_SNAPSHOT_ENTRIES`).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        let k = k.into();
        self.env.retain(|(old, _)| *old != k);
        self.env.push((k, v.into()));
        self
    }

    /// Log level of every node (default `info`: Raft's debug output is large).
    pub fn log_level(mut self, l: impl Into<String>) -> Self {
        self.log_level = l.into();
        self
    }

    /// Starts every node and waits until each answers on its admin port. Does not wait for a
    /// leader (see [`TestCluster::wait_for_leader`]).
    pub fn start(self) -> TestCluster {
        self.start_with_node_env(&[])
    }
}

/// One node: its addresses and its process.
pub struct ClusterNode {
    id: u64,
    raft_addr: SocketAddr,
    admin_addr: SocketAddr,
    process: BrokerProcess,
}

impl ClusterNode {
    /// Node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// MQTT address.
    pub fn addr(&self) -> SocketAddr {
        self.process.addr()
    }

    /// Peer (Raft) address.
    pub fn raft_addr(&self) -> SocketAddr {
        self.raft_addr
    }

    /// Admin HTTP address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// True unless killed (a process that crashed on its own still counts: its status fails).
    pub fn is_up(&self) -> bool {
        self.process.pid().is_some()
    }

    /// The process (log lines, data directory, pid).
    pub fn process(&self) -> &BrokerProcess {
        &self.process
    }

    /// Log lines since the last (re)start: after the last `--- restart ---` marker.
    pub fn log_since_start(&self) -> Vec<String> {
        let lines = self.process.log_lines();
        let from = lines
            .iter()
            .rposition(|l| l == "--- restart ---")
            .map_or(0, |i| i + 1);
        lines[from..].to_vec()
    }
}

/// Every running node at the same applied index with the same state digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converged {
    /// The common applied index.
    pub applied_index: u64,
    /// The common state digest (hex).
    pub state_digest: String,
    /// Nodes that took part.
    pub nodes: Vec<u64>,
}

/// A running cluster. Dropping it kills every node.
pub struct TestCluster {
    builder: ClusterBuilder,
    peers: String,
    nodes: BTreeMap<u64, ClusterNode>,
}

/// A free loopback port, kept while the listener lives.
struct Reserved {
    addr: SocketAddr,
    _listener: TcpListener,
}

/// `n` distinct free ports, held until dropped.
fn reserve_ports(n: usize) -> Vec<Reserved> {
    (0..n)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            Reserved {
                addr: l.local_addr().expect("local addr"),
                _listener: l,
            }
        })
        .collect()
}

impl TestCluster {
    fn spawn(&self, id: u64, raft: SocketAddr, admin: SocketAddr, join: bool) -> ClusterNode {
        let b = &self.builder;
        let peers = if join {
            format!("{},{id}={raft}", self.peers)
        } else {
            self.peers.clone()
        };
        let mut builder = BrokerBuilder::new(&b.bin)
            .log_level(b.log_level.clone())
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--cluster-listen")
            .arg(raft.to_string())
            .arg("--peers")
            .arg(peers)
            .arg("--admin-listen")
            .arg(admin.to_string());
        if join {
            builder = builder.arg("--join");
        }
        for (k, v) in &b.env {
            builder = builder.env(k.clone(), v.clone());
        }
        ClusterNode {
            id,
            raft_addr: raft,
            admin_addr: admin,
            process: builder.start(),
        }
    }

    fn wait_admin(&self, id: u64) {
        wait_until(
            ADMIN_UP,
            &format!("node {id} to answer on its admin port"),
            || self.try_status(id).is_ok(),
        );
    }

    /// Ids of every node ever started (running or not).
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of the nodes not killed.
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    /// Node `id`.
    ///
    /// # Panics
    /// No such node.
    pub fn node(&self, id: u64) -> &ClusterNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// MQTT address of node `id`.
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.node(id).addr()
    }

    /// `kill -9` of node `id`; returns once the process is gone.
    pub fn kill9(&mut self, id: u64) {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .process
            .kill9();
    }

    /// Starts node `id` again on the same ports and data directory (killing it first if it
    /// runs) and waits until it answers on its admin port.
    pub fn restart(&mut self, id: u64) {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .process
            .restart();
        self.wait_admin(id);
    }

    /// Starts a new node `id` with `--join` and an empty data directory (it waits to be added;
    /// see [`TestCluster::add_member`] and [`TestCluster::cluster_cli`]). Its `--peers` are the
    /// initial members plus itself.
    pub fn start_joining(&mut self, id: u64) -> &ClusterNode {
        assert!(!self.nodes.contains_key(&id), "node {id} exists already");
        let (raft, admin) = {
            let ports = reserve_ports(2);
            (ports[0].addr, ports[1].addr)
        };
        let node = self.spawn(id, raft, admin, true);
        self.nodes.insert(id, node);
        self.wait_admin(id);
        self.node(id)
    }

    /// `GET /cluster/status` of node `id`.
    ///
    /// # Errors
    /// The node does not answer, or not with 200 and JSON.
    pub fn try_status(&self, id: u64) -> Result<Value, String> {
        let (code, body) = http(self.node(id).admin_addr, "GET", "/cluster/status", None)?;
        if code != 200 {
            return Err(format!("node {id}: HTTP {code}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("node {id}: {e}: {body}"))
    }

    /// `GET /cluster/status` of node `id`.
    ///
    /// # Panics
    /// The node does not answer (it crashed, or was killed).
    pub fn status(&self, id: u64) -> Value {
        self.try_status(id).unwrap_or_else(|e| {
            panic!(
                "status of node {id}: {e}\nlog tail:\n{}",
                tail(&self.node(id).process.log_lines(), 40)
            )
        })
    }

    /// The leader every running node agrees on (and which says it leads), if any.
    pub fn leader(&self) -> Option<u64> {
        let running = self.running();
        let mut agreed = None;
        for id in &running {
            let s = self.try_status(*id).ok()?;
            let l = s["leader"].as_u64()?;
            if agreed.is_some_and(|a| a != l) {
                return None;
            }
            agreed = Some(l);
        }
        let l = agreed?;
        let s = self.try_status(l).ok()?;
        (running.contains(&l) && s["role"] == "leader").then_some(l)
    }

    /// Waits until the running nodes agree on a leader; returns it.
    pub fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let mut leader = None;
        wait_until_or(
            timeout,
            "the running nodes to agree on a leader",
            || {
                leader = self.leader();
                leader.is_some()
            },
            || self.describe(),
        );
        leader.unwrap_or_default()
    }

    /// Waits until every running node reports the same `applied_index` and `state_digest`.
    pub fn wait_converged(&self, timeout: Duration) -> Converged {
        let mut out = None;
        wait_until_or(
            timeout,
            "every running node at the same applied index and state digest",
            || {
                out = self.converged();
                out.is_some()
            },
            || self.describe(),
        );
        out.expect("converged")
    }

    /// [`wait_until`] whose failure message also describes every node
    /// ([`TestCluster::describe`]).
    pub fn wait(&self, timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
        wait_until_or(timeout, what, cond, || self.describe());
    }

    /// The common applied index and digest, if every running node has them now.
    pub fn converged(&self) -> Option<Converged> {
        let nodes = self.running();
        let mut common: Option<(u64, String)> = None;
        for id in &nodes {
            let s = self.try_status(*id).ok()?;
            let here = (
                s["applied_index"].as_u64()?,
                s["state_digest"].as_str()?.to_string(),
            );
            if common.as_ref().is_some_and(|c| *c != here) {
                return None;
            }
            common = Some(here);
        }
        let (applied_index, state_digest) = common?;
        Some(Converged {
            applied_index,
            state_digest,
            nodes,
        })
    }

    /// One line per running node: id, role, leader, term, commit, applied, digest (for
    /// failure messages).
    pub fn describe(&self) -> String {
        self.ids()
            .into_iter()
            .map(|id| {
                if !self.node(id).is_up() {
                    return format!("node {id}: killed");
                }
                match self.try_status(id) {
                    Ok(s) => format!(
                        "node {id}: role={} leader={} term={} commit={} applied={} snapshot={} \
                         voters={} digest={}",
                        s["role"],
                        s["leader"],
                        s["term"],
                        s["commit_index"],
                        s["applied_index"],
                        s["snapshot_index"],
                        voters(&s)
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        s["state_digest"]
                    ),
                    Err(e) => format!("node {id}: no status ({e})"),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The last `n` log lines of every node (for failure messages).
    pub fn log_tails(&self, n: usize) -> String {
        self.nodes
            .values()
            .map(|node| {
                format!(
                    "--- node {} log:\n{}",
                    node.id,
                    tail(&node.process.log_lines(), n)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `POST /cluster/members` on node `via`: adds node `id` (which must run, see
    /// [`TestCluster::start_joining`]) as a voter.
    ///
    /// # Errors
    /// The answer is not 2xx (the text has the code and body).
    pub fn add_member(&self, via: u64, id: u64) -> Result<(), String> {
        let n = self.node(id);
        let body = serde_json::json!({
            "node_id": id,
            "raft_address": n.raft_addr.to_string(),
            "admin_address": n.admin_addr.to_string(),
        })
        .to_string();
        expect_2xx(http(
            self.node(via).admin_addr,
            "POST",
            "/cluster/members",
            Some(&body),
        )?)
    }

    /// `DELETE /cluster/members/{id}` on node `via`.
    ///
    /// # Errors
    /// The answer is not 2xx.
    pub fn remove_member(&self, via: u64, id: u64) -> Result<(), String> {
        expect_2xx(http(
            self.node(via).admin_addr,
            "DELETE",
            &format!("/cluster/members/{id}"),
            None,
        )?)
    }

    /// The cluster secret every node was given, if any.
    pub fn secret(&self) -> Option<&str> {
        self.builder.cluster_secret()
    }

    /// The `--peers` value of the founding members (`1=addr,2=addr,...`).
    pub fn peers(&self) -> &str {
        &self.peers
    }

    /// Runs `starling cluster <args>` (e.g. `join --admin .. --node-id 4 --raft-address ..`).
    pub fn cluster_cli(&self, args: &[&str]) -> Output {
        Command::new(&self.builder.bin)
            .arg("cluster")
            .args(args)
            .env_remove("STARLING_CONFIG")
            .output()
            .expect("run starling cluster")
    }
}

/// Voter ids in a status document.
pub fn voters(status: &Value) -> Vec<u64> {
    let mut v: Vec<u64> = status["members"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["voter"] == true)
                .filter_map(|m| m["id"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// [`wait_until`] whose failure message also carries `state()`.
fn wait_until_or(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}\n{}",
            state()
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn expect_2xx((code, body): (u16, String)) -> Result<(), String> {
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP {code}: {}", body.trim()))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); returns the status code
/// and the body (de-chunked if need be).
///
/// # Errors
/// Connection or IO failure, or an answer that is not HTTP.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("cannot reach {addr}: {e}"))?;
    // Membership changes answer once applied (up to 15 s on the server's side).
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("reading the answer from {addr}: {e}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let (head, rest) = resp
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("incomplete answer from {addr}: {resp:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer from {addr}: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest).ok_or_else(|| format!("bad chunked body from {addr}"))?
    } else {
        rest.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        s = rest.get(size + 2..)?;
    }
}

/// How long [`TestCluster::stop`] waits for a node to exit after SIGTERM: its leadership
/// transfer (up to 5 s) and the store's shutdown (up to 5 s) with room to spare.
const GRACEFUL_EXIT: Duration = Duration::from_secs(30);

impl ClusterBuilder {
    /// Like [`ClusterBuilder::start`], with extra environment variables for some nodes only:
    /// `(node id, variable, value)` (e.g. a node whose local configuration differs). They stay
    /// with the node across [`TestCluster::restart`]; later ones override earlier ones and the
    /// variables every node gets.
    pub fn start_with_node_env(self, node_env: &[(u64, &str, &str)]) -> TestCluster {
        // Held until the node that uses them starts, so that no other node's MQTT port (which
        // the broker builder picks) lands on them.
        let mut held = reserve_ports(2 * self.size as usize);
        let addrs: BTreeMap<u64, (SocketAddr, SocketAddr)> = (1..=self.size)
            .map(|id| {
                let i = 2 * (id - 1) as usize;
                (id, (held[i].addr, held[i + 1].addr))
            })
            .collect();
        let peers = addrs
            .iter()
            .map(|(id, (raft, _))| format!("{id}={raft}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = TestCluster {
            builder: self,
            peers,
            nodes: BTreeMap::new(),
        };
        for (id, (raft, admin)) in addrs {
            held.drain(..2);
            let extra: Vec<(String, String)> = node_env
                .iter()
                .filter(|(n, _, _)| *n == id)
                .map(|(_, k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
            let node = cluster.spawn_with_env(id, raft, admin, &extra);
            cluster.nodes.insert(id, node);
        }
        for id in cluster.ids() {
            cluster.wait_admin(id);
        }
        cluster
    }
}

impl TestCluster {
    /// A founding member's process with `extra` variables after the cluster's own.
    fn spawn_with_env(
        &self,
        id: u64,
        raft: SocketAddr,
        admin: SocketAddr,
        extra: &[(String, String)],
    ) -> ClusterNode {
        let b = &self.builder;
        let mut builder = BrokerBuilder::new(&b.bin)
            .log_level(b.log_level.clone())
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--cluster-listen")
            .arg(raft.to_string())
            .arg("--peers")
            .arg(self.peers.clone())
            .arg("--admin-listen")
            .arg(admin.to_string());
        let mut env: Vec<(String, String)> = b.env.clone();
        for (k, v) in extra {
            env.retain(|(old, _)| old != k);
            env.push((k.clone(), v.clone()));
        }
        for (k, v) in env {
            builder = builder.env(k, v);
        }
        ClusterNode {
            id,
            raft_addr: raft,
            admin_addr: admin,
            process: builder.start(),
        }
    }

    /// Graceful stop of node `id`: SIGTERM, then waits until the process exited (it hands
    /// leadership over, closes its clients and writes its shutdown snapshot first). Returns
    /// the exit code. [`TestCluster::restart`] starts it again.
    ///
    /// # Panics
    /// The node does not exit within 30 s, or no such node.
    pub fn stop(&mut self, id: u64) -> Option<i32> {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
            .process
            .terminate(GRACEFUL_EXIT)
    }

    /// Resident memory of node `id`'s process now (`VmRSS`), in bytes; `None` when it does
    /// not run.
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        proc_status_bytes(self.node(id).process.pid()?, "VmRSS:")
    }

    /// The highest resident memory node `id`'s process had so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self, id: u64) -> Option<u64> {
        proc_status_bytes(self.node(id).process.pid()?, "VmHWM:")
    }

    /// Disk space taken by node `id`'s data directory (allocated blocks of every file in it,
    /// as `du` counts them), in bytes.
    pub fn data_dir_bytes(&self, id: u64) -> u64 {
        dir_bytes(self.node(id).process.data_dir())
    }

    /// A request to node `id`'s admin endpoint (see [`http`]).
    ///
    /// # Errors
    /// As [`http`].
    pub fn admin(
        &self,
        id: u64,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        http(self.node(id).admin_addr, method, path, body)
    }

    /// Sets the replicated limits (a JSON object with any of `max_queued_messages`,
    /// `max_inflight`, `max_queued_bytes`) with `PUT /cluster/limits`, asking each node in turn
    /// until one answers 200 (the change is then applied there), within `timeout`. In a cluster
    /// the `STARLING_MQTT_MAX_*` limits of a node's own configuration are ignored: this is how
    /// a test changes them.
    ///
    /// # Panics
    /// No node applied the change within `timeout`.
    pub fn set_limits(&self, json: &str, timeout: Duration) {
        self.wait(
            timeout,
            &format!("PUT /cluster/limits {json} to apply"),
            || {
                self.running().into_iter().any(|id| {
                    matches!(
                        self.admin(id, "PUT", "/cluster/limits", Some(json)),
                        Ok((200, _))
                    )
                })
            },
        );
    }

    /// The value of sample `name` (without labels) in node `id`'s `GET /metrics`, if it
    /// answers and has it.
    pub fn metric(&self, id: u64, name: &str) -> Option<f64> {
        let (code, body) = self.admin(id, "GET", "/metrics", None).ok()?;
        if code != 200 {
            return None;
        }
        metric_value(&body, name)
    }
}

/// A sample without labels in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A `<field> <n> kB` line of `/proc/<pid>/status`, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Allocated bytes of every file under `dir` (512-byte blocks, as `du` counts them).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(dechunk("4\r\nab"), None);
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        assert_eq!(
            dechunk("4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n").as_deref(),
            Some("{\"a\":1}")
        );
        assert_eq!(dechunk("4\r\nab"), None);
    }

    #[test]
    fn every_cluster_gets_its_own_secret() {
        let a = ClusterBuilder::new("x", 3);
        let b = ClusterBuilder::new("x", 3);
        let (sa, sb) = (a.cluster_secret().unwrap(), b.cluster_secret().unwrap());
        assert_eq!(sa.len(), 64);
        assert_ne!(sa, sb);
        let insecure = a.secret(None);
        assert_eq!(insecure.cluster_secret(), None);
        assert!(insecure
            .env
            .iter()
            .any(|(k, v)| k == INSECURE_VAR && v == "true"));
    }

    #[test]
    fn reserved_ports_are_distinct() {
        let mut p: Vec<u16> = reserve_ports(10).iter().map(|r| r.addr.port()).collect();
        p.sort_unstable();
        p.dedup();
        assert_eq!(p.len(), 10);
    }

    #[test]
    fn voters_are_read_from_members() {
        let s = serde_json::json!({"members": [
            {"id": 3, "voter": true}, {"id": 1, "voter": true}, {"id": 4, "voter": false}
        ]});
        assert_eq!(voters(&s), vec![1, 3]);
    }

    #[test]
    fn metric_samples_without_labels_are_read() {
        let text = "# HELP starling_sessions x\n# TYPE starling_sessions gauge\n\
                    starling_sessions 3\nstarling_sessions_online 1\n\
                    starling_messages_sent_total{qos=\"1\"} 7\n";
        assert_eq!(metric_value(text, "starling_sessions"), Some(3.0));
        assert_eq!(metric_value(text, "starling_sessions_online"), Some(1.0));
        assert_eq!(metric_value(text, "starling_messages_sent_total"), None);
    }

    #[test]
    fn own_process_memory_and_a_directory_size_are_measured() {
        let rss = proc_status_bytes(std::process::id(), "VmRSS:").expect("VmRSS");
        assert!(rss > 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), vec![1u8; 64 * 1024]).unwrap();
        assert!(dir_bytes(dir.path()) >= 128 * 1024);
    }
}
