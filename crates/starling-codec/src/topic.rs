//! Topic names, topic filters and matching (MQTT 3.1.1 section 4.7, 5.0 section 4.7), and
//! shared subscriptions (5.0 section 4.8.2).
//!
//! Pure functions on `&str` that never allocate:
//! - [`validate_topic_name`]: what PUBLISH and wills may carry (no wildcards).
//! - [`validate_filter`]: what SUBSCRIBE may carry (`+` and `#` only as whole levels, `#` last).
//! - [`parse_shared`]: the share name and inner filter of `$share/<group>/<filter>`.
//! - [`matches()`]: whether a filter matches a topic name, including the rule that topics starting
//!   with `$` are not matched by a filter whose first level is a wildcard.
//!
//! ```
//! use starling_codec::topic::matches;
//! assert!(matches("sport/#", "sport"));
//! assert!(matches("+/+", "/finance"));
//! assert!(!matches("#", "$SYS/broker/uptime"));
//! ```

// #[PerformanceCriticalPath]: `matches` runs for every (subscription, publish) pair the router
// considers.

use crate::error::TopicError;

/// Longest topic name or filter in bytes (a 2-byte length prefix on the wire).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Checks that `topic` is a valid topic name: non-empty, at most 65 535 bytes, no `+` or `#`,
/// no U+0000.
///
/// # Errors
/// The first rule broken, as a [`TopicError`].
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    for &b in topic.as_bytes() {
        match b {
            0 => return Err(TopicError::NullCharacter),
            b'+' | b'#' => return Err(TopicError::WildcardInName),
            _ => {}
        }
    }
    Ok(())
}

/// Checks that `filter` is a valid topic filter: non-empty, at most 65 535 bytes, no U+0000,
/// `+` and `#` only as whole levels and `#` only as the last level.
///
/// Valid: `#`, `a/#`, `+`, `+/a/+`, `/`, `a//b`. Invalid: `a/#/c`, `a+`, `#a`, `a/b#`.
///
/// # Errors
/// The first rule broken, as a [`TopicError`].
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let bytes = filter.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            0 => return Err(TopicError::NullCharacter),
            b'+' | b'#' => {
                let starts_level = i == 0 || bytes.get(i - 1) == Some(&b'/');
                let ends_level = match bytes.get(i + 1) {
                    None => true,
                    // `#` must be the last level, `+` may be followed by more levels.
                    Some(b'/') => b == b'+',
                    Some(_) => false,
                };
                if !starts_level || !ends_level {
                    return Err(TopicError::InvalidWildcard);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The prefix of a shared subscription's filter.
pub const SHARED_PREFIX: &str = "$share/";

/// Whether `filter` names a shared subscription: it starts with `$share/` (valid or not; see
/// [`parse_shared`]).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARED_PREFIX)
}

/// A shared subscription's parts: `$share/<group>/<filter>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SharedFilter<'a> {
    /// The share name: the subscribers of one group share the messages of `filter`.
    pub group: &'a str,
    /// The topic filter itself.
    pub filter: &'a str,
}

/// Recognises and validates a shared subscription (5.0, 4.8.2): `Ok(None)` for a filter that
/// does not start with `$share/`, `Ok(Some(parts))` for a valid one: a non-empty share name
/// without `+`, `#` or `/`, then `/` and a valid filter.
///
/// ```
/// use starling_codec::topic::{parse_shared, SharedFilter};
/// assert_eq!(
///     parse_shared("$share/g1/sensors/#"),
///     Ok(Some(SharedFilter { group: "g1", filter: "sensors/#" }))
/// );
/// assert_eq!(parse_shared("sensors/#"), Ok(None));
/// assert!(parse_shared("$share/g+/a").is_err());
/// ```
///
/// # Errors
/// [`TopicError::InvalidSharedSubscription`] for a bad share name or a missing filter, the
/// inner filter's own error if it is invalid (and the rules of [`validate_filter`] on the whole:
/// length, U+0000).
pub fn parse_shared(filter: &str) -> Result<Option<SharedFilter<'_>>, TopicError> {
    let Some(rest) = filter.strip_prefix(SHARED_PREFIX) else {
        return Ok(None);
    };
    if filter.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    let Some((group, inner)) = rest.split_once('/') else {
        return Err(TopicError::InvalidSharedSubscription);
    };
    if group.is_empty() || group.contains(['+', '#']) {
        return Err(TopicError::InvalidSharedSubscription);
    }
    validate_filter(inner)?;
    if group.contains('\0') {
        return Err(TopicError::NullCharacter);
    }
    Ok(Some(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Whether `topic` starts with `$` (`$SYS/...` and other server topics).
pub fn is_system_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

/// The levels of a topic name or filter (split on `/`; `"/"` has two empty levels).
pub fn levels(s: &str) -> std::str::Split<'_, char> {
    s.split('/')
}

/// Whether the topic filter `filter` matches the topic name `topic`.
///
/// `+` matches exactly one level (which may be empty), `#` matches any number of levels including
/// none, so `a/#` matches `a`. A topic starting with `$` is not matched by a filter whose first
/// level is `+` or `#`. Both arguments are assumed valid (see [`validate_filter`] and
/// [`validate_topic_name`]); for invalid input the result is unspecified but there is no panic.
pub fn matches(filter: &str, topic: &str) -> bool {
    if is_system_topic(topic) && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = levels(filter);
    let mut t = levels(topic);
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) => {
                if fl != tl {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_topic_name_is_rejected() {
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
    }

    #[test]
    fn topic_name_longer_than_65535_bytes_is_rejected() {
        let long = "a".repeat(65_536);
        assert_eq!(validate_topic_name(&long), Err(TopicError::TooLong));
        assert_eq!(validate_topic_name(&long[..65_535]), Ok(()));
    }

    #[test]
    fn topic_name_with_wildcard_is_rejected() {
        for t in ["a/+", "#", "a/b#", "+", "sport/tennis/#"] {
            assert_eq!(
                validate_topic_name(t),
                Err(TopicError::WildcardInName),
                "{t}"
            );
        }
    }

    #[test]
    fn topic_name_with_null_is_rejected() {
        assert_eq!(validate_topic_name("a\0b"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn valid_topic_names_are_accepted() {
        for t in [
            "a",
            "/",
            "a//b",
            "$SYS/broker/uptime",
            "€/😀",
            " ",
            "a/b/c/",
        ] {
            assert_eq!(validate_topic_name(t), Ok(()), "{t}");
        }
    }

    #[test]
    fn valid_filters_are_accepted() {
        for f in [
            "#", "a/#", "+", "+/a/+", "/", "a//b", "+/+", "/+", "+/", "a/+/#", "$SYS/#", "€/+",
        ] {
            assert_eq!(validate_filter(f), Ok(()), "{f}");
        }
    }

    #[test]
    fn misplaced_wildcards_in_filter_are_rejected() {
        for f in [
            "a/#/c", "a+", "#a", "a/b#", "+a", "a/+b", "##", "++", "#/", "a/#/", "/#/",
        ] {
            assert_eq!(validate_filter(f), Err(TopicError::InvalidWildcard), "{f}");
        }
    }

    #[test]
    fn empty_filter_is_rejected() {
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn filter_longer_than_65535_bytes_is_rejected() {
        assert_eq!(
            validate_filter(&"a".repeat(65_536)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn filter_with_null_is_rejected() {
        assert_eq!(validate_filter("a/\0"), Err(TopicError::NullCharacter));
    }

    #[test]
    fn system_topics_start_with_dollar() {
        assert!(is_system_topic("$SYS/broker/version"));
        assert!(is_system_topic("$"));
        assert!(!is_system_topic("a/$SYS"));
        assert!(!is_system_topic(""));
    }

    #[test]
    fn levels_split_on_slash() {
        assert_eq!(levels("a//b").collect::<Vec<_>>(), ["a", "", "b"]);
        assert_eq!(levels("/").collect::<Vec<_>>(), ["", ""]);
    }

    #[test]
    fn wildcard_matching_table() {
        // (filter, topic, expected)
        let table: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "b", false),
            ("a/b", "a/b", true),
            ("a/b", "a", false),
            ("a", "a/b", false),
            ("a/b", "a/b/c", false),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+", "/", false),
            ("+/+", "/", true),
            ("+", "", true),
            ("/+", "/a", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "ab", false),
            ("a/#", "b/a", false),
            ("a/b/#", "a", false),
            ("+/#", "a", true),
            ("+/#", "a/b/c", true),
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/+/player1", "sport/tennis/player1", true),
            ("sport/+", "sport", false),
            ("a/b", "A/b", false),
            // The `$` rule.
            ("#", "$SYS/broker/uptime", false),
            ("+/broker/uptime", "$SYS/broker/uptime", false),
            ("+", "$SYS", false),
            ("+/#", "$SYS/a", false),
            ("$SYS/#", "$SYS/broker/uptime", true),
            ("$SYS/+/uptime", "$SYS/broker/uptime", true),
            ("$SYS", "$SYS", true),
            ("a/#", "a/$SYS", true),
            ("a/+", "a/$x", true),
        ];
        for &(filter, topic, expected) in table {
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
        }
    }

    #[test]
    fn matching_invalid_input_does_not_panic() {
        for (f, t) in [("", ""), ("a#", "a"), ("#/#", "a"), ("", "a"), ("a", "")] {
            let _ = matches(f, t);
        }
    }
    #[test]
    fn shared_subscriptions_are_recognised_and_validated() {
        assert_eq!(
            parse_shared("$share/g/a/+/#"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "a/+/#"
            }))
        );
        assert_eq!(
            parse_shared("$share/group-1/#"),
            Ok(Some(SharedFilter {
                group: "group-1",
                filter: "#"
            }))
        );
        // The inner filter may itself start with `/` or `$`.
        assert_eq!(
            parse_shared("$share/g//a"),
            Ok(Some(SharedFilter {
                group: "g",
                filter: "/a"
            }))
        );
        for not_shared in ["a/b", "$SYS/#", "$share", "share/g/a", "$Share/g/a", "#"] {
            assert_eq!(parse_shared(not_shared), Ok(None), "{not_shared}");
            assert!(!is_shared(not_shared));
        }
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/+/a",
            "$share/#/a",
            "$share/g#/a",
            "$share/g+x/a",
        ] {
            assert_eq!(
                parse_shared(bad),
                Err(TopicError::InvalidSharedSubscription),
                "{bad}"
            );
            assert!(is_shared(bad));
        }
        assert_eq!(parse_shared("$share/g/"), Err(TopicError::Empty));
        assert_eq!(
            parse_shared("$share/g/a/#/b"),
            Err(TopicError::InvalidWildcard)
        );
        assert_eq!(parse_shared("$share/g\0/a"), Err(TopicError::NullCharacter));
        assert_eq!(
            parse_shared(&format!("$share/g/{}", "a".repeat(65_535))),
            Err(TopicError::TooLong)
        );
    }
}
