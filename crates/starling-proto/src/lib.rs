//! Protobuf types generated from the schemas in `proto/` at the repository root.
//!
//! - [`state::v1`]: the commands of the replicated log and the state-machine snapshot.
//! - [`cluster::v1`]: messages and the gRPC service between nodes.

/// `starling.state.*` packages.
pub mod state {
    /// Version 1 of the state-machine schema.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/starling.state.v1.rs"));
    }
}

/// `starling.cluster.*` packages.
pub mod cluster {
    /// Version 1 of the node-to-node protocol.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/starling.cluster.v1.rs"));
    }
}
