//! A CONNECT whose proposal fails leaves the session store's per-client "connecting" count
//! raised (issue 12, item 8). The count says a persistent CONNECT of that client id is on its
//! way through the log; while it is raised, a clean CONNECT of the same id is proposed to the
//! log too instead of being served at once.
//!
//! In clustered mode every clean session goes through the log anyway, so the count is never
//! consulted there and a failed CONNECT (CONNACK 3 on a minority side) has no consequence
//! that shows from outside. On a single node it shows: once a persistent CONNECT failed, a
//! clean CONNECT of that client id waits for a commit that cannot come and is refused, while
//! one of a fresh id is accepted at once. A single node's CONNECT fails only when its log
//! cannot commit: here the data directory is on a small tmpfs that is then filled, so the
//! next write fails (ENOSPC) and the log refuses every later one. Needs root to mount it;
//! prints SKIPPED otherwise.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use starling_codec::ConnectReasonCode;
use starling_testkit::RawClient;

use crate::common::BIN;
use crate::support::*;

/// The commit timeout of the node (the shortest allowed): a refused CONNECT takes this long.
const COMMIT_TIMEOUT_SECS: &str = "1";

/// A tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `Err(why)` unless this process may mount one.
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0");
        if !root {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem is full.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("fill")).expect("create fill file");
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).and_then(|()| f.flush()).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// A single `starling` node on a data directory of the test's choosing (the testkit's brokers
/// always get their own).
struct Single {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Single {
    fn start(data_dir: &Path) -> Single {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let mut child = Command::new(BIN)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--log-level", "info", "--log-format", "text"])
            .env("STARLING_MQTT_COMMIT_TIMEOUT_SECS", COMMIT_TIMEOUT_SECS)
            .env_remove("STARLING_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run starling");
        let stderr = child.stderr.take().expect("stderr");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                lines.lock().unwrap().push(line);
            }
        });
        let listening = format!("listen socket on port {}", addr.port());
        let node = Single { child, addr, log };
        let up = poll_until(PROMPT, || {
            node.log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&listening))
        });
        assert!(up, "the node did not start:\n{}", node.log_text());
        node
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Single {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connack(addr: SocketAddr, id: &str, clean: bool) -> ConnectReasonCode {
    RawClient::connect(addr, id, clean).await.1.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_does_not_send_later_clean_connects_to_the_log() {
    let disk = match Tmpfs::mount("16m") {
        Ok(d) => d,
        Err(why) => {
            println!(
                "SKIPPED a_failed_connect_does_not_send_later_clean_connects_to_the_log: {why}"
            );
            return;
        }
    };
    let data: PathBuf = disk.path().join("data");
    let mut node = Single::start(&data);
    assert_eq!(
        connack(node.addr, "cc-before", false).await,
        ConnectReasonCode::Success,
        "control: a persistent CONNECT while the disk has room"
    );

    disk.fill();
    // The first write after that fails; the log refuses every later one.
    let mut failed = None;
    for i in 0..10 {
        let id = format!("cc-x{i}");
        if connack(node.addr, &id, false).await == ConnectReasonCode::ServerUnavailable {
            failed = Some(id);
            break;
        }
    }
    let failed = failed.unwrap_or_else(|| {
        panic!(
            "no persistent CONNECT failed on a full disk:\n{}",
            node.log_text()
        )
    });
    if blocking(|| node.exited()) {
        println!(
            "SKIPPED a_failed_connect_does_not_send_later_clean_connects_to_the_log: the node \
             stops when a write fails, so nothing follows a failed CONNECT here"
        );
        return;
    }
    assert_eq!(
        connack(node.addr, "cc-fresh", true).await,
        ConnectReasonCode::Success,
        "control: a clean CONNECT of a fresh client id is served without the log"
    );
    let t = std::time::Instant::now();
    let code = connack(node.addr, &failed, true).await;
    measure(
        "single node: clean CONNECT after a failed persistent CONNECT of the same id",
        format!("CONNACK {code:?} after {:?}", t.elapsed()),
    );
    assert_eq!(
        code,
        ConnectReasonCode::Success,
        "a clean CONNECT of {failed}, whose persistent CONNECT failed, must be served like \
         one of a fresh client id (without the log); it was proposed to the log instead\n{}",
        node.log_text()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
