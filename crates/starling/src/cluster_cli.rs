//! `starling cluster status | join | leave | limits | check --admin HOST:PORT`: a small
//! HTTP/1.1 client of the admin endpoint (one request per connection, `Connection: close`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The admin operations.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum ClusterOp {
    /// Print a node's view of the cluster (JSON).
    Status {
        /// Admin endpoint of any node.
        #[arg(long, value_name = "HOST:PORT")]
        admin: String,
    },
    /// Add a node as a voting member (it must be running with --join and an empty data dir).
    Join {
        /// Admin endpoint of any current member.
        #[arg(long, value_name = "HOST:PORT")]
        admin: String,
        /// The new node's id.
        #[arg(long)]
        node_id: u64,
        /// The new node's peer address (its --advertise or --cluster-listen).
        #[arg(long, value_name = "HOST:PORT")]
        raft_address: String,
        /// The new node's admin address (informational).
        #[arg(long, value_name = "HOST:PORT", default_value = "")]
        admin_address: String,
    },
    /// Remove a member.
    Leave {
        /// Admin endpoint of any member.
        #[arg(long, value_name = "HOST:PORT")]
        admin: String,
        /// The id of the node to remove.
        #[arg(long)]
        node_id: u64,
    },
    /// Print the replicated limits, or change them for every node (through the log): the
    /// session queue bounds the state machine applies. Without a flag: print them.
    Limits {
        /// Admin endpoint of any member.
        #[arg(long, value_name = "HOST:PORT")]
        admin: String,
        /// Messages queued per persistent session beyond the in-flight window.
        #[arg(long, value_name = "N")]
        max_queued_messages: Option<u64>,
        /// Outbound QoS 1/2 messages in flight per client.
        #[arg(long, value_name = "N")]
        max_inflight: Option<u64>,
        /// Bytes held per persistent session.
        #[arg(long, value_name = "BYTES")]
        max_queued_bytes: Option<u64>,
    },
    /// Compare every index a node derives from the replicated state with a rebuild from it
    /// (exit code 1 and the differences when they disagree).
    Check {
        /// Admin endpoint of the node to check.
        #[arg(long, value_name = "HOST:PORT")]
        admin: String,
    },
}

/// Sends one request; returns (status code, body).
fn request(
    admin: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(admin).map_err(|e| format!("cannot reach {admin}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("reading the answer from {admin}: {e}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer from {admin}"))?;
    Ok((code, body.to_string()))
}

/// Runs an operation; the exit code is 0 on success.
pub(crate) fn run(op: &ClusterOp) -> Result<(), String> {
    let (admin, method, path, body) = match op {
        ClusterOp::Status { admin } => (admin, "GET", "/cluster/status".to_string(), None),
        ClusterOp::Join { admin, node_id, raft_address, admin_address } => (
            admin,
            "POST",
            "/cluster/members".to_string(),
            Some(serde_json::json!({"node_id": node_id, "raft_address": raft_address, "admin_address": admin_address}).to_string()),
        ),
        ClusterOp::Leave { admin, node_id } => (admin, "DELETE", format!("/cluster/members/{node_id}"), None),
        ClusterOp::Limits { admin, max_queued_messages: None, max_inflight: None, max_queued_bytes: None } => {
            (admin, "GET", "/cluster/limits".to_string(), None)
        }
        ClusterOp::Limits { admin, max_queued_messages, max_inflight, max_queued_bytes } => {
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("max_queued_messages", max_queued_messages),
                ("max_inflight", max_inflight),
                ("max_queued_bytes", max_queued_bytes),
            ] {
                if let Some(v) = value {
                    if *v == 0 {
                        return Err(format!("--{}: must be at least 1", key.replace('_', "-")));
                    }
                    body.insert(key.into(), (*v).into());
                }
            }
            (admin, "PUT", "/cluster/limits".to_string(), Some(serde_json::Value::Object(body).to_string()))
        }
        ClusterOp::Check { admin } => (admin, "GET", "/cluster/check".to_string(), None),
    };
    let (code, text) = request(admin, method, &path, body.as_deref())?;
    if (200..300).contains(&code) {
        if !text.trim().is_empty() {
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(text)),
                Err(_) => println!("{}", text.trim()),
            }
        } else {
            println!("ok");
        }
        Ok(())
    } else {
        Err(format!("{method} {path}: HTTP {code}: {}", text.trim()))
    }
}
