//! Multi-node behaviour of the Raft-replicated store: real `starling` processes on loopback,
//! observed through MQTT clients and each node's admin endpoint (`/cluster/status`: role,
//! leader, applied index, state digest).
//!
//! `restore` wipes a cluster and brings it back with `starling restore` from a backup.
//!
//! Every test starts its own cluster (its own ports and data directories) with 50 ms Raft ticks;
//! waits are deadlines on observable state. Figures worth reporting (re-election time, catch-up
//! time, snapshot size) are printed as `MEASURE ...` lines (`-- --nocapture`).

#[path = "../common/mod.rs"]
mod common;

mod support;

mod connecting;
mod crash;
mod election;
mod failover;
mod limits;
mod membership;
mod node_down;
mod partition;
mod replication;
mod restore;
mod retained_memory;
mod routes;
mod shutdown;
mod snapshot;
mod snapshot_transfer;
mod startup;
