//! Retained messages: one per topic, found by topic filter.
//!
//! A tree of topic levels with ordered children, so that the messages matching a filter are
//! visited in the same order on every node (they are enqueued into sessions in that order).
//! Messages that expire (MQTT 5 Message Expiry Interval) are also indexed by their expiry, so
//! that the state machine removes them, in log time, without walking the tree.

use std::collections::{BTreeMap, BTreeSet};

use bytestring::ByteString;

use crate::message::Message;

/// The retained messages, by topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: RNode,
    count: usize,
    bytes: usize,
    /// (expiry, topic) of every retained message that expires. Derived from the tree (kept by
    /// [`RetainedStore::set`]; [`RetainedStore::check_expiry_index`] compares it with a
    /// rebuild).
    expiry: BTreeSet<(u64, ByteString)>,
}

#[derive(Debug, Default)]
struct RNode {
    children: BTreeMap<Box<str>, RNode>,
    message: Option<Message>,
}

impl RNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.message.is_none()
    }
}

fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.find('/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

impl RetainedStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held (topic + payload + overhead per message).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Sets the retained message of `message.topic`, or clears it when the payload is empty.
    /// The stored copy has RETAIN=1.
    pub fn set(&mut self, message: &Message) {
        let topic = message.topic.clone();
        if message.payload.is_empty() {
            self.remove(&topic);
            return;
        }
        let mut node = &mut self.root;
        let mut rest = Some(&*topic);
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            node = node.children.entry(level.into()).or_default();
            rest = next;
        }
        let stored = message.with(message.qos, true);
        self.bytes += stored.cost();
        if stored.expires_at_ms != 0 {
            self.expiry.insert((stored.expires_at_ms, topic.clone()));
        }
        match node.message.replace(stored) {
            Some(old) => {
                self.bytes -= old.cost();
                if old.expires_at_ms != 0 && old.expires_at_ms != message.expires_at_ms {
                    self.expiry.remove(&(old.expires_at_ms, topic));
                }
            }
            None => self.count += 1,
        }
    }

    /// Removes the retained message of `topic`; returns it.
    pub fn remove(&mut self, topic: &ByteString) -> Option<Message> {
        let old = Self::remove_in(&mut self.root, Some(topic))?;
        self.count -= 1;
        self.bytes -= old.cost();
        if old.expires_at_ms != 0 {
            self.expiry.remove(&(old.expires_at_ms, topic.clone()));
        }
        Some(old)
    }

    /// Removes every message that has expired at `now_ms` (log time); returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        while self.expiry.first().is_some_and(|(at, _)| *at <= now_ms) {
            let Some((at, topic)) = self.expiry.pop_first() else {
                break;
            };
            if self.get(&topic).is_some_and(|m| m.expires_at_ms == at) {
                self.remove(&topic);
                n += 1;
            }
        }
        n
    }

    /// When the next retained message expires (log time).
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiry.first().map(|(at, _)| *at)
    }

    /// Compares the expiry index with one rebuilt from the stored messages.
    ///
    /// # Errors
    /// They differ: the sizes and the first difference.
    pub fn check_expiry_index(&self) -> Result<(), String> {
        let mut want = BTreeSet::new();
        self.for_each(|m| {
            if m.expires_at_ms != 0 {
                want.insert((m.expires_at_ms, m.topic.clone()));
            }
        });
        if want == self.expiry {
            return Ok(());
        }
        let extra = self.expiry.difference(&want).next();
        let missing = want.difference(&self.expiry).next();
        Err(format!(
            "retained-expiry index differs from its rebuild: {} entries kept, {} expected; \
             first extra {extra:?}, first missing {missing:?}",
            self.expiry.len(),
            want.len()
        ))
    }

    fn remove_in(node: &mut RNode, rest: Option<&str>) -> Option<Message> {
        let Some(r) = rest else {
            return node.message.take();
        };
        let (level, next) = split_level(r);
        let child = node.children.get_mut(level)?;
        let m = Self::remove_in(child, next);
        if child.is_empty() {
            node.children.remove(level);
        }
        m
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&Message> {
        let mut node = &self.root;
        let mut rest = Some(topic);
        while let Some(r) = rest {
            let (level, next) = split_level(r);
            node = node.children.get(level)?;
            rest = next;
        }
        node.message.as_ref()
    }

    /// Visits the retained messages matching `filter` (a valid filter), in topic-tree order.
    pub fn for_each_matching<F: FnMut(&Message)>(&self, filter: &str, mut f: F) {
        Self::walk(&self.root, filter, true, &mut f);
    }

    fn walk<F: FnMut(&Message)>(node: &RNode, filter: &str, root: bool, f: &mut F) {
        let (level, next) = split_level(filter);
        match level {
            "#" => {
                if let Some(m) = &node.message {
                    f(m);
                }
                for (name, child) in &node.children {
                    if !(root && name.starts_with('$')) {
                        Self::visit_all(child, f);
                    }
                }
            }
            "+" => {
                for (name, child) in &node.children {
                    if !(root && name.starts_with('$')) {
                        Self::visit_next(child, next, f);
                    }
                }
            }
            _ => {
                if let Some(child) = node.children.get(level) {
                    Self::visit_next(child, next, f);
                }
            }
        }
    }

    fn visit_next<F: FnMut(&Message)>(child: &RNode, next: Option<&str>, f: &mut F) {
        match next {
            None => {
                if let Some(m) = &child.message {
                    f(m);
                }
            }
            Some(n) => Self::walk(child, n, false, f),
        }
    }

    fn visit_all<F: FnMut(&Message)>(node: &RNode, f: &mut F) {
        if let Some(m) = &node.message {
            f(m);
        }
        for child in node.children.values() {
            Self::visit_all(child, f);
        }
    }

    /// Visits every retained message in topic-tree order.
    pub fn for_each<F: FnMut(&Message)>(&self, mut f: F) {
        Self::visit_all(&self.root, &mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;
    use starling_codec::{topic, QoS};

    fn msg(t: &str, p: &str) -> Message {
        Message::new(t.into(), Bytes::from(p.to_string()), QoS::AtLeastOnce, true)
    }

    fn found(s: &RetainedStore, f: &str) -> Vec<String> {
        let mut v = Vec::new();
        s.for_each_matching(f, |m| v.push(m.topic.to_string()));
        v
    }

    #[test]
    fn set_replace_and_clear() {
        let mut s = RetainedStore::new();
        s.set(&msg("a/b", "1"));
        s.set(&msg("a/b", "2"));
        assert_eq!(s.len(), 1);
        assert_eq!(s.get("a/b").unwrap().payload, Bytes::from("2"));
        s.set(&msg("a/b", ""));
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert!(s.root.is_empty());
    }

    #[test]
    fn filters_find_retained_with_dollar_rule() {
        let mut s = RetainedStore::new();
        for t in ["a", "a/b", "a/b/c", "$SYS/x", "b/", "/"] {
            s.set(&msg(t, "x"));
        }
        assert_eq!(found(&s, "#"), vec!["/", "a", "a/b", "a/b/c", "b/"]);
        assert_eq!(found(&s, "a/#"), vec!["a", "a/b", "a/b/c"]);
        assert_eq!(found(&s, "+"), vec!["a"]);
        assert_eq!(found(&s, "+/+"), vec!["/", "a/b", "b/"]);
        assert_eq!(found(&s, "$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(found(&s, "a/b"), vec!["a/b"]);
    }

    #[test]
    fn expiring_messages_are_indexed_replaced_and_expired_in_order() {
        let mut s = RetainedStore::new();
        let at = |t: &str, ms: u64| Message {
            expires_at_ms: ms,
            ..msg(t, "x")
        };
        s.set(&at("a", 30));
        s.set(&at("b", 10));
        s.set(&msg("c", "forever"));
        s.set(&at("a", 20));
        assert_eq!(s.next_expiry(), Some(10));
        assert_eq!(s.check_expiry_index(), Ok(()));
        assert_eq!(s.expire(19), 1, "b");
        assert_eq!(s.expire(19), 0);
        assert_eq!(s.expire(20), 1, "a, at its replaced expiry");
        assert_eq!(s.next_expiry(), None);
        assert_eq!(found(&s, "#"), vec!["c"]);
        s.set(&at("d", 5));
        s.set(&msg("d", ""));
        assert_eq!(s.next_expiry(), None, "a cleared message leaves the index");
        s.set(&at("e", 5));
        s.set(&msg("e", "y"));
        assert_eq!(s.next_expiry(), None, "a replacement that does not expire");
        assert_eq!(s.check_expiry_index(), Ok(()));
        assert_eq!(s.len(), 2);
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$x".to_string())
        ]
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_matches(
            topics in proptest::collection::vec(proptest::collection::vec(level(), 1..4).prop_map(|v| v.join("/")), 1..10),
            filter in (proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..3), any::<bool>())
                .prop_filter_map("empty", |(mut v, h)| { if h { v.push("#".into()) } (!v.is_empty()).then(|| v.join("/")) })
        ) {
            let mut s = RetainedStore::new();
            for t in &topics { s.set(&msg(t, "x")); }
            let mut expect: Vec<String> = topics.iter().filter(|t| topic::matches(&filter, t)).cloned().collect();
            expect.sort(); expect.dedup();
            let mut got = found(&s, &filter);
            got.sort();
            prop_assert_eq!(got, expect);
        }
    }
}
