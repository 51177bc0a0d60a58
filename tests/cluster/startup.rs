//! What a node checks before it starts: settings clustered mode refuses (exit code 2, the keys
//! named), and the configurations shipped in `deploy/` (compose, Kubernetes) passing those
//! checks, so that they start the first time.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::BIN;

/// Starts a clustered node with `env` (on top of a valid single-member setup) and returns its
/// exit code and standard error; panics if it is still running after 10 s.
fn start_refused(what: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--node-id", "1", "--peers", "1=127.0.0.1:1"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .env("STARLING_CLUSTER_INSECURE", "true")
        .env_remove("STARLING_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: the node started in clustered mode");
        }
        // The poll interval of a deadline wait.
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    (status.code(), stderr)
}

/// Votes and append acknowledgements must not precede durability: clustered mode refuses
/// `storage.fsync = "interval"` at start (exit code 2, a message naming the key).
#[test]
fn clustered_mode_refuses_fsync_interval() {
    for (how, args, env) in [
        ("flag", &["--fsync", "interval"][..], &[][..]),
        (
            "environment",
            &[][..],
            &[("STARLING_STORAGE_FSYNC", "interval")][..],
        ),
    ] {
        let (code, stderr) = start_refused(&format!("fsync = interval ({how})"), args, env);
        assert_eq!(code, Some(2), "fsync = interval ({how}): {stderr}");
        assert!(
            stderr.contains("storage.fsync"),
            "the message names the key ({how}): {stderr}"
        );
    }
}

/// One log entry travels in one peer message: a node whose largest accepted PUBLISH could not
/// fit in `cluster.max_message_bytes` refuses to start (exit code 2) and names both keys; so
/// does a snapshot chunk larger than half a message. The defaults start (every other test).
#[test]
fn clustered_mode_refuses_limits_no_peer_message_carries() {
    let (code, stderr) = start_refused(
        "max_packet_size over max_message_bytes",
        &[],
        &[
            ("STARLING_MQTT_MAX_PACKET_SIZE", "1048576"),
            ("STARLING_CLUSTER_MAX_MESSAGE_BYTES", "1048576"),
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    for key in ["mqtt.max_packet_size", "cluster.max_message_bytes"] {
        assert!(stderr.contains(key), "the message names {key}: {stderr}");
    }
    let (code, stderr) = start_refused(
        "snapshot_chunk_bytes over half of max_message_bytes",
        &[],
        &[("STARLING_CLUSTER_SNAPSHOT_CHUNK_BYTES", "200000000")],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("cluster.snapshot_chunk_bytes"),
        "the message names the key: {stderr}"
    );
}

/// The settings `deploy/` ships (the compose file's and the Kubernetes ConfigMap's
/// `starling.toml`) pass every start check: a node started with one of them, only its addresses,
/// secret and data directory pointed at this machine, serves.
#[test]
fn the_shipped_configurations_start() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let compose = std::fs::read_to_string(root.join("deploy/compose/starling.toml")).unwrap();
    let configmap = std::fs::read_to_string(root.join("deploy/k8s/configmap.yaml")).unwrap();
    let k8s = embedded_toml(&configmap);
    assert!(
        k8s.contains("[cluster]"),
        "the ConfigMap's starling.toml: {k8s}"
    );
    for (name, text) in [("compose", compose), ("kubernetes", k8s)] {
        starts_with(name, &text);
    }
}

/// The `starling.toml: |` block of a ConfigMap, unindented.
fn embedded_toml(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("starling.toml: |"));
    lines.next();
    let body: Vec<&str> = lines
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .collect();
    body.iter()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Starts a one-member cluster with `config` (addresses, secret and data directory overridden)
/// and waits until it listens for MQTT; panics with its log if it exits or does not.
fn starts_with(name: &str, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("starling.toml");
    std::fs::write(&file, config).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-test-secret-of-32-bytes-length").unwrap();
    let (mqtt, peer, admin) = (free_port(), free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{mqtt}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--log-format", "text"])
        .env_remove("STARLING_CONFIG")
        .env("STARLING_CLUSTER_NODE_ID", "1")
        .env("STARLING_CLUSTER_LISTEN", format!("127.0.0.1:{peer}"))
        .env("STARLING_CLUSTER_PEERS", format!("1=127.0.0.1:{peer}"))
        .env(
            "STARLING_CLUSTER_ADMIN_LISTEN",
            format!("127.0.0.1:{admin}"),
        )
        .env("STARLING_CLUSTER_SECRET_FILE", &secret)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let lines = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    });
    let listening = format!("listen socket on port {mqtt}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        if log.lock().unwrap().iter().any(|l| l.contains(&listening)) {
            break Ok(());
        }
        if let Some(status) = child.try_wait().unwrap() {
            break Err(format!("exited with {status}"));
        }
        if Instant::now() >= deadline {
            break Err("did not listen within 30 s".into());
        }
        // The poll interval of a deadline wait.
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    if let Err(why) = outcome {
        panic!(
            "a node with the {name} configuration {why}:\n{}",
            log.lock().unwrap().join("\n")
        );
    }
}
