//! A subscription index: topic filters → subscribers, matched against topic names.
//!
//! Used by the state machine (subscriptions of persistent sessions) and by every router shard (all
//! subscriptions, with their delivery targets). Matching walks the topic's levels once and never
//! allocates; `+` and `#` subscriptions hang off each node, so a publish visits only the branches
//! that can match. Topics beginning with `$` are not matched by a first-level `+` or `#`.

use crate::FastMap;

/// Topic filters mapped to values, one value per (filter, key).
#[derive(Debug)]
pub struct TopicTrie<K, V> {
    root: Node<K, V>,
    len: usize,
}

#[derive(Debug)]
struct Node<K, V> {
    children: FastMap<Box<str>, Node<K, V>>,
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter ends with `/#` below this node (or is `#` at the root).
    hash: Vec<(K, V)>,
    /// Subscriptions whose filter ends exactly at this node.
    here: Vec<(K, V)>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: FastMap::default(),
            plus: None,
            hash: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.here.is_empty()
    }
}

impl<K, V> Default for TopicTrie<K, V> {
    fn default() -> Self {
        TopicTrie {
            root: Node::default(),
            len: 0,
        }
    }
}

/// Splits off the first level: `("a", Some("b/c"))` for `"a/b/c"`, `("c", None)` for `"c"`.
fn split_level(s: &str) -> (&str, Option<&str>) {
    match s.find('/') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    }
}

impl<K: PartialEq, V> TopicTrie<K, V> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, key) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts or replaces the value of `key` under `filter`; returns the previous value.
    /// `filter` must be valid (see `starling_codec::topic::validate_filter`).
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut rest = Some(filter);
        let slot = loop {
            let Some(r) = rest else { break &mut node.here };
            let (level, next) = split_level(r);
            if level == "#" {
                break &mut node.hash;
            }
            node = if level == "+" {
                node.plus.get_or_insert_with(Box::default)
            } else {
                node.children.entry(level.into()).or_default()
            };
            rest = next;
        };
        if let Some(entry) = slot.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut entry.1, value));
        }
        slot.push((key, value));
        self.len += 1;
        None
    }

    /// Removes `key` from `filter`; returns its value. Empty branches are pruned.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let removed = Self::remove_in(&mut self.root, Some(filter), key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<K, V>, rest: Option<&str>, key: &K) -> Option<V> {
        let Some(r) = rest else {
            return take(&mut node.here, key);
        };
        let (level, next) = split_level(r);
        if level == "#" {
            return take(&mut node.hash, key);
        }
        if level == "+" {
            let child = node.plus.as_mut()?;
            let v = Self::remove_in(child, next, key);
            if child.is_empty() {
                node.plus = None;
            }
            v
        } else {
            let child = node.children.get_mut(level)?;
            let v = Self::remove_in(child, next, key);
            if child.is_empty() {
                node.children.remove(level);
            }
            v
        }
    }

    /// Calls `f` for every (key, value) whose filter matches `topic`. A key subscribed with
    /// several matching filters is visited once per filter; callers merge.
    pub fn for_each_match<F: FnMut(&K, &V)>(&self, topic: &str, mut f: F) {
        let sys = topic.starts_with('$');
        Self::walk(&self.root, Some(topic), true, sys, &mut f);
    }

    /// Keeps only the entries for which `keep(key, value)` is true; empty branches are pruned.
    pub fn retain<F: FnMut(&K, &V) -> bool>(&mut self, mut keep: F) {
        let mut removed = 0;
        Self::retain_in(&mut self.root, &mut keep, &mut removed);
        self.len -= removed;
    }

    fn retain_in<F: FnMut(&K, &V) -> bool>(
        node: &mut Node<K, V>,
        keep: &mut F,
        removed: &mut usize,
    ) {
        for slot in [&mut node.here, &mut node.hash] {
            let before = slot.len();
            slot.retain(|(k, v)| keep(k, v));
            *removed += before - slot.len();
            if slot.is_empty() {
                *slot = Vec::new();
            }
        }
        if let Some(p) = node.plus.as_mut() {
            Self::retain_in(p, keep, removed);
            if p.is_empty() {
                node.plus = None;
            }
        }
        node.children.retain(|_, child| {
            Self::retain_in(child, keep, removed);
            !child.is_empty()
        });
    }

    /// Calls `f` for every entry with its filter (reconstructed from the trie's levels), in no
    /// particular order. For checks and rebuilds, not for the publish path.
    pub fn for_each_entry<F: FnMut(&str, &K, &V)>(&self, mut f: F) {
        let mut path: Vec<&str> = Vec::new();
        Self::visit(&self.root, &mut path, &mut f);
    }

    fn visit<'a, F: FnMut(&str, &K, &V)>(node: &'a Node<K, V>, path: &mut Vec<&'a str>, f: &mut F) {
        if !node.here.is_empty() {
            let filter = path.join("/");
            node.here.iter().for_each(|(k, v)| f(&filter, k, v));
        }
        if !node.hash.is_empty() {
            path.push("#");
            let filter = path.join("/");
            path.pop();
            node.hash.iter().for_each(|(k, v)| f(&filter, k, v));
        }
        if let Some(p) = &node.plus {
            path.push("+");
            Self::visit(p, path, f);
            path.pop();
        }
        for (level, child) in &node.children {
            path.push(level);
            Self::visit(child, path, f);
            path.pop();
        }
    }

    fn walk<F: FnMut(&K, &V)>(
        node: &Node<K, V>,
        rest: Option<&str>,
        root: bool,
        sys: bool,
        f: &mut F,
    ) {
        let Some(r) = rest else {
            node.here
                .iter()
                .chain(node.hash.iter())
                .for_each(|(k, v)| f(k, v));
            return;
        };
        let (level, next) = split_level(r);
        if !(root && sys) {
            node.hash.iter().for_each(|(k, v)| f(k, v));
            if let Some(p) = &node.plus {
                Self::walk(p, next, false, sys, f);
            }
        }
        if let Some(c) = node.children.get(level) {
            Self::walk(c, next, false, sys, f);
        }
    }
}

fn take<K: PartialEq, V>(slot: &mut Vec<(K, V)>, key: &K) -> Option<V> {
    let i = slot.iter().position(|(k, _)| k == key)?;
    let (_, v) = slot.swap_remove(i);
    if slot.is_empty() {
        *slot = Vec::new();
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use starling_codec::topic;

    fn matched(t: &TopicTrie<u32, ()>, topic: &str) -> Vec<u32> {
        let mut v = Vec::new();
        t.for_each_match(topic, |k, _| v.push(*k));
        v.sort_unstable();
        v
    }

    #[test]
    fn wildcards_match_as_specified() {
        let mut t = TopicTrie::new();
        for (i, f) in [
            "a/b", "a/+", "a/#", "#", "+/b", "+", "a/+/c", "/", "+/+", "$SYS/#", "$SYS/+",
        ]
        .iter()
        .enumerate()
        {
            t.insert(f, i as u32, ());
        }
        assert_eq!(matched(&t, "a/b"), vec![0, 1, 2, 3, 4, 8]);
        assert_eq!(matched(&t, "a"), vec![2, 3, 5]);
        assert_eq!(matched(&t, "a/x/c"), vec![2, 3, 6]);
        assert_eq!(matched(&t, "/"), vec![3, 7, 8]);
        assert_eq!(matched(&t, "$SYS/uptime"), vec![9, 10]);
        assert_eq!(matched(&t, "$SYS"), vec![9]);
    }

    #[test]
    fn insert_replaces_and_remove_prunes() {
        let mut t = TopicTrie::new();
        assert_eq!(t.insert("a/+/c", 1u32, 1u8), None);
        assert_eq!(t.insert("a/+/c", 1u32, 2u8), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove("a/+/c", &1), Some(2));
        assert_eq!(t.remove("a/+/c", &1), None);
        assert!(t.is_empty());
        assert!(t.root.is_empty());
    }

    fn level() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_string()),
            Just("b".to_string()),
            Just("".to_string()),
            Just("$x".to_string())
        ]
    }

    fn topic_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(level(), 1..5).prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (
            proptest::collection::vec(prop_oneof![level(), Just("+".to_string())], 0..4),
            any::<bool>(),
        )
            .prop_filter_map("empty", |(mut v, hash)| {
                if hash {
                    v.push("#".into());
                }
                (!v.is_empty()).then(|| v.join("/"))
            })
    }

    proptest! {
        #[test]
        fn trie_agrees_with_matches(filters in proptest::collection::vec(filter(), 1..12), topics in proptest::collection::vec(topic_name(), 1..8)) {
            let mut t = TopicTrie::new();
            for (i, f) in filters.iter().enumerate() {
                t.insert(f, i as u32, ());
            }
            for tp in &topics {
                let mut expect: Vec<u32> = filters.iter().enumerate()
                    .filter(|(_, f)| topic::matches(f, tp)).map(|(i, _)| i as u32).collect();
                expect.sort_unstable();
                prop_assert_eq!(matched(&t, tp), expect, "topic {}", tp);
            }
            let mut entries: Vec<(String, u32)> = Vec::new();
            t.for_each_entry(|f, k, _| entries.push((f.to_string(), *k)));
            entries.sort_unstable();
            let mut expect: Vec<(String, u32)> = filters.iter().enumerate()
                .map(|(i, f)| (f.clone(), i as u32)).collect();
            expect.sort_unstable();
            prop_assert_eq!(entries, expect, "every entry with its filter");
            let mut odd = TopicTrie::new();
            for (i, f) in filters.iter().enumerate() {
                odd.insert(f, i as u32, ());
            }
            odd.retain(|k, _| k % 2 == 0);
            prop_assert_eq!(odd.len(), filters.len().div_ceil(2));
            for (i, f) in filters.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
                prop_assert_eq!(odd.remove(f, &(i as u32)), None);
            }
            for (i, f) in filters.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
                prop_assert_eq!(odd.remove(f, &(i as u32)), Some(()));
            }
            prop_assert!(odd.root.is_empty(), "retain prunes empty branches");
            for (i, f) in filters.iter().enumerate() {
                t.remove(f, &(i as u32));
            }
            prop_assert!(t.is_empty());
        }
    }
}
