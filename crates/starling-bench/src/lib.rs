//! `starling-bench`: a load generator for MQTT 3.1.1 brokers and a runner that compares Starling
//! with Mosquitto and rumqttd.
//!
//! # Layout
//! - [`payload`]: the 32-byte header every message carries (run id, publisher, sequence number,
//!   scheduled send time), so that the receiving side can count and time each message.
//! - [`stats`]: per-publisher sequence tracking (lost, duplicated, reordered), latency histograms
//!   (HDR), and the one-line JSON [`stats::Summary`] of a run.
//! - [`gate`]: the run-ahead bound that holds publishers at most `--max-ahead` messages ahead of
//!   the slowest subscriber of their flow.
//! - [`mqtt`]: one MQTT connection over a raw tokio socket, on the `starling-codec` crate:
//!   handshakes, a read buffer decoded packet by packet, one write buffer flushed per batch.
//! - [`scenario`]: the scenarios (`fan-in`, `fan-out`, `p2p`, `connections`, `qos2`), their
//!   options ([`scenario::RunArgs`]) and the entry points [`scenario::run`] /
//!   [`scenario::run_blocking`].
//! - [`sys`]: facts about processes from `/proc` (RSS, CPU time) and the file-descriptor limit.
//! - [`broker`]: starts and stops Starling, Mosquitto and rumqttd with equivalent settings.
//! - [`compare`]: runs the same scenarios against each broker, interleaved, and renders the
//!   markdown table of medians.
//! - [`smoke`]: the short run CI uses to check that the harness works and counts nothing lost.
//! - [`raft`]: the Raft store on its own: committed proposals per second and commit latency on
//!   an in-process three-node cluster (`raft`, and `raft-table` for the sweep).
//! - [`cluster`]: cross-node routing on a cluster of `starling` processes, next to a single
//!   node (`cluster`).
//!
//! # Who owns what
//! Every MQTT connection is one tokio task that owns its socket, its buffers, its sequence
//! trackers and its latency histogram; results are merged when the tasks are joined. The only
//! state shared while a run is going is each flow's [`gate::Gate`] (atomic counters and a
//! `Notify`) and the run context (clock origin, deadline, final sent counts).
//!
//! The library reports failures as [`BenchError`]; `anyhow` is used only by the binary.

pub mod broker;
pub mod cluster;
pub mod compare;
pub mod gate;
pub mod mqtt;
pub mod payload;
pub mod raft;
pub mod scenario;
pub mod smoke;
pub mod stats;
pub mod sys;

/// Why a benchmark step failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A socket or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A wait reached its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The broker said or did something the protocol does not allow here.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The broker closed a connection the benchmark still needed.
    #[error("connection closed by the broker: {0}")]
    Closed(String),
    /// A broker process could not be started, or died.
    #[error("broker: {0}")]
    Broker(String),
    /// The options given cannot be run.
    #[error("invalid options: {0}")]
    Options(String),
    /// A run finished but its counts show a problem (smoke mode).
    #[error("check failed: {0}")]
    Check(String),
}

impl BenchError {
    /// Wraps an IO error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> BenchError {
        BenchError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether this error is a deadline that passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, BenchError::Timeout(_))
    }
}
