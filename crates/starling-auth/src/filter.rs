//! Relations between topic filters, for deciding at SUBSCRIBE time what an ACL allows.
//!
//! Matching a topic name against a filter is [`starling_codec::topic::matches`]; this module adds
//! the two questions an ACL check of a *filter* needs:
//! - [`covers`]: does every topic that filter `inner` matches also match `outer`? (Then an allow
//!   rule `outer` makes a subscription `inner` readable in full, with no per-message check.)
//! - [`intersects`]: is there a topic that both match? (If no allow rule intersects a
//!   subscription, nothing it could deliver is readable: it is refused.)
//!
//! Both follow MQTT's matching rules exactly: `+` is one level, `#` any number of levels including
//! none (`a/#` matches `a`), and a topic whose first level starts with `$` is not matched by a
//! filter whose first level is a wildcard. Arguments are assumed to be valid filters.

/// Whether every topic matched by `inner` is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    let mut first = true;
    loop {
        match (o.next(), i.next()) {
            // `inner` may match `$` topics only through a literal first level.
            (Some("#"), Some(il)) => return !(first && il.starts_with('$')),
            // `a/#` also matches `a`.
            (Some("#"), None) => return true,
            (Some(_), Some("#")) => return false,
            (Some("+"), Some("+")) => {}
            (Some("+"), Some(il)) => {
                if first && il.starts_with('$') {
                    return false;
                }
            }
            (Some(_), Some("+")) => return false,
            (Some(ol), Some(il)) => {
                if ol != il {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
        first = false;
    }
}

/// Whether some topic is matched by both `a` and `b`.
pub fn intersects(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    let mut first = true;
    loop {
        match (x.next(), y.next()) {
            (Some("#"), Some(l)) | (Some(l), Some("#")) => return !(first && l.starts_with('$')),
            (Some("#"), None) | (None, Some("#")) => return true,
            (Some("+"), Some(l)) | (Some(l), Some("+")) => {
                if first && l.starts_with('$') {
                    return false;
                }
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return false;
                }
            }
            (None, None) => return true,
            (Some(_), None) | (None, Some(_)) => return false,
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use starling_codec::topic::matches;

    #[test]
    fn examples() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/+", "a/b"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/x"));
        assert!(covers("$SYS/#", "$SYS/broker/+"));
        assert!(intersects("a/+", "+/b"));
        assert!(intersects("a/#", "a"));
        assert!(!intersects("a/b", "a/c"));
        assert!(!intersects("#", "$SYS/#"));
        assert!(!intersects("+/x", "$SYS/x"));
        assert!(intersects("+/x", "+/#"));
    }

    /// Levels filters are built from; `$s` tests the `$` rule.
    fn filter() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec!["a", "b", "", "$s", "+"]);
        (prop::collection::vec(level, 1..4), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#");
            }
            levels.join("/")
        })
    }

    /// Every topic of up to `n` levels over the filters' literals plus a fresh one (`z`), which
    /// makes the finite universe decide both relations exactly.
    fn universe(n: usize) -> Vec<String> {
        let alphabet = ["a", "b", "", "$s", "z"];
        let mut out: Vec<Vec<&str>> = alphabet.iter().map(|l| vec![*l]).collect();
        let mut all = out.clone();
        for _ in 1..n {
            let mut next = Vec::new();
            for t in &out {
                for l in alphabet {
                    let mut t = t.clone();
                    t.push(l);
                    next.push(t);
                }
            }
            all.extend(next.iter().cloned());
            out = next;
        }
        all.into_iter().map(|t| t.join("/")).collect()
    }

    proptest! {
        #[test]
        fn covers_and_intersects_agree_with_brute_force(a in filter(), b in filter()) {
            let n = a.split('/').count().max(b.split('/').count()) + 1;
            let topics = universe(n);
            let brute_covers = topics.iter().all(|t| !matches(&b, t) || matches(&a, t));
            let brute_meets = topics.iter().any(|t| matches(&a, t) && matches(&b, t));
            prop_assert_eq!(covers(&a, &b), brute_covers, "covers({}, {})", a, b);
            prop_assert_eq!(intersects(&a, &b), brute_meets, "intersects({}, {})", a, b);
        }
    }
}
