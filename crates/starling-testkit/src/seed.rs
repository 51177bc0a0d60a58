//! A small seeded random source for tests that inject faults at random, so that a failing run
//! can be replayed with `STARLING_TEST_SEED`.

/// xorshift64*: seeded from `STARLING_TEST_SEED` or the clock.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `STARLING_TEST_SEED` or the clock; prints the seed with the test's name.
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("STARLING_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        println!("{test}: STARLING_TEST_SEED={seed}");
        Rng(seed)
    }

    /// Seeded with `seed` (made odd: xorshift never leaves zero).
    pub fn from_seed(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        lo + self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % (hi - lo + 1)
    }

    /// A duration of `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> std::time::Duration {
        std::time::Duration::from_millis(self.range(lo, hi))
    }

    /// A clone of one element of `v` (not empty).
    pub fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.range(0, v.len() as u64 - 1) as usize].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_in_range_and_covers_it() {
        let mut r = Rng(42);
        let mut seen = [false; 4];
        for _ in 0..1000 {
            let v = r.range(3, 6);
            assert!((3..=6).contains(&v));
            seen[(v - 3) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
