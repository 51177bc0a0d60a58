//! Test support for Starling: the real broker as a child process, a raw MQTT client built on the
//! codec (for protocol edge cases real clients refuse to produce), and waits with deadlines.
//!
//! # Layout
//! - [`broker`]: [`BrokerProcess`]: start, `kill -9`, SIGTERM, restart on the same port and data.
//! - [`cluster`]: [`TestCluster`]: N nodes as processes on loopback, observed through their admin
//!   endpoints (leader, convergence of applied index and state digest, membership changes).
//! - [`raw`]: [`RawClient`]: send any bytes or packets, receive decoded packets with a timeout.
//! - [`strict`]: [`StrictClient`]: an MQTT client that keeps its session across connections and
//!   fails over through a list of nodes, with stage hooks and a history (failover tests).
//! - [`wait`]: [`wait_until`], the only way tests wait for something to become true.

pub mod broker;
pub mod cluster;
pub mod raw;
pub mod seed;
pub mod strict;
pub mod wait;

pub use broker::{BrokerBuilder, BrokerProcess};
pub use cluster::{ClusterBuilder, ClusterNode, Converged, TestCluster};
pub use raw::{RawClient, RecvError};
pub use seed::Rng;
pub use strict::{StrictClient, StrictConfig};
pub use wait::{wait_until, wait_until_async};
