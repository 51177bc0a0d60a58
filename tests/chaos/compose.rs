//! The three-node compose cluster under its own project name (the shipped compose file with
//! `tests/chaos/compose.chaos.yml` laid over it), and the faults Docker can inject into it:
//! `docker kill -s KILL`, `docker stop` (SIGTERM and the grace period), `docker start`,
//! `docker pause` / `unpause`, `docker network disconnect` / `connect`, and calls of the admin
//! endpoint. Dropping [`Cluster`] removes the containers and their volumes, also when the test
//! fails.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Nodes in the compose file (`starling-0..2`, node ids 1..3).
pub(crate) const NODES: usize = 3;

/// The compose project: fixed, so that a run killed before its clean-up is cleaned up by the
/// next one (and by `tests/chaos/run.sh`); different from `tests/deploy`'s.
pub(crate) const PROJECT: &str = "starling-chaos";

/// Prints past the test harness's capture.
pub(crate) fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "chaos: {msg}");
}

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// Runs `cmd`; `Err` with its output unless it succeeded.
pub(crate) fn try_run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `cmd`; panics with its output unless it succeeded.
pub(crate) fn run(cmd: &mut Command) -> Output {
    try_run(cmd).unwrap_or_else(|e| panic!("{e}"))
}

fn docker(args: &[&str]) -> Result<Output, String> {
    try_run(Command::new("docker").args(args))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Builds `image` with `deploy/docker/build.sh` unless it exists.
pub(crate) fn ensure_image(image: &str) {
    if docker(&["image", "inspect", image]).is_ok() {
        say(&format!("image {image} present"));
        return;
    }
    say(&format!("building {image} with deploy/docker/build.sh"));
    run(Command::new(repo().join("deploy/docker/build.sh")).arg(image));
}

/// The compose command: `docker compose` (v2) or `docker-compose` (v1).
fn compose_cmd() -> Vec<String> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v2 {
        vec!["docker".into(), "compose".into()]
    } else {
        vec!["docker-compose".into()]
    }
}

/// A running compose project; `down -v` when dropped.
pub(crate) struct Cluster {
    /// `docker compose` or `docker-compose`.
    cmd: Vec<String>,
    /// The shipped compose file, then the chaos settings laid over it.
    files: Vec<PathBuf>,
    /// Variables the compose files read (image, ports, cluster secret).
    env: Vec<(String, String)>,
    /// Host ports of each node's MQTT listener (127.0.0.1).
    pub(crate) mqtt: Vec<u16>,
    /// Host ports of each node's admin endpoint (127.0.0.1).
    pub(crate) admin: Vec<u16>,
    /// Container id of each node.
    containers: Vec<String>,
    /// The project's network.
    network: String,
}

impl Cluster {
    /// Starts the project (removing what a previous run may have left) and waits until every
    /// node answers `/readyz` with 200.
    pub(crate) fn start(image: &str, timeout: Duration) -> Cluster {
        let mqtt: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let admin: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let mut env = vec![
            ("STARLING_IMAGE".to_string(), image.to_string()),
            (
                "STARLING_CLUSTER_SECRET".to_string(),
                starling_testkit::cluster::random_secret(),
            ),
        ];
        for i in 0..NODES {
            env.push((format!("STARLING_MQTT_PORT_{i}"), mqtt[i].to_string()));
            env.push((format!("STARLING_ADMIN_PORT_{i}"), admin[i].to_string()));
        }
        let mut c = Cluster {
            cmd: compose_cmd(),
            files: vec![
                repo().join("deploy/compose/docker-compose.yml"),
                repo().join("tests/chaos/compose.chaos.yml"),
            ],
            env,
            mqtt,
            admin,
            containers: Vec::new(),
            network: String::new(),
        };
        c.down();
        run(&mut c.compose(&["up", "-d"]));
        for i in 0..NODES {
            let out = run(&mut c.compose(&["ps", "-q", &service(i)]));
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(!id.is_empty(), "no container for {}", service(i));
            c.containers.push(id);
        }
        // The schedule decides when a killed node comes back, not the restart policy.
        let mut update = vec!["update", "--restart", "no"];
        update.extend(c.containers.iter().map(String::as_str));
        docker(&update).unwrap_or_else(|e| panic!("{e}"));
        let nets = docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            &c.containers[0],
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        c.network = String::from_utf8_lossy(&nets.stdout)
            .split_whitespace()
            .next()
            .expect("the project's network")
            .to_string();
        c.wait_all_ready(timeout)
            .unwrap_or_else(|e| panic!("cluster start: {e}"));
        c
    }

    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.cmd[0]);
        c.args(&self.cmd[1..]).arg("-p").arg(PROJECT);
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn down(&self) {
        let _ = self
            .compose(&["down", "-v", "--remove-orphans", "-t", "5"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The MQTT address of node `i` as the host reaches it.
    pub(crate) fn mqtt_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.mqtt[i]))
    }

    /// The node whose MQTT address is `addr`.
    pub(crate) fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        self.mqtt.iter().position(|p| *p == addr.port())
    }

    /// `docker kill -s KILL` of node `i`.
    pub(crate) fn kill(&self, i: usize) -> Result<(), String> {
        docker(&["kill", "-s", "KILL", &self.containers[i]]).map(drop)
    }

    /// `docker kill -s KILL` of every node in one command.
    pub(crate) fn kill_all(&self) -> Result<(), String> {
        let mut args = vec!["kill", "-s", "KILL"];
        args.extend(self.containers.iter().map(String::as_str));
        docker(&args).map(drop)
    }

    /// `docker stop` of node `i`: SIGTERM, then SIGKILL if it has not exited within the grace
    /// period of the compose file (`stop_grace_period`). Returns how long the stop took.
    pub(crate) fn stop(&self, i: usize) -> Result<Duration, String> {
        let t0 = Instant::now();
        docker(&["stop", &self.containers[i]]).map(|_| t0.elapsed())
    }

    /// `docker start` of node `i` (no-op if it runs).
    pub(crate) fn start_node(&self, i: usize) -> Result<(), String> {
        docker(&["start", &self.containers[i]]).map(drop)
    }

    /// `docker start` of every node in one command.
    pub(crate) fn start_all(&self) -> Result<(), String> {
        let mut args = vec!["start"];
        args.extend(self.containers.iter().map(String::as_str));
        docker(&args).map(drop)
    }

    /// `docker pause` of node `i`.
    pub(crate) fn pause(&self, i: usize) -> Result<(), String> {
        docker(&["pause", &self.containers[i]]).map(drop)
    }

    /// `docker unpause` of node `i`.
    pub(crate) fn unpause(&self, i: usize) -> Result<(), String> {
        docker(&["unpause", &self.containers[i]]).map(drop)
    }

    /// Cuts node `i` off the project's network (its peers and the host alike).
    pub(crate) fn disconnect(&self, i: usize) -> Result<(), String> {
        docker(&["network", "disconnect", &self.network, &self.containers[i]]).map(drop)
    }

    /// Puts node `i` back on the network under its service name (peers resolve it by that
    /// alias, which a plain `connect` would not restore).
    pub(crate) fn connect(&self, i: usize) -> Result<(), String> {
        docker(&[
            "network",
            "connect",
            "--alias",
            &service(i),
            &self.network,
            &self.containers[i],
        ])
        .map(drop)
    }

    /// Makes sure every node runs, is unpaused and is on the network (after a failed step).
    pub(crate) fn heal_everything(&self) {
        for i in 0..NODES {
            let _ = self.unpause(i);
            let _ = self.start_node(i);
            if !self.on_network(i) {
                let _ = self.connect(i);
            }
        }
    }

    fn on_network(&self, i: usize) -> bool {
        docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
            &self.containers[i],
        ])
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|n| n == self.network)
        })
    }

    /// `GET /readyz` of node `i` answers 200.
    pub(crate) fn ready(&self, i: usize) -> bool {
        matches!(self.admin_get(i, "/readyz"), Ok((200, _)))
    }

    fn admin_get(&self, i: usize, path: &str) -> Result<(u16, String), String> {
        self.admin_call(i, "GET", path, None)
    }

    /// The admin address of node `i` as the host reaches it.
    pub(crate) fn admin_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin[i]))
    }

    /// An HTTP call to node `i`'s admin endpoint: status code and body.
    pub(crate) fn admin_call(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        starling_testkit::cluster::http(self.admin_addr(i), method, path, body)
    }

    /// Polls until every node is ready.
    pub(crate) fn wait_all_ready(&self, timeout: Duration) -> Result<Duration, String> {
        let t0 = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if (0..NODES).all(|i| self.ready(i)) {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                return Err(format!(
                    "not every node ready within {timeout:?}:\n{}",
                    self.describe()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// `GET /cluster/status` of node `i`.
    pub(crate) fn status(&self, i: usize) -> Option<Value> {
        match self.admin_get(i, "/cluster/status") {
            Ok((200, body)) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// The node that leads in the highest term any reachable node reports.
    pub(crate) fn leader(&self) -> Option<usize> {
        (0..NODES)
            .filter_map(|i| {
                let s = self.status(i)?;
                (s["role"] == "leader").then(|| (s["term"].as_u64().unwrap_or(0), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// Every node at the same applied index with the same state digest: `(index, digest)`.
    pub(crate) fn converged(&self) -> Option<(u64, String)> {
        let mut common: Option<(u64, String)> = None;
        for i in 0..NODES {
            let s = self.status(i)?;
            let mine = (
                s["applied_index"].as_u64()?,
                s["state_digest"].as_str()?.to_string(),
            );
            match &common {
                None => common = Some(mine),
                Some(c) if *c == mine => {}
                Some(_) => return None,
            }
        }
        common
    }

    /// One line per node: role, term, leader, commit and applied index, digest.
    pub(crate) fn describe(&self) -> String {
        (0..NODES)
            .map(|i| match self.status(i) {
                Some(s) => format!(
                    "node {} ({}): role={} term={} leader={} commit={} applied={} digest={}",
                    i + 1,
                    service(i),
                    s["role"],
                    s["term"],
                    s["leader"],
                    s["commit_index"],
                    s["applied_index"],
                    s["state_digest"]
                ),
                None => format!("node {} ({}): no status", i + 1, service(i)),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every log line node `i` wrote, across its restarts, each prefixed with Docker's
    /// timestamp (`docker logs -t`).
    pub(crate) fn logs(&self, i: usize) -> String {
        Command::new("docker")
            .args(["logs", "-t", &self.containers[i]])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// The last `n` log lines of node `i`.
    pub(crate) fn log_tail(&self, i: usize, n: usize) -> String {
        let out = Command::new("docker")
            .args(["logs", "--tail", &n.to_string(), &self.containers[i]])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            say(&self.describe());
            for i in 0..NODES {
                say(&format!(
                    "--- last log lines of {} ---\n{}",
                    service(i),
                    self.log_tail(i, 60)
                ));
            }
        }
        // A paused container is not stopped by `down`.
        for i in 0..self.containers.len() {
            let _ = self.unpause(i);
        }
        self.down();
        say(&format!(
            "compose project {PROJECT} and its volumes removed"
        ));
    }
}

/// The compose service of node `i`.
pub(crate) fn service(i: usize) -> String {
    format!("starling-{i}")
}
