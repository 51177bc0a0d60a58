//! The hasher of [`FastMap`](crate::FastMap): foldhash with one seed per process.
//!
//! The seed is random unless a deterministic run fixes it before the first map is built
//! ([`fix_seed`]): the simulator does, so that the iteration order of every map, and with it
//! the order of everything a node emits, is the same for the same simulation seed. Production
//! never fixes it.

use std::hash::BuildHasher;
use std::sync::OnceLock;

static SEED: OnceLock<u64> = OnceLock::new();

fn seed() -> u64 {
    *SEED.get_or_init(|| {
        // The standard library's per-process random keys, without another dependency.
        std::collections::hash_map::RandomState::new().hash_one(0x5374_6172_6c69_6e67_u64)
    })
}

/// Fixes the process's hash seed. Returns false (and changes nothing) when a seed was already
/// chosen, by an earlier call or by a map built before.
pub fn fix_seed(seed: u64) -> bool {
    SEED.set(seed).is_ok() || SEED.get() == Some(&seed)
}

/// Builds foldhash hashers keyed by the process's seed.
#[derive(Clone, Copy, Debug)]
pub struct ProcessSeeded(foldhash::fast::FixedState);

impl Default for ProcessSeeded {
    fn default() -> Self {
        ProcessSeeded(foldhash::fast::FixedState::with_seed(seed()))
    }
}

impl BuildHasher for ProcessSeeded {
    type Hasher = foldhash::fast::FoldHasher;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_per_process() {
        let a = ProcessSeeded::default().hash_one("client-1");
        let b = ProcessSeeded::default().hash_one("client-1");
        assert_eq!(a, b, "every map of the process hashes alike");
        assert!(!fix_seed(seed().wrapping_add(1)), "too late to change it");
        assert!(fix_seed(seed()), "fixing the seed in force is harmless");
    }
}
