//! The simulation's one source of randomness: every choice (latencies, drops, faults, the
//! workload, election timeouts, the order of simultaneous events) comes from it, so that a seed
//! replays a run exactly.

use starling_testkit::seed::Rng;

/// A seeded random source with the draws the simulation needs.
#[derive(Debug)]
pub struct SimRng(Rng);

impl SimRng {
    /// Seeded with `seed`.
    pub fn new(seed: u64) -> SimRng {
        // Mix the seed so that neighbouring seeds start far apart.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        SimRng(Rng::from_seed(z ^ (z >> 31)))
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.range(0, n.max(1) - 1)
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0.range(lo, hi)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// A random 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        self.0.range(0, u64::MAX - 1)
    }

    /// One element of `v` (not empty).
    pub fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize].clone()
    }
}
