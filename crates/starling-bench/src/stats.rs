//! Counting and timing what subscribers receive, and the JSON summary of a run.
//!
//! - [`SeqTracker`]: per publisher, a bitmap of the sequence numbers seen. A sequence seen twice
//!   is *duplicated*; one seen for the first time after a higher one of the same publisher is
//!   *reordered*; one sent (per the publisher's final count) but never seen is *lost*.
//! - [`Latency`]: an HDR histogram of end-to-end latency in microseconds (receive time minus
//!   scheduled send time), 3 significant digits, up to one hour.
//! - [`Summary`]: one JSON line per run.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest sequence number tracked; anything above is treated as foreign (a corrupt payload
/// must not make the bitmap allocate gigabytes).
pub const MAX_TRACKED_SEQ: u64 = 1 << 34;

/// Sequence state of one publisher as seen by one subscriber.
#[derive(Clone, Debug, Default)]
struct PubSeq {
    bits: Vec<u64>,
    distinct: u64,
    duplicated: u64,
    reordered: u64,
    highest: Option<u64>,
}

/// Whether a message was new to this subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time this (publisher, sequence) arrived.
    First,
    /// It had arrived before.
    Duplicate,
    /// The sequence number is out of range: not counted.
    Invalid,
}

/// Which sequence numbers of each publisher one subscriber has received.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    pubs: Vec<PubSeq>,
}

/// Totals of one or more trackers against what was sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Distinct messages received.
    pub unique: u64,
    /// Messages sent but never received.
    pub lost: u64,
    /// Messages received more than once (each extra copy counts one).
    pub duplicated: u64,
    /// Messages that arrived after a higher sequence number of the same publisher.
    pub reordered: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.unique += o.unique;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
    }
}

impl SeqTracker {
    /// A tracker for publishers `0..publishers` (it grows if a higher index shows up).
    pub fn new(publishers: usize) -> SeqTracker {
        SeqTracker {
            pubs: vec![PubSeq::default(); publishers],
        }
    }

    /// Records one received message.
    pub fn record(&mut self, publisher: u32, seq: u64) -> Seen {
        if seq >= MAX_TRACKED_SEQ {
            return Seen::Invalid;
        }
        let p = publisher as usize;
        if p >= self.pubs.len() {
            if p > 1 << 20 {
                return Seen::Invalid;
            }
            self.pubs.resize(p + 1, PubSeq::default());
        }
        let s = &mut self.pubs[p];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= s.bits.len() {
            let want = (word + 1).max(s.bits.len() * 2);
            s.bits.resize(want, 0);
        }
        let mask = 1u64 << bit;
        if s.bits[word] & mask != 0 {
            s.duplicated += 1;
            return Seen::Duplicate;
        }
        s.bits[word] |= mask;
        s.distinct += 1;
        match s.highest {
            Some(h) if seq < h => s.reordered += 1,
            _ => s.highest = Some(seq),
        }
        Seen::First
    }

    /// Distinct messages received from all publishers.
    pub fn distinct(&self) -> u64 {
        self.pubs.iter().map(|p| p.distinct).sum()
    }

    /// Distinct messages received from `publisher`.
    pub fn distinct_from(&self, publisher: u32) -> u64 {
        self.pubs.get(publisher as usize).map_or(0, |p| p.distinct)
    }

    /// Counts against `sent`: the final sent count of each publisher this subscriber expects
    /// (pairs of publisher index and count). Messages received from other publishers are not
    /// part of `lost`.
    pub fn counts(&self, sent: &[(u32, u64)]) -> Counts {
        let mut c = Counts {
            unique: self.distinct(),
            ..Counts::default()
        };
        for p in &self.pubs {
            c.duplicated += p.duplicated;
            c.reordered += p.reordered;
        }
        for &(publisher, n) in sent {
            c.lost += n.saturating_sub(self.received_below(publisher, n));
        }
        c
    }

    /// Up to `limit` ranges (inclusive) of sequence numbers `0..n` of `publisher` that were not
    /// received.
    pub fn missing_ranges(&self, publisher: u32, n: u64, limit: usize) -> Vec<(u64, u64)> {
        let empty = Vec::new();
        let bits = self
            .pubs
            .get(publisher as usize)
            .map_or(&empty, |p| &p.bits);
        let has = |s: u64| {
            bits.get((s / 64) as usize)
                .is_some_and(|w| w & (1 << (s % 64)) != 0)
        };
        let mut out = Vec::new();
        let mut s = 0;
        while s < n && out.len() < limit {
            if has(s) {
                s += 1;
                continue;
            }
            let start = s;
            while s < n && !has(s) {
                s += 1;
            }
            out.push((start, s - 1));
        }
        out
    }

    /// How many of the sequence numbers `0..n` of `publisher` were received.
    fn received_below(&self, publisher: u32, n: u64) -> u64 {
        let Some(p) = self.pubs.get(publisher as usize) else {
            return 0;
        };
        let full = (n / 64) as usize;
        let mut got: u64 = p
            .bits
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = n % 64;
        if rest > 0 {
            if let Some(w) = p.bits.get(full) {
                got += u64::from((w & ((1u64 << rest) - 1)).count_ones());
            }
        }
        got
    }
}

/// End-to-end latency in microseconds.
#[derive(Clone, Debug)]
pub struct Latency {
    hist: Histogram<u64>,
}

/// Highest latency the histogram keeps exactly (1 h); higher values are clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram (1 µs to 1 h, 3 significant digits).
    pub fn new() -> Latency {
        // The bounds are constants that hdrhistogram accepts; failure is a bug.
        let hist = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Latency { hist }
    }

    /// Records one latency in nanoseconds (stored in µs, at least 1).
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1000).clamp(1, MAX_LATENCY_US);
        self.hist.saturating_record(us);
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so `add` cannot fail; ignore the impossible error.
        let _ = self.hist.add(&other.hist);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles and extremes, `None` when empty.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let h = &self.hist;
        Some(LatencySummary {
            count: h.len(),
            min: h.min(),
            mean: h.mean().round() as u64,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }
}

/// Latency figures in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Smallest.
    pub min: u64,
    /// Mean (rounded).
    pub mean: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// Broker memory during a run, in KiB (`VmRSS` of `/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RssStats {
    /// Before the load started.
    pub start_kb: u64,
    /// Highest sample (every 100 ms).
    pub max_kb: u64,
    /// After the load ended.
    pub end_kb: u64,
}

/// Figures only the `connections` scenario has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionStats {
    /// Connections asked for.
    pub requested: u64,
    /// Connections that got CONNACK 0.
    pub established: u64,
    /// Connections that failed (TCP error, refusal, timeout).
    pub failed: u64,
    /// Established connections the broker closed while they were held.
    pub dropped: u64,
    /// Established connections per second during the connect phase.
    pub connect_rate_per_s: f64,
    /// CONNECT-to-CONNACK latency (including the TCP handshake), µs.
    pub connect_latency_us: Option<LatencySummary>,
    /// Broker RSS before connecting, KiB.
    pub rss_before_kb: Option<u64>,
    /// Broker RSS with every connection established and idle, KiB.
    pub rss_after_kb: Option<u64>,
    /// (after - before) / established, in bytes.
    pub bytes_per_connection: Option<f64>,
    /// Local source addresses used.
    pub source_addresses: u32,
    /// First error seen, if any.
    pub first_error: Option<String>,
}

/// Figures only the `qos2` scenario has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos2Stats {
    /// Abrupt disconnects done by the persistent subscriber.
    pub reconnects: u32,
    /// Reconnects after which the broker reported no session present (a lost session).
    pub session_lost: u32,
    /// QoS 2 PUBLISHes received again for a packet id still awaiting PUBREL (a correct
    /// re-send: answered with PUBREC, not delivered again).
    pub resent_publishes: u64,
    /// PUBRELs received for a packet id not awaiting one (answered with PUBCOMP).
    pub unknown_pubrels: u64,
}

/// Where a run's clients were, for the `cluster` runner's runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// `cluster` (several nodes) or `single` (one node, every client on it).
    pub topology: String,
    /// Nodes.
    pub nodes: u64,
    /// The Raft leader when the run started (node id; 1 for a single node).
    pub leader: u64,
    /// Node the publishers were connected to.
    pub pub_node: u64,
    /// Nodes the subscribers were connected to (round robin).
    pub sub_nodes: Vec<u64>,
    /// `storage.fsync` of every node.
    pub fsync: String,
    /// CPU seconds each node used during the run (node 1 first).
    pub nodes_cpu_s: Vec<f64>,
    /// Load averages (1, 5, 15 min) when the run started.
    pub load_average: Option<[f64; 3]>,
}

/// One run, printed as one JSON line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Scenario name (`fan-in`, `fan-out`, `p2p`, `connections`, `qos2`).
    pub scenario: String,
    /// Row of the comparison this run belongs to (`compare` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub row: Option<String>,
    /// Round of the comparison, from 1 (`compare` only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub round: Option<u32>,
    /// Label of the broker under test (`--label`).
    pub broker: String,
    /// Run id carried in every payload (hex).
    pub run_id: String,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Publisher connections.
    pub publishers: u64,
    /// Subscriber connections.
    pub subscribers: u64,
    /// Payload size in bytes.
    pub payload: u64,
    /// Per-publisher in-flight window (QoS 1/2).
    pub inflight: u64,
    /// Run-ahead bound: messages a flow's publishers may be ahead of its slowest subscriber.
    pub max_ahead: u64,
    /// Open-loop rate per publisher (msgs/s), `None` for closed loop.
    pub rate_per_publisher: Option<f64>,
    /// Messages the publishers sent (written to the socket).
    pub messages_sent: u64,
    /// Deliveries expected: each message times the subscribers that should get it.
    pub messages_expected: u64,
    /// Deliveries received, duplicates included.
    pub messages_received: u64,
    /// Distinct deliveries received.
    pub unique_received: u64,
    /// Expected deliveries never received.
    pub lost: u64,
    /// Extra copies received.
    pub duplicated: u64,
    /// Deliveries that arrived after a higher sequence number of the same publisher.
    pub reordered: u64,
    /// Where the losses are: up to 8 ranges per subscriber and publisher, as
    /// `s<subscriber>/p<publisher>:<first>-<last>` (sequence numbers).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub lost_ranges: Vec<String>,
    /// Messages received that were not from this run (ignored).
    pub foreign: u64,
    /// Times a publisher waited longer than `--stall` on the run-ahead bound and wrote the gap
    /// off (a sign of lost messages).
    pub stalls: u64,
    /// Highest number of messages of one flow outstanding (reserved by its publishers, not yet
    /// received by its slowest subscriber): the run-ahead bound at work.
    pub peak_outstanding: u64,
    /// Acknowledgements for packet ids that were not in flight.
    pub unexpected_acks: u64,
    /// Distinct deliveries per second, first send to last receipt.
    pub throughput_msgs_per_s: f64,
    /// Messages sent per second over the publishing phase.
    pub publish_rate_msgs_per_s: f64,
    /// Seconds from the first send to the last receipt.
    pub duration_s: f64,
    /// End-to-end latency (receive minus scheduled send), µs.
    pub latency_us: Option<LatencySummary>,
    /// CPU seconds (user + system) this process used during the run.
    pub bench_cpu_s: f64,
    /// `bench_cpu_s` as a percentage of wall time (200 % = two cores busy).
    pub bench_cpu_pct: f64,
    /// Wall time of the whole run, setup included.
    pub wall_s: f64,
    /// Broker process id (`--pid`).
    pub broker_pid: Option<u32>,
    /// Broker RSS during the run.
    pub broker_rss: Option<RssStats>,
    /// Broker CPU seconds during the run.
    pub broker_cpu_s: Option<f64>,
    /// 1-minute load average of the machine when the run started.
    pub load_average: Option<f64>,
    /// Soft `RLIMIT_NOFILE` of this process during the run.
    pub nofile_limit: u64,
    /// `connections` scenario figures.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connections: Option<ConnectionStats>,
    /// `qos2` scenario figures.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub qos2: Option<Qos2Stats>,
    /// Cluster topology of the run (`cluster` runner only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cluster: Option<ClusterInfo>,
    /// A deadline passed before the run completed.
    pub timed_out: bool,
    /// First error, if the run did not complete normally.
    pub error: Option<String>,
    /// Completed with nothing lost, nothing timed out, no error, and (QoS 2) nothing duplicated.
    pub ok: bool,
}

impl Summary {
    /// Sets [`Summary::ok`] from the other fields.
    pub fn judge(&mut self) {
        let dup_ok = self.qos < 2 || self.duplicated == 0;
        let conn_ok = self
            .connections
            .as_ref()
            .is_none_or(|c| c.failed == 0 && c.dropped == 0 && c.established == c.requested);
        self.ok = !self.timed_out && self.error.is_none() && self.lost == 0 && dup_ok && conn_ok;
    }

    /// The JSON line.
    pub fn to_json(&self) -> String {
        // A struct of plain fields always serializes.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_counts_lost_duplicated_reordered() {
        let mut t = SeqTracker::new(2);
        for s in [0, 1, 3, 2, 2, 5, 70] {
            t.record(0, s);
        }
        t.record(1, 0);
        let c = t.counts(&[(0, 72), (1, 2)]);
        assert_eq!(c.unique, 7);
        assert_eq!(c.duplicated, 1);
        assert_eq!(c.reordered, 1);
        // publisher 0: 72 sent, 6 distinct received; publisher 1: 2 sent, 1 received.
        assert_eq!(c.lost, 66 + 1);
        assert_eq!(t.distinct_from(0), 6);
        assert_eq!(t.record(0, MAX_TRACKED_SEQ), Seen::Invalid);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::new();
        for us in 1..=1000u64 {
            l.record_ns(us * 1000);
        }
        let s = l.summary().unwrap();
        assert_eq!(s.count, 1000);
        assert!((495..=505).contains(&s.p50));
        assert!((985..=995).contains(&s.p99));
        assert_eq!(s.max, 1000);
    }
}
