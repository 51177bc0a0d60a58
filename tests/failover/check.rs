//! The checker: given what publishers sent (and whether each completed) and what a subscriber
//! received, exactly once for QoS 2, at least once for QoS 1, at most once for QoS 0, nothing
//! unknown, and per-publisher, per-topic, per-QoS (as published) order among first deliveries
//! (QoS 1 redeliveries ignored).
//!
//! Payloads are `<publisher>/<seq>` ([`crate::support::payload`]).

use std::collections::{BTreeMap, HashMap};

use starling_codec::QoS;
use starling_testkit::strict::{Delivery, Event, Record};

/// One message a publisher handed to its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Published {
    /// Publisher (client id).
    pub(crate) publisher: String,
    /// Topic.
    pub(crate) topic: String,
    /// Sequence number.
    pub(crate) seq: u64,
    /// QoS published at.
    pub(crate) qos: QoS,
    /// PUBACK / PUBCOMP received: the broker owns it.
    pub(crate) completed: bool,
    /// Times the PUBLISH was written (more than 1: resent after a failover).
    pub(crate) writes: u32,
}

/// What a check found.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    /// Messages that had to arrive (completed, QoS ≥ 1 after the subscription's downgrade).
    pub(crate) expected: usize,
    /// Deliveries seen (all of them, duplicates included).
    pub(crate) deliveries: usize,
    /// Completed messages never delivered: (publisher, seq, qos).
    pub(crate) lost: Vec<(String, u64, QoS)>,
    /// QoS 2 (or QoS 0) messages delivered more than once: (publisher, seq, times).
    pub(crate) duplicated: Vec<(String, u64, usize)>,
    /// Deliveries of nothing any publisher sent (payload).
    pub(crate) unknown: Vec<String>,
    /// QoS 1 redeliveries (allowed).
    pub(crate) qos1_redeliveries: usize,
    /// First deliveries that came after a later message of the same publisher, topic and QoS:
    /// (topic, seq, later seq already delivered, the late one was resent by its publisher).
    pub(crate) out_of_order: Vec<(String, u64, u64, bool)>,
}

impl Verdict {
    /// Out-of-order deliveries not explained by a resend of the late message.
    pub(crate) fn unexplained_reorders(&self) -> Vec<&(String, u64, u64, bool)> {
        self.out_of_order.iter().filter(|o| !o.3).collect()
    }

    /// Panics unless nothing was lost, duplicated (QoS 2 / QoS 0), unknown, or out of order.
    pub(crate) fn assert_clean(&self, what: &str) {
        self.assert_no_loss_no_dup(what);
        assert!(
            self.out_of_order.is_empty(),
            "{what}: out of order: {:?}",
            self.out_of_order
        );
    }

    /// Panics unless nothing was lost, duplicated or unknown (order not checked).
    pub(crate) fn assert_no_loss_no_dup(&self, what: &str) {
        assert!(
            self.lost.is_empty() && self.duplicated.is_empty() && self.unknown.is_empty(),
            "{what}: {} of {} lost (first: {:?}), duplicated: {:?}, unknown: {:?}",
            self.lost.len(),
            self.expected,
            &self.lost[..self.lost.len().min(10)],
            &self.duplicated[..self.duplicated.len().min(10)],
            &self.unknown[..self.unknown.len().min(10)],
        );
    }
}

/// Splits `<publisher>/<seq>`.
pub(crate) fn parse_payload(p: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(p).ok()?;
    let (publisher, seq) = s.rsplit_once('/')?;
    Some((publisher.to_string(), seq.parse().ok()?))
}

/// Checks `deliveries` (in arrival order) of a subscriber whose matching subscription has QoS
/// `sub_qos` against `published`.
pub(crate) fn check(published: &[Published], deliveries: &[Delivery], sub_qos: QoS) -> Verdict {
    let mut v = Verdict {
        deliveries: deliveries.len(),
        ..Verdict::default()
    };
    let by_key: HashMap<(String, u64), &Published> = published
        .iter()
        .map(|p| ((p.publisher.clone(), p.seq), p))
        .collect();
    let mut count: HashMap<(String, u64), usize> = HashMap::new();
    // (publisher, topic, QoS as published) -> highest seq delivered so far. Messages published
    // at different QoS levels take different paths and are not ordered with each other.
    let mut highest: HashMap<(String, String, QoS), u64> = HashMap::new();
    for d in deliveries {
        let Some((publisher, seq)) = parse_payload(&d.payload) else {
            v.unknown
                .push(String::from_utf8_lossy(&d.payload).into_owned());
            continue;
        };
        let Some(p) = by_key.get(&(publisher.clone(), seq)).copied() else {
            v.unknown
                .push(String::from_utf8_lossy(&d.payload).into_owned());
            continue;
        };
        let n = count.entry((publisher.clone(), seq)).or_default();
        *n += 1;
        if *n > 1 {
            if p.qos.min(sub_qos) == QoS::AtLeastOnce {
                v.qos1_redeliveries += 1;
            }
            continue;
        }
        let h = highest
            .entry((publisher, p.topic.clone(), p.qos))
            .or_insert(0);
        if seq < *h {
            v.out_of_order
                .push((p.topic.clone(), seq, *h, p.writes > 1));
        } else {
            *h = seq;
        }
    }
    for p in published {
        let n = count
            .get(&(p.publisher.clone(), p.seq))
            .copied()
            .unwrap_or(0);
        let qos = p.qos.min(sub_qos);
        if p.completed && qos != QoS::AtMostOnce {
            v.expected += 1;
            if n == 0 {
                v.lost.push((p.publisher.clone(), p.seq, qos));
            }
        }
        if qos != QoS::AtLeastOnce && n > 1 {
            v.duplicated.push((p.publisher.clone(), p.seq, n));
        }
    }
    v.lost.sort();
    v.duplicated.sort();
    v
}

/// What a strict publisher sent, from its history: every PUBLISH written (with how often) and
/// whether it completed. Only payloads of the form `<publisher>/<seq>` are counted.
pub(crate) fn ledger_from_history(history: &[Record]) -> Vec<Published> {
    let mut by_key: BTreeMap<(String, u64), Published> = BTreeMap::new();
    for r in history {
        match &r.event {
            Event::Sent(starling_codec::Packet::Publish(p)) => {
                let Some((publisher, seq)) = parse_payload(&p.payload) else {
                    continue;
                };
                by_key
                    .entry((publisher.clone(), seq))
                    .or_insert_with(|| Published {
                        publisher,
                        topic: p.topic.to_string(),
                        seq,
                        qos: p.qos,
                        completed: p.qos == QoS::AtMostOnce,
                        writes: 0,
                    })
                    .writes += 1;
            }
            Event::Completed { payload, .. } => {
                if let Some(k) = parse_payload(payload) {
                    if let Some(p) = by_key.get_mut(&k) {
                        p.completed = true;
                    }
                }
            }
            _ => {}
        }
    }
    by_key.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;

    fn published(seq: u64, qos: QoS, writes: u32) -> Published {
        Published {
            publisher: "p".into(),
            topic: "t".into(),
            seq,
            qos,
            completed: true,
            writes,
        }
    }

    fn delivery(seq: u64, qos: QoS) -> Delivery {
        Delivery {
            at: Instant::now(),
            node: "127.0.0.1:1".parse().unwrap(),
            topic: "t".into(),
            payload: Bytes::from(format!("p/{seq}")),
            qos,
            dup: false,
            retain: false,
            packet_id: 1,
        }
    }

    #[test]
    fn payloads_parse() {
        assert_eq!(parse_payload(b"a/b/7"), Some(("a/b".into(), 7)));
        assert_eq!(parse_payload(b"x"), None);
    }

    #[test]
    fn exactly_once_qos2_is_clean() {
        let p: Vec<_> = (1..=3).map(|s| published(s, QoS::ExactlyOnce, 1)).collect();
        let d: Vec<_> = (1..=3).map(|s| delivery(s, QoS::ExactlyOnce)).collect();
        let v = check(&p, &d, QoS::ExactlyOnce);
        v.assert_clean("test");
        assert_eq!(v.expected, 3);
    }

    #[test]
    fn loss_duplicate_unknown_and_reorder_are_found() {
        let p: Vec<_> = (1..=4).map(|s| published(s, QoS::ExactlyOnce, 1)).collect();
        let mut d: Vec<_> = [1, 3, 3, 9].map(|s| delivery(s, QoS::ExactlyOnce)).to_vec();
        d.push(delivery(2, QoS::ExactlyOnce));
        let v = check(&p, &d, QoS::ExactlyOnce);
        assert_eq!(v.lost, vec![("p".into(), 4, QoS::ExactlyOnce)]);
        assert_eq!(v.duplicated, vec![("p".into(), 3, 2)]);
        assert_eq!(v.unknown, vec!["p/9".to_string()]);
        assert_eq!(v.out_of_order, vec![("t".into(), 2, 3, false)]);
        assert_eq!(v.unexplained_reorders().len(), 1);
    }

    #[test]
    fn qos1_may_repeat_and_downgrades_count() {
        let p = vec![
            published(1, QoS::AtLeastOnce, 1),
            published(2, QoS::ExactlyOnce, 2),
        ];
        let d = [1, 1, 2, 2].map(|s| delivery(s, QoS::AtLeastOnce)).to_vec();
        // Subscribed at QoS 1: the QoS 2 message is delivered at QoS 1, repeats allowed.
        let v = check(&p, &d, QoS::AtLeastOnce);
        v.assert_clean("qos1");
        assert_eq!(v.qos1_redeliveries, 2);
        // A reorder of a resent message is explained.
        let d = [2, 1].map(|s| delivery(s, QoS::AtLeastOnce)).to_vec();
        let p = vec![
            published(1, QoS::AtLeastOnce, 2),
            published(2, QoS::AtLeastOnce, 1),
        ];
        let v = check(&p, &d, QoS::AtLeastOnce);
        assert_eq!(v.out_of_order.len(), 1);
        assert!(v.unexplained_reorders().is_empty());
    }
}
