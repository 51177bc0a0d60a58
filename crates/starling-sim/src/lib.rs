//! A deterministic simulation of a Starling cluster.
//!
//! Several nodes run the production code that decides things — the Raft node around raft-rs
//! (`starling_cluster::raft::RaftCore` and the snapshot transfer machines), the session store
//! (`starling_broker::StoreCore`), the router shards (`starling_broker::router::RouteTable`), the
//! connections' QoS flows (`starling_broker::connection::ClientFlow`) and the state machine —
//! in one thread, on simulated time, with a simulated network (delays, drops, duplicates,
//! reordering, partitions) and simulated disks (a crash loses what was not durable), driven by
//! strict MQTT clients, with crashes, graceful restarts, membership changes and changes of the
//! replicated limits drawn from one seed. The same seed replays the same run, event for event.
//!
//! # Layout
//! - [`world`]: a run: nodes, clients, faults, the event loop; [`run`] is the entry point.
//! - [`node`]: a node process: the cores with their mailboxes and IO made simulation events.
//! - [`conn`]: a client's connection on a node (what the connection actor does).
//! - [`client`]: the strict clients and their workload.
//! - [`sched`]: simulated time and the event queue; [`net`]: the network; [`disk`]: the disks.
//! - [`check`]: the checks on the nodes and the history; [`history`]: what happened, readable.
//! - [`rng`]: the one source of randomness.
//!
//! docs/simulation.md says how to run a long search and how to replay a seed.

pub mod check;
pub mod client;
pub mod conn;
pub mod disk;
pub mod history;
pub mod net;
pub mod node;
pub mod rng;
pub mod sched;
pub mod search;
pub mod world;

pub use search::{Search, Summary};
pub use world::{Options, Report, World};

/// Runs one simulation.
pub fn run(opts: Options) -> Report {
    // Maps iterate in the same order in every run of the process.
    let _ = starling_state::hashing::fix_seed(0x5EED);
    World::new(opts).run()
}

/// The bugs this simulator must find, put back on purpose (the `mutations` feature; never in
/// the binary). Each is a known bug of the replicated core.
#[cfg(feature = "mutations")]
pub mod mutations {
    use starling_broker::store::mutations as store;
    use starling_cluster::raft::mutations as raft;

    /// A broken variant.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Mutation {
        /// The router index is not rebuilt when the state is replaced or recovered.
        NoRouteRebuild,
        /// A failed snapshot transfer is not reported to raft-rs.
        UnreportedSnapshot,
        /// A restarted node's own `NodeDown` is proposed once and not retried.
        NodeDownOnce,
        /// The state machine applies each node's local limits instead of the replicated ones.
        LocalLimits,
    }

    /// All of them.
    pub const ALL: [Mutation; 4] = [
        Mutation::NoRouteRebuild,
        Mutation::UnreportedSnapshot,
        Mutation::NodeDownOnce,
        Mutation::LocalLimits,
    ];

    /// Switches `m` on or off for the whole process.
    pub fn set(m: Mutation, on: bool) {
        match m {
            Mutation::NoRouteRebuild => store::set(store::Mutation::NoRouteRebuild, on),
            Mutation::UnreportedSnapshot => raft::set(raft::Mutation::UnreportedSnapshot, on),
            Mutation::NodeDownOnce => store::set(store::Mutation::NodeDownOnce, on),
            Mutation::LocalLimits => store::set(store::Mutation::LocalLimits, on),
        }
    }
}
