//! Broker processes for the comparison: Starling, Mosquitto and rumqttd, each started fresh on a
//! free loopback port with equivalent limits, and stopped after the run.
//!
//! | limit                    | Starling                            | Mosquitto               | rumqttd                                  |
//! |--------------------------|-------------------------------------|-------------------------|------------------------------------------|
//! | outbound in-flight       | `STARLING_MQTT_MAX_INFLIGHT`        | `max_inflight_messages` | fixed at 100 in its source (`MAX_INFLIGHT`) |
//! | per-session queue        | `STARLING_MQTT_MAX_QUEUED_MESSAGES` | `max_queued_messages`   | none (a commit log of segments)          |
//! | inbound in-flight        | default 1000                        | none                    | `max_inflight_count` = 1000              |
//! | persistence              | `--in-memory`                       | `persistence false`     | none                                     |
//! | connections              | default 1000000                     | unlimited               | `router.max_connections`                 |
//! | TCP_NODELAY              | always                              | `set_tcp_nodelay true`  | (tokio default: off)                     |
//! | connection accept delay  | none                                | none                    | `next_connection_delay_ms = 0`           |
//!
//! Every broker logs warnings and errors only, to a file in the broker's temporary directory.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchError;

/// The brokers the comparison knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum BrokerKind {
    /// Starling (`--in-memory`).
    Starling,
    /// Eclipse Mosquitto 2.
    Mosquitto,
    /// rumqttd (bytebeam).
    Rumqttd,
}

impl BrokerKind {
    /// Lower-case name, used as the broker label.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Starling => "starling",
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::Rumqttd => "rumqttd",
        }
    }
}

/// Limits set equally on every broker (where it has the setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Outbound QoS 1/2 messages in flight per client.
    pub inflight: u32,
    /// Messages queued per session beyond the in-flight window.
    pub queued: u32,
    /// Simultaneous connections allowed.
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            inflight: 100,
            queued: 1000,
            max_connections: 200_000,
        }
    }
}

/// How to start one Starling process with [`BrokerProcess::spawn_starling`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StarlingSpec {
    /// Short name for its temporary directory (`node1`, `single`).
    pub name: String,
    /// MQTT port on 127.0.0.1.
    pub port: u16,
    /// Options after `--listen`, `--data-dir` and `--log-level warn` (e.g. the cluster flags,
    /// `--fsync`).
    pub args: Vec<String>,
    /// Environment variables besides the limits (e.g. `STARLING_CLUSTER_SECRET`).
    pub env: Vec<(String, String)>,
}

/// A running broker.
#[derive(Debug)]
pub struct BrokerProcess {
    kind: BrokerKind,
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (bound and released; the broker binds it right after).
fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BenchError::io("find a free port", e))
}

impl BrokerProcess {
    /// Starts `kind` from `bin` on a free port and waits (up to `wait`) until it accepts TCP
    /// connections.
    ///
    /// # Errors
    /// [`BenchError::Broker`] if the binary is missing, exits, or never listens.
    pub fn start(
        kind: BrokerKind,
        bin: &Path,
        limits: Limits,
        wait: Duration,
    ) -> Result<BrokerProcess, BenchError> {
        if !bin.exists() {
            return Err(BenchError::Broker(format!(
                "{} binary not found at {}",
                kind.name(),
                bin.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("starling-bench-{}-", kind.name()))
            .tempdir()
            .map_err(|e| BenchError::io("create a temp dir", e))?;
        let port = free_port()?;
        // Absolute: the child runs in its temporary directory, and a relative program path
        // would be looked up from there.
        let mut cmd = Command::new(absolute(bin));
        cmd.current_dir(dir.path());
        match kind {
            BrokerKind::Starling => {
                cmd.args(["--in-memory", "--log-level", "warn", "--listen"])
                    .arg(format!("127.0.0.1:{port}"))
                    .env("STARLING_MQTT_MAX_INFLIGHT", limits.inflight.to_string())
                    .env(
                        "STARLING_MQTT_MAX_QUEUED_MESSAGES",
                        limits.queued.to_string(),
                    )
                    .env(
                        "STARLING_MQTT_MAX_CONNECTIONS",
                        limits.max_connections.to_string(),
                    );
            }
            BrokerKind::Mosquitto => {
                let conf = dir.path().join("mosquitto.conf");
                write(&conf, &mosquitto_conf(port, limits))?;
                cmd.arg("-c").arg(&conf);
            }
            BrokerKind::Rumqttd => {
                let conf = dir.path().join("rumqttd.toml");
                write(&conf, &rumqttd_toml(port, limits))?;
                cmd.arg("-c").arg(&conf).arg("-q");
            }
        }
        let mut b = BrokerProcess::launch(kind, bin, cmd, port, dir)?;
        b.wait_listening(wait)?;
        Ok(b)
    }

    /// Spawns `cmd` (running in `dir`) with its output going to `dir/broker.log`.
    fn launch(
        kind: BrokerKind,
        bin: &Path,
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Result<BrokerProcess, BenchError> {
        let log = dir.path().join("broker.log");
        let out = File::create(&log).map_err(|e| BenchError::io("create broker log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| BenchError::io("clone broker log", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Broker(format!("cannot start {}: {e}", bin.display())))?;
        Ok(BrokerProcess {
            kind,
            child,
            port,
            log,
            _dir: dir,
        })
    }

    /// Spawns Starling from `bin` **with persistence** (its data directory is `data` inside a
    /// fresh temporary directory) on 127.0.0.1:`port`, with the `limits` and `spec`'s options
    /// and environment; does not wait for it (see [`BrokerProcess::wait_listening`]). Used for
    /// the nodes of a cluster and for the single node they are compared with.
    ///
    /// # Errors
    /// [`BenchError::Broker`] if the binary is missing or cannot be started.
    pub fn spawn_starling(
        bin: &Path,
        spec: &StarlingSpec,
        limits: Limits,
    ) -> Result<BrokerProcess, BenchError> {
        if !bin.exists() {
            return Err(BenchError::Broker(format!(
                "starling binary not found at {}",
                bin.display()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("starling-bench-{}-", spec.name))
            .tempdir()
            .map_err(|e| BenchError::io("create a temp dir", e))?;
        let mut cmd = Command::new(absolute(bin));
        cmd.current_dir(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", spec.port))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--log-level", "warn"])
            .args(&spec.args)
            .env("STARLING_MQTT_MAX_INFLIGHT", limits.inflight.to_string())
            .env(
                "STARLING_MQTT_MAX_QUEUED_MESSAGES",
                limits.queued.to_string(),
            )
            .env(
                "STARLING_MQTT_MAX_CONNECTIONS",
                limits.max_connections.to_string(),
            );
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        BrokerProcess::launch(BrokerKind::Starling, bin, cmd, spec.port, dir)
    }

    /// Waits (up to `wait`) until the broker accepts TCP connections on its port.
    ///
    /// # Errors
    /// [`BenchError::Broker`] if it exits or does not listen in time (it is killed then).
    pub fn wait_listening(&mut self, wait: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + wait;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(BenchError::Broker(format!(
                    "{} exited at start ({status}); log:\n{}",
                    self.kind.name(),
                    self.log_tail(20)
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let tail = self.log_tail(20);
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(BenchError::Broker(format!(
                    "{} did not listen on {addr} within {wait:?}; log:\n{tail}",
                    self.kind.name()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops it with SIGTERM (through `kill`, so that this crate needs no unsafe code), then
    /// SIGKILL after 5 s. Returns the log's tail if it had already exited by itself.
    pub fn stop(mut self) -> Option<String> {
        if let Some(status) = self.exited() {
            return Some(format!(
                "{} had exited ({status}); log:\n{}",
                self.kind.name(),
                self.log_tail(30)
            ));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `path` made absolute (as is if that fails: the spawn then reports the problem).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::io(format!("write {}", path.display()), e))
}

/// Mosquitto's configuration for the comparison.
pub fn mosquitto_conf(port: u16, l: Limits) -> String {
    format!(
        "# starling-bench: in-memory, equivalent limits\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_inflight_messages {}\n\
         max_queued_messages {}\n\
         max_connections {}\n\
         set_tcp_nodelay true\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n",
        l.inflight, l.queued, l.max_connections
    )
}

/// rumqttd's configuration for the comparison (its example `rumqttd.toml`, one v4 listener,
/// no console, prometheus or websocket listeners).
pub fn rumqttd_toml(port: u16, l: Limits) -> String {
    format!(
        "# starling-bench: rumqttd has no persistence; outbound in-flight is fixed at 100\n\
         id = 0\n\
         \n\
         [router]\n\
         id = 0\n\
         max_connections = {}\n\
         max_outgoing_packet_count = 200\n\
         max_segment_size = 104857600\n\
         max_segment_count = 10\n\
         \n\
         [v4.1]\n\
         name = \"v4-1\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         next_connection_delay_ms = 0\n\
         \x20   [v4.1.connections]\n\
         \x20   connection_timeout_ms = 60000\n\
         \x20   max_payload_size = 20480\n\
         \x20   max_inflight_count = 1000\n\
         \x20   dynamic_filters = true\n",
        l.max_connections
    )
}
