//! Protobuf types generated from the schemas in `proto/` at the repository root.
//!
//! - [`state::v1`]: the commands of the replicated log and the state-machine snapshot.

/// `starling.state.*` packages.
pub mod state {
    /// Version 1 of the state-machine schema.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/starling.state.v1.rs"));
    }
}
