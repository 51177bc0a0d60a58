//! Broker settings. Every limit is a field with a default; the binary fills them from the TOML
//! file, `STARLING_*` variables and flags.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use starling_state::StateConfig;

/// Settings of the broker core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// MQTT listeners (TCP).
    pub listeners: Vec<SocketAddr>,
    /// Worker threads (arbiters) for connections and router shards; 0 = one per CPU.
    pub workers: usize,
    /// Largest packet accepted, in bytes (fixed header included). Larger ones close the
    /// connection before their body is read.
    pub max_packet_size: usize,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Longest client id accepted from a 3.1.1 client (3.1 clients: 23, by the specification).
    pub max_client_id_len: usize,
    /// Outbound QoS 1/2 messages in flight per client.
    pub max_inflight: usize,
    /// Inbound QoS 1/2 PUBLISHes awaiting their acknowledgement per client before the broker
    /// stops reading from that client (backpressure).
    pub max_inflight_in: usize,
    /// Messages queued per session beyond the in-flight window.
    pub max_queued_messages: usize,
    /// Bytes held per session, in flight or queued (topic + payload + 64 per message).
    pub max_queued_bytes: usize,
    /// Bytes waiting in a connection's write buffer before QoS 0 messages to it are dropped.
    pub max_write_buffer: usize,
    /// Most simultaneous client connections.
    pub max_connections: usize,
    /// Interval of `$SYS` updates in seconds; 0 disables them.
    pub sys_interval_secs: u64,
    /// Seconds after which an abandoned persistent session is removed; 0 = never (3.1.1).
    pub session_expiry_secs: u64,
    /// Seconds to wait for a commit (persistent connect, durable publish) before failing.
    pub commit_timeout_secs: u64,
    /// Log entries between state snapshots (which let the log be compacted).
    pub snapshot_entries: u64,
    /// Accept connections without a user name.
    pub allow_anonymous: bool,
    /// Listen backlog.
    pub backlog: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listeners: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
            workers: 0,
            max_packet_size: 256 * 1024 * 1024,
            connect_timeout_secs: 10,
            max_client_id_len: 65535,
            max_inflight: 20,
            max_inflight_in: 1000,
            max_queued_messages: 1000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_write_buffer: 4 * 1024 * 1024,
            max_connections: 1_000_000,
            sys_interval_secs: 10,
            session_expiry_secs: 0,
            commit_timeout_secs: 5,
            snapshot_entries: 100_000,
            allow_anonymous: true,
            backlog: 4096,
        }
    }
}

/// A setting is out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {key}: {reason}")]
pub struct ConfigError {
    /// The setting's name.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl BrokerConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, reason: &str| {
            Err(ConfigError {
                key,
                reason: reason.to_string(),
            })
        };
        if self.listeners.is_empty() {
            return err("listeners", "at least one listener is needed");
        }
        if self.max_packet_size < 64 || self.max_packet_size > 268_435_460 {
            return err("max_packet_size", "must be between 64 bytes and 256 MiB");
        }
        if self.max_inflight == 0 || self.max_inflight > 65_535 {
            return err("max_inflight", "must be between 1 and 65535");
        }
        if self.max_inflight_in == 0 {
            return err("max_inflight_in", "must be at least 1");
        }
        if self.max_client_id_len < 23 {
            return err("max_client_id_len", "must be at least 23");
        }
        if self.max_queued_messages == 0 || self.max_queued_bytes < 1024 {
            return err(
                "max_queued_messages",
                "queues need room for at least one message and 1 KiB",
            );
        }
        if self.commit_timeout_secs == 0 {
            return err("commit_timeout_secs", "must be at least 1");
        }
        Ok(())
    }

    /// Worker count with 0 resolved to the number of CPUs.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The limits that are part of the replicated state.
    pub fn state_config(&self) -> StateConfig {
        StateConfig {
            max_queued_messages: self.max_queued_messages,
            max_inflight: self.max_inflight,
            max_queued_bytes: self.max_queued_bytes,
        }
    }

    /// CONNECT deadline.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// Commit deadline.
    pub fn commit_timeout(&self) -> Duration {
        Duration::from_secs(self.commit_timeout_secs)
    }
}
