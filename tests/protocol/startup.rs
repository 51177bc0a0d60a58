//! Starting the broker: a listener that cannot be bound is a clean error, not a panic.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use crate::common::BIN;

#[test]
fn listen_failure_exits_with_an_error_and_no_panic() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let data = tempfile::tempdir().expect("temp dir");
    let out = Command::new(BIN)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data.path())
        .env("STARLING_MQTT_SYS_INTERVAL_SECS", "1")
        .env_remove("STARLING_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run starling");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
