//! The `starling` binary as a child process on an ephemeral port with its own data directory.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::wait::wait_until;

/// How to start a broker.
#[derive(Clone, Debug)]
pub struct BrokerBuilder {
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_level: String,
    log_format: String,
}

impl BrokerBuilder {
    /// A builder for the binary at `bin` (in tests: `env!("CARGO_BIN_EXE_starling")`).
    pub fn new(bin: impl Into<PathBuf>) -> BrokerBuilder {
        BrokerBuilder {
            bin: bin.into(),
            args: Vec::new(),
            env: Vec::new(),
            log_level: "debug".into(),
            log_format: "text".into(),
        }
    }

    /// Adds a command-line argument.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Sets an environment variable (e.g. `STARLING_MQTT_MAX_INFLIGHT`).
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Log level (default `debug`, so that tests can look for protocol lines).
    pub fn log_level(mut self, l: impl Into<String>) -> Self {
        self.log_level = l.into();
        self
    }

    /// Log format (default `text`).
    pub fn log_format(mut self, f: impl Into<String>) -> Self {
        self.log_format = f.into();
        self
    }

    /// Starts the broker on a free port with a fresh data directory and waits until it listens.
    pub fn start(self) -> BrokerProcess {
        let data = tempfile::Builder::new()
            .prefix("starling-test-")
            .tempdir()
            .expect("temp dir");
        let mut b = BrokerProcess {
            builder: self,
            data,
            port: 0,
            child: None,
            log: Arc::default(),
        };
        b.spawn_on_free_port();
        b
    }
}

/// A running (or stopped) broker process.
pub struct BrokerProcess {
    builder: BrokerBuilder,
    data: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl BrokerProcess {
    /// The MQTT address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn_on_free_port(&mut self) {
        for _ in 0..5 {
            self.port = free_port();
            if self.spawn() {
                return;
            }
        }
        panic!("broker did not start; log:\n{}", self.log_text());
    }

    /// Starts the process on `self.port`; false if it exited before listening.
    fn spawn(&mut self) -> bool {
        let b = &self.builder;
        let mut cmd = Command::new(&b.bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--log-level")
            .arg(&b.log_level)
            .arg("--log-format")
            .arg(&b.log_format)
            .args(&b.args)
            .envs(b.env.iter().cloned())
            .env_remove("STARLING_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", b.bin.display()));
        let stderr = child.stderr.take().expect("stderr");
        let log = self.log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let port = self.port;
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains(&format!("listen socket on port {port}")) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(true);
                    }
                }
                log.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
            if let Some(tx) = tx.take() {
                let _ = tx.send(false);
            }
        });
        let ok = rx.recv_timeout(Duration::from_secs(30)).unwrap_or(false);
        if !ok {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        self.child = Some(child);
        true
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; waits up to `timeout` for a clean exit and returns its status code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let mut status = None;
        wait_until(timeout, "broker to exit after SIGTERM", || {
            match c.try_wait() {
                Ok(Some(s)) => {
                    status = s.code();
                    true
                }
                Ok(None) => false,
                Err(_) => true,
            }
        });
        status
    }

    /// Starts the process again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push("--- restart ---".into());
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            // The port may still be held by a connection in TIME_WAIT of the old process.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("broker did not restart; log:\n{}", self.log_text());
    }

    /// Log lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The log as one string.
    pub fn log_text(&self) -> String {
        self.log_lines().join("\n")
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        wait_until(timeout, &format!("log line containing {needle:?}"), || {
            self.log
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|l| l.contains(needle))
        });
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Sends a signal with the `kill` command (the workspace forbids `unsafe`, so no libc call).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
