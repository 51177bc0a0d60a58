//! [`LatencyHistogram`]: fixed buckets for the proposal-to-commit latency the Raft leader
//! measures, exported by the admin endpoint's `/metrics` as a Prometheus histogram.
//!
//! The Raft actor owns one and observes into it (no atomics: one writer); it copies it into the
//! shared [`NodeStatus`](crate::NodeStatus) when it publishes its status.

use std::time::Duration;

/// Upper bounds of the buckets, in seconds (the last, implicit bucket is `+Inf`).
pub const BUCKET_BOUNDS_SECS: [f64; 14] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Observations per bucket (not cumulative), with their sum and count.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Observations per bucket; index `i` counts values in `(bound[i-1], bound[i]]`, the last
    /// one values above every bound.
    pub counts: [u64; BUCKET_BOUNDS_SECS.len() + 1],
    /// Sum of all observations, in seconds.
    pub sum_secs: f64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKET_BOUNDS_SECS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKET_BOUNDS_SECS.len());
        self.counts[i] += 1;
        self.sum_secs += secs;
        self.count += 1;
    }

    /// Cumulative counts as Prometheus wants them: `(le, count)`, ending with `+Inf`.
    pub fn cumulative(&self) -> Vec<(String, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = BUCKET_BOUNDS_SECS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            out.push((le, acc));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_with_inf() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let c = h.cumulative();
        assert_eq!(c[0], ("0.0005".to_string(), 1));
        assert_eq!(c[3], ("0.005".to_string(), 2));
        assert_eq!(c.last().cloned(), Some(("+Inf".to_string(), 3)));
        assert_eq!(h.count, 3);
        assert!((h.sum_secs - 60.0033).abs() < 1e-9);
    }
}
