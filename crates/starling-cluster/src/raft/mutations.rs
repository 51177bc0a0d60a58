//! Deliberately broken variants of the Raft node, switched on at run time by the simulator's own
//! tests to prove that it finds them. Compiled only with the `mutations` feature, which the
//! binary never enables.
//!
//! The switches are process-wide: a test that turns one on affects every node in the process
//! until it turns it off.

use std::sync::atomic::{AtomicBool, Ordering};

/// A known bug that can be put back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    /// A failed snapshot transfer is not reported to raft-rs, which then keeps the follower
    /// paused in its Snapshot state until the leader changes (issue 12, item 1).
    UnreportedSnapshot,
}

/// One switch per [`Mutation`].
static UNREPORTED_SNAPSHOT: AtomicBool = AtomicBool::new(false);

fn flag(m: Mutation) -> &'static AtomicBool {
    match m {
        Mutation::UnreportedSnapshot => &UNREPORTED_SNAPSHOT,
    }
}

/// Turns mutation `m` on or off for the whole process.
pub fn set(m: Mutation, on: bool) {
    flag(m).store(on, Ordering::SeqCst);
}

/// Whether mutation `m` is on.
pub fn on(m: Mutation) -> bool {
    flag(m).load(Ordering::SeqCst)
}
